#!/usr/bin/env bash
# The test command: pytest over the three tiers (unit, nodes, e2e). Exit 5 (no tests ran) is a failure.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${EDITLAB_VENV:-$repo/.venv}/bin/python"
"$py" -m pytest tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: that is a failure" >&2
  exit 1
fi
exit "$rc"
