"""Training runs: every number a run reports is right, a run resumes
exactly, and a failed command leaves the run folder as it was."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import hpa_pipeline.model.train as train_module
from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.data import StoreDataset, make_loader
from hpa_pipeline.model.inference import load_run, predict, predict_probs
from hpa_pipeline.model.losses import MultilabelLoss, make_loss
from hpa_pipeline.model.metrics import crossfit_macro_f1, macro_f1, per_class_f1, predict_labels, search_thresholds
from hpa_pipeline.model.models import ModelError, create_model, find_cached_weights
from hpa_pipeline.model.run_folder import RunError
from hpa_pipeline.model.train import TrainConfig, TrainingDiverged, train
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.prep.synth import SynthSpec, make_dataset


@pytest.fixture(scope="module")
def data(train_and_test_stores):
    return train_and_test_stores  # conftest.py: shared with the cross-validation tests


def config(data, out, **overrides):
    _, tmp = data
    values = dict(store=str(tmp / "train.zarr"), out=str(out), arch="se_resnet_tiny", level=64, crop=48, folds=4,
                  fold=0, epochs=3, batch_size=8, lr=2e-3, warmup_epochs=0.5, workers=0, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train(config(data, run, epochs=2))
    return run


def snapshot(run):
    """Every file of a run folder and its bytes."""
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# --- numbers ---------------------------------------------------------------------------------------

@pytest.mark.integration  # training runs
def test_predict_normalises_with_the_training_statistics_not_the_test_stores(data, finished_run, tmp_path):
    d, tmp = data
    ids = [line.split(",")[0] for line in d.sample_submission.read_text().splitlines()[1:]]
    few = tmp_path / "few.csv"
    few.write_text("Id,Predicted\n" + "".join(f"{i},0\n" for i in ids[:2]))
    other = tmp_path / "few.zarr"
    ingest(d.test_archive, few, other, StoreSpec(size=128, levels=2, chunk=64))
    all_ids, all_probs, _ = predict(tmp / "test.zarr", [finished_run], workers=0, device="cpu")
    few_ids, few_probs, _ = predict(other, [finished_run], workers=0, device="cpu")
    assert few_ids == all_ids[:2]
    np.testing.assert_allclose(few_probs, all_probs[:2], rtol=0, atol=1e-6)
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())["normalization"]
    store_stats = json.loads((tmp / "train.zarr" / "zarr.json").read_text())["attributes"]["hpa"]["statistics"]["64"]
    assert saved["level"] == 64 and saved["mean"] == store_stats["mean"]
    assert torch.load(finished_run / "checkpoints" / "best.pt", weights_only=True)["normalization"] == saved


def test_validation_and_predict_use_the_training_level_by_default(data, finished_run, monkeypatch):
    _, tmp = data
    assert json.loads((finished_run / "thresholds.json").read_text())["level"] == 64
    levels = []
    real_init = StoreDataset.__init__

    def spy(self, store, level, *args, **kwargs):
        levels.append(level)
        real_init(self, store, level, *args, **kwargs)

    monkeypatch.setattr(StoreDataset, "__init__", spy)
    predict(tmp / "test.zarr", [finished_run], workers=0, device="cpu")
    assert levels == [64]  # the store has 128 and 64; the run trained on 64
    recipe = yaml.safe_load(open("pipelines/train.yaml"))["train"]
    assert recipe.get("val_level") in (None, recipe["level"])


def test_threshold_search_applies_the_empty_row_rule():
    """Class 0's low-probability positives are recovered by the empty-row rule, so its threshold
    can exclude the negatives at 0.3; a search that ignores the rule keeps it below 0.2."""
    probs = np.full((30, 28), 0.01)
    truth = np.zeros((30, 28), bool)
    probs[:10, 0], truth[:10, 0] = 0.2, True  # positives only the fallback finds
    probs[10:20, 0], probs[10:20, 1], truth[10:20, 1] = 0.3, 0.9, True  # negatives of class 0
    probs[20:, 0], truth[20:, 0] = 0.8, True
    t = search_thresholds(truth, probs)
    assert t[0] >= 0.3
    assert per_class_f1(truth, predict_labels(probs, t))[:2].tolist() == [1.0, 1.0]


def test_crossfit_f1_is_out_of_sample_and_below_the_in_sample_figure_on_noise():
    rng = np.random.default_rng(0)
    truth = rng.random((400, 28)) < 0.05
    probs = rng.random((400, 28))  # no signal: tuning can only fit noise
    in_sample = macro_f1(truth, predict_labels(probs, search_thresholds(truth, probs)))
    chance = macro_f1(truth, np.ones_like(truth))  # labelling everything: the best noise allows
    crossfit = crossfit_macro_f1(truth, probs)
    assert in_sample > chance + 0.02  # the in-sample search "finds" signal in noise
    assert crossfit < in_sample - 0.02 and crossfit < chance + 0.005


def test_metrics_name_the_in_sample_figure(finished_run):
    header = (finished_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"valid_macro_f1", "valid_macro_f1_tuned_crossfit", "valid_macro_f1_tuned_in_sample"} <= set(header)
    assert "valid_macro_f1_tuned" not in header
    # honest speed figures: steady-state images/s apart from the epoch's other times
    assert {"train_img_s", "train_s", "valid_s", "checkpoint_s", "startup_s"} <= set(header)


def test_plots_label_one_loss_and_mark_classes_without_validation_samples(finished_run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpa_pipeline.model.train import plot_run
    from hpa_pipeline.model.run_folder import RunFolder

    shown = []
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        shown.append(fig)
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        plot_run(RunFolder(finished_run))
    finally:
        plt.Figure.savefig = real_savefig
    curves, per_class = shown
    loss_axis = curves.axes[0]
    assert "same function" in loss_axis.get_title() and loss_axis.get_ylabel() == "training loss function"
    assert all(float(t).is_integer() for t in loss_axis.get_xticks())
    support = json.loads((finished_run / "thresholds.json").read_text())["support"]
    texts = [t.get_text() for t in per_class.axes[0].texts]
    assert texts.count("no validation samples") == sum(1 for s in support if s == 0) > 0


def test_focal_loss_with_class_weighting_matches_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    weight = np.array([3.0, 0.5, 2.0], np.float32)
    x, y = logits.numpy().astype(np.float64), targets.numpy()
    p = 1 / (1 + np.exp(-x))
    p_t = np.where(y == 1, p, 1 - p)
    expected = (np.where(y == 1, weight, 1.0) * (1 - p_t) ** 2 * -np.log(p_t)).mean()
    got = MultilabelLoss("focal", 2.0, weight)(logits, targets)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    bce = (np.where(y == 1, weight, 1.0) * -np.log(p_t)).mean()
    assert float(MultilabelLoss("bce", 2.0, weight)(logits, targets)) == pytest.approx(bce, rel=1e-5)


def _naive_lovasz_hinge(logits: np.ndarray, truth: np.ndarray) -> float:
    """Berman et al.'s definition, written from sets: the Lovász extension of the Jaccard loss
    Delta(M) = 1 - |gt minus M| / |gt union M| (M: the mispredicted elements) at the hinge errors."""
    errors = 1.0 - logits * (2.0 * truth - 1.0)
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    gt = {i for i in range(len(truth)) if truth[i]}

    def delta(mispredicted: set) -> float:
        union = gt | mispredicted
        return 1.0 - len(gt - mispredicted) / len(union) if union else 0.0

    total, chosen = 0.0, set()
    for i in order:
        before = delta(chosen)
        chosen.add(i)
        total += max(errors[i], 0.0) * (delta(chosen) - before)
    return total


def test_each_loss_term_matches_an_independent_implementation():
    """Focal with alpha (Lin et al.'s formula), the Lovász hinge per image and over the batch
    (from its set definition), the hard-example log loss (numpy's top k), and their sum."""
    rng = np.random.default_rng(4)
    logits = torch.tensor(rng.normal(0, 2, (5, 28)), dtype=torch.float32)
    targets = torch.tensor(rng.random((5, 28)) < 0.2, dtype=torch.float32)
    x, y = logits.numpy().astype(np.float64), targets.numpy()
    p = 1 / (1 + np.exp(-x))
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, 0.25, 0.75)
    focal = (alpha_t * (1 - p_t) ** 2 * -np.log(p_t)).mean()
    assert float(MultilabelLoss("focal", 2.0, alpha=0.25)(logits, targets)) == pytest.approx(focal, rel=1e-5)
    batch = _naive_lovasz_hinge(x.reshape(-1), y.reshape(-1))
    per_image = np.mean([_naive_lovasz_hinge(a, b) for a, b in zip(x, y)])
    assert float(MultilabelLoss("lovasz")(logits, targets)) == pytest.approx(batch, rel=1e-5)
    assert float(MultilabelLoss("lovasz", lovasz="image")(logits, targets)) == pytest.approx(per_image, rel=1e-5)
    bce = -np.log(p_t).reshape(-1)
    hard = np.sort(bce)[::-1][:int(np.ceil(0.1 * bce.size))].mean()
    assert float(MultilabelLoss("hard", hard_fraction=0.1)(logits, targets)) == pytest.approx(hard, rel=1e-5)
    combined = MultilabelLoss("focal+lovasz+hard", alpha=0.25, lovasz="image")(logits, targets)
    assert float(combined) == pytest.approx(focal + per_image + hard, rel=1e-5)


@pytest.mark.integration  # training runs
def test_first_places_loss_trains(data, tmp_path):
    summary = train(config(data, tmp_path / "run", epochs=1, steps_per_epoch=2, loss="focal+lovasz+hard",
                           focal_alpha=0.25, lovasz="image"))
    assert np.isfinite(summary["train_loss"]) and np.isfinite(summary["valid_loss"])


def test_validation_loss_is_the_training_loss(data, tmp_path):
    _, tmp = data
    run = tmp_path / "run"
    cfg = config(data, run, epochs=1, loss="focal", class_weighting=True)
    train(cfg)
    row = next(csv.DictReader((run / "metrics.csv").open()))
    trained = load_run(run, torch.device("cpu"))
    folds = np.array([int(r["fold"]) for r in csv.DictReader((run / "folds.csv").open())])
    labels = StoreDataset(str(tmp / "train.zarr"), 64, []).labels
    loss_fn = make_loss("focal", 2.0, True, labels[folds != 0])
    loader = make_loader(StoreDataset(str(tmp / "train.zarr"), 64, np.flatnonzero(folds == 0)), 8, 0)
    _, _, loss = predict_probs(trained.model, loader, trained.normalizer(), torch.device("cpu"), loss_fn=loss_fn)
    assert float(row["valid_loss"]) == pytest.approx(loss, rel=1e-4)


# --- steering a run -------------------------------------------------------------------------------

def test_weights_none_and_scratch_mean_random_initialisation():
    for value in (None, "none", "scratch", "", "None"):
        assert create_model("se_resnet_tiny", weights=value).last_linear.out_features == 28


def test_weights_cache_finds_the_real_file_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    assert find_cached_weights("se_resnext50_32x4d") is None
    timm_file = tmp_path / "torch" / "hub" / "checkpoints" / "legacy_se_resnext50_32x4d-f3651bad.pth"
    timm_file.parent.mkdir(parents=True)
    timm_file.write_bytes(b"x")
    assert find_cached_weights("se_resnext50_32x4d") == timm_file
    repo = tmp_path / "hf" / "models--timm--legacy_seresnet50.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    assert find_cached_weights("se_resnet50") == repo / "snapshots" / "abc123" / "model.safetensors"


def test_weights_that_are_not_weights_are_a_clear_error(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("Id,Target\na,1\n")
    with pytest.raises(ModelError, match="labels.csv is not a PyTorch weights file"):
        create_model("se_resnet_tiny", weights=bad)


def test_weights_none_on_the_command_line_beats_a_recipe_with_cache(data, tmp_path):
    _, tmp = data
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  weights: cache\n  arch: se_resnet50\n")
    args = ["--config", str(recipe), "train", "--store", str(tmp / "train.zarr"), "--out", str(tmp_path / "run"),
            "--arch", "se_resnet_tiny", "--level", "64", "--crop", "48", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--steps-per-epoch", "1", "--weights", "none"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["weights"] == "none"


@pytest.mark.integration  # over a second: the fast tier has a minute
def test_both_backends_apply_the_same_dropout_in_training():
    a = create_model("se_resnet50", "timm", drop_rate=0.5)
    b = create_model("se_resnet50", "pretrainedmodels", drop_rate=0.5)
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    x = torch.randn(2, 4, 64, 64)
    torch.manual_seed(0)
    out_a = a(x)
    torch.manual_seed(0)
    out_b = b(x)
    torch.testing.assert_close(out_a, out_b)


@pytest.mark.integration
def test_a_resumed_run_of_an_earlier_version_gets_its_epochs_renumbered_from_one(data, tmp_path, monkeypatch):
    """metrics.csv once counted epochs from 0; resuming such a run leaves one numbering."""
    def crash(name):
        if name == "after_last":
            raise KeyboardInterrupt

    run = tmp_path / "run"
    monkeypatch.setattr(train_module, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, run))  # stops after the first epoch's checkpoint
    monkeypatch.undo()
    metrics = run / "metrics.csv"
    rows = list(csv.DictReader(metrics.open()))
    with metrics.open("w", newline="") as f:  # as the earlier version wrote it
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "epoch": str(int(r["epoch"]) - 1)} for r in rows)
    train(config(data, run), resume=True)
    assert [int(r["epoch"]) for r in csv.DictReader(metrics.open())] == [1, 2, 3]


