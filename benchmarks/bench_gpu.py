"""GPU training throughput: is the GPU ever kept waiting? One run, eager and compiled.

``make bench-gpu`` (or ``bash benchmarks/run_gpu.sh``) on any CUDA machine, no network needed;
on a machine without CUDA it stops at once with a message and exit status 2. It builds its own
synthetic store (48 full-size samples, uncompressed TIFFs -> a ``--codec none`` store at 1024,
512, 256) and measures, SE-ResNeXt50, 512² crops of the 1024 level, bf16, channels_last, focal
loss, the dihedral/jitter augmentation and normalisation on the device, batch 64:

1. the memory-fed step rate: batches drawn from a uint8 tensor already on the GPU (the reference);
2. the loader-fed rate: the same step fed by :class:`hpa_pipeline.model.feed.BatchFeed`
   (persistent workers, shared pinned slots, side-stream copies);
3. ``hpa-pipe train`` itself (the real ``train()`` with ``pipelines/train.yaml``'s options,
   weights from scratch, batch 64, two epochs of GPU_TRAIN_STEPS steps): its
   steady-state images/s, and its start-up, validation and checkpoint times projected to the
   real data (24,900 training and 6,200 validation samples per fold);
4. the feed alone (no training): images/s and the CPU cores it used (workers and this process);
5. the loader-fed rate and the cores it took on a store of the **default** ingest recipe
   (zarr's zstd 1 with chunk checksums), beside the ``--codec none`` one of 2-4, decoded by the
   loader workers (``--decode cpu``) and by nvCOMP on the GPU (``--decode gpu``), with nvCOMP's
   decode rate and a bit-for-bit check against the CPU decoder;
6. a learning check: SE-ResNeXt50 from scratch on a synthetic twin of about 2,000 samples
   (512² sources, the 256 level, 224² crops) for GPU_LEARN_S seconds of training (default 120)
   in three epochs, eager and compiled: the validation macro F1 of each (they must agree within
   noise: compilation changes the speed, not what is learned);
7. whole images classified per second by an exported SE-ResNeXt50, PyTorch and ONNX Runtime
   (its CUDA provider where the image has one), at 512² and 1024² (benchmarks/bench_classify.py).

Each of 1-5 eager and with ``torch.compile``. Targets: loader-fed >= 0.97 of memory-fed (0.98
decoded by nvCOMP, on at most 0.5 CPU core); ``train`` steady state >= 0.95 of memory-fed; epoch
overheads <= 5 % of an epoch at the real size. The figures are saved as each part ends, the feeds
of every mode first, then ``train``, the learning check and classify: a run cut off by a time
limit keeps what it measured. Environment: GPU_STEPS (default 60), GPU_TRAIN_STEPS (150),
GPU_WORKERS (default: chosen from the measured per-worker and step rates), GPU_MODES
(eager,compile), GPU_LEARN_S (120), GPU_PARTS (feeds,train,learn,classify: ``GPU_PARTS=feeds``
measures only the feeds, 1, 2, 4 and 5, the shortest run that answers whether the GPU waits).

``GPU_DRY_RUN=1`` runs every part on the CPU with the tiny SE-ResNet, 256² crops and a few
steps: it checks the benchmark's own code on a machine without a GPU (figures meaningless).
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from .common import BENCH_DATA, report, save, synth_data

DRY_RUN = os.environ.get("GPU_DRY_RUN") == "1"
STEPS = int(os.environ.get("GPU_STEPS", 3 if DRY_RUN else 60))
TRAIN_STEPS = int(os.environ.get("GPU_TRAIN_STEPS", 4 if DRY_RUN else 150))  # per epoch, two epochs
BATCH, CROP, LEVEL, N = (8, 128, 256, 48) if DRY_RUN else (64, 512, 1024, 48)
ARCH = "se_resnet_tiny" if DRY_RUN else "se_resnext50_32x4d"
DEVICE = "cpu" if DRY_RUN else "cuda"
REAL_TRAIN, REAL_VALID = 24_900, 6_200
WARMUP = 2 if DRY_RUN else 8
NAME = "gpu_dry_run" if DRY_RUN else "gpu"
# The feeds (1, 2, 4, 5) always run; train (3), learn (6) and classify (7) as named.
PARTS = set(os.environ.get("GPU_PARTS", "feeds,train,learn,classify").split(","))
TIMES = "seconds from the start at the end of each part"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def workers_for(step_rate: float, per_worker_rate: float, cores: int) -> int:
    """Workers that deliver 1.3x the step rate, leaving a core for the training process."""
    return int(max(1, min(cores - 1, math.ceil(1.3 * step_rate / max(per_worker_rate, 1e-6)))))


def _store(codec: str = "none") -> Path:
    from hpa_pipeline.contract.store import StoreSpec
    from hpa_pipeline.prep.build_zarr import build_zarr
    from hpa_pipeline.prep.extract import extract_archives

    # uncompressed TIFFs: the GPU machine has tifffile but not imagecodecs
    name = "gpu48_dry" if DRY_RUN else "gpu48_raw"
    data = synth_data(name, n_train=N, n_test=1, compression="none", **({"image_sizes": (512,)} if DRY_RUN else {}))
    tiff = BENCH_DATA / f"{name}_tiff"
    if not tiff.exists():
        extract_archives([data / "train_full_size.7z"], tiff)
    store = BENCH_DATA / f"{name}_{codec}_v2.zarr"  # v2: "zstd" is zarr's own zstd (format version 2)
    if not (store / "report.json").exists():
        build_zarr(tiff, data / "train.csv", store, StoreSpec(size=LEVEL, codec=codec))
    return store


N_LEARN = 64 if DRY_RUN else 2000
LEARN_S = float(os.environ.get("GPU_LEARN_S", 5 if DRY_RUN else 120))


def _learning_store() -> Path:
    """The learning check's synthetic twin: N_LEARN samples of 512² sources, levels 256 and 128."""
    from hpa_pipeline.contract.store import StoreSpec
    from hpa_pipeline.prep.build_zarr import build_zarr
    from hpa_pipeline.prep.extract import extract_archives

    name = f"learn{N_LEARN}"
    data = synth_data(name, n_train=N_LEARN, n_test=1, compression="none", image_sizes=(512,))
    tiff = BENCH_DATA / f"{name}_tiff"
    if not tiff.exists():
        extract_archives([data / "train_full_size.7z"], tiff)
    store = BENCH_DATA / f"{name}.zarr"
    if not (store / "report.json").exists():
        build_zarr(tiff, data / "train.csv", store, StoreSpec(size=256, levels=2, chunk=128, codec="none"))
    return store


