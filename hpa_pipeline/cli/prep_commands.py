"""The preprocessing commands: synth, extract, build-zarr, ingest, inspect, export-ngff.

Each parses, calls one function of :mod:`hpa_pipeline.prep`, reports and sets the exit status:
0 done, 3 some samples failed (listed, and in the report file), 1 a clear error, 2 a usage error.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..common.machine import usable_cores
from ..contract.duplicates import DEFAULT_MAX_DISTANCE
from ..contract.errors import EXIT_OK, EXIT_SOME_FAILED
from .options import decoder_option, int_list, store_arguments, store_options, writable_file
from .progress import finish_report, note, progress_bar
from .recipes import recipe_option


@click.command(short_help="Synthetic dataset in the competition's format.")
@recipe_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the archives and CSV files into.")
@click.option("--n-train", type=click.IntRange(min=0), default=48, show_default=True, help="Training samples.")
@click.option("--n-test", type=click.IntRange(min=0), default=16, show_default=True, help="Test samples.")
@click.option("--image-sizes", default="2048,3072", show_default=True, callback=int_list,
              help="Full-size image sizes to mix (each sample draws one).")
@click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Bits per pixel of the TIFFs (the real archives mix both).")
@click.option("--compression", type=click.Choice(["none", "deflate", "lzw", "zstd"]), default="deflate",
              show_default=True, help="Compression inside each TIFF.")
@click.option("--archive-method", type=click.Choice(["copy", "lzma2"]), default="copy", show_default=True,
              help="7z coder. copy (stored) writes at disk speed (benchmarks/bench_synth.py); lzma2 is what "
                   "the real archives use, and is slow.")
@click.option("--labels-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Real train.csv to draw label sets from [default: the real class frequencies].")
@click.option("--form", type=click.Choice(["7z", "png-zip", "jpeg-folder"]), default="7z", show_default=True,
              help="7z: the full-size TIFF archives; png-zip: the competition's train.zip/test.zip of 512² PNGs; "
                   "jpeg-folder: HPA v18-style JPEGs (each filter in its colour) in hpa_v18/ with "
                   "HPAv18RBGY_wodpl.csv, training samples only.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same images and labels.")
@click.option("--duplicates", type=click.IntRange(min=0), default=0, show_default=True,
              help="Near-duplicates to plant: copies of training samples under new ids (shifted, rescaled, "
                   "brightened, re-encoded as JPEG), every other one in the test split; listed in duplicates.csv.")
@click.option("--workers", type=click.IntRange(min=1), default=usable_cores(), show_default=True,
              help="Processes rendering samples at once (each renders one sample).")
def synth(out_dir, n_train, n_test, image_sizes, bit_depth, compression, archive_method, labels_csv, form, seed,
          duplicates, workers):
    """Write a synthetic dataset in the competition's on-disk format."""
    from ..prep.synth import SynthSpec, make_dataset

    try:
        spec = SynthSpec(n_train, n_test, image_sizes, int(bit_depth), compression, archive_method, seed, labels_csv,
                         form, duplicates)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with progress_bar("synth") as bar:
        result = make_dataset(out_dir, spec, workers=workers, progress=bar)
    click.echo(f"wrote {len(result.train_ids)} train and {len(result.test_ids)} test samples to {result.out_dir}")


