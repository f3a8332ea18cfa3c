"""Cross-validation as one workflow: every fold in one command (resumable as a whole), the
out-of-fold table with every training id once, thresholds chosen on it by each strategy, folds
trained apart and combined, and predict from a cross-validation folder."""
import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import hpa_pipeline.model.train as train_module
from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.metrics import macro_f1, predict_labels
from hpa_pipeline.model.probs_table import read_probs
from hpa_pipeline.model.run_folder import RunError
from hpa_pipeline.model.thresholds import choose_thresholds, ratio_thresholds
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.prep.synth import SynthSpec, make_dataset

pytestmark = pytest.mark.integration  # whole training runs


@pytest.fixture(scope="module")
def stores(train_and_test_stores):
    return train_and_test_stores  # conftest.py: shared with the run-folder tests


def _train(stores, out, fold="all", *extra):
    _, tmp = stores
    return ["train", "--store", str(tmp / "train.zarr"), "--out", str(out), "--arch", "se_resnet_tiny", "--level",
            "64", "--crop", "48", "--folds", "3", "--fold", str(fold), "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--steps-per-epoch", "1", "--weights", "none", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def cv_run(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("cvrun") / "cv"
    result = CliRunner().invoke(cli, _train(stores, out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_fold_all_trains_every_fold_and_writes_the_out_of_fold_table(stores, cv_run):
    d, tmp = stores
    out, output = cv_run
    assert [p.name for p in sorted(out.glob("fold*")) if p.is_dir()] == ["fold0", "fold1", "fold2"]
    ids, probs = read_probs(out / "oof.csv")
    train_ids = [r["Id"] for r in csv.DictReader(d.train_csv.open())]
    assert sorted(ids) == sorted(train_ids) and len(ids) == len(set(ids))  # every training id exactly once
    assert probs.shape == (40, 28) and ((probs >= 0) & (probs <= 1)).all()
    folds = {r["Id"]: int(r["fold"]) for r in csv.DictReader((out / "folds.csv").open())}
    for k in range(3):  # each row comes from the fold that did not train on it
        fold_ids, fold_probs = read_probs(out / f"fold{k}" / "oof.csv")
        assert {folds[i] for i in fold_ids} == {k}
        assert np.allclose(probs[[ids.index(i) for i in fold_ids]], fold_probs)
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert len(thresholds["thresholds"]) == 28 and thresholds["strategy"] == "f1"
    assert set(thresholds["strategies"]) == {"f1", "ratio", "fixed"}
    assert f"out-of-fold macro F1 {thresholds['oof_macro_f1_crossfit']:.4f} (cross-fitted" in output
    assert json.loads((out / "cv.json").read_text())["runs"] == ["fold0", "fold1", "fold2"]


def interrupt_in_fold_1(monkeypatch) -> None:
    """Ctrl-C once fold 1 has written its epoch: fold 0 is finished, fold 1 is not."""
    calls = {"n": 0}

    def crash(name):
        if name == "after_last":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fault_point", crash)


def test_fold_all_resumes_at_the_fold_where_it_stopped(stores, tmp_path, monkeypatch):
    out = tmp_path / "cv"
    interrupt_in_fold_1(monkeypatch)
    result = CliRunner().invoke(cli, _train(stores, out))
    assert result.exit_code != 0  # Ctrl-C (the CLI runner reports it as an abort)
    monkeypatch.undo()
    assert (out / "fold0" / "oof.csv").exists() and not (out / "fold1" / "oof.csv").exists()
    kept = (out / "fold0" / "oof.csv").read_bytes()
    again = CliRunner().invoke(cli, _train(stores, out, "all", "--resume"))
    assert again.exit_code == 0, again.output
    assert "fold 1/3: finished, kept" in again.output
    assert (out / "fold0" / "oof.csv").read_bytes() == kept
    assert len(read_probs(out / "oof.csv")[0]) == 40
    fresh = CliRunner().invoke(cli, _train(stores, out))
    assert fresh.exit_code == 1 and "already holds a cross-validation; continue it with --resume" in fresh.output


def _without(args: list[str], option: str) -> list[str]:
    k = args.index(option)
    return args[:k] + args[k + 2:]


def test_a_first_run_that_fails_before_training_blocks_nothing(stores, tmp_path):
    """Weights that cannot be had stop the first run before any epoch: the corrected command
    then runs, with or without --resume, instead of being held to what the failed run saved."""
    for extra in ([], ["--resume"]):
        out = tmp_path / f"cv{len(extra)}"
        args = _without(_train(stores, out), "--weights")
        failed = CliRunner().invoke(cli, [*args, "--weights", str(tmp_path / "missing.pth")])
        assert failed.exit_code == 1 and "missing.pth" in failed.output, failed.output
        fixed = CliRunner().invoke(cli, [*args, "--weights", "none", *extra])
        assert fixed.exit_code == 0, fixed.output
        assert len(read_probs(out / "oof.csv")[0]) == 40


def test_an_interrupted_cross_validation_says_what_it_keeps_and_resumes_without_fold_all(stores, tmp_path,
                                                                                         monkeypatch):
    out = tmp_path / "cv"
    interrupt_in_fold_1(monkeypatch)
    result = CliRunner().invoke(cli, _train(stores, out), standalone_mode=False)
    monkeypatch.undo()
    said = str(result.exception.__context__)  # what hpa-pipe prints on Ctrl-C
    assert f"{out} keeps its work (fold(s) 1 of 3 finished and kept; fold 2:" in said, said
    again = CliRunner().invoke(cli, [*_without(_train(stores, out), "--fold"), "--resume"])
    assert again.exit_code == 0, again.output
    assert "fold 1/3: finished, kept" in again.output and (out / "cv.json").exists()


def test_options_from_a_recipe_are_named_as_the_recipe_s_on_resume(stores, tmp_path):
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _train(stores, out, 0)).exit_code == 0
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  seed: 5\n")
    result = CliRunner().invoke(cli, ["--config", str(recipe), *_train(stores, out, 0), "--resume"])
    assert result.exit_code == 1 and "--seed: saved 0, the recipe's 5" in result.output, result.output


def test_folds_trained_apart_combine_as_one_cross_validation(stores, cv_run, tmp_path):
    out, _ = cv_run
    apart = []
    for k in range(3):  # the same folds, trained one by one (as on three machines)
        run = tmp_path / f"run{k}"
        shutil.copytree(out / f"fold{k}", run)
        apart.append(run)
    result = CliRunner().invoke(cli, ["thresholds", *sum((["--run", str(r)] for r in apart), []), "--strategy",
                                      "ratio", "--out", str(tmp_path / "t.json"), "--oof", str(tmp_path / "oof.csv")])
    assert result.exit_code == 0, result.output
    assert read_probs(tmp_path / "oof.csv")[0] == read_probs(out / "oof.csv")[0]
    assert np.allclose(read_probs(tmp_path / "oof.csv")[1], read_probs(out / "oof.csv")[1])
    assert json.loads((tmp_path / "t.json").read_text())["strategy"] == "ratio"
    twice = CliRunner().invoke(cli, ["thresholds", "--run", str(apart[0]), "--run", str(out / "fold0"),
                                     "--out", str(tmp_path / "u.json")])
    assert twice.exit_code == 1 and "validate the same fold" in twice.output
    other = tmp_path / "other"
    shutil.copytree(apart[1], other)
    rows = (other / "folds.csv").read_text().splitlines()
    rows[1] = rows[1][:-1] + ("0" if not rows[1].endswith("0") else "1")
    (other / "folds.csv").write_text("\n".join(rows) + "\n")
    disagree = CliRunner().invoke(cli, ["thresholds", "--run", str(apart[0]), "--run", str(other),
                                        "--out", str(tmp_path / "v.json")])
    assert disagree.exit_code == 1 and "folds differ" in disagree.output


def test_out_of_fold_tables_hold_each_validation_sample_once(stores, cv_run, tmp_path):
    """A fold's oof.csv with a repeated id, another fold's id or an id of no store: one line
    naming that file, never a macro F1 over the wrong samples."""
    out, _ = cv_run
    lines = (out / "fold1" / "oof.csv").read_text().splitlines()
    other_fold = (out / "fold0" / "oof.csv").read_text().splitlines()[1]
    for k, (rows, says) in enumerate([(lines + [lines[1]], "appears a second time"),
                                      (lines + [other_fold], "is not in fold 1's validation samples"),
                                      (lines + ["stranger" + lines[1][lines[1].index(","):]], "is not in the store")]):
        apart = tmp_path / f"case{k}"
        for fold in range(3):
            shutil.copytree(out / f"fold{fold}", apart / f"fold{fold}")
        (apart / "fold1" / "oof.csv").write_text("\n".join(rows) + "\n")
        result = CliRunner().invoke(cli, ["thresholds", *sum((["--run", str(apart / f"fold{f}")] for f in range(3)),
                                                             []), "--out", str(tmp_path / "t.json")])
        assert result.exit_code == 1 and says in result.output and str(apart / "fold1" / "oof.csv") in result.output, \
            result.output


def test_a_cross_validation_record_names_each_fold_folder_once_inside_it(stores, cv_run, tmp_path):
    """predict follows cv.json's runs: twice the same fold, or a folder outside, is refused."""
    out, _ = cv_run
    _, tmp = stores
    stranger = tmp_path / "stranger"
    shutil.copytree(out / "fold0", stranger)
    for k, (runs, says) in enumerate([(["fold0", "fold0", "fold2"], "a run is named twice"),
                                      (["fold0", "fold1", "../stranger"], "is not a folder inside"),
                                      (["fold0", "fold1", "fold9"], "no such folder")]):
        cv = tmp_path / f"cv{k}"
        shutil.copytree(out, cv)
        record = json.loads((cv / "cv.json").read_text())
        (cv / "cv.json").write_text(json.dumps({**record, "runs": runs}))
        result = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(cv), "--out",
                                          str(tmp_path / "s.csv"), "--workers", "0", "--device", "cpu"])
        assert result.exit_code == 1 and says in result.output and "cv.json" in result.output, result.output
        assert not (tmp_path / "s.csv").exists()


def test_evaluate_refuses_a_table_with_an_id_twice_and_another_missing(stores, cv_run, tmp_path):
    d, _ = stores
    out, _ = cv_run
    lines = (out / "oof.csv").read_text().splitlines()
    (tmp_path / "probs.csv").write_text("\n".join(lines[:-1] + [lines[1]]) + "\n")
    result = CliRunner().invoke(cli, ["evaluate", "--submission", str(tmp_path / "probs.csv"), "--labels",
                                      str(d.train_csv), "--thresholds", str(out / "thresholds.json")])
    assert result.exit_code == 1 and "appears a second time" in result.output, result.output
    rows = ["Id,Predicted", *[f"{line.split(',')[0]},0" for line in lines[1:]]]
    (tmp_path / "sub.csv").write_text("\n".join(rows[:-1] + [rows[1]]) + "\n")
    result = CliRunner().invoke(cli, ["evaluate", "--submission", str(tmp_path / "sub.csv"), "--labels",
                                      str(d.train_csv)])
    assert result.exit_code == 1 and "duplicate id" in result.output, result.output


def test_predict_decode_gpu_on_a_machine_without_one_is_one_line(stores, cv_run, tmp_path):
    _, tmp = stores
    out, _ = cv_run
    result = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(out), "--device",
                                      "cpu", "--decode", "gpu", "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "--decode gpu: predict runs on cpu, not a GPU" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s.csv").exists()
    on_cpu = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(out), "--device",
                                      "cpu", "--decode", "cpu", "--workers", "0", "--out", str(tmp_path / "c.csv")])
    assert on_cpu.exit_code == 0 and "decoding in the loader workers on the CPU (--decode cpu)" in on_cpu.output