@pytest.mark.integration
def test_resume_takes_the_saved_options_and_refuses_changed_ones(data, tmp_path, monkeypatch):
    _, tmp = data
    run = tmp_path / "run"

    def crash(name):
        if name == "after_last":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, run, ema=0.9))  # stops after epoch 0's checkpoint
    monkeypatch.undo()
    base = ["train", "--store", str(tmp / "train.zarr"), "--out", str(run), "--resume", "--workers", "0"]
    result = CliRunner().invoke(cli, base + ["--arch", "se_resnet50", "--ema", "0.5"])
    assert result.exit_code == 1
    assert "--arch: saved 'se_resnet_tiny', given 'se_resnet50'" in result.output
    assert "--ema: saved 0.9, given 0.5" in result.output
    result = CliRunner().invoke(cli, base)  # no options: the saved ones, EMA included
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "epoch 2/3" in result.output
    # the message's epoch 2 is metrics.csv's second row, numbered as the bar and the message number it
    assert [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())] == [1, 2, 3]
    assert "train epoch 2/3: " in result.output and "train epoch 1/3" not in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["ema"] == 0.9
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["average"] is not None


def test_a_failed_command_leaves_the_run_folder_as_it_was(data, finished_run):
    _, tmp = data
    before = snapshot(finished_run)
    store = str(tmp / "train.zarr")
    attempts = [
        (["--out", str(finished_run), "--level", "64", "--crop", "112"], "larger than --level 64"),
        (["--out", str(finished_run), "--fold", "7", "--folds", "5"], "--fold must be between 0 and"),
        (["--out", str(finished_run), "--resume", "--level", "32", "--crop", "32"], "--level: saved 64, given 32"),
        (["--out", str(finished_run.parent / "fresh"), "--level", "32", "--crop", "32"], "has no level 32"),
        (["--out", str(finished_run), "--arch", "se_resnet50"], "already holds a run"),
        (["--out", str(finished_run), "--weights", str(tmp / "missing.pth"), "--resume"], "--weights: saved"),
        (["--out", str(finished_run), "--resume", "--folds", "5"], "--folds: saved 4, given 5"),
    ]
    for extra, message in attempts:
        result = CliRunner().invoke(cli, ["train", "--store", store, "--arch", "se_resnet_tiny", "--folds", "4",
                                          "--level", "64", "--crop", "48", "--workers", "0", *extra])
        assert result.exit_code in (1, 2), (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    assert snapshot(finished_run) == before
    assert not (finished_run.parent / "fresh").exists()


@pytest.mark.integration  # training runs
def test_folds_of_a_run_that_never_finished_an_epoch_are_made_again(data, finished_run, tmp_path):
    """A first run that failed before its first epoch binds nothing: its folds.csv (4 folds)
    is made again for the options given now (5 folds); once an epoch is finished, folds.csv
    is the run's and a mismatch is an error."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "folds.csv").write_bytes((finished_run / "folds.csv").read_bytes())
    (other / "config.yaml").write_bytes((finished_run / "config.yaml").read_bytes())
    train(config(data, other, folds=5, epochs=1, steps_per_epoch=1))
    assert max(int(line.split(",")[1]) for line in (other / "folds.csv").read_text().splitlines()[1:]) == 4
    damaged = tmp_path / "damaged"
    shutil.copytree(finished_run, damaged)
    (damaged / "folds.csv").write_bytes((other / "folds.csv").read_bytes())
    with pytest.raises(RunError, match="made with --folds 5 --seed 0, not --folds 4 --seed 0"):
        train(config(data, damaged, epochs=2), resume=True)


def test_the_training_state_round_trips_every_generator(data, finished_run):
    state = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    cfg = config(data, finished_run)
    plan = train_module.plan_run(cfg, train_module.RunFolder(finished_run))
    data_of_run = train_module.make_data(cfg, plan, train_module.distributed.Ranks(), torch.device("cpu"))
    loaded = train_module.make_state(cfg, data_of_run.steps_per_epoch, torch.device("cpu"))
    loaded.load_state_dict(state)
    again = loaded.state_dict()
    assert again["epoch"] == state["epoch"] and again["step"] == state["step"]
    for key, value in state["model"].items():
        assert torch.equal(again["model"][key], value), key
    assert torch.equal(again["rng"]["torch"], state["rng"]["torch"])


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    train(config(data, run, steps_per_epoch=2))
    return run


@pytest.mark.integration
@pytest.mark.parametrize("point", ["after_best", "after_metrics", "after_last"])
def test_a_kill_at_each_write_point_resumes_to_the_uninterrupted_run(data, uninterrupted, tmp_path, monkeypatch,
                                                                     point):
    run = tmp_path / "run"
    calls = {"n": 0}

    def crash(name):
        if name == point:
            calls["n"] += 1
            if calls["n"] == 2:  # in epoch 1 of 3
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, run, steps_per_epoch=2))
    monkeypatch.undo()
    train(config(data, run, steps_per_epoch=2), resume=True)
    a = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6, msg=key)
    epochs = [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert epochs == [1, 2, 3]
    keep = ("train_loss", "valid_loss", "valid_macro_f1")
    rows = [[r[k] for k in keep] for r in csv.DictReader((run / "metrics.csv").open())]
    assert rows == [[r[k] for k in keep] for r in csv.DictReader((uninterrupted / "metrics.csv").open())]
    assert (run / "thresholds.json").read_text() == (uninterrupted / "thresholds.json").read_text()


# --- external data -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def external_store(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("external")
    d = make_dataset(tmp / "data", SynthSpec(n_train=16, n_test=1, image_sizes=(256,), seed=12), workers=2)
    assert ingest(d.train_archive, d.train_csv, tmp / "hpa_v18.zarr", StoreSpec(size=128, levels=2, chunk=64)).exit_code == 0
    return tmp / "hpa_v18.zarr"


@pytest.mark.integration
def test_external_samples_always_train_and_never_validate(data, external_store, tmp_path, monkeypatch):
    seen = []
    from hpa_pipeline.model.data import StoreDataset

    real = StoreDataset.fill

    def spy(self, item, out):
        result = real(self, item, out)
        seen.append((self.store, self.train))
        return result

    monkeypatch.setattr(StoreDataset, "fill", spy)
    run = tmp_path / "run"
    train(config(data, run, epochs=1, external=(str(external_store),), epoch_size=120))
    validated = {store for store, is_train in seen if not is_train}
    trained = {store for store, is_train in seen if is_train}
    assert validated == {config(data, run).store} and str(external_store) in trained
    folds = list(csv.DictReader((run / "folds.csv").open()))
    main_ids = [line.split(",")[0] for line in (data[0].train_csv).read_text().splitlines()[1:]]
    assert [r["Id"] for r in folds] == main_ids  # folds (and validation) are the competition's only
    n_valid = json.loads((run / "thresholds.json").read_text())["n_valid"]
    assert n_valid == sum(1 for r in folds if r["fold"] == "0")
    assert yaml.safe_load((run / "config.yaml").read_text())["external"] == [str(external_store)]


@pytest.mark.integration
def test_a_run_with_external_data_resumes_exactly(data, external_store, tmp_path, monkeypatch):
    options = dict(external=(str(external_store),), steps_per_epoch=2)
    train(config(data, tmp_path / "whole", **options))

    def crash(name):
        if name == "after_last":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "killed", **options))
    monkeypatch.undo()
    train(config(data, tmp_path / "killed", **options), resume=True)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_an_external_store_sharing_ids_with_the_main_one_is_refused(data, tmp_path):
    _, tmp = data
    with pytest.raises(RunError, match="shares .* id"):
        train(config(data, tmp_path / "run", external=(str(tmp / "train.zarr"),)))
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_compiled_training_saves_plain_weights_that_predict_reads(data, tmp_path):
    """``--compile`` (torch.compile of the model and loss, inductor on the CPU here) trains,
    validates and checkpoints; the checkpoint holds the plain model's names (no ``_orig_mod.``),
    so predict loads it without compiling anything, and the first epoch's loss agrees with
    eager training to compiled precision."""
    _, tmp = data
    eager = train(config(data, tmp_path / "eager", epochs=1))
    compiled = train(config(data, tmp_path / "compiled", epochs=1, compile=True))
    weights = torch.load(tmp_path / "compiled" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert not [k for k in weights["model"] if "_orig_mod" in k]
    assert weights["model"].keys() == torch.load(tmp_path / "eager" / "checkpoints" / "best.pt", map_location="cpu",
                                                 weights_only=True)["model"].keys()
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=0.05)
    ids, probs, _ = predict(tmp / "test.zarr", [tmp_path / "compiled"], workers=0, device="cpu")
    assert probs.shape == (len(ids), 28) and np.isfinite(probs).all()


def test_resume_of_a_folder_without_a_run_says_it_starts_a_new_one(data, tmp_path):
    """A mistyped --out with --resume must not look like a resume (make demo relies on --resume
    starting the run when there is none)."""
    _, tmp = data
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp / "train.zarr"), "--out", str(tmp_path / "typo"),
                                      "--resume", "--arch", "se_resnet_tiny", "--level", "64", "--crop", "48",
                                      "--folds", "4", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert f"--resume: no finished epoch in {tmp_path / 'typo'} yet; starting a new run there" in result.output


# --- run folders from someone else -----------------------------------------------------------------

class _RunsAShellCommand:
    """What a crafted checkpoint holds: unpickling it calls ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _crafted_copy(finished_run, tmp_path, name, payload):
    import shutil

    run = tmp_path / "shared_run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "checkpoints" / name, weights_only=True)
    state["extra"] = payload
    torch.save(state, run / "checkpoints" / name)
    return run


def test_predict_refuses_a_checkpoint_that_would_run_code(data, finished_run, tmp_path):
    _, tmp = data
    marker = tmp_path / "pwned"
    run = _crafted_copy(finished_run, tmp_path, "best.pt", _RunsAShellCommand(marker))
    result = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(run),
                                      "--out", str(tmp_path / "sub.csv"), "--workers", "0"])
    assert result.exit_code == 1 and "best.pt: refused" in result.output and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "sub.csv").exists()


