"""Metrics, folds, models, the crop loader, and the submission files."""
import numpy as np
import pytest
import torch
import zarr
from sklearn.metrics import f1_score

from hpa_pipeline.model.data import EpochSampler, StoreDataset, make_loader, rare_class_weights
from hpa_pipeline.model.folds import make_folds
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.contract.labels import read_sample_table
from hpa_pipeline.model.metrics import macro_f1, per_class_f1, predict_labels, search_thresholds
from hpa_pipeline.model.models import ModelError, create_model
from hpa_pipeline.model.inference import tta_views
from hpa_pipeline.model.submission import SubmissionError, evaluate, validate_submission, write_submission
from hpa_pipeline.contract.store import StoreSpec

from .conftest import REAL_TRAIN_CSV, need


@pytest.fixture(scope="module")
def store(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "train.zarr"
    ingest(small_dataset.train_archive, small_dataset.train_csv, out, StoreSpec(size=128, levels=2, chunk=32))
    return str(out)


# --- metrics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_is_sklearns(seed):
    rng = np.random.default_rng(seed)
    y = rng.random((300, 28)) < rng.uniform(0.001, 0.4, 28)
    p = rng.random((300, 28)) < rng.uniform(0.001, 0.4, 28)
    y[:, 5] = p[:, 5] = False  # a class nobody has: 0, as sklearn with zero_division=0
    assert macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert np.allclose(per_class_f1(y, p), f1_score(y, p, average=None, zero_division=0))


def test_thresholds_and_the_most_probable_fallback():
    rng = np.random.default_rng(0)
    y = rng.random((400, 28)) < 0.2
    probs = np.clip(y * 0.3 + rng.random((400, 28)) * 0.4, 0, 1)  # positives sit around 0.3-0.7
    t = search_thresholds(y, probs)
    assert macro_f1(y, predict_labels(probs, t)) > macro_f1(y, predict_labels(probs, 0.5)) + 0.1
    none_above = np.full((2, 28), 0.01)
    none_above[0, 7], none_above[1, 3] = 0.2, 0.3
    assert predict_labels(none_above, 0.5).nonzero()[1].tolist() == [7, 3]


def test_the_f1_search_tries_every_probability_down_to_zero():
    """A rare class whose positives all lie below 0.05: the search finds the threshold an
    independent brute force (sklearn's F1 at every candidate) finds, which a 0.05-0.95 grid
    misses entirely. Another class takes every row's top place, so the empty-row rule is out."""
    rng = np.random.default_rng(3)
    n = 400
    truth = np.zeros((n, 28), bool)
    probs = rng.random((n, 28)) * 0.01
    probs[:, 1], truth[:, 1] = 0.9, True
    positives = rng.choice(n, 20, replace=False)
    truth[positives, 15] = True
    probs[:, 15] = rng.uniform(0.0, 0.03, n)
    probs[positives, 15] = rng.uniform(0.015, 0.045, 20)
    found = search_thresholds(truth, probs)[15]
    candidates = np.unique(np.concatenate([[0.0], probs[:, 15]]))
    brute = [f1_score(truth[:, 15], probs[:, 15] > t, zero_division=0) for t in candidates]
    assert f1_score(truth[:, 15], probs[:, 15] > found) == pytest.approx(max(brute))
    assert found < 0.05 and max(brute) > 0.5
    grid_best = max(f1_score(truth[:, 15], probs[:, 15] > t, zero_division=0) for t in np.linspace(0.05, 0.95, 91))
    assert grid_best == 0.0
    # ties: of the thresholds with the best F1, the one nearest 0.5
    best = [t for t, f in zip(candidates, brute) if f == max(brute)]
    assert found == min(best, key=lambda t: (abs(t - 0.5), t))


def test_the_f1_table_marks_classes_without_samples():
    from hpa_pipeline.model.metrics import f1_table

    truth = np.zeros((4, 28), bool)
    truth[:, 0] = True
    lines = f1_table(truth, truth).splitlines()
    assert "(no samples" not in lines[1] and "1.000" in lines[1]
    assert lines[2].endswith("0.000  (no samples: counts as 0 in the macro F1)")


def test_folds_stratify_every_class_on_the_real_labels():
    labels = read_sample_table(need(REAL_TRAIN_CSV)).label_matrix()
    folds = make_folds(labels, 5, seed=0)
    assert set(folds.tolist()) == set(range(5))
    per_fold = np.stack([labels[folds == k].sum(0) for k in range(5)])
    expected = labels.sum(0) / 5
    assert np.all(np.abs(per_fold - expected) <= np.maximum(1.5, 0.05 * expected))  # even rare classes spread
    assert np.array_equal(folds, make_folds(labels, 5, seed=0))


# --- models ----------------------------------------------------------------------------------

def test_every_arch_name_has_its_sources_and_every_name_is_a_choice_of_train():
    from dataclasses import fields

    from hpa_pipeline.model import models
    from hpa_pipeline.model.config import TrainConfig
    from hpa_pipeline.model.names import ARCHS, LOSSES

    from hpa_pipeline.contract.errors import OptionError

    assert tuple(models.SOURCES) == ARCHS
    assert {f.name: f.metadata["choices"] for f in fields(TrainConfig)}["loss"] is None  # terms joined by +
    assert all(TrainConfig(loss=name).loss == name for name in LOSSES)
    arch_help = {f.name: f.metadata["help"] for f in fields(TrainConfig)}["arch"]
    assert all(name in arch_help for name in ARCHS) and "timm:NAME" in arch_help
    for name in ARCHS + ("timm:densenet121",):
        assert TrainConfig(arch=name).arch == name
    for wrong in ("densenet121", "timm:", "se_resnet51"):
        with pytest.raises(OptionError, match="nor timm:NAME"):
            TrainConfig(arch=wrong)


def test_any_timm_model_takes_four_channels_and_imagenet_weights_by_the_stem_rule(tmp_path, monkeypatch):
    """timm:NAME with ImageNet weights of the 3-channel, 1000-class model from a local file or
    timm's cache: the body loaded, red/green/blue filters copied, yellow their mean, a new
    28-class classifier; 1st place's head (average and max pooled, two layers) on top."""
    import timm

    from hpa_pipeline.model.models import AvgMaxTwoLayerHead, find_cached_weights

    imagenet = timm.create_model("resnet18", pretrained=False)  # stands for a download
    weights = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), weights)
    for head in ("linear", "avgmax-2fc"):
        model = create_model("timm:resnet18", weights=str(weights), head=head).eval()
        body = model.backbone if head == "avgmax-2fc" else model
        stem = body.conv1.weight
        assert stem.shape[1] == 4
        assert torch.equal(stem[:, :3], imagenet.conv1.weight)
        assert torch.allclose(stem[:, 3], imagenet.conv1.weight.mean(dim=1))
        assert torch.equal(body.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
        with torch.no_grad():
            for size in (64, 96):
                assert model(torch.randn(2, 4, size, size)).shape == (2, 28)
    assert isinstance(model, AvgMaxTwoLayerHead) and model.head[-1].out_features == 28
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert find_cached_weights("timm:resnet18") is None
    url_file = timm.models.get_pretrained_cfg("resnet18").url.rsplit("/", 1)[-1]
    (hub / "checkpoints" / url_file).write_bytes(weights.read_bytes())
    assert find_cached_weights("timm:resnet18") == hub / "checkpoints" / url_file
    with pytest.raises(ModelError, match="timm has no such model; similar: .*resnet18"):
        create_model("timm:resnet18x")
    with pytest.raises(ModelError, match="use --backend timm"):
        create_model("timm:resnet18", backend="pretrainedmodels")


def test_test_time_crops_are_placed_and_reduced_as_asked():
    """Tiled crops start at the corners of a square grid, random ones are the same every run;
    the probabilities are each crop's (averaged over its views) reduced by max or mean,
    checked against the crops taken by hand."""
    from hpa_pipeline.model.data import Normalizer
    from hpa_pipeline.model.inference import TestCrops, predict_probs

    tiled = TestCrops(4, 48)
    assert tiled.origins(64, 0) == [(0, 0), (0, 16), (16, 0), (16, 16)]
    assert TestCrops(1, 48).origins(64, 3) == [(8, 8)]
    randomly = TestCrops(3, 32, "random", seed=1)
    assert randomly.origins(64, 5) == randomly.origins(64, 5) != randomly.origins(64, 6)
    torch.manual_seed(0)
    model = create_model("se_resnet_tiny").eval()
    images = torch.randint(0, 255, (2, 4, 64, 64), dtype=torch.uint8)
    batch = [(images, torch.zeros(2, 28), torch.tensor([0, 1]), None)]
    normalize = Normalizer([50.0] * 4, [30.0] * 4)
    x = normalize(images)
    for reduce in ("max", "mean"):
        crops = TestCrops(4, 48, "tiled", reduce)
        got, _, _ = predict_probs(model, batch, normalize, torch.device("cpu"), tta=2, crops=crops)
        by_hand = []
        for y, x0 in crops.origins(64, 0):
            crop = x[:, :, y:y + 48, x0:x0 + 48]
            with torch.no_grad():
                by_hand.append((torch.sigmoid(model(crop)) + torch.sigmoid(model(crop.rot90(1, (2, 3))))) / 2)
        stacked = torch.stack(by_hand)
        expected = stacked.amax(0) if reduce == "max" else stacked.mean(0)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    with pytest.raises(Exception, match="square grid"):
        TestCrops(3, 48)


@pytest.mark.integration  # two SE-ResNet50s
def test_both_backends_build_the_same_network_any_size():
    a, b = create_model("se_resnet50", "timm"), create_model("se_resnet50", "pretrainedmodels")
    b.load_state_dict(a.state_dict())  # same keys both ways
    a.eval(), b.eval()
    for size in (64, 96, 160):  # pretrainedmodels' fixed 7x7 pool is replaced
        x = torch.randn(2, 4, size, size)
        with torch.no_grad():
            out = a(x)
            assert out.shape == (2, 28) and torch.allclose(out, b(x), atol=1e-5)


def test_imagenet_weights_fill_rgb_and_yellow_is_their_mean(tmp_path):
    import pretrainedmodels

    reference = pretrainedmodels.se_resnet50(num_classes=1000, pretrained=None)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    model = create_model("se_resnet50", "timm", weights=tmp_path / "w.pth")
    stem, ref = model.layer0.conv1.weight, reference.layer0.conv1.weight
    assert stem.shape[1] == 4 and torch.equal(stem[:, :3], ref)
    assert torch.allclose(stem[:, 3], ref.mean(dim=1))
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model.last_linear.out_features == 28


def test_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="not found"):
        create_model("se_resnet_tiny", weights=tmp_path / "nope.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="no cached ImageNet weights for se_resnet50"):
        create_model("se_resnet50", weights="cache")
    with pytest.raises(ModelError, match="unknown arch"):
        create_model("resnet18")


# --- loader ----------------------------------------------------------------------------------

def test_items_are_the_store_pixels_normalised_on_the_device(store):
    root = zarr.open_group(store, mode="r")
    stats = root.attrs["hpa"]["statistics"]["128"]
    dataset = StoreDataset(store, 128, np.arange(12))
    image, labels, index, augmentation = dataset[3]
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(root["images/128"][3]))
    assert torch.equal(labels, torch.from_numpy(root["labels"][3].astype(np.float32))) and index == 3
    normalized = dataset.normalizer()(image[None], augmentation[None])[0]
    expected = (root["images/128"][3].astype(np.float32) - np.array(stats["mean"])[:, None, None]) \
        / np.array(stats["std"])[:, None, None]
    assert torch.allclose(normalized, torch.from_numpy(expected.astype(np.float32)), atol=1e-4)