def test_predict_from_a_cross_validation_folder_averages_its_folds(stores, cv_run, tmp_path):
    _, tmp = stores
    out, _ = cv_run
    args = ["predict", "--store", str(tmp / "test.zarr"), "--workers", "0", "--device", "cpu"]
    cv = CliRunner().invoke(cli, args + ["--run", str(out), "--out", str(tmp_path / "cv.csv"),
                                         "--probs", str(tmp_path / "probs.csv")])
    assert cv.exit_code == 0, cv.output
    folds = CliRunner().invoke(cli, args + sum((["--run", str(out / f"fold{k}")] for k in range(3)), [])
                               + ["--out", str(tmp_path / "folds.csv"), "--probs", str(tmp_path / "probs3.csv")])
    assert folds.exit_code == 0
    ids, probs = read_probs(tmp_path / "probs.csv")
    assert np.allclose(probs, read_probs(tmp_path / "probs3.csv")[1]) and len(ids) == 8
    chosen = np.array(json.loads((out / "thresholds.json").read_text())["thresholds"])
    expected = predict_labels(probs, chosen)
    rows = list(csv.DictReader((tmp_path / "cv.csv").open()))
    assert [sorted(map(int, r["Predicted"].split())) for r in rows] == [np.flatnonzero(e).tolist() for e in expected]
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"thresholds": [0.99] * 28}))
    override = CliRunner().invoke(cli, args + ["--run", str(out), "--out", str(tmp_path / "o.csv"), "--thresholds",
                                               str(fixed)])
    assert override.exit_code == 0
    rows = list(csv.DictReader((tmp_path / "o.csv").open()))
    assert all(len(r["Predicted"].split()) == 1 for r in rows)  # only the empty-row rule's top class