def _learning_check(store: Path, compiled: bool, img_s: float, workers: int) -> dict:
    """Three epochs from scratch sized to LEARN_S seconds at the measured rate; the last
    epoch's validation macro F1 (at 0.5 and tuned, cross-fitted) and the seconds it took."""
    import csv

    from hpa_pipeline.model.config import TrainConfig
    from hpa_pipeline.model.train import train

    level, crop = (128, 96) if DRY_RUN else (256, 224)
    steps = max(2, int(LEARN_S * img_s * (CROP / crop) ** 2 / BATCH / 3))  # smaller crops run faster
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        cfg = TrainConfig(store=str(store), out=str(Path(tmp) / "run"), arch=ARCH, weights="none", level=level,
                          crop=crop, folds=5, fold=0, epochs=3, batch_size=BATCH, steps_per_epoch=steps, lr=1e-3,
                          warmup_epochs=0.3, loss="focal", compile=compiled, workers=workers, device=DEVICE)
        started = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - started
        last = list(csv.DictReader((Path(tmp) / "run" / "metrics.csv").open()))[-1]
    return {"valid_macro_f1": float(last["valid_macro_f1"]), "crossfit": float(last["valid_macro_f1_tuned_crossfit"]),
            "steps": 3 * steps, "seconds": round(seconds, 1)}