def test_resume_refuses_a_checkpoint_that_would_run_code(data, finished_run, tmp_path):
    marker = tmp_path / "pwned"
    run = _crafted_copy(finished_run, tmp_path, "last.pt", _RunsAShellCommand(marker))
    with pytest.raises(RunError, match="last.pt: refused"):
        train(config(data, run, epochs=2), resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_arch"])
def test_a_damaged_or_foreign_checkpoint_is_one_line_naming_it(data, finished_run, tmp_path, damage):
    import shutil

    _, tmp = data
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    best = run / "checkpoints" / "best.pt"
    if damage == "truncated":
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    elif damage == "garbage":
        best.write_bytes(b"not a checkpoint at all")
    else:
        state = torch.load(best, weights_only=True)
        state["model"] = {k: v for k, v in list(state["model"].items())[:3]}
        torch.save(state, best)
    result = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(run),
                                      "--out", str(tmp_path / "sub.csv"), "--workers", "0"])
    assert result.exit_code == 1 and "best.pt" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def _with_damaged_shard(store, tmp_path, sample: int | None, level: int = 64):
    """A copy of ``store`` with the shard index of ``sample`` (None: of every sample) flipped."""
    import shutil

    damaged = tmp_path / f"damaged_{store.name}"
    shutil.copytree(store, damaged)
    shards = damaged / "images" / str(level) / "c"
    samples = [str(sample)] if sample is not None else [p.name for p in shards.iterdir()]
    for shard in (shards / name / "0" / "0" / "0" for name in samples):
        data = bytearray(shard.read_bytes())
        data[-10] ^= 0xFF  # inside the shard index
        shard.write_bytes(bytes(data))
    return damaged, shards / str(sample if sample is not None else 0) / "0" / "0" / "0"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_predict_stops_at_a_damaged_shard_naming_it(data, finished_run, tmp_path, workers):
    _, tmp = data
    damaged, shard = _with_damaged_shard(tmp / "test.zarr", tmp_path, 1)
    result = CliRunner().invoke(cli, ["predict", "--store", str(damaged), "--run", str(finished_run),
                                      "--out", str(tmp_path / "sub.csv"), "--workers", workers])
    sample = StoreDataset(str(damaged), 64, [1]).ids[1]  # named by its id, as verify names it
    assert result.exit_code == 1 and f"{shard}: sample {sample}" in result.output and "CRC32C" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_train_stops_at_a_damaged_shard_naming_it(data, tmp_path, workers):
    _, tmp = data
    damaged, shard = _with_damaged_shard(tmp / "train.zarr", tmp_path, None)
    result = CliRunner().invoke(cli, ["train", "--store", str(damaged), "--out", str(tmp_path / "run"),
                                      "--arch", "se_resnet_tiny", "--level", "64", "--crop", "48", "--folds", "4",
                                      "--epochs", "1", "--batch-size", "8", "--workers", workers])
    assert result.exit_code == 1 and "'s shard index fails its CRC32C checksum" in result.output, result.output
    assert "Traceback" not in result.output and str(shard.parent.parent.parent.parent) in result.output
    ids = StoreDataset(str(damaged), 64, [0]).ids
    assert any(f"sample {i}'s shard" in result.output for i in ids), result.output  # named by its id