def test_each_threshold_strategy_on_a_hand_made_table():
    truth = np.zeros((8, 28), bool)
    truth[:4, 0] = True  # class 0: half the rows
    truth[:2, 1] = True  # class 1: a quarter
    probs = np.full((8, 28), 0.01)
    probs[:, 0] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    probs[:, 1] = [0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25]
    ratio = ratio_thresholds(truth, probs)
    assert (probs[:, 0] > ratio[0]).sum() == 4 and (probs[:, 1] > ratio[1]).sum() == 2
    assert ratio[5] == 1.0  # a class without positives is never predicted but by the empty-row rule
    f1 = choose_thresholds(truth, probs, "f1")
    assert macro_f1(truth, predict_labels(probs, np.array(f1["thresholds"]))) == pytest.approx(f1["oof_macro_f1"])
    # searched on the table, f1 is at least as good there as any other strategy
    assert f1["oof_macro_f1"] >= max(v["macro_f1_in_sample"] for v in f1["strategies"].values()) - 1e-12
    assert choose_thresholds(truth, probs, "fixed")["thresholds"] == [0.5] * 28
    scaled = choose_thresholds(truth, probs, "f1", scale=0.5)["thresholds"]
    assert np.allclose(scaled, np.array(f1["thresholds"]) * 0.5)
    for scores in f1["strategies"].values():
        assert 0 <= scores["macro_f1_crossfit"] <= 1