def _step_module(compiled: bool, labels: np.ndarray):
    import torch

    from hpa_pipeline.model.losses import make_loss
    from hpa_pipeline.model.models import create_model
    from hpa_pipeline.model.train import LossOfBatch

    model = create_model(ARCH).to(DEVICE).to(memory_format=torch.channels_last).train()
    step = LossOfBatch(model, make_loss("focal", 2.0, False, labels).to(DEVICE))
    return model, torch.compile(step) if compiled else step


def _timed_steps(model, step, batches, normalize, steps: int) -> float:
    """Images/s of ``steps`` optimizer steps after WARMUP, syncing only at the ends."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    done, start = 0, None
    for k, (images, targets, augmentation) in enumerate(batches):
        if k == WARMUP:
            sync()
            start = time.perf_counter()
        x = normalize(images, augmentation).contiguous(memory_format=torch.channels_last)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            loss = step(x, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if k >= WARMUP:
            done += len(images)
        if k + 1 >= steps + WARMUP:
            break
    sync()
    return done / (time.perf_counter() - start)


def _one_worker_rate(dataset) -> float:
    """One loader worker's crops/s of ``dataset``, measured in this process on one batch."""
    start = time.perf_counter()
    dataset.__getitems__([k % N for k in range(BATCH)])
    return BATCH / (time.perf_counter() - start)


def _fed_then_alone(model, step, normalize, feed, batches) -> tuple[float, dict]:
    """The step's images/s fed by ``feed`` (``batches()``: a fresh stream of its batches), then
    the feed alone (:func:`_feed_alone`); the feed is closed after."""
    try:
        fed = _timed_steps(model, step, ((b[0], b[1], b[3]) for b in batches()), normalize, STEPS)
        return fed, _feed_alone(batches(), STEPS)
    finally:
        feed.close()


def _endless(n: int):
    rng = np.random.default_rng(0)
    epoch = 0
    while True:
        epoch += 1
        for k in rng.permutation(n):
            yield (epoch, int(k))


def _feed_alone(stream, batches: int) -> dict:
    """A feed's batches taken as fast as it gives them (no training): its rate, and the CPU it
    takes per wall second, this process and its children (the feed's workers, once started)."""
    import psutil

    me = psutil.Process()
    for _ in range(WARMUP):
        next(stream)
    processes = [me, *me.children(recursive=True)]
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in processes)
    sync()
    start = time.perf_counter()
    seen = sum(len(next(stream)[0]) for _ in range(batches))
    sync()
    wall = time.perf_counter() - start
    cpu1 = sum(sum(p.cpu_times()[:2]) for p in processes)
    stream.close()
    return {"img_s": round(seen / wall, 1), "cores_used": round((cpu1 - cpu0) / wall, 2)}