def test_normalizer_applies_each_items_symmetry_and_jitter():
    from hpa_pipeline.model.data import Normalizer, dihedral

    images = torch.randint(0, 255, (8, 4, 16, 16), dtype=torch.uint8)
    augmentation = torch.zeros(8, 9)
    augmentation[:, 0] = torch.arange(8)
    augmentation[:, 1:5], augmentation[:, 5:9] = 2.0, 0.5
    out = Normalizer([0, 0, 0, 0], [1, 1, 1, 1])(images, augmentation)
    for k in range(8):
        assert torch.equal(out[k], dihedral(images[k].float(), k) * 2.0 + 0.5)
    assert len({tuple(out[k].flatten().tolist()) for k in range(8)}) == 8


def test_random_crops_depend_on_seed_epoch_and_sample_only(store):
    dataset = StoreDataset(store, 128, np.arange(12), crop=64, train=True, seed=1)
    a, _, _, aug = dataset[5]
    assert a.shape == (4, 64, 64) and torch.equal(a, dataset[5][0]) and torch.equal(aug, dataset[5][3])
    dataset.set_epoch(1)
    assert not torch.equal(a, dataset[5][0])
    sampler = EpochSampler(12, seed=1)
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler) and sorted(sampler) == list(range(12))


@pytest.mark.integration
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_give_the_same_batches_as_in_process(store, context):
    dataset = StoreDataset(store, 128, np.arange(12), crop=64, train=True, seed=2)
    serial = [b[0] for b in make_loader(dataset, 4, 0, EpochSampler(12, 2))]
    parallel = [b[0] for b in make_loader(dataset, 4, 2, EpochSampler(12, 2), multiprocessing_context=context)]
    assert len(serial) == 3 and all(torch.equal(s, p) for s, p in zip(serial, parallel))


