#!/usr/bin/env bash
# `make bench-gpu`: every GPU figure of issue 11 in one run (benchmarks/bench_gpu.py), eager and
# compiled, one JSON (benchmarks/results/gpu.json, also copied to $OUT when set). No network needed.
# On the device tool's bare GPU image: run benchmarks/device_wheels.sh here first, then this there
# with carry [".whl"]; the wheels it lacks (zarr, dask, numcodecs, py7zr, ...) are installed from .whl/.
# On a machine without CUDA it stops with a message and exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi
$PY -m benchmarks gpu
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu.json "$OUT/gpu.json"; fi