def _eval_rate(model, normalize) -> float:
    """Validation's own speed: whole images of the training level (``val_level`` null), eval
    mode, no gradients, bf16, memory-fed; images/s. Validation at the real size is this rate
    times 6,200 images, plus a fixed cost per validation measured in ``train`` itself."""
    import torch

    model.eval()
    images = torch.randint(0, 255, (BATCH, 4, LEVEL, LEVEL), dtype=torch.uint8, device=DEVICE)
    steps = max(2, STEPS // 4)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        for k in range(WARMUP + steps):
            if k == WARMUP:
                sync()
                start = time.perf_counter()
            model(normalize(images).contiguous(memory_format=torch.channels_last))  # no augmentation
    sync()
    model.train()
    return steps * BATCH / (time.perf_counter() - start)


def _train_itself(store: Path, compiled: bool, workers: int, eval_rate: float) -> dict:
    """The real ``train()`` for two short epochs; the second one's figures are the steady state
    (the first pays for cuDNN's autotuning, compilation and starting the validation feed)."""
    import csv

    import yaml

    from hpa_pipeline.model.config import TrainConfig
    from hpa_pipeline.model.train import train

    recipe = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "train.yaml").read_text())["train"]
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        dry = {"arch": ARCH, "level": LEVEL, "crop": CROP, "device": "cpu"} if DRY_RUN else {}
        cfg = TrainConfig(**{**recipe, "store": str(store), "out": str(Path(tmp) / "run"), "weights": "none",
                             "batch_size": BATCH, "epochs": 2, "epoch_size": BATCH * TRAIN_STEPS,
                             "compile": compiled, "workers": workers, "swa_epochs": 0, "tta": 1, **dry})
        train(cfg)
        first, row = list(csv.DictReader((Path(tmp) / "run" / "metrics.csv").open()))[:2]
        n_valid = sum(1 for r in csv.DictReader((Path(tmp) / "run" / "folds.csv").open()) if r["fold"] == "0")
    img_s, valid_s, startup_s = float(row["train_img_s"]), float(row["valid_s"]), float(first["startup_s"])
    valid_fixed_s = max(0.0, valid_s - n_valid / eval_rate)
    real_valid_s = valid_fixed_s + REAL_VALID / eval_rate
    epoch_s = REAL_TRAIN / img_s
    overhead_s = real_valid_s + float(row["checkpoint_s"]) + startup_s / recipe["epochs"]
    return {"steady_img_s": img_s, "startup_s": startup_s, "valid_s": valid_s, "n_valid": n_valid,
            "valid_fixed_s": round(valid_fixed_s, 2), "checkpoint_s": float(row["checkpoint_s"]),
            "real_epoch_train_s": round(epoch_s, 1), "real_valid_s": round(real_valid_s, 1),
            "real_overhead_s": round(overhead_s, 1), "real_overhead_share": round(overhead_s / (epoch_s + overhead_s), 3),
            "loader_share": round((valid_fixed_s + float(row["checkpoint_s"]) + startup_s / recipe["epochs"])
                                  / (epoch_s + overhead_s), 3)}


class _Figures(dict):
    """The run's figures, saved as each part ends (a run cut off by a time limit keeps them), with
    the seconds from the start at the end of each part last: what sizes a run."""

    def __init__(self):
        super().__init__()
        self.started, self.marks = time.perf_counter(), []

    def done(self, part: str, show: bool = True) -> dict:
        self.marks.append(f"{part} {round(time.perf_counter() - self.started)}")
        self.pop(TIMES, None)
        self[TIMES] = "; ".join(self.marks)
        return report(NAME, self) if show else save(NAME, self)


def run() -> dict:
    import torch

    if not PARTS <= {"feeds", "train", "learn", "classify"}:
        raise SystemExit(f"bench gpu: GPU_PARTS takes feeds, train, learn and classify, not {','.join(sorted(PARTS))}")
    if not torch.cuda.is_available() and not DRY_RUN:
        print("bench gpu: no CUDA device on this machine. Run `make bench-gpu` (or bash benchmarks/run_gpu.sh) "
              "on a GPU machine; nothing was measured.", file=sys.stderr)
        raise SystemExit(2)
    torch.backends.cudnn.benchmark = True
    figures, store = _Figures(), _store()
    figures.done("the --codec none store", show=False)
    modes = os.environ.get("GPU_MODES", "eager" if DRY_RUN else "eager,compile").split(",")
    eval_rate = _every_feed(store, modes, figures)
    result = report(NAME, figures)
    for mode in modes if "train" in PARTS else ():
        workers = figures[f"{mode}: workers (chosen from the rates unless GPU_WORKERS)"]
        itself = _train_itself(store, mode == "compile", workers, eval_rate)
        figures.update(_itself_figures(mode, itself, figures[f"{mode}: memory-fed img/s"], eval_rate))
        result = figures.done(f"{mode} train")
    for mode in modes if "learn" in PARTS else ():
        learned = _learning_check(_learning_store(), mode == "compile", figures[f"{mode}: memory-fed img/s"],
                                  figures[f"{mode}: workers (chosen from the rates unless GPU_WORKERS)"])
        figures[f"{mode}: learning check ({N_LEARN} synthetic samples, {learned['steps']} steps, "
                f"{learned['seconds']} s): validation macro F1 at 0.5, tuned (cross-fitted)"] = \
            f"{learned['valid_macro_f1']:.4f}, {learned['crossfit']:.4f}"
        result = figures.done(f"{mode} learning check")
    if "classify" in PARTS and not DRY_RUN:  # 7. whole images by an exported model (bench_classify.py)
        from .bench_classify import measure

        figures.update({f"classify {k}": v for k, v in _guarded("classify", measure, "cuda").items()})
        result = figures.done("classify")
    return result


