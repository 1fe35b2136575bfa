#!/usr/bin/env bash
# Stages what scripts/gpu_check.sh needs on a bare GPU machine that has torch, Triton and the common scientific
# packages but no ComfyUI (the workplace's device machines: Python 3.12, nothing reachable from them), in .gpu/
# (ignored by git; under 64 MiB with this repo):
#   .gpu/ComfyUI  the host from .host/ComfyUI, less its git history, tests and the two tokenizers no tiny model uses;
#   .gpu/stubs    a stand-in for PyAV (ComfyUI's video types import it at start; no node test reads video);
#   .gpu/whl      wheels the host imports that such a machine lacks (torchsde, trampoline, kornia, kornia_rs).
# There, with .gpu carried:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD/.gpu/stubs COMFYUI_PATH=$PWD/.gpu/ComfyUI bash scripts/gpu_check.sh
# MediaPipe (43 MB) and its model files do not fit: the expression and try-on node tests do not run there.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${COMFYUI_PATH:-.host/ComfyUI}
mkdir -p .git/info && { grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/whl .gpu/stubs/av/subtitles
cp -r "$HOST" .gpu/ComfyUI
(cd .gpu/ComfyUI && rm -rf .git tests tests-unit user output input temp \
   comfy/text_encoders/llama_tokenizer comfy/text_encoders/qwen25_tokenizer &&
 find . -name __pycache__ -prune -exec rm -rf {} + && for d in models/*/; do rm -rf "${d:?}"*; done)
for f in __init__ container subtitles/__init__ subtitles/stream; do
  cat > ".gpu/stubs/av/$f.py" <<'EOF'
"""A stand-in for PyAV on a GPU check machine only (ComfyUI's video types import it; no test there reads video)."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})
EOF
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl torchsde==0.2.6 trampoline==0.1.2 kornia kornia_rs
du -sh .gpu
