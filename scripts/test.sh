#!/usr/bin/env bash
# The test command: pytest over every tier (unit, nodes, e2e, browser, bench smoke) on each host in turn:
#   1. the host `make setup` set up (ComfyUI 0.3.75 extracted from the registry wheel, or COMFYUI_PATH), in .venv;
#   2. ComfyUI 0.33.0 from ../shared/hosts where that tree exists (copied into .host/, its own venv .venv-0.33.0,
#      its own lock); elsewhere one line says it was skipped.
# EDITLAB_HOSTS=first runs only the first. Extra arguments go to pytest on each host.
# pytest runs as the venv's console script, never `python -m pytest`: the repo root must not be on sys.path (its
# kernels/ would shadow Hugging Face's `kernels`, which transformers imports); PYTHONSAFEPATH keeps it off for the
# Python subprocesses the tests start too.
# The browser tier needs Debian's chromium: it is installed here when missing (scripts/ensure_chromium.sh); where
# that is impossible the browser tests skip, and the last lines of the run say so.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PYTHONSAFEPATH=1
second_src="${EDITLAB_SECOND_HOST:-$repo/../shared/hosts/ComfyUI-0.33.0}"
browser_note=""
if ! chromium_msg="$(bash scripts/ensure_chromium.sh)"; then
  browser_note="browser tier SKIPPED: Chromium is missing and could not be installed ($chromium_msg)"
fi

summaries=()
total_passed=0; total_failed=0; total_skipped=0; rc=0

run_host() {  # label venv [env...]: pytest on one host; its closing line is kept for the summary
  local label="$1" venv="$2"; shift 2
  local log; log="$(mktemp)"
  echo "== tests on $label" >&2
  env "$@" "$venv/bin/pytest" tests "${pytest_args[@]}" 2>&1 | tee "$log"
  local code="${PIPESTATUS[0]}"
  if [ "$code" -eq 5 ]; then
    echo "no tests were collected on $label: that is a failure" >&2
    code=1
  fi
  [ "$code" -eq 0 ] || rc=1
  local line; line="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')"
  summaries+=("$label: ${line:-no summary (exit $code)}")
  count() { grep -oE "[0-9]+ ($1)" <<<"$line" | cut -d' ' -f1 | awk '{s+=$1} END {print s+0}'; }
  local failed; failed="$(count 'failed|errors?')"
  [ "$code" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1  # a run that failed without a count still counts
  total_passed=$((total_passed + $(count passed)))
  total_failed=$((total_failed + failed))
  total_skipped=$((total_skipped + $(count skipped)))
  rm -f "$log"
}

pytest_args=("$@")
first_label="ComfyUI $(sed -nE 's/^__version__ *= *"([^"]+)".*/\1/p' "${COMFYUI_PATH:-$(cat .host/comfyui_path 2>/dev/null)}/comfyui_version.py" 2>/dev/null | head -n1)"
run_host "$first_label" "${EDITLAB_VENV:-$repo/.venv}"

if [ "${EDITLAB_HOSTS:-all}" = "first" ]; then
  summaries+=("second host: not run (EDITLAB_HOSTS=first)")
elif [ -n "${COMFYUI_PATH:-}" ]; then
  summaries+=("second host: not run (COMFYUI_PATH names the host to test)")
elif [ -f "$second_src/main.py" ]; then
  venv2="$repo/.venv-0.33.0"
  if EDITLAB_HOST_SOURCE="$second_src" EDITLAB_VENV="$venv2" bash scripts/setup.sh; then
    run_host "ComfyUI 0.33.0" "$venv2" COMFYUI_PATH="$repo/.host/$(basename "$second_src")" EDITLAB_VENV="$venv2"
  else
    rc=1; total_failed=$((total_failed + 1)); summaries+=("ComfyUI 0.33.0: set-up FAILED")
  fi
else
  summaries+=("second host: SKIPPED (no ComfyUI 0.33.0 tree at $second_src)")
fi

echo
for s in "${summaries[@]}"; do echo "$s"; done
[ -n "$browser_note" ] && echo "$browser_note"
echo "editlab: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit "$rc"