@pytest.mark.parametrize("damage", ["thresholds_27", "thresholds_text", "metrics_row", "config_tag", "config_list"])
def test_a_damaged_run_file_is_one_line_naming_it(data, finished_run, tmp_path, damage):
    """thresholds.json with 27 values, a garbage metrics.csv row, a config.yaml with a YAML tag
    that would build an object: one line naming the file, for predict and for --resume."""
    import json
    import shutil

    _, tmp = data
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    file = {"thresholds_27": "thresholds.json", "thresholds_text": "thresholds.json", "metrics_row": "metrics.csv",
            "config_tag": "config.yaml", "config_list": "config.yaml"}[damage]
    path = run / file
    if damage == "thresholds_27":
        values = json.loads(path.read_text())
        values["thresholds"] = values["thresholds"][:27]
        path.write_text(json.dumps(values))
    elif damage == "thresholds_text":
        path.write_text("{not json")
    elif damage == "metrics_row":
        path.write_text(path.read_text() + "1,garbage,\x00,,\n")
    elif damage == "config_tag":
        path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    else:
        path.write_text("- just\n- a list\n")
    args = (["predict", "--store", str(tmp / "test.zarr"), "--run", str(run), "--out", str(tmp_path / "sub.csv"),
             "--workers", "0"] if damage != "metrics_row" else
            ["train", "--out", str(run), "--resume", "--workers", "0"])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert f"{file}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "sub.csv").exists()


