"""What every benchmark shares: a description of the machine, timing, and where results go."""
from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

# BENCH_RESULTS_DIR: where a run saves its JSON instead (run_gpu.sh points it at the device's $OUT,
# so figures a cut-off run already reported still come back)
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).parent / "results")


def machine() -> dict:
    """The facts a figure needs next to it: CPU, cores, memory, Python and key libraries."""
    import numpy
    import zarr

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "python": platform.python_version(),
        "numpy": numpy.__version__, "zarr": zarr.__version__,
    }


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t()`` is the elapsed wall time in seconds."""
    start = time.perf_counter()
    end = None

    def elapsed():
        return (end or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def save(name: str, figures: dict) -> dict:
    """Save one benchmark's figures so far with the machine, as JSON; a long benchmark saves
    after each part, so a run cut off by a time limit keeps what it measured."""
    command = "make bench-gpu" if name.startswith("gpu") else f"make bench BENCH={name}"
    record = {"benchmark": name, "command": command, "machine": machine(), "figures": figures,
              "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2))
    return record


def report(name: str, figures: dict) -> dict:
    """Print one benchmark's figures with the machine, and save them as JSON."""
    record = save(name, figures)
    print(f"\n== {name} on {record['machine']['cpu']} ({record['machine']['cores']} cores)")
    for key, value in figures.items():
        print(f"   {key}: {value}")
    return record


BENCH_DATA = Path(__file__).resolve().parents[1] / "build" / "bench"


def synth_data(name: str, **spec_kwargs) -> Path:
    """A synthetic dataset for benchmarks, made once under ``build/bench/<name>`` and reused."""
    from hpa_pipeline.prep.synth import SynthSpec, make_dataset

    out = BENCH_DATA / name
    if not (out / "sample_submission.csv").exists():
        print(f"   (making {name}: {spec_kwargs})")
        make_dataset(out, SynthSpec(**spec_kwargs), workers=os.cpu_count() or 1)
    return out


def full_size_tiffs() -> tuple[Path, Path]:
    """The benchmarks' shared full-size dataset (48 + 16 samples, 2048/3072, deflate TIFFs) and
    its train TIFFs extracted once: ``(dataset folder, TIFF folder)``."""
    from hpa_pipeline.prep.extract import extract_archives

    data = synth_data("full64", n_train=48, n_test=16)
    tiff = BENCH_DATA / "full64_tiff"
    if not tiff.exists():
        extract_archives([data / "train_full_size.7z"], tiff)
    return data, tiff
