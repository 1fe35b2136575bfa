#!/usr/bin/env bash
# The test command: pytest over the four tiers (unit, nodes, e2e, browser). Exit 5 (no tests ran) is a failure.
# The browser tier needs Debian's chromium: it is installed here when missing (scripts/ensure_chromium.sh); where
# that is impossible the browser tests skip, and the last line of the run says so.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${EDITLAB_VENV:-$repo/.venv}/bin/python"
browser_note=""
if ! chromium_msg="$(bash scripts/ensure_chromium.sh)"; then
  browser_note="browser tier SKIPPED: Chromium is missing and could not be installed ($chromium_msg)"
fi
"$py" -m pytest tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: that is a failure" >&2
  rc=1
fi
[ -n "$browser_note" ] && echo "$browser_note"
exit "$rc"
