#!/usr/bin/env bash
# Makes Debian's Chromium available for the browser tests (driven over the DevTools protocol; no browser download).
# Prints the browser's path and exits 0, or prints why it cannot be installed here and exits 1.
# Installs with apt-get as root (or with passwordless sudo); nothing else is changed.
set -uo pipefail
find_browser() { command -v chromium || command -v chromium-browser || true; }
found="$(find_browser)"
if [ -n "$found" ]; then echo "$found"; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "no apt-get on this machine: install Chromium yourself"; exit 1; fi
if [ "$(id -u)" -eq 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else
  echo "not root and no passwordless sudo: run 'apt-get install -y chromium' as root"; exit 1
fi
echo "[test] installing Debian's chromium for the browser tests (apt-get)" >&2
if ! { "${as_root[@]}" apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium; } >&2; then
  echo "apt-get could not install chromium (no package index reachable?)"; exit 1
fi
found="$(find_browser)"
[ -n "$found" ] && { echo "$found"; exit 0; }
echo "apt-get ran but no chromium binary is on PATH"; exit 1
