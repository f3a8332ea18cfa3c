"""The modelling commands: train, predict, evaluate.

Each parses, calls one function of :mod:`hpa_pipeline.model`, reports and sets the exit status:
0 done, 1 a clear error, 2 a usage error, 4 training stopped because the loss diverged.
"""
from __future__ import annotations

from dataclasses import MISSING, fields, replace
from pathlib import Path

import click

from ..model.config import COUNT_OR_AUTO, FOLD_OR_ALL, STORES, TrainConfig
from ..model.names import CROP_MODES, CROP_REDUCTIONS, DECODERS, RATIO_ON, STRATEGIES
from .options import CountOrAuto, FoldOrAll, writable_file
from .progress import note, progress_bar
from .recipes import recipe_option


def _train_option(f) -> callable:
    """The Click option of one ``TrainConfig`` field, from the kind its metadata states."""
    default = f.default if f.default is not MISSING else None
    name, kind, help_text = "--" + f.name.replace("_", "-"), f.metadata["kind"], f.metadata["help"]
    if kind is STORES:
        return click.option(name, multiple=True, default=default, metavar="STORE", help=help_text)
    if kind is FOLD_OR_ALL:
        return click.option(name, type=FoldOrAll(), default=default, metavar="K|all", show_default=True, help=help_text)
    if kind is COUNT_OR_AUTO:
        return click.option(name, type=CountOrAuto(), default=default, metavar="N|auto", show_default="auto",
                            help=help_text)
    if f.metadata.get("choices"):
        return click.option(name, type=click.Choice(f.metadata["choices"]), default=default, show_default=True,
                            help=help_text)
    if kind is bool:
        return click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=default, show_default=True,
                            help=help_text)
    click_type = {int: int, float: float, str: str}[kind]
    return click.option(name, type=click_type, default=default, show_default=default not in (None, ""),
                        required=f.name in ("store", "out"), help=help_text)


def train_options(fn):
    """One option per field of TrainConfig (so a recipe can set any of them by name), with the
    kind and help text of the field's metadata; the config module does not import torch."""
    for f in reversed(fields(TrainConfig)):
        fn = _train_option(f)(fn)
    return fn


@click.command(short_help="Train an SENet on one fold (resumable).")
@recipe_option
@train_options
@click.option("--resume", is_flag=True,
              help="Continue the run in --out after its last finished epoch, with its saved options.")