def test_ratio_is_matched_again_on_the_predicted_set():
    """Averaging folds shrinks test probabilities: thresholds fixed on the out-of-fold table then
    predict each class for far less than its share; matched on the predicted set, each class
    gets its training share again."""
    from hpa_pipeline.model.thresholds import rematched

    rng = np.random.default_rng(0)
    shares = np.full(28, 0.1)
    oof = rng.random((2000, 28))
    record = {"thresholds": ratio_thresholds(None, oof, shares), "strategy": "ratio", "shares": shares.tolist()}
    test = rng.random((1000, 28)) * 0.6  # shrunk, as an average of folds is
    fixed, said_fixed = rematched(record, test, "oof")
    again, said = rematched(record, test)
    assert (test > fixed).mean(axis=0).max() < 0.02  # the fixed thresholds predict almost nothing
    assert np.allclose((test > again).mean(axis=0), shares, atol=0.002)
    assert "matched on the 1000 predicted samples" in said and "as chosen" in said_fixed
    f1_record = {**record, "strategy": "f1"}
    assert np.array_equal(rematched(f1_record, test)[0], record["thresholds"])  # only ratio is matched


def test_the_cross_fitted_ratio_takes_its_shares_from_the_choosing_half():
    """The cross-fitted figure must not let the scored half's own labels move its thresholds:
    it is the same whatever shares (of all training labels) the in-sample choice is given."""
    from hpa_pipeline.model.metrics import crossfit_macro_f1

    rng = np.random.default_rng(1)
    truth = rng.random((300, 28)) < 0.1
    probs = np.clip(truth * 0.3 + rng.random((300, 28)) * 0.6, 0, 1)
    a = choose_thresholds(truth, probs, "ratio", shares=np.full(28, 0.05))
    b = choose_thresholds(truth, probs, "ratio", shares=np.full(28, 0.3))
    assert a["oof_macro_f1_crossfit"] == b["oof_macro_f1_crossfit"]
    assert a["oof_macro_f1_crossfit"] == crossfit_macro_f1(truth, probs, 0, lambda t, p: ratio_thresholds(t, p))
    assert a["shares"] == [0.05] * 28  # kept for predict to match on the test set


