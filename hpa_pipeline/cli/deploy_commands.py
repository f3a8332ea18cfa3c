"""The deployment commands: export (a run as a bioimage.io package) and classify (raw images,
no store). Exit status: 0 done, 1 a clear error, 3 some samples could not be classified."""
from __future__ import annotations

from pathlib import Path

import click

from ..contract.errors import EXIT_OK, EXIT_SOME_FAILED
from .options import writable_file
from .progress import finish_report, progress_bar
from .recipes import recipe_option


@click.command(short_help="A run as a bioimage.io model package.")
@recipe_option
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the package (rdf.yaml, ONNX and TorchScript weights, test tensors, cover).")
def export(run, out):
    """Export RUN (a run folder, or a cross-validation folder: its folds averaged in one graph) as a
    bioimage.io model package (model spec 0.5), validated as it is written."""
    from ..deploy.export import export_package

    result = export_package(run, out)
    click.echo(f"export: {out}/rdf.yaml ({result.status}; ONNX Runtime within {result.onnx_max_difference:.1e} of "
               f"PyTorch; {len(result.runs)} fold(s))")


@click.command(short_help="Raw images -> probabilities, no store.")
@recipe_option
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Run or cross-validation folder to classify with (PyTorch).")
@click.option("--model", "package", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Package folder from hpa-pipe export (ONNX Runtime; no torch needed).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV to write: Id,Predicted, then the probabilities 0..27.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per forward pass.")
@click.option("--upscale", is_flag=True, help="Interpolate sources smaller than the run's top level up to it.")
def classify(sources, run, package, out, batch_size, upscale):
    """Classify raw images (folders of <id>_<filter> files, 7z/zip archives or single files: TIFF,
    PNG, JPEG) with a run or an exported package, without building a store."""
    from ..deploy.classify import (classify as run_classify, package_predictor, report_path, run_predictor,
                                   write_report, write_results)

    if (run is None) == (package is None):
        raise click.UsageError("give one of --run RUN or --model PACKAGE")
    writable_file(out, "--out")
    predictor = run_predictor(run) if run is not None else package_predictor(package)
    with progress_bar("classify") as bar:
        result = run_classify(list(sources), predictor, batch_size=batch_size, upscale=upscale, progress=bar)
    if result.ids:
        write_results(out, result, predictor.thresholds)
    report = write_report(report_path(out), list(sources), result)
    problems = [("not classified", why if why.startswith(key) else f"{key}: {why}")
                for key, why in sorted(result.failed.items())]
    finish_report(problems, f"classify: {len(result.ids)} samples classified, {len(result.failed)} not"
                  + (f" -> {out}" if result.ids else ""), str(report), EXIT_SOME_FAILED if result.failed else EXIT_OK)