def _every_feed(store: Path, modes: list[str], figures: _Figures) -> float:
    """1, 2, 4 and 5 for every mode, before anything else; validation's eval rate (images/s)."""
    import torch

    from hpa_pipeline.model.data import StoreDataset

    dataset = StoreDataset(str(store), LEVEL, np.arange(N), crop=CROP, train=True)
    normalize, cores = dataset.normalizer().to(DEVICE), os.cpu_count() or 2
    per_worker = _one_worker_rate(dataset)
    figures.update({"device": "CPU dry run (figures meaningless)" if DRY_RUN else torch.cuda.get_device_name(),
                    "cores": cores, "torch": torch.__version__,
                    "model": f"{ARCH}, bf16, channels_last, focal loss, batch {BATCH}, {CROP}² crops of {LEVEL}",
                    "one worker, in-process: crops/s": round(per_worker, 1)})
    fixed = torch.randint(0, 255, (BATCH, 4, CROP, CROP), dtype=torch.uint8, device=DEVICE)
    targets = torch.zeros(BATCH, 28, device=DEVICE)
    codes = torch.tensor(np.stack([dataset.draw(k % N)[2] for k in range(BATCH)]), device=DEVICE)
    eval_rate = None
    for mode in modes:
        model, step = _step_module(mode == "compile", dataset.labels)
        memory = _timed_steps(model, step, iter(lambda: (fixed, targets, codes), None), normalize, STEPS)
        workers = int(os.environ.get("GPU_WORKERS") or workers_for(memory, per_worker, cores))
        figures.update(_batch_feed(model, step, normalize, dataset, memory, workers, mode))
        figures.update(_default_codec_feed(model, step, normalize, memory, mode))
        figures.update(_guarded(f"{mode}: --decode gpu", _gpu_decode_feed, model, step, normalize, memory, mode))
        if eval_rate is None:  # validation is not compiled: measured once
            eval_rate = _eval_rate(model, normalize)
            figures.update(_guarded("whole images", _whole_image_feed, model, normalize, eval_rate))
        figures.done(f"{mode} feeds", show=False)
        del model, step
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return eval_rate


def _batch_feed(model, step, normalize, dataset, memory: float, workers: int, mode: str) -> dict:
    """2 and 4: the step fed by BatchFeed from the ``--codec none`` store, and that feed alone."""
    import torch

    from hpa_pipeline.model.feed import BatchFeed

    feed = BatchFeed(dataset, BATCH, workers, torch.device(DEVICE))
    fed, alone = _fed_then_alone(model, step, normalize, feed, lambda: feed.batches(_endless(N)))
    return {f"{mode}: memory-fed img/s": round(memory, 1),
            f"{mode}: workers (chosen from the rates unless GPU_WORKERS)": workers,
            f"{mode}: loader-fed img/s (BatchFeed)": round(fed, 1),
            f"{mode}: loader-fed / memory-fed (target >= 0.97)": round(fed / memory, 3),
            f"{mode}: feed alone img/s, CPU cores used": f"{alone['img_s']}, {alone['cores_used']}"}