def test_a_single_fold_run_chooses_its_thresholds_by_its_strategy(stores, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, _train(stores, run, 0, "--threshold-strategy", "ratio"))
    assert result.exit_code == 0, result.output
    record = json.loads((run / "thresholds.json").read_text())
    assert record["strategy"] == "ratio" and len(record["shares"]) == 28
    ids, probs = read_probs(run / "oof.csv")
    assert record["thresholds"] != choose_thresholds(np.zeros((len(ids), 28), bool), probs, "f1")["thresholds"]
    scaled = CliRunner().invoke(cli, _train(stores, tmp_path / "scaled", 0, "--threshold-scale", "0.5"))
    assert scaled.exit_code == 0
    halved = json.loads((tmp_path / "scaled" / "thresholds.json").read_text())
    assert halved["strategy"] == "f1" and halved["scale"] == 0.5 and max(halved["thresholds"]) <= 0.5


def test_test_time_crops_make_the_out_of_fold_table_and_predict(stores, tmp_path):
    """--tta-crops: the out-of-fold table is made from crops (not whole images); predict takes
    the run's crops by default and others on request; the package says how to feed it."""
    _, tmp = stores
    whole, cropped = tmp_path / "whole", tmp_path / "cropped"
    assert CliRunner().invoke(cli, _train(stores, whole, 0)).exit_code == 0
    result = CliRunner().invoke(cli, _train(stores, cropped, 0, "--tta-crops", "4", "--tta-crop-reduce", "max"))
    assert result.exit_code == 0, result.output
    ids, by_crops = read_probs(cropped / "oof.csv")
    assert read_probs(whole / "oof.csv")[0] == ids and not np.allclose(read_probs(whole / "oof.csv")[1], by_crops)
    outputs = {}
    for name, extra in (("own", []), ("mean", ["--crop-reduce", "mean"]), ("none", ["--crops", "0"])):
        out = tmp_path / f"{name}.csv"
        predicted = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(cropped),
                                             "--out", str(out), "--probs", str(tmp_path / f"{name}_p.csv"),
                                             "--workers", "0", "--device", "cpu", *extra])
        assert predicted.exit_code == 0, predicted.output
        outputs[name] = read_probs(tmp_path / f"{name}_p.csv")[1]
    assert (outputs["own"] >= outputs["mean"] - 1e-6).all() and not np.allclose(outputs["own"], outputs["mean"])
    assert not np.allclose(outputs["none"], outputs["mean"])
    bad = CliRunner().invoke(cli, _train(stores, tmp_path / "bad", 0, "--tta-crops", "3"))
    assert bad.exit_code == 2 and "square grid" in bad.output