@click.pass_context
def train(ctx, resume, **options):
    """Train an SENet on one fold of a store (checkpoints every epoch, resumable)."""
    if options.get("out") and options.get("store"):  # a usage error needs no such line first
        note("train: loading PyTorch, then checking the store, the folds and the weights ...")  # seconds before a bar
    from ..model.cross_validation import train_folds
    from ..model.distributed import ranks_from_env
    from ..model.run_folder import is_unfinished_cross_validation
    from ..model.train import train as train_one_fold

    try:
        cfg = TrainConfig.from_dict(options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # options from the command line or a recipe; on --resume they must agree with the saved run
    given = {name: "the recipe's" if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT_MAP
             else "given" for name in options
             if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}
    if resume and "fold" not in given and cfg.out and is_unfinished_cross_validation(cfg.out):
        cfg = replace(cfg, fold="all")  # --resume of a cross-validation needs no --fold all
    main_rank = ranks_from_env().is_main  # under torchrun only rank 0 reports
    run_training = train_folds if cfg.fold == "all" else train_one_fold  # a cross-validation, or one fold
    with progress_bar("train", "valid", unit="step", enabled=main_rank) as bar:
        summary = run_training(cfg, resume=resume, progress=bar, given=given)
    if main_rank and "cross_validation" in summary:
        click.echo(f"train: out-of-fold macro F1 {summary['oof_macro_f1_crossfit']:.4f} (cross-fitted; "
                   f"{summary['oof_macro_f1']:.4f} in sample) over {summary['n_samples']} samples; "
                   f"cross-validation in {cfg.out}")
    elif main_rank:
        click.echo(f"train: best validation macro F1 {summary.get('best_valid_macro_f1', float('nan')):.4f} "
                   f"after {summary.get('step', 0)} steps; run in {cfg.out}")


@click.command(short_help="Kaggle submission from runs, TTA, thresholds.")
@recipe_option
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
@click.option("--thresholds", "thresholds_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="thresholds.json to use instead of the runs' own (e.g. from hpa-pipe thresholds).")
@click.option("--probs", "probs_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the probability table (Id, then columns 0..27), as oof.csv is laid out.")
@click.option("--ratio-on", type=click.Choice(RATIO_ON), default=RATIO_ON[0], show_default=True,
              help="Thresholds of the ratio strategy: matched again on the predicted samples to each class's "
                   "training share, or used as chosen on the out-of-fold table (oof).")
@click.option("--crops", type=click.IntRange(min=0), default=None,
              help="Test-time crops of the run's --crop² per image (1st place: the max over several); 0 = whole "
                   "images [default: the run's --tta-crops].")
@click.option("--crop-mode", type=click.Choice(CROP_MODES), default=None,
              help="tiled (a square grid, corner to corner) or random [default: the run's].")
@click.option("--crop-reduce", type=click.Choice(CROP_REDUCTIONS), default=None,
              help="How the crops' probabilities are reduced: max or mean [default: the run's].")
@click.option("--decode", type=click.Choice(DECODERS), default="auto", show_default=True,
              help="Where the test images are decoded: gpu (the workers read the chunks' stored bytes and nvCOMP "
                   "decodes them on the GPU: a store of --codec zstd or none), cpu (in the workers), or auto "
                   "(the GPU where it can; one line says which and why).")
def predict(store, runs, tta, out, batch_size, workers, device, thresholds_file, probs_file, ratio_on, crops,
            crop_mode, crop_reduce, decode):
    """Write a Kaggle submission (Id,Predicted) from one or more runs, with TTA and thresholds.

    A cross-validation folder (train --fold all) stands for its folds, averaged, with the
    thresholds chosen on its out-of-fold table."""
    from ..model.inference import predict as run_predict
    from ..model.submission import write_submission

    from ..model.probs_table import write_probs

    writable_file(out, "--out")
    if probs_file is not None:
        writable_file(probs_file, "--probs")
    with progress_bar("predict", unit="batch") as bar:
        ids, probs, labels = run_predict(store, list(runs), tta=tta, batch_size=batch_size, workers=workers,
                                         device=device, progress=bar, thresholds=thresholds_file,
                                         ratio_on=ratio_on, crops=crops, crop_mode=crop_mode, crop_reduce=crop_reduce,
                                         decode=decode)
    write_submission(out, ids, labels)
    if probs_file is not None:
        write_probs(probs_file, ids, probs)
    click.echo(f"predict: {len(ids)} rows, {labels.sum(1).mean():.2f} labels per row -> {out}")


@click.command(short_help="Thresholds from the out-of-fold tables of fold runs.")
@recipe_option
@click.option("--run", "runs", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              required=True, help="Fold run folder (train --fold k, each with its oof.csv); repeat for each fold.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=STRATEGIES[0], show_default=True,
              help="f1: per class, maximise F1; ratio: predict each class for its share of the labels; fixed: 0.5.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Factor on the f1 strategy's thresholds.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="thresholds.json to write (for predict --thresholds).")
@click.option("--oof", "oof_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the combined out-of-fold table.")
def thresholds(runs, strategy, scale, out, oof_file):
    """Combine the out-of-fold tables of fold runs trained apart (one per GPU or machine), choose
    thresholds on the whole and report each strategy's out-of-fold macro F1."""
    from ..contract.atomic import write_json
    from ..model.cross_validation import combine_runs

    writable_file(out, "--out")
    result = combine_runs(list(runs), strategy, scale)
    write_json(out, result)
    if oof_file is not None:
        from ..model.cross_validation import combined_table
        from ..model.probs_table import write_probs

        write_probs(oof_file, *combined_table(list(runs)))
    for name, scores in result["strategies"].items():
        click.echo(f"  {name:<6} out-of-fold macro F1 {scores['macro_f1_crossfit']:.4f} cross-fitted, "
                   f"{scores['macro_f1_in_sample']:.4f} in sample")
    click.echo(f"thresholds: {result['strategy']} over {result['n_samples']} samples of folds {result['folds']} "
               f"(of {result['n_folds']}) -> {out}")


@click.command(short_help="Macro F1 and per-class table of a submission.")
@recipe_option
@click.option("--submission", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Id,Predicted CSV to score (from predict); with --thresholds, a probability table (oof.csv of "
                   "a cross-validation, or predict --probs).")
@click.option("--thresholds", "thresholds_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="thresholds.json that labels a probability table given as --submission.")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Id,Target CSV of the truth (train.csv, or test_labels.csv of synthetic data).")
def evaluate(submission, labels_csv, thresholds_file):
    """Macro F1 of a submission and the per-class table."""
    from ..model.submission import constant_baseline, evaluate as run_evaluate

    score, table = run_evaluate(submission, labels_csv, thresholds_file)
    click.echo(table)
    click.echo(f"evaluate: macro F1 {score:.4f} (constant most-frequent-class predictor: "
               f"{constant_baseline(labels_csv):.4f})")
