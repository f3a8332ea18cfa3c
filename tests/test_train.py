"""The trainer: it learns the synthetic patterns, writes its run folder, resumes exactly after SIGKILL."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.synth import SynthSpec
from hpa_pipeline.model.train import TrainConfig, TrainingDiverged, train

from .helpers import hpa_pipe_signalled_at, synthetic_stores

FOUR_CLASSES = [0, 2, 21, 23]  # nucleoplasm, nucleoli, plasma membrane, mitochondria


@pytest.fixture(scope="module")
def four_class_store(tmp_path_factory):
    """Synthetic samples whose labels are one of four visually distinct classes."""
    tmp = tmp_path_factory.mktemp("four")
    labels_csv = tmp / "labels.csv"
    labels_csv.write_text("Id,Target\n" + "".join(f"x{c},{c}\n" for c in FOUR_CLASSES))
    return synthetic_stores(tmp, SynthSpec(n_train=120, n_test=8, image_sizes=(256,), seed=5, labels_csv=labels_csv),
                            StoreSpec(size=128, levels=2, chunk=64))


def tiny_config(store, out, **overrides):
    values = dict(store=str(store), out=str(out), arch="se_resnet_tiny", level=64, crop=64, folds=4, fold=0,
                  epochs=8, batch_size=16, lr=2e-3, warmup_epochs=0.5, workers=0, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.integration
def test_trainer_learns_the_synthetic_patterns(four_class_store, tmp_path):
    _, store, _ = four_class_store
    summary = train(tiny_config(store, tmp_path / "run"))
    result = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    f1 = np.array(result["per_class_f1"])[FOUR_CLASSES]
    # a constant predictor gets F1 ~0.4 on one of the four classes and 0 on the others
    assert f1.mean() > 0.7, f1
    assert summary["best_valid_macro_f1"] > 0


@pytest.mark.integration
def test_a_train_only_install_trains_with_a_loader_worker(four_class_store, tmp_path):
    """``pip install 'hpa-pipeline[train]'`` has no OpenCV: an OpenCV that cannot be imported
    (in the command and in its spawned worker) must not stop ``train --workers 1``."""
    _, store, _ = four_class_store
    blocked = tmp_path / "no-opencv" / "cv2"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('OpenCV is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked.parent)}
    result = subprocess.run([sys.executable, "-m", "hpa_pipeline", "train", "--store", str(store), "--out",
                             str(tmp_path / "run"), "--arch", "se_resnet_tiny", "--level", "64", "--crop", "64",
                             "--folds", "4", "--epochs", "1", "--batch-size", "16", "--workers", "1"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "thresholds.json").exists()


@pytest.mark.integration
def test_run_folder_holds_everything(four_class_store, tmp_path):
    _, store, test_store = four_class_store
    run = tmp_path / "run"
    train(tiny_config(store, run, epochs=2, ema=0.9, loss="focal", oversample=True, class_weighting=True,
                      schedule="onecycle", accumulate=2))
    for name in ("config.yaml", "folds.csv", "metrics.csv", "thresholds.json", "f1_table.txt", "curves.png",
                 "per_class_f1.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).exists(), name
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss,valid_loss,valid_macro_f1") and len(rows) == 3
    assert "macro F1" in (run / "f1_table.txt").read_text()
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(cli, ["predict", "--store", str(test_store), "--run", str(run),
                                      "--tta", "8", "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[0] == "Id,Predicted" and len(out.read_text().splitlines()) == 9


@pytest.mark.integration  # a training run
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(four_class_store, tmp_path, monkeypatch):
    import hpa_pipeline.model.training_data as training_data

    _, store, _ = four_class_store
    calls = {"n": 0}
    real = training_data.make_loss

    class LossThatBreaks(torch.nn.Module):
        def __init__(self, *args):
            super().__init__()
            self.inner = real(*args)

        def forward(self, logits, y):
            calls["n"] += 1
            value = self.inner(logits, y)
            return value * float("nan") if calls["n"] > 8 else value

    def loss_that_breaks(*args):
        return LossThatBreaks(*args)

    monkeypatch.setattr(training_data, "make_loss", loss_that_breaks)
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 2.*last good checkpoint"):
        train(tiny_config(store, tmp_path / "run", epochs=3))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0


@pytest.mark.integration
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(four_class_store, tmp_path):
    _, store, _ = four_class_store
    options = ["train", "--store", str(store), "--arch", "se_resnet_tiny", "--level", "64", "--crop", "64",
               "--folds", "4", "--epochs", "4", "--batch-size", "16", "--lr", "2e-3", "--workers", "0"]
    subprocess.run([sys.executable, "-m", "hpa_pipeline", *options, "--out", str(tmp_path / "whole")], check=True,
                   capture_output=True)
    killed = tmp_path / "killed"
    # 90 training samples, batches of 16: 5 steps an epoch; killed after the 7th, in the second epoch
    kill = hpa_pipe_signalled_at("hpa_pipeline.model.train", "optimizer_step", 7, signal.SIGKILL,
                                 [*options, "--out", str(killed)])
    assert subprocess.run(kill, capture_output=True).returncode == -signal.SIGKILL
    partial = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert partial["epoch"] == 0  # the first epoch's checkpoint, the second's steps lost
    subprocess.run([sys.executable, "-m", "hpa_pipeline", *options, "--out", str(killed), "--resume"], check=True,
                   capture_output=True)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    assert len((killed / "metrics.csv").read_text().splitlines()) == 5  # header + 4 epochs, none twice


def test_swa_is_the_equal_weight_mean_of_the_epochs_it_averages():
    from hpa_pipeline.model.averaging import make_average

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    swa, snapshots = make_average(model, ema=0, swa_epochs=3), []
    for value in (1.0, 2.0, 6.0):
        for p in model.parameters():
            p.data.fill_(value)
        snapshots.append({k: v.clone() for k, v in model.named_parameters()})
        swa.update_parameters(model)
    assert int(swa.n_averaged) == 3
    for key, averaged in swa.module.named_parameters():
        assert torch.allclose(averaged, sum(s[key] for s in snapshots) / 3), key


@pytest.mark.integration
def test_swa_run_validates_and_saves_the_averaged_weights(four_class_store, tmp_path):
    _, store, _ = four_class_store
    run = tmp_path / "run"
    train(tiny_config(store, run, epochs=3, swa_epochs=2, swa_bn_batches=3))
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert int(last["average"]["n_averaged"]) == 2  # epochs 1 and 2
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    if best["epoch"] == 2:  # the SWA weights, with BatchNorm statistics recomputed for them
        name = next(k for k in best["model"] if k.endswith("conv1.weight"))
        assert torch.equal(best["model"][name], last["average"][f"module.{name}"])
        stats = next(k for k in best["model"] if k.endswith("running_var"))
        assert not torch.equal(best["model"][stats], last["model"][stats])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and "nan" not in "".join(rows)
    with pytest.raises(ValueError, match="--ema or --swa-epochs"):
        tiny_config(store, run, ema=0.9, swa_epochs=1)


@pytest.mark.integration
def test_a_uint16_store_trains_and_predicts_on_its_16_bit_values(tmp_path):
    """The model half reads a ``--dtype uint16`` store as it is: 16-bit crops (values above
    255), normalised by that store's own statistics, a finite loss, and a prediction per sample."""
    from hpa_pipeline.model.data import StoreDataset
    from hpa_pipeline.model.inference import predict
    from hpa_pipeline.model.run_folder import read_config

    d, store, test_store = synthetic_stores(
        tmp_path, SynthSpec(n_train=32, n_test=4, image_sizes=(256,), bit_depth=16, seed=3),
        StoreSpec(size=128, levels=2, chunk=64, dtype="uint16"))
    dataset = StoreDataset(str(store), 64, np.arange(8), crop=64)
    images = dataset.__getitems__(list(range(8)))[0].numpy()
    assert images.dtype == np.uint16
    assert int(images.max()) > 255 and dataset.mean.max() > 255  # 16-bit values, not 8-bit ones

    summary = train(tiny_config(store, tmp_path / "run", epochs=2, batch_size=8, folds=2))
    assert np.isfinite(summary["train_loss"])
    _, normalization = read_config(tmp_path / "run" / "config.yaml")
    assert max(normalization["mean"]) > 255
    ids, probs, labels = predict(test_store, [tmp_path / "run"], workers=0, device="cpu")
    assert len(ids) == 4 and probs.shape == (4, 28) and np.isfinite(probs).all() and labels.any(axis=1).all()
