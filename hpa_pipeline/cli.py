"""``hpa-pipe``: one Click group, one thin command per stage.

Commands parse options, call one library function, report progress and set the exit status;
the work itself lives in the library modules, where tests and notebooks call it directly.
Heavy imports (dask, torch) happen inside the commands so that ``hpa-pipe --help`` is instant.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from . import __version__

DEFAULT_LABELS_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle" / "train.csv"


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _load_config(ctx, param, value):
    """``--config recipe.yaml``: per-command option defaults (Click's ``default_map``).

    A recipe in ``pipelines/`` maps command names to their options; options given on the
    command line still win.
    """
    if value is None:
        return None
    import yaml

    try:
        recipe = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read recipe {value}: {exc}") from None
    if not isinstance(recipe, dict) or not all(isinstance(v, dict) for v in recipe.values()):
        raise click.BadParameter(f"{value}: a recipe maps command names to option mappings")
    ctx.default_map = {cmd.replace("_", "-"): opts for cmd, opts in recipe.items()}
    return value


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
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the archives and CSV files into.")
@click.option("--n-train", default=48, show_default=True, help="Training samples.")
@click.option("--n-test", default=16, show_default=True, help="Test samples.")
@click.option("--image-sizes", default="2048,3072", show_default=True, callback=_int_list,
              help="Full-size image sizes to mix (each sample draws one).")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True)
@click.option("--compression", type=click.Choice(["none", "deflate", "lzw", "zstd"]), default="deflate",
              show_default=True, help="Compression inside each TIFF.")
@click.option("--archive-method", type=click.Choice(["copy", "lzma2"]), default="copy", show_default=True,
              help="7z coder. copy (stored) writes at disk speed, so 64 full-size samples take about a "
                   "minute; lzma2 is what the real archives use (slow to write: 2-9 MB/s on compressed TIFFs).")
@click.option("--labels-csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Real train.csv to draw label sets from [default: ../shared/data/kaggle/train.csv "
                   "if present, else the real class frequencies].")
@click.option("--seed", default=0, show_default=True, help="Same seed, same images and labels.")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, help="Rendering processes.")
def synth(out_dir, n_train, n_test, image_sizes, bit_depth, compression, archive_method, labels_csv, seed, workers):
    """Write a synthetic dataset in the competition's on-disk format."""
    from tqdm import tqdm

    from .prep.synth import SynthSpec, make_dataset

    if labels_csv is None and DEFAULT_LABELS_CSV.exists():
        labels_csv = DEFAULT_LABELS_CSV
    try:
        spec = SynthSpec(n_train, n_test, image_sizes, int(bit_depth), compression, archive_method, seed, labels_csv)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with tqdm(total=n_train + n_test, unit="sample", desc="synth") as bar:
        result = make_dataset(out_dir, spec, workers=workers, progress=bar.update)
    click.echo(f"wrote {len(result.train_ids)} train and {len(result.test_ids)} test samples to {result.out_dir}")


def _store_options(fn):
    """Options shared by build-zarr and ingest: the store layout and where the work runs."""
    options = [
        click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                     help="train.csv (ids and labels) or sample_submission.csv (ids only); fixes the sample order."),
        click.option("--out", metavar="STORE", required=True,
                     help="The store to create, or to resume: a folder or a URL (s3://bucket/train.zarr)."),
        click.option("--size", default=1024, show_default=True, help="Top level size N (N x N)."),
        click.option("--levels", default=3, show_default=True, help="Levels: N, N/2, ... (3 gives 1024, 512, 256)."),
        click.option("--dtype", type=click.Choice(["uint8", "uint16"]), default="uint8", show_default=True,
                     help="uint8 maps 16-bit sources by round(v/257); uint16 keeps source values."),
        click.option("--chunk", default=256, show_default=True, help="Square inner chunk (one shard per sample)."),
        click.option("--codec", type=click.Choice(["zstd", "lz4", "none"]), default="zstd", show_default=True,
                     help="Blosc compressor of the chunks (lossless); none: uncompressed, the fastest "
                          "training crops (4 MB a sample at 1024)."),
        click.option("--clevel", default=1, show_default=True,
                     help="Compression level: zstd 1 is ~0.98x the PNG size at ~300 MB/s a core; 5 saves 1.5%% "
                          "more at ~35 MB/s."),
        click.option("--workers", default=os.cpu_count() or 1, show_default=True,
                     help="Threads of the local Dask cluster (--cluster threads), or its worker processes "
                          "(--cluster processes)."),
        click.option("--threads-per-worker", default=1, show_default=True,
                     help="Threads in each worker process of --cluster processes."),
        click.option("--cluster", default="threads", show_default=True, metavar="threads|processes|RECIPE.yaml",
                     help="Local Dask cluster (threads of this process, or one process per worker), or a "
                          "SLURM/PBS/Kubernetes cluster recipe (pipelines/cluster-*.yaml)."),
        click.option("--scheduler", default=None, help="Address of a dask.distributed scheduler to use instead."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _store_arguments(options: dict) -> dict:
    """The ``_store_options`` as keyword arguments of ``build_zarr`` and ``ingest``: the layout
    options become one ``StoreSpec``, the others pass through."""
    from .contract.store import StoreSpec

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

        self.bar = tqdm(unit="sample", desc=desc, dynamic_ncols=True)

    def __call__(self, advance, total):
        self.bar.total = total
        self.bar.update(advance)

    def close(self):
        self.bar.close()


def _print_cluster(info: dict) -> None:
    dashboard = (f"; dashboard {info['dashboard']}" if info["dashboard"] else
                 " (no dashboard: it comes with --cluster processes, a recipe or --scheduler, and needs bokeh)")
    click.echo(f"dask: {info['workers']} worker(s), {info['threads']} thread(s) at {info['scheduler']}{dashboard}",
               err=True)


def _run_store_command(fn, desc, **kwargs):
    from .prep.archive import ArchiveError
    from .contract.labels import LabelError
    from .prep.scheduler import ClusterError
    from .contract.store import StoreError

    bar = _SampleBar(desc)
    try:
        report = fn(progress=bar, on_cluster=_print_cluster, **kwargs)
    except (LabelError, StoreError, ArchiveError, ClusterError, FileNotFoundError) as exc:
        bar.close()
        raise click.ClickException(str(exc)) from None
    bar.close()
    _finish_build(report)


@cli.command(short_help="Unpack 7z archives to <id>_<filter>.tif.")
@click.argument("archives", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the <id>_<filter>.tif files.")
def extract(archives, out):
    """Unpack 7z archives (or .7z.001 volumes) to DIR/<id>_<filter>.tif, resumably."""
    from tqdm import tqdm

    from .prep.archive import ArchiveError
    from .prep.extract import DiskSpaceError, extract_archives

    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="extract", dynamic_ncols=True)

    def on_plan(total):
        bar.total = total
        bar.refresh()

    try:
        report = extract_archives(list(archives), out, on_bytes=bar.update, on_plan=on_plan)
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
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of <id>_<filter>.tif files (from extract).")
@_store_options
def build_zarr_cmd(src, **options):
    """Build the dataset store from a folder of TIFFs (one Dask task per sample), resumably."""
    from .prep.build_zarr import build_zarr

    _run_store_command(build_zarr, "build-zarr", src=src, **_store_arguments(options))


@cli.command(short_help="7z archive -> dataset store, no TIFF on disk.")
@click.argument("archive", type=click.Path(path_type=Path))
@_store_options
def ingest(archive, **options):
    """Build the dataset store straight from a 7z archive: no TIFF on disk, resumably."""
    from .prep.ingest import ingest as run_ingest

    _run_store_command(run_ingest, "ingest", archive=archive, **_store_arguments(options))


@cli.command("inspect", short_help="What a store holds; montage PNG.")
@click.argument("store")
@click.option("--montage", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG grid of RGB composites of the first samples.")
@click.option("--n", "n_samples", default=16, show_default=True, help="Samples in the montage.")
@click.option("--level", type=int, default=None, help="Level to show [default: the one nearest 256].")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect_cmd(store, montage, n_samples, level, as_json):
    """Show a store: samples done/failed/missing, levels, chunking, bytes, channel statistics."""
    import json

    from .prep.inspect import format_inspection, inspect_store, write_montage
    from .contract.store import StoreError

    try:
        info = inspect_store(store)
        click.echo(json.dumps(info, indent=1) if as_json else format_inspection(info))
        if montage:
            click.echo(f"montage: {write_montage(store, montage, n=n_samples, level=level)}")
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("export-ngff", short_help="Samples as OME-Zarr 0.5 images.")
@click.argument("store")
@click.option("--ids", required=True, help="Comma-separated sample ids to export.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the <id>.ome.zarr images.")
def export_ngff_cmd(store, ids, out):
    """Write chosen samples as OME-Zarr 0.5 multiscale images (napari, OME-Zarr readers)."""
    from .prep.ngff import export_ngff
    from .contract.store import StoreError

    try:
        paths = export_ngff(store, [i.strip() for i in ids.split(",") if i.strip()], out)
    except (StoreError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip('"')) from None
    for path in paths:
        click.echo(str(path))


def _train_options(fn):
    """One option per field of TrainConfig (so a recipe can set any of them by name), with the
    help text of the field's metadata; the config module does not import torch."""
    from dataclasses import MISSING, fields

    from .model.config import TrainConfig

    for f in reversed(fields(TrainConfig)):
        default = f.default if f.default is not MISSING else None
        name = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if isinstance(default, bool):
            option = click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=default, show_default=True,
                                  help=help_text)
        else:
            kind = {"int | None": int, "str | None": str}.get(str(f.type), type(default) if default is not None else str)
            option = click.option(name, type=kind, default=default, show_default=default not in (None, ""),
                                  required=f.name in ("store", "out"), help=help_text)
        fn = option(fn)
    return fn


@cli.command(short_help="Train an SENet on one fold (resumable).")
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
    bar = tqdm(unit="step", desc="train", dynamic_ncols=True, disable=not main_rank)

    def progress(info):
        if info["phase"] == "resumed":
            bar.write(f"resuming {cfg.out} at epoch {info['epoch'] + 1}/{info['epochs']} (step {info['step']})")
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


@cli.command(short_help="Kaggle submission from runs, TTA, thresholds.")
@click.option("--store", required=True, help="Test store: a folder or a URL.")
@click.option("--run", "runs", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              required=True, help="Run folder; repeat to average several (e.g. folds).")
@click.option("--tta", default=1, show_default=True, help="Test-time views: 1-8 flips/rotations.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="submission.csv")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
def predict(store, runs, tta, out, batch_size, workers, device):
    """Write a Kaggle submission (Id,Predicted) from one or more runs, with TTA and thresholds."""
    from .model.inference import predict as run_predict
    from .model.submission import SubmissionError, write_submission
    from .contract.store import StoreError

    try:
        ids, _, labels = run_predict(store, list(runs), tta=tta, batch_size=batch_size, workers=workers,
                                     device=device)
        write_submission(out, ids, labels)
    except (StoreError, SubmissionError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"predict: {len(ids)} rows, {labels.sum(1).mean():.2f} labels per row -> {out}")


@cli.command(short_help="Macro F1 and per-class table of a submission.")
@click.option("--submission", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
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
    cli(prog_name="hpa-pipe")
