#!/usr/bin/env bash
# On the GPU machine (device tool, carry [".whl"]): install the carried wheels, then run the
# GPU benchmark; its JSON lands in $OUT. Synthetic data uses uncompressed TIFFs there, so that
# imagecodecs is not needed.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
GPU_STEPS=${GPU_STEPS:-40} python3 -m benchmarks gpu
cp benchmarks/results/gpu.json "${OUT:-/tmp}/gpu_eager.json" 2>/dev/null || true
GPU_COMPILE=1 GPU_STEPS=${GPU_STEPS:-40} python3 -m benchmarks gpu
cp benchmarks/results/gpu.json "${OUT:-/tmp}/gpu_compile.json" 2>/dev/null || true