def test_rare_classes_are_oversampled():
    labels = np.zeros((100, 28))
    labels[:95, 0] = 1
    labels[95:, 27] = 1
    weights = rare_class_weights(labels)
    draws = list(EpochSampler(100, 0, weights))
    assert sum(d >= 95 for d in draws) > 15  # 5 % of samples, drawn far more often


def test_tta_views_are_the_eight_symmetries():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = list(tta_views(x, 8))
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


# --- submissions -----------------------------------------------------------------------------

def test_submission_round_trip_and_malformed_rows(tmp_path):
    ids = ["a", "b", "c"]
    labels = np.zeros((3, 28), bool)
    labels[0, [16, 0]] = True
    labels[1, 5] = labels[2, 27] = True
    path = write_submission(tmp_path / "s.csv", ids, labels)
    assert path.read_text().splitlines() == ["Id,Predicted", "a,0 16", "b,5", "c,27"]
    truth = tmp_path / "t.csv"
    truth.write_text("Id,Target\na,0 16\nb,5\nc,27\n")
    assert evaluate(path, truth)[0] == pytest.approx(4 / 28)  # 4 classes present, all right
    cases = {"Id,Predicted\na,0\nb,28\nc,1\n": "line 3 \\(id b\\): label 28 is outside 0-27",
             "Id,Predicted\na,0\nzzz,1\nc,1\n": "bad.csv: id zzz is not in t.csv",
             "Id,Predicted\na,0\nb,1\n": "1 ids of t.csv missing",
             "Id,Predicted\na,0\nb,\nc,1\n": "line 3 \\(id b\\): empty target",
             "Id,Target\na,0\n": "columns are"}
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(SubmissionError, match=message):
            evaluate(bad, truth)
    with pytest.raises(SubmissionError, match="not in the order"):
        validate_submission(path, ["b", "a", "c"])


