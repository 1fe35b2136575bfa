#!/usr/bin/env bash
# Drift check: a venv of its own (.venv-latest) with the newest versions the requirements allow (no lock), then the
# unit and node tiers on the default host. Prints every package whose version differs from the lock, so a failure
# can be traced to the release that caused it. Not part of `make test` (that one runs the lock).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PYTHONSAFEPATH=1
venv="$repo/.venv-latest"
EDITLAB_VENV="$venv" EDITLAB_LOCK=none bash scripts/setup.sh || exit 1
comfy="${COMFYUI_PATH:-$(cat .host/comfyui_path)}"
version="$(sed -nE 's/^__version__ *= *"([^"]+)".*/\1/p' "$comfy/comfyui_version.py" | head -n1)"
lock="locks/comfyui-$version.txt"
echo "== newer than the lock ($lock):"
"$venv/bin/python" - "$lock" <<'PY'
import sys
from importlib import metadata
from pathlib import Path

def norm(name):
    return name.lower().replace("_", "-").replace(".", "-")

lock = {}
path = Path(sys.argv[1])
for line in path.read_text().splitlines() if path.is_file() else []:
    if "==" in line and not line.startswith("#"):
        name, ver = line.split("==", 1)
        lock[norm(name)] = ver.strip()
now = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
diff = [f"  {n}: {lock[n]} -> {now[n]}" for n in sorted(now) if n in lock and lock[n] != now[n]]
new = [f"  {n}: (not in the lock) {now[n]}" for n in sorted(now)
       if n not in lock and n not in ("pip", "setuptools", "wheel")]  # pip freeze leaves these out
print("\n".join(diff + new) or "  nothing: the newest versions are the locked ones")
PY
"$venv/bin/pytest" tests/unit tests/nodes "$@"
code=$?
[ "$code" -eq 0 ] && echo "test-latest: the newest versions pass the unit and node tiers" \
  || echo "test-latest: FAILED with the newest versions; the packages above are what changed since the lock"
exit "$code"
