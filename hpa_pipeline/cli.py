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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpa-pipe")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config,
              is_eager=True, expose_value=False,
              help="YAML recipe (see pipelines/) giving option defaults per command.")
def cli():
    """Human Protein Atlas full-size archives -> chunked Zarr -> SENet classifiers.

    Stages: synth | extract, build-zarr or ingest | inspect, export-ngff | train | predict | evaluate.
    """


@cli.command()
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

    from .synth import SynthSpec, make_dataset

    if labels_csv is None and DEFAULT_LABELS_CSV.exists():
        labels_csv = DEFAULT_LABELS_CSV
    try:
        spec = SynthSpec(n_train, n_test, image_sizes, int(bit_depth), compression, archive_method, seed, labels_csv)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with tqdm(total=n_train + n_test, unit="sample", desc="synth") as bar:
        result = make_dataset(out_dir, spec, workers=workers, progress=bar.update)
    click.echo(f"wrote {len(result.train_ids)} train and {len(result.test_ids)} test samples to {result.out_dir}")


def main():
    cli(prog_name="hpa-pipe")