@pytest.fixture(scope="module")
def uint16_stores(data, tmp_path_factory):
    """The same samples as ``data``'s stores, built as uint16."""
    d, _ = data
    tmp = tmp_path_factory.mktemp("u16")
    spec = StoreSpec(size=128, levels=2, chunk=64, dtype="uint16")
    assert ingest(d.train_archive, d.train_csv, tmp / "train.zarr", spec).exit_code == 0
    assert ingest(d.test_archive, d.sample_submission, tmp / "test.zarr", spec).exit_code == 0
    return tmp


def test_a_run_refuses_data_other_than_it_trained_on(data, finished_run, uint16_stores, tmp_path):
    """--resume on a store of other content, predict on a store of another dtype, --external of
    another dtype: each refused by name, never a silent change of normalisation."""
    import shutil

    _, tmp = data
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    resume = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--store",
                                      str(uint16_stores / "train.zarr"), "--workers", "0"])
    assert resume.exit_code == 1 and "is uint16, but" in resume.output and "trained on uint8" in resume.output
    predict = CliRunner().invoke(cli, ["predict", "--store", str(uint16_stores / "test.zarr"), "--run", str(run),
                                       "--out", str(tmp_path / "sub.csv"), "--workers", "0"])
    assert predict.exit_code == 1 and "was trained on uint8 images" in predict.output
    with pytest.raises(RunError, match="--external .* is uint16 and --store is uint8"):
        train(config(data, tmp_path / "ext", epochs=1, external=(str(uint16_stores / "train.zarr"),)))