def test_crop_grid_snaps_crop_origins(store):
    import zarr as _zarr

    dataset = StoreDataset(store, 128, np.arange(12), crop=64, train=True, seed=3, crop_grid=32)
    level = _zarr.open_group(store, mode="r")["images/128"]
    for k in range(12):
        crop = dataset[k][0].numpy()
        sample = level[k]
        origins = [(y, x) for y in range(0, 65, 32) for x in range(0, 65, 32)
                   if np.array_equal(sample[:, y:y + 64, x:x + 64], crop)]
        assert origins, f"item {k} is not a crop on the 32-pixel grid"


def test_shard_stream_gives_each_sample_its_usual_crop_once(store):
    """Streaming order changes the order only: every sample once, with StoreDataset's crop."""
    from hpa_pipeline.model.data import StoreDataset
    from hpa_pipeline.model.streaming import ShardStream, make_stream_loader

    n = 11  # odd: one sample is left over when dealt to two ranks
    dataset = StoreDataset(store, 64, np.arange(n), crop=32, train=True, seed=5)
    reference = {}
    for k in range(n):
        image, _, index, augmentation = dataset[k]
        reference[index] = (image, augmentation)
    for workers in (0, 2):
        seen = {}
        for rank in (0, 1):
            stream = ShardStream(dataset, buffer=3, rank=rank, world=2)
            stream.set_epoch(0)
            for images, _, indices, augmentation in make_stream_loader(stream, 1, workers):
                index = int(indices[0])
                assert index not in seen, "a sample came twice"
                seen[index] = rank
                assert torch.equal(images[0], reference[index][0]) and torch.equal(augmentation[0], reference[index][1])
        assert len(seen) == n - n % 2  # each rank the same count; an odd sample out waits for the next epoch
    stream = ShardStream(dataset, buffer=3)
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        orders.append([int(i) for _, _, i, _ in stream])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(n)) and orders[0] != orders[1]


