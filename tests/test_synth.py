import io

import cv2
import numpy as np
import pandas as pd
import py7zr
import pytest
import tifffile

from hpa_pipeline.contract.labels import FILTERS, read_sample_table
from hpa_pipeline.prep.synth import SynthSpec, make_dataset
from hpa_pipeline.prep.synth.cells import PATTERNS, render_canvas, render_sample
from hpa_pipeline.prep.synth.dataset import draw_label_sets

from .conftest import REAL_PNG_DIR, REAL_TRAIN_CSV, need


def read_members(archive_path) -> dict[str, bytes]:
    with py7zr.SevenZipFile(archive_path) as archive:
        factory = py7zr.io.BytesIOFactory(1 << 30)
        archive.extractall(factory=factory)
        return {name: factory.get(name).read() for name in archive.getnames()}


def check_archive(archive_path, ids, sizes, dtype):
    members = read_members(archive_path)
    assert sorted(members) == sorted(f"{i}_{f}.tif" for i in ids for f in FILTERS)
    seen_sizes = set()
    for sample_id in ids:
        shapes = set()
        for f in FILTERS:
            image = tifffile.imread(io.BytesIO(members[f"{sample_id}_{f}.tif"]))
            assert image.dtype == dtype and image.ndim == 2
            shapes.add(image.shape)
        assert len(shapes) == 1, f"{sample_id}: channels differ in shape {shapes}"
        (shape,) = shapes
        assert shape[0] == shape[1] and shape[0] in sizes
        seen_sizes.add(shape[0])
    return members, seen_sizes


def test_archives_hold_four_tiffs_per_id_with_labels_in_train_csv(small_dataset):
    d = small_dataset
    train = read_sample_table(d.train_csv)
    assert list(train.ids) == d.train_ids and len(train) == 12
    _, sizes = check_archive(d.train_archive, train.ids, {256, 384}, np.uint8)
    assert sizes == {256, 384}  # both sizes occur
    test_ids = read_sample_table(d.sample_submission)
    assert not test_ids.has_labels and list(test_ids.ids) == d.test_ids
    check_archive(d.test_archive, test_ids.ids, {256, 384}, np.uint8)
    hidden = read_sample_table(d.test_labels)
    assert hidden.ids == test_ids.ids
    assert not set(train.ids) & set(test_ids.ids)
    if REAL_TRAIN_CSV.exists():  # label sets are real rows
        real = set(read_sample_table(REAL_TRAIN_CSV).labels)
        assert all(labels in real for labels in train.labels + hidden.labels)


def test_submission_template_has_the_competition_columns(small_dataset):
    frame = pd.read_csv(small_dataset.sample_submission)
    assert list(frame.columns) == ["Id", "Predicted"]


@pytest.mark.parametrize("compression, tag", [("none", 1), ("deflate", 8), ("lzw", 5)])
def test_16_bit_and_each_compression(tmp_path, compression, tag):
    spec = SynthSpec(n_train=2, n_test=1, image_sizes=(128,), bit_depth=16, compression=compression,
                     archive_method="lzma2", seed=1)
    d = make_dataset(tmp_path, spec)
    members, _ = check_archive(d.train_archive, d.train_ids, {128}, np.uint16)
    with py7zr.SevenZipFile(d.train_archive) as archive:
        assert any("LZMA2" in m for m in archive.archiveinfo().method_names)
    with tifffile.TiffFile(io.BytesIO(next(iter(members.values())))) as tif:
        assert tif.pages[0].compression == tag
        assert tif.pages[0].asarray().max() > 255  # really uses the 16-bit range


def test_same_seed_same_data_whatever_the_workers(tmp_path):
    spec = SynthSpec(n_train=4, n_test=2, image_sizes=(128, 192), seed=3)
    a = make_dataset(tmp_path / "a", spec, workers=1)
    b = make_dataset(tmp_path / "b", spec, workers=2)
    assert a.train_csv.read_text() == b.train_csv.read_text()
    assert read_members(a.train_archive) == read_members(b.train_archive)
    c = make_dataset(tmp_path / "c", SynthSpec(n_train=4, n_test=2, image_sizes=(128, 192), seed=4))
    assert read_members(c.train_archive) != read_members(a.train_archive)