def test_a_cross_validation_says_its_result_once_and_starts_its_folds_as_new_runs(stores, tmp_path):
    """The terminal of `make train-cv` (which always passes --resume) on a fresh folder: each
    fold is announced as a new run, and the out-of-fold result is one line."""
    result = CliRunner().invoke(cli, [*_train(stores, tmp_path / "cv"), "--resume"])
    assert result.exit_code == 0, result.output
    assert "no finished epoch" not in result.output and "new run in" in result.output
    assert result.output.count("out-of-fold macro F1") == 1 and "over 40 samples" in result.output
    assert result.output.startswith("train: loading PyTorch")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, sizes", [("hpa2018-1st", ["--level", "64", "--crop", "48", "--tta-crops", "4",
                                                            "--batch-size", "8"]),
                                           ("hpa2018-3rd", ["--level", "128", "--crop", "128", "--swa-epochs", "1",
                                                            "--batch-size", "4", "--accumulate", "1"])])
def test_the_winners_recipes_train_and_predict_as_written(stores, tmp_path, recipe, sizes):
    """Each winner's recipe, its backbone, head, loss, external data, test-time rule and
    thresholds as written, only shrunk to this machine (sizes, one short epoch, no weights)."""
    from pathlib import Path

    d, tmp = stores
    external = tmp_path / "external.zarr"
    other = make_dataset(tmp_path / "other", SynthSpec(n_train=8, n_test=1, image_sizes=(256,), seed=77), workers=1)
    assert ingest(other.train_archive, other.train_csv, external, StoreSpec(size=128, levels=2, chunk=64)).exit_code == 0
    config = str(Path(__file__).resolve().parents[1] / "pipelines" / f"{recipe}.yaml")
    small = ["--store", str(tmp / "train.zarr"), "--out", str(tmp_path / "cv"), "--external", str(external), *sizes,
             "--folds", "3", "--epochs", "1", "--steps-per-epoch", "1", "--weights", "none", "--device", "cpu",
             "--workers", "0", "--amp", "none", "--tta", "2"]
    trained = CliRunner().invoke(cli, ["--config", config, "train", *small])
    assert trained.exit_code == 0, trained.output
    predicted = CliRunner().invoke(cli, ["--config", config, "predict", "--store", str(tmp / "test.zarr"), "--run",
                                         str(tmp_path / "cv"), "--out", str(tmp_path / "sub.csv"), "--workers", "0",
                                         "--device", "cpu", "--tta", "2"])
    assert predicted.exit_code == 0 and "ratio, matched on the" in predicted.output, predicted.output


def test_a_fold_run_writes_its_own_out_of_fold_table(stores, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, _train(stores, run, 1, "--tta", "2"))
    assert result.exit_code == 0, result.output
    ids, probs = read_probs(run / "oof.csv")
    folds = {r["Id"]: int(r["fold"]) for r in csv.DictReader((run / "folds.csv").open())}
    assert ids and {folds[i] for i in ids} == {1}
    assert len(ids) == sum(1 for f in folds.values() if f == 1)
    with pytest.raises(RunError, match="no such probability table"):
        read_probs(tmp_path / "missing.csv")


def test_evaluate_scores_the_out_of_fold_table_with_its_thresholds(stores, cv_run):
    d, _ = stores
    out, _ = cv_run
    result = CliRunner().invoke(cli, ["evaluate", "--submission", str(out / "oof.csv"), "--thresholds",
                                      str(out / "thresholds.json"), "--labels", str(d.train_csv)])
    assert result.exit_code == 0, result.output
    in_sample = json.loads((out / "thresholds.json").read_text())["oof_macro_f1"]
    assert f"evaluate: macro F1 {in_sample:.4f}" in result.output