def _itself_figures(mode: str, itself: dict, memory: float, eval_rate: float) -> dict:
    """3: ``hpa-pipe train``'s steady rate against the memory-fed one, and its epoch's costs."""
    return {
        f"{mode}: hpa-pipe train steady img/s ({TRAIN_STEPS} steps)": itself["steady_img_s"],
        f"{mode}: hpa-pipe train / memory-fed (target >= 0.95)": round(itself["steady_img_s"] / memory, 3),
        f"{mode}: hpa-pipe train start-up s; 2nd epoch: validation ({itself['n_valid']} images) s, its fixed "
        f"part s, checkpoint s": f"{itself['startup_s']}; {itself['valid_s']}, {itself['valid_fixed_s']}, "
                                f"{itself['checkpoint_s']}",
        f"{mode}: validation img/s (whole {LEVEL}² images, eval, bf16, memory-fed)": round(eval_rate, 1),
        f"{mode}: projected real epoch ({REAL_TRAIN} + {REAL_VALID} samples): training s, validation s, "
        f"other overheads s": f"{itself['real_epoch_train_s']}, {itself['real_valid_s']}, "
                              f"{round(itself['real_overhead_s'] - itself['real_valid_s'], 1)}",
        f"{mode}: overhead share of an epoch: all, without validation's own compute (target <= 0.05)":
            f"{itself['real_overhead_share']}, {itself['loader_share']}",
    }


def _guarded(part: str, measure, *args) -> dict:
    """A part that fails on a GPU leaves its error in the results, its traceback on stderr, and
    the run goes on: a device's time is short and the other parts stand. The dry run stops."""
    try:
        return measure(*args)
    except Exception as exc:
        if DRY_RUN:
            raise
        traceback.print_exc()
        return {f"{part}: failed": f"{type(exc).__name__}: {exc}"}


def _default_codec_feed(model, step, normalize, memory: float, mode: str) -> dict:
    """The loader-fed rate on a store of the default codec (zarr's zstd, level 1) decoded on
    the CPU (``--decode cpu``), with the workers its own per-worker rate asks for, and the
    cores the feed took."""
    import torch

    from hpa_pipeline.model.data import StoreDataset
    from hpa_pipeline.model.feed import BatchFeed

    dataset = StoreDataset(str(_store("zstd")), LEVEL, np.arange(N), crop=CROP, train=True)
    per_worker = _one_worker_rate(dataset)
    workers = int(os.environ.get("GPU_WORKERS_ZSTD") or workers_for(memory, per_worker, os.cpu_count() or 2))
    feed = BatchFeed(dataset, BATCH, workers, torch.device(DEVICE))
    fed, alone = _fed_then_alone(model, step, normalize, feed, lambda: feed.batches(_endless(N)))
    return {f"{mode}: default store (zstd-1): one worker crops/s, workers": f"{round(per_worker, 1)}, {workers}",
            f"{mode}: default store (zstd-1): loader-fed img/s": round(fed, 1),
            f"{mode}: default store (zstd-1): loader-fed / memory-fed": round(fed / memory, 3),
            f"{mode}: default store (zstd-1): feed alone img/s, CPU cores used": f"{alone['img_s']}, "
                                                                                f"{alone['cores_used']}"}