def test_train_says_how_many_samples_it_uses_and_leaves_out(data, tmp_path):
    import shutil

    import zarr

    _, tmp = data
    store = tmp_path / "train.zarr"
    shutil.copytree(tmp / "train.zarr", store)
    done = zarr.open_group(str(store), mode="r+")["done"]
    flags = done[:]
    flags[:2] = False  # two samples failed in the build
    done[:] = flags
    messages = []
    train(config(data, tmp_path / "run", store=str(store), epochs=1, steps_per_epoch=1),
          progress=lambda e: messages.append(e.message) if e.message else None)
    [line] = [m for m in messages if m.startswith("training on")]
    assert f"2 samples of {store} are not done" in line and "left out" in line


@pytest.mark.integration  # training runs
def test_nan_validation_outputs_stop_the_run_as_diverged(data, finished_run, tmp_path):
    """BatchNorm statistics gone NaN leave the training loss finite (training normalises by the
    batch's own) but every validation output NaN: the run stops as diverged, with its line,
    rather than scoring NaNs as if they were probabilities."""
    start = tmp_path / "start"
    shutil.copytree(finished_run, start)
    checkpoint = torch.load(start / "checkpoints" / "best.pt", weights_only=True)
    for name, value in checkpoint["model"].items():
        if name.endswith("running_mean"):
            value.fill_(float("nan"))
    torch.save(checkpoint, start / "checkpoints" / "best.pt")
    with pytest.raises(TrainingDiverged, match="validation outputs are NaN or infinite at epoch 1"):
        train(config(data, tmp_path / "run", epochs=1, steps_per_epoch=1, init_from=str(start)))


