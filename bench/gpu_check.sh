#!/usr/bin/env bash
# The GPU checks of issue 12, prepared for the lent machine (CUDA torch, python 3.12, no internet).
# Here first (1 min, ~45 MB): bash scripts/gpu_wheels.sh. Then, with the device tool, one part per run
# (15 min of device time per session in all, a machine start included):
#   run(command="bash bench/gpu_check.sh tests", carry=[".whl"], timeout_s=420)
#   run(command="bash bench/gpu_check.sh bench", carry=[".whl"], timeout_s=590)
#   run(command="MODELS=sam2.1_hiera_large OBJECTS=1 FRAMES=300 bash bench/gpu_check.sh bench", ...)
# "tests": pytest -m gpu tests/test_gpu.py (graph replay vs eager, offload fidelity vs upstream under
#   bf16, stored bf16 features; the sam3 gpu test needs the sam3 package, not carried).
# "bench": bench/vs_upstream.py on CUDA, 1024 px, 1280x720 JPEG (upstream's native input), samtrack
#   eager and with CUDA graphs against upstream eager in one run; MODELS (default sam2.1_hiera_tiny),
#   OBJECTS (default "1 3") and FRAMES (default 1000) set what runs.
# Logs go to $OUT (they come back).
set -uo pipefail
part=${1:-tests}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: run scripts/gpu_wheels.sh here and carry .whl"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -c "import torch, samtrack, sam2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
case "$part" in
  tests)
    timeout 400 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 \
        | tee "$OUT/gpu_tests.log"
    ;;
  bench)
    for model in ${MODELS:-sam2.1_hiera_tiny}; do
      (cd bench && timeout 570 python3 vs_upstream.py --device cuda --image-size 1024 --size 1280x720 --source jpeg \
          --frames "${FRAMES:-1000}" --model "$model" --objects ${OBJECTS:-1 3} --cuda-graphs both \
          --out /tmp/bench_out) 2>&1 | tee -a "$OUT/vs_upstream.log"
    done
    ;;
  *) echo "usage: bench/gpu_check.sh tests|bench"; exit 2 ;;
esac