def _gpu_decode_feed(model, step, normalize, memory: float, mode: str) -> dict:
    """``--decode gpu`` on the default store: loader workers read stored chunk bytes, nvCOMP
    decodes each batch on the GPU. The loader-fed rate, the CPU the feed takes (the workers
    and this process, per wall second, feeding alone), nvCOMP's decode rate, and whether the
    batches equal the CPU decoder's bit for bit."""
    import torch

    from hpa_pipeline.model.chunk_decode import GpuDecoding, crops_of, decode_chunks, read_compressed_batch
    from hpa_pipeline.model.data import EpochSampler, StoreDataset

    device = torch.device(DEVICE)
    dataset = StoreDataset(str(_store("zstd")), LEVEL, np.arange(N), crop=CROP, train=True)
    pinned = (lambda b: b.pin_memory()) if DEVICE == "cuda" else (lambda b: b)  # the dry run: the CPU decoder
    batch = read_compressed_batch(dataset, [k % N for k in range(BATCH)], "zstd")
    on_host = pinned(batch)
    identical = torch.equal(crops_of(on_host, "zstd", device)[0].cpu(),
                            crops_of(batch, "zstd", torch.device("cpu"))[0])
    sync()
    start = time.perf_counter()
    for _ in range(20):  # the copy to the device and the decode
        decoded = decode_chunks(on_host, "zstd", device)
    sync()
    decode_gb_s = 20 * decoded.numel() * decoded.element_size() / (time.perf_counter() - start) / 1e9
    workers = int(os.environ.get("GPU_WORKERS_DECODE") or 2)
    sampler = EpochSampler(N, seed=0, draws=BATCH * (STEPS + WARMUP + 4) * 3, tag_epoch=True)
    decoding = GpuDecoding(dataset, BATCH, workers, device, "zstd")
    fed, alone = _fed_then_alone(model, step, normalize, decoding, lambda: decoding.batches(sampler, drop_last=True))
    decoder = "nvCOMP batched zstd" if DEVICE == "cuda" else "numcodecs zstd (dry run: the CPU)"
    return {f"{mode}: --decode gpu: workers, loader-fed img/s": f"{workers}, {round(fed, 1)}",
            f"{mode}: --decode gpu: loader-fed / memory-fed (target >= 0.98)": round(fed / memory, 3),
            f"{mode}: --decode gpu: feed alone img/s, CPU cores used (target <= 0.5)":
                f"{alone['img_s']}, {alone['cores_used']}",
            f"{mode}: --decode gpu: {decoder} decode GB/s (decoded bytes)": round(decode_gb_s, 1),
            f"{mode}: --decode gpu: batches bit-identical to the CPU decoder's": identical}


def _reaped_children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _whole_image_feed(model, normalize, eval_rate: float) -> dict:
    """Validation and ``predict``: whole images of the level, from the default store, through
    the model in eval mode, with the images decoded in ``predict``'s two loader workers (``--decode
    cpu``) and on the GPU (``--decode gpu``); images/s against the memory-fed rate, and the CPU
    the feed took per wall second. Where the GPU waits for the workers, decoding there pays."""
    import psutil
    import torch

    from hpa_pipeline.model.data import StoreDataset
    from hpa_pipeline.model.inference import whole_image_batches

    device = torch.device(DEVICE)
    passes = max(1, BATCH * max(2, STEPS // 4) // N)
    dataset = StoreDataset(str(_store("zstd")), LEVEL, np.tile(np.arange(N), passes))
    figures = {}
    for decode, codec in (("cpu", None), ("gpu", "zstd")):
        name = f"whole {LEVEL}² images (validation, predict), --decode {decode}"  # dry run: both on the CPU
        model.eval()
        me = psutil.Process()
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"), \
                whole_image_batches(dataset, BATCH, 2, device, codec) as batches:
            cpu0, seen = sum(me.cpu_times()[:2]) + _reaped_children_cpu(), 0
            sync()
            start = time.perf_counter()
            for images, *_ in batches:
                model(normalize(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last))
                seen += len(images)
            sync()
            wall = time.perf_counter() - start
            # workers still running (BatchFeed's) and those already ended (a finished DataLoader's)
            cpu = (sum(me.cpu_times()[:2]) + _reaped_children_cpu() - cpu0
                   + sum(sum(c.cpu_times()[:2]) for c in me.children(recursive=True)))
        model.train()
        figures[f"{name}: loader-fed img/s, / memory-fed, CPU cores used"] = \
            f"{round(seen / wall, 1)}, {round(seen / wall / eval_rate, 3)}, {round(cpu / wall, 2)}"
    return figures


if __name__ == "__main__":
    run()
