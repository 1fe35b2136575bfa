#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (never part of `make test`, which needs none):
#   0. bench/real_size/device_run.py: full-size Flux dev (fp8) and SDXL, every node that patches, samples or trains
#      at 1024x1024 beside the host's plain sampling and TrainLoraNode, peak device memory and time (REAL=0 skips);
#   1. bench/bench_kernels.py: the kernels' correctness at the issue's sizes, then their timings against torch;
#   2. the kernel tests (tests/unit/test_kernels_*.py) compiled and run on the GPU instead of Triton's interpreter;
#   3. the node tier (tests/nodes) with ComfyUI on its GPU (NODES=0 skips).
# Logs and CSVs land in $OUT (default out/gpu). Each step has its own time limit (seconds: REAL_S, BENCH_S, KTEST_S,
# NODES_S; their defaults add up to more than one 10-minute device call: give smaller ones there); BENCH=0 skips
# step 1; KTEST_ARGS adds pytest arguments to step 2 (e.g. -n 8 with pytest-xdist, the compiles being most of its
# time); NODE_TESTS picks the node test files (default tests/nodes), NODE_ARGS adds pytest arguments to step 3 (e.g.
# --ignore for tests whose dependencies are missing there).
#   PYTHON=.venv/bin/python COMFYUI_PATH=.host/ComfyUI bash scripts/gpu_check.sh
# On a bare GPU machine without ComfyUI, stage the host first with scripts/gpu_stage.sh (it says how to run there).
set -u
OUT=${OUT:-out/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1  # never the repo root on sys.path (its kernels/ would shadow HF kernels)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt"
if [ "${REAL:-1}" = 1 ]; then
  timeout "${REAL_S:-240}" "$PY" -P bench/real_size/device_run.py --out "$OUT" > "$OUT/device_run.log" 2>&1
  echo "device_run rc=$?" | tee -a "$OUT/gpu.txt"
fi
if [ "${BENCH:-1}" = 1 ]; then
  rm -f out/bench/kernels.csv out/bench/kernels_check.csv
  timeout "${BENCH_S:-240}" "$PY" bench/bench_kernels.py > "$OUT/bench_kernels.log" 2>&1
  echo "bench_kernels rc=$?" | tee -a "$OUT/gpu.txt"
  cp out/bench/kernels.csv out/bench/kernels_check.csv "$OUT/" 2>/dev/null
fi
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the tests that rerun a computation
EDITLAB_TEST_DEVICE=cuda timeout "${KTEST_S:-150}" "$PY" -m pytest tests/unit/test_kernels_attention.py \
  tests/unit/test_kernels_sae.py tests/unit/test_kernels_dispatch.py -q -p no:cacheprovider ${KTEST_ARGS:-} \
  > "$OUT/kernel_tests.log" 2>&1
echo "kernel tests rc=$?: $(tail -1 "$OUT/kernel_tests.log")" | tee -a "$OUT/gpu.txt"
if [ "${NODES:-1}" = 1 ]; then
  # shellcheck disable=SC2086
  EDITLAB_TEST_DEVICE=cuda timeout "${NODES_S:-240}" "$PY" -m pytest ${NODE_TESTS:-tests/nodes} -v -p no:cacheprovider \
    -rfE --junitxml="$OUT/nodes.xml" ${NODE_ARGS:-} > "$OUT/nodes.log" 2>&1
  echo "node tier rc=$?: $(grep -c PASSED "$OUT/nodes.log") passed, $(grep -cE "FAILED|ERROR" "$OUT/nodes.log") failed or errors; $(tail -1 "$OUT/nodes.log")" | tee -a "$OUT/gpu.txt"
fi
cat "$OUT/gpu.txt"
[ -f "$OUT/device_run.md" ] && cat "$OUT/device_run.md"
[ -f "$OUT/bench_kernels.log" ] && grep -E "^check|x[0-9]" "$OUT/bench_kernels.log" | head -60
true