def test_lovasz_hinge_on_a_hand_computed_case():
    """logits (2, -1, 0.5), targets (1, 0, 0): errors 1 - logit * sign = (-1, 0, 1.5); sorted
    (1.5, 0, -1) with truth (0, 0, 1); Jaccard (0.5, 2/3, 1), gradient (0.5, 1/6, 1/3); the
    loss is relu(errors) . gradient = 1.5 * 0.5 = 0.75."""
    import torch

    from hpa_pipeline.model.losses import MultilabelLoss, lovasz_grad, lovasz_hinge

    loss = lovasz_hinge(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0]))
    assert float(loss) == pytest.approx(0.75)
    assert torch.allclose(lovasz_grad(torch.tensor([0.0, 0.0, 1.0])), torch.tensor([0.5, 1 / 6, 1 / 3]))
    assert float(lovasz_hinge(torch.tensor([5.0, -5.0]), torch.tensor([1.0, 0.0]))) == 0.0  # margins met
    logits, targets = torch.randn(4, 28), (torch.rand(4, 28) > 0.8).float()
    combined = MultilabelLoss("focal+lovasz")(logits, targets)
    assert float(combined) == pytest.approx(float(MultilabelLoss("focal")(logits, targets) + lovasz_hinge(logits, targets)))


def test_per_image_normalisation_uses_each_images_own_statistics():
    import torch

    from hpa_pipeline.model.data import Normalizer

    images = torch.stack([torch.full((4, 8, 8), 10, dtype=torch.uint8), torch.randint(0, 255, (4, 8, 8),
                                                                                     dtype=torch.uint8)])
    images[1, 0, 0, 0] = 0
    out = Normalizer([100.0] * 4, [50.0] * 4, per_image=True)(images)
    assert torch.all(out[0] == 0)  # a constant image is all zeros, not infinite
    assert torch.allclose(out[1].mean(dim=(1, 2)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(out[1].std(dim=(1, 2)), torch.ones(4), atol=1e-4)
    store = Normalizer([100.0] * 4, [50.0] * 4)(images)
    assert torch.allclose(store[0], torch.full((4, 8, 8), -1.8))
