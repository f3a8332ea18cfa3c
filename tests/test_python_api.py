"""The Python API: the names the package exports, StoreDataset with a plain DataLoader, and the
examples of docs/python-api.md run as they are."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import hpa_pipeline
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.prep.synth import SynthSpec, make_dataset

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """data/train.zarr (16 samples, levels 256/128) as the page's examples expect."""
    tmp = tmp_path_factory.mktemp("api")
    d = make_dataset(tmp / "src", SynthSpec(n_train=16, n_test=1, image_sizes=(256,), seed=4), workers=2)
    assert ingest(d.train_archive, d.train_csv, tmp / "data" / "train.zarr",
                  StoreSpec(size=256, levels=2, chunk=64)).exit_code == 0
    return tmp


@pytest.mark.integration  # a subprocess
def test_the_api_names_import_from_the_package_without_loading_torch_first():
    code = ("import sys, hpa_pipeline\nassert 'torch' not in sys.modules\n"
            "from hpa_pipeline import " + ", ".join(hpa_pipeline.__all__) + "\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        hpa_pipeline.nothing  # noqa: B018


@pytest.mark.integration  # a subprocess with loader workers
def test_the_pages_examples_run_as_written(data):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3
    program = "\n".join(blocks[1:])  # the first block is the import line the others repeat
    result = subprocess.run([sys.executable, "-c", program], cwd=data, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(Path(hpa_pipeline.__file__).parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.strip().splitlines()
    assert first == "torch.Size([8, 4, 128, 128]) torch.float32 torch.Size([8, 28])"
    assert 0 <= float(second) <= 1


def _crops(loader):
    return torch.cat([images for images, _ in loader])


@pytest.mark.integration  # loader worker processes
def test_a_plain_dataloader_gets_normalised_augmented_floats_and_new_crops_every_epoch(data):
    from hpa_pipeline import StoreDataset

    store = str(data / "data" / "train.zarr")
    dataset = StoreDataset(store, level=256, crop=128)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    torch.manual_seed(0)
    first, second = _crops(loader), _crops(loader)
    assert first.dtype == torch.float32 and first.shape == (16, 4, 128, 128)
    assert abs(float(first.mean())) < 1.0 and not torch.equal(first, second)  # normalised; new crops per epoch
    torch.manual_seed(0)
    assert torch.equal(_crops(loader), first)  # repeatable from the seed
    in_process = DataLoader(dataset, batch_size=4)
    assert not torch.equal(_crops(in_process), _crops(in_process))  # without workers too
    dataset.set_epoch(3)
    fixed = DataLoader(dataset, batch_size=4, num_workers=2)
    assert torch.equal(_crops(fixed), _crops(fixed))  # set_epoch fixes the crops
    raw = StoreDataset(store, level=128, crop=None, raw=True)
    image, labels, index, augmentation = raw[0]
    assert image.dtype == torch.uint8 and image.shape == (4, 128, 128) and labels.shape == (28,)
    whole = StoreDataset(store, level=128, augment=False)[0][0]
    assert whole.shape == (4, 128, 128) and whole.dtype == torch.float32


def test_unfinished_samples_are_left_out(data, tmp_path):
    import shutil

    import zarr

    from hpa_pipeline import Store, StoreDataset

    store = tmp_path / "s.zarr"
    shutil.copytree(data / "data" / "train.zarr", store)
    zarr.open_group(str(store), mode="r+")["done"][3] = False
    dataset = StoreDataset(str(store), level=128, crop=64)
    assert len(dataset) == 15 and 3 not in set(dataset.indices.tolist())
    chosen = StoreDataset(str(store), level=128, crop=64, indices=[1, 2, 3])
    assert chosen.indices.tolist() == [1, 2] and chosen.left_out == 1
    assert len(list(DataLoader(dataset, batch_size=5))) == 3
    assert Store.open(store).done().sum() == 15


@pytest.mark.parametrize("options, message", [
    (dict(indices=[1, 16]), "indices [16] are outside the store's 16 samples (0 to 15)"),
    (dict(indices=[-1]), "indices [-1] are outside"),
    (dict(crop=-5), "crop -5: a crop is at least 1 pixel"),
    (dict(crop=0), "crop 0: a crop is at least 1 pixel"),
    (dict(level=99), "has no level 99"),
])
def test_a_wrong_argument_is_one_clear_error_at_once(data, options, message):
    """Not an empty dataset that fails at its first item, nor numpy's words for a negative shape."""
    from hpa_pipeline import StoreDataset
    from hpa_pipeline.contract.errors import OptionError

    with pytest.raises(OptionError) as raised:
        StoreDataset(str(data / "data" / "train.zarr"), **{"level": 128, **options})
    assert message in str(raised.value)


@pytest.mark.parametrize("call, message", [
    (lambda t, p: hpa_pipeline.macro_f1(t, p), "y_pred holds values other than 0 and 1"),
    (lambda t, p: hpa_pipeline.macro_f1(t, p[:3] > 0.5), "y_pred has shape (3, 28); expected (4, 28)"),
    (lambda t, p: hpa_pipeline.choose_thresholds(t, p[:, :27]), "probs has shape (4, 27)"),
    (lambda t, p: hpa_pipeline.choose_thresholds(t, p * np.nan), "probs holds NaN"),
    (lambda t, p: hpa_pipeline.predict_labels(p, np.zeros(27)), "27 thresholds for 28 classes"),
])
def test_the_metric_and_thresholds_refuse_tables_that_would_score_wrongly(call, message):
    """Probabilities passed as predictions counted every non-zero as a label: a score, silently
    wrong. Mismatched shapes and NaNs get a line saying which table and what is wrong."""
    truth = np.eye(4, 28, dtype=bool)
    probs = np.random.default_rng(0).random((4, 28))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(truth, probs)
