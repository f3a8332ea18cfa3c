"""GPU training throughput: SE-ResNeXt50 on 512² crops fed by our loader vs fed from memory.

Runs on any CUDA machine (prints why and stops elsewhere). Both runs use the same model, bf16
autocast, channels_last and the same training step; "memory" draws batches from a uint8 tensor
already on the GPU (the upper bound), "loader" reads random crops from the 1024 level of a
store built from synthetic full-size data, with ``WORKERS`` DataLoader workers. The ratio is the
share of the GPU's rate the loader sustains (target >= 90 %).

    python -m benchmarks gpu            # env: GPU_WORKERS, GPU_STEPS, GPU_COMPILE=1, GPU_LAYOUT=none|lz4|zstd
    benchmarks/device_wheels.sh here, then benchmarks/run_gpu.sh on the device tool's machine
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .common import BENCH_DATA, report, synth_data

STEPS = int(os.environ.get("GPU_STEPS", 60))
BATCH, CROP = 64, 512


def _train_steps(model, batches, normalize, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    targets = torch.zeros(BATCH, 28, device="cuda")
    done, start = 0, None
    for step, (images, augmentation) in enumerate(batches):
        if step == 5:  # warm-up (cudnn autotune, compile) excluded
            torch.cuda.synchronize()
            start = time.perf_counter()
        images = normalize(images.cuda(non_blocking=True), augmentation.cuda(non_blocking=True))
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(images).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 5:
            done += len(images)
        if step + 1 >= steps + 5:
            break
    torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def run() -> dict:
    if not torch.cuda.is_available():
        print("bench gpu: no CUDA device here; run it on a GPU machine")
        return {}
    from hpa_pipeline.prep.build_zarr import build_zarr
    from hpa_pipeline.model.data import StoreDataset, make_loader
    from hpa_pipeline.prep.extract import extract_archives
    from hpa_pipeline.model.models import create_model
    from hpa_pipeline.contract.store import StoreSpec

    workers = int(os.environ.get("GPU_WORKERS", max(1, (os.cpu_count() or 2) - 2)))
    layout = os.environ.get("GPU_LAYOUT", "none")  # the fastest training store (bench_loader)
    # uncompressed TIFFs: the GPU machine has tifffile but not imagecodecs
    data = synth_data("gpu48_raw", n_train=48, n_test=1, compression="none")
    tiff = BENCH_DATA / "gpu48_raw_tiff"
    if not tiff.exists():
        extract_archives([data / "train_full_size.7z"], tiff)
    store = BENCH_DATA / f"gpu_{layout}.zarr"
    if not store.exists():
        build_zarr(tiff, data / "train.csv", store, StoreSpec(codec=layout, clevel=1 if layout == "zstd" else 5))
    dataset = StoreDataset(str(store), 1024, np.arange(48), crop=CROP, train=True)
    normalize = dataset.normalizer().cuda()
    model = create_model("se_resnext50_32x4d").cuda().to(memory_format=torch.channels_last)
    if os.environ.get("GPU_COMPILE") == "1":
        model = torch.compile(model)
    model.train()

    fixed = torch.randint(0, 255, (BATCH, 4, CROP, CROP), dtype=torch.uint8, device="cuda")
    identity = torch.tensor([0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32).repeat(BATCH, 1)
    memory_rate = _train_steps(model, iter(lambda: (fixed, identity), None), normalize, STEPS)

    class Endless(torch.utils.data.Sampler):
        def __iter__(self):
            rng = np.random.default_rng(0)
            while True:
                yield int(rng.integers(0, 48))

    loader = make_loader(dataset, BATCH, workers, Endless(), pin_memory=True)
    loader_rate = _train_steps(model, ((b[0], b[3]) for b in loader), normalize, STEPS)
    return report("gpu", {
        "device": torch.cuda.get_device_name(), "model": "se_resnext50_32x4d, bf16, channels_last"
        + (", torch.compile" if os.environ.get("GPU_COMPILE") == "1" else ""),
        "fed from GPU memory: img/s": round(memory_rate, 1),
        f"fed by the loader ({layout}, {workers} workers): img/s": round(loader_rate, 1),
        "loader / memory (target >= 0.9)": round(loader_rate / memory_rate, 3),
    })


if __name__ == "__main__":
    run()