@click.command(short_help="Unpack 7z or zip archives to <id>_<filter> files.")
@recipe_option
@click.argument("archives", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the <id>_<filter>.tif files.")
@decoder_option
def extract(archives, out, decoder):
    """Unpack 7z archives (or .7z.001 volumes) or zip archives to DIR/<id>_<filter>.<tif|png|jpg>, resumably."""
    from ..prep.archive import describe_archive
    from ..prep.extract import extract_archives

    with progress_bar("extract", unit="B") as bar:
        for archive in archives:
            bar.write(describe_archive(archive, decoder))
        report = extract_archives(list(archives), out, progress=bar, decoder=decoder)
    finish_report(report.problems(), f"extract: {report.summary()}", f"{out}/extract_report.json", report.exit_code)


def _run_store_command(build, desc, **kwargs):
    """Run ``build_zarr`` or ``ingest`` with a bar of samples; print its report and exit."""
    with progress_bar(desc) as bar:
        report = build(progress=bar, **kwargs)
    finish_report(report.problems(), f"{report.command}: {report.summary()}", f"{report.store}/report.json",
                  report.exit_code)


@click.command("build-zarr", short_help="TIFF folder -> dataset store.")
@recipe_option
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of <id>_<filter> images: .tif/.tiff, .png, .jpg/.jpeg (from extract, or unpacked).")
@store_options
def build_zarr(src, **options):
    """Build the dataset store from a folder of TIFFs (one Dask task per sample), resumably."""
    from ..prep.build_zarr import build_zarr as run_build

    _run_store_command(run_build, "build-zarr", src=src, **store_arguments(options))


@click.command(short_help="7z or zip archive -> dataset store, nothing unpacked.")
@recipe_option
@click.argument("archive", type=click.Path(path_type=Path))
@store_options
@decoder_option
def ingest(archive, decoder, **options):
    """Build the dataset store straight from a 7z or zip archive (TIFF, PNG or JPEG members): nothing
    unpacked to disk, resumably."""
    from ..prep.archive import describe_archive
    from ..prep.ingest import ingest as run_ingest

    note(describe_archive(archive, decoder))
    _run_store_command(run_ingest, "ingest", archive=archive, decoder=decoder, **store_arguments(options))


@click.command(short_help="What a store holds; montage PNG.")
@recipe_option
@click.argument("store")
@click.option("--montage", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG grid of RGB composites of the first samples.")
@click.option("--n", "n_samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Samples in the montage.")
@click.option("--level", type=int, default=None, help="Level the montage shows [default: the one nearest 256].")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect(store, montage, n_samples, level, as_json):
    """Show a store: samples done/failed/missing, levels, chunking, bytes, channel statistics."""
    import json

    from ..prep.inspect import format_inspection, inspect_store, montage_level, write_montage

    if montage is not None:
        writable_file(montage, "--montage")
        if montage.suffix.lower() != ".png":
            raise click.BadParameter(f"{montage}: the montage is a PNG file; name it *.png", param_hint="--montage")
    info = inspect_store(store)
    montage_level(store, [lv["size"] for lv in info["levels"]], level)  # checked with or without --montage
    click.echo(json.dumps(info, indent=1) if as_json else format_inspection(info))
    if montage:
        click.echo(f"montage: {write_montage(store, montage, n=n_samples, level=level)}")


@click.command(short_help="Check every done sample of a store for damage.")
@recipe_option
@click.argument("store")
@click.option("--repair", is_flag=True,
              help="Mark damaged samples not done (their shards removed), so that the same ingest or build-zarr "
                   "command, run again, rebuilds exactly those.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def verify(store, repair, as_json):
    """Read back every done sample of STORE and check it: shards present, index and chunk checksums,
    decodable, pixels matching the sums written with them; the per-sample arrays and metadata.
    Exit 0 only for an undamaged store, 3 when damage was found."""
    import json

    from ..prep.verify import verify_store

    with progress_bar("verify") as bar:
        report = verify_store(store, repair=repair, progress=bar)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        raise SystemExit(EXIT_OK if report.clean else EXIT_SOME_FAILED)
    problems = [("damaged", f"{i}: {why}") for i, why in report.damaged.items()]
    finish_line = f"verify: {report.summary()}"
    for kind, line in problems + [("store", p) for p in report.store_problems]:
        click.echo(f"  {kind}: {line}", err=True)
    click.echo(finish_line)
    raise SystemExit(EXIT_OK if report.clean else EXIT_SOME_FAILED)


@click.command(short_help="Near-duplicate samples within and across stores.")
@recipe_option
@click.argument("stores", nargs=-1, required=True)
@click.option("--duplicate-distance", "--max-distance", "max_distance", type=click.IntRange(0, 64),
              default=DEFAULT_MAX_DISTANCE, show_default=True,
              help="Largest Hamming distance of the 64-bit pHashes, on each of red, green and blue (1st place's "
                   "12), as train's --duplicate-distance. --max-distance is another name for it.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV of the pairs: store_a,id_a,store_b,id_b,distance.")
def duplicates(stores, max_distance, out):
    """Find near-duplicate samples within and across STORES (train, test, external) by their
    perceptual hashes; print a summary (groups, label conflicts, test samples that duplicate
    training samples) and write the pairs."""
    from ..prep.duplicates import find_duplicates, write_pairs

    if out is not None:
        writable_file(out, "--out")
    with progress_bar("hash") as bar:
        report = find_duplicates(list(stores), max_distance, progress=bar)
    for row in report.pairs[:10]:
        click.echo(f"  {row[1]} ({row[0]})  ~  {row[3]} ({row[2]})  distance {row[4]}", err=True)
    if len(report.pairs) > 10:
        click.echo(f"  ... and {len(report.pairs) - 10} more" + (f": see {out}" if out else ""), err=True)
    if out is not None:
        write_pairs(out, report)
    click.echo(f"duplicates: {report.summary()}" + (f"; pairs in {out}" if out else ""))


@click.command("export-ngff", short_help="Samples as OME-Zarr 0.5 images.")
@recipe_option
@click.argument("store")
@click.option("--ids", required=True, help="Comma-separated sample ids to export.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the <id>.ome.zarr images.")
def export_ngff(store, ids, out):
    """Write chosen samples as OME-Zarr 0.5 multiscale images (napari, OME-Zarr readers)."""
    from ..prep.ngff import export_ngff as run_export

    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    if not wanted:
        raise click.BadParameter(f"{ids!r} names no sample id", param_hint="--ids")
    paths = run_export(store, wanted, out)
    for path in paths:
        click.echo(str(path))