@pytest.mark.parametrize("use_real_csv", [True, False])
def test_label_sets_follow_the_real_distribution(use_real_csv):
    csv = need(REAL_TRAIN_CSV) if use_real_csv else None
    sets = draw_label_sets(np.random.default_rng(0), 6000, csv)
    assert all(len(s) >= 1 and all(0 <= c < 28 for c in s) for s in sets)
    freq = np.zeros(28)
    for s in sets:
        freq[list(s)] += 1
    freq /= len(sets)
    assert abs(freq[0] - 12885 / 31072) < 0.03  # nucleoplasm is common
    assert abs(freq[25] - 8228 / 31072) < 0.03  # cytosol too
    assert freq[27] < 0.003 and freq[15] < 0.004  # rods & rings, microtubule ends are rare
    assert 1.4 < sum(len(s) for s in sets) / len(sets) < 1.9  # about 1.63 labels per sample


def image_stats(images_512):
    values = np.stack(images_512)
    per_image_dark = [(im < 10).mean() for im in images_512]
    return np.mean(per_image_dark), np.percentile(values, [50, 90, 99])


@pytest.mark.integration
def test_intensity_statistics_are_near_the_real_pngs():
    real = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(need(REAL_PNG_DIR).glob("*.png"))]
    rng = np.random.default_rng(0)
    labels = draw_label_sets(rng, 24, REAL_TRAIN_CSV if REAL_TRAIN_CSV.exists() else None)
    synthetic = []
    for labels_i in labels:  # the competition's PNGs are area-downsampled full-size images
        for image in render_sample(rng, labels_i, 1024, 8).values():
            synthetic.append(cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA))
    real_dark, real_q = image_stats(real)
    syn_dark, syn_q = image_stats(synthetic)
    assert abs(real_dark - syn_dark) < 0.08, (real_dark, syn_dark)  # background fraction
    assert abs(real_q[0] - syn_q[0]) < 5  # median: dark background
    assert abs(real_q[1] - syn_q[1]) < 30  # 90th percentile
    assert abs(real_q[2] - syn_q[2]) < 30  # 99th percentile: bright structures


NUCLEAR = [0, 2, 4, 5]  # nucleoplasm, nucleoli, nuclear speckles, nuclear bodies
CYTOPLASMIC = [6, 8, 9, 23, 25]  # ER, peroxisomes, endosomes, mitochondria, cytosol


def test_green_follows_the_labels_inside_or_outside_the_nucleus():
    def nuclear_fraction(cls):
        rng = np.random.default_rng(cls)
        canvas = render_canvas(rng, [cls], 256)
        nucleus = canvas["blue"] > 0.25 * canvas["blue"].max()
        return canvas["green"][nucleus].sum() / canvas["green"].sum()

    assert len(PATTERNS) == 28
    for cls in NUCLEAR:
        assert nuclear_fraction(cls) > 0.6, cls
    for cls in CYTOPLASMIC:
        assert nuclear_fraction(cls) < 0.3, cls


def test_every_class_has_its_own_green_pattern():
    """Class patterns differ: radially-averaged spectra and nuclear fraction are pairwise distinct."""
    features = []
    for cls in range(28):
        rng = np.random.default_rng(100 + cls)
        canvas = render_canvas(rng, [cls], 256)
        green = canvas["green"] / (canvas["green"].max() + 1e-6)
        hist = np.histogram(green, bins=8, range=(0.05, 1))[0] / green.size
        spectrum = np.abs(np.fft.rfft2(green))
        bands = [spectrum[:k, :k].sum() for k in (4, 16, 64)]
        features.append(np.concatenate([hist, np.array(bands) / spectrum.sum(), [green.mean()]]))
    features = np.array(features)
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1) + np.eye(28)
    assert distances.min() > 1e-3


@pytest.mark.slow
def test_full_size_2048_and_3072_mix(tmp_path):
    spec = SynthSpec(n_train=6, n_test=1, seed=2)  # default sizes 2048,3072
    d = make_dataset(tmp_path, spec, workers=2)
    _, sizes = check_archive(d.train_archive, d.train_ids, {2048, 3072}, np.uint8)
    assert sizes == {2048, 3072}
