#!/usr/bin/env bash
# Records what a green suite ran with: `make lock` writes locks/comfyui-<host version>.txt from the venv of that host
# (pip freeze), the constraints `make setup` installs with from then on. Run it deliberately, after `make test`
# passed, and commit the lock with the change that needed it.
#   EDITLAB_VENV / COMFYUI_PATH as for setup.sh: which venv and host to record (default: .venv and its host).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${EDITLAB_VENV:-$repo/.venv}"
comfy="${COMFYUI_PATH:-$(cat .host/comfyui_path)}"
version="$(sed -nE 's/^__version__ *= *"([^"]+)".*/\1/p' "$comfy/comfyui_version.py" | head -n1)"
mkdir -p locks
out="locks/comfyui-$version.txt"
{
  echo "# What the suite last passed with on ComfyUI $version ($(date -u +%Y-%m-%d), Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'))."
  echo "# Constraints for scripts/setup.sh; regenerate with \`make lock\` after a green \`make test\`, never by hand."
  "$venv/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable | grep -vE '^(-e |#)' | LC_ALL=C sort -f
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages)"