@pytest.mark.integration  # training runs
def test_init_from_starts_from_another_runs_best_weights(data, finished_run, tmp_path):
    import yaml

    run = tmp_path / "finetune"
    train(config(data, run, epochs=1, steps_per_epoch=1, lr=1e-12, warmup_epochs=0, init_from=str(finished_run)))
    start = torch.load(finished_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    tuned = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    weights = [k for k in start if "weight" in k and "bn" not in k and start[k].dtype.is_floating_point]
    for key in weights:  # a step of lr 1e-12 leaves the weights where the other run left them
        torch.testing.assert_close(tuned[key], start[key], rtol=0, atol=1e-6, msg=key)
    assert yaml.safe_load((run / "config.yaml").read_text())["init_from"] == str(finished_run)
    with pytest.raises(RunError, match="--init-from .*: no checkpoints/best.pt"):
        train(config(data, tmp_path / "other", epochs=1, init_from=str(tmp_path / "nowhere")))


@pytest.mark.integration  # training runs
def test_per_image_normalisation_and_focal_lovasz_train_and_predict(data, tmp_path):
    _, tmp = data
    run = tmp_path / "run"
    summary = train(config(data, run, epochs=1, steps_per_epoch=2, normalize="image", loss="focal+lovasz"))
    assert np.isfinite(summary["train_loss"])
    result = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(run), "--out",
                                      str(tmp_path / "sub.csv"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    from hpa_pipeline.model.inference import load_run

    assert load_run(run, torch.device("cpu")).normalizer().per_image
