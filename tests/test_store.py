"""The store contract, inspect, montage and the OME-Zarr export."""
import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.contract.labels import CLASS_NAMES, FILTERS, read_sample_table
from hpa_pipeline.contract.store import DONE, StoreSpec

SPEC = StoreSpec(size=128, levels=3, chunk=32)


@pytest.fixture(scope="module")
def stores(small_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stores")
    d = small_dataset
    ingest(d.train_archive, d.train_csv, tmp / "train.zarr", SPEC, workers=2)
    ingest(d.test_archive, d.sample_submission, tmp / "test.zarr", SPEC, workers=2)
    return d, tmp / "train.zarr", tmp / "test.zarr"


def test_layout_follows_design(stores):
    d, train, test = stores
    root = zarr.open_group(str(train), mode="r")
    meta = root.attrs["hpa"]
    table = read_sample_table(d.train_csv)
    n = len(table)
    assert meta["ids"] == list(table.ids) and meta["class_names"] == list(CLASS_NAMES)
    assert meta["channels"] == list(FILTERS) == ["red", "green", "blue", "yellow"]
    for s in (128, 64, 32):
        images = root[f"images/{s}"]
        assert images.shape == (n, 4, s, s) and images.dtype == np.uint8
        assert images.shards == (1, 4, s, s)  # one whole sample per shard
        assert images.metadata.dimension_names == ("sample", "c", "y", "x")
    assert np.array_equal(root["labels"][:], table.label_matrix()) and root["labels"].dtype == bool
    assert root["done"][:].all() and root["source_dtype"][:].tolist() == [8] * n
    assert set(map(tuple, root["source_shape"][:].tolist())) <= {(256, 256), (384, 384)}
    # each level is the 2x2 mean of the one above, within one grey level
    top, half = root["images/128"][0].astype(float), root["images/64"][0].astype(float)
    assert np.abs(top.reshape(4, 64, 2, 64, 2).mean(axis=(2, 4)) - half).max() <= 1
    # NGFF vocabulary for the axes and levels
    assert [a["type"] for a in meta["axes"]] == ["custom", "channel", "space", "space"]
    assert [lv["coordinateTransformations"][0]["scale"][-1] for lv in meta["levels"]] == [1.0, 2.0, 4.0]
    assert [c["label"] for c in meta["omero"]["channels"]] == list(FILTERS)
    # statistics: per level, per channel, from the pixels
    stats = meta["statistics"]["64"]
    pixels = root["images/64"][:].astype(float)
    assert np.allclose(stats["mean"], pixels.mean(axis=(0, 2, 3)), atol=1e-3)
    assert np.allclose(stats["std"], pixels.std(axis=(0, 2, 3)), atol=1e-3)
    test_root = zarr.open_group(str(test), mode="r")
    assert "labels" not in test_root and test_root.attrs["hpa"]["has_labels"] is False
    assert test_root.attrs["hpa"]["ids"] == d.test_ids


def test_inspect_reports_counts_levels_and_writes_a_montage(stores, tmp_path):
    _, train, _ = stores
    png = tmp_path / "m.png"
    result = CliRunner().invoke(cli, ["inspect", str(train), "--montage", str(png), "--n", "6"])
    assert result.exit_code == 0, result.output
    assert "12 done, 0 failed, 0 missing" in result.output
    assert "images/128" in result.output and "bytes+zstd1+crc32c" in result.output and "KiB/sample" in result.output
    import cv2

    grid = cv2.imread(str(png))
    assert grid.shape == (2 * 128, 4 * 128, 3) and grid.max() > 0  # 6 tiles of level 128, nearest to 256
    info = json.loads(CliRunner().invoke(cli, ["inspect", str(train), "--json"]).output)
    assert info["done"] == 12 and len(info["levels"]) == 3 and info["levels"][0]["bytes_on_disk"] > 0


def test_inspect_of_a_missing_store_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 1 and "no dataset store there" in result.output


def test_export_ngff_validates_and_reads_back_pixel_identical(stores, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    d, train, _ = stores
    ids = d.train_ids[:2]
    result = CliRunner().invoke(cli, ["export-ngff", str(train), "--ids", ",".join(ids), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = zarr.open_group(str(train), mode="r")
    for k, sample_id in enumerate(ids):
        path = tmp_path / f"{sample_id}.ome.zarr"
        Image.from_zarr(zarr.open_group(str(path), mode="r"))  # raises if not valid OME-Zarr 0.5
        node = list(Reader(parse_url(str(path)))())[0]
        assert node.metadata["channel_names"] == list(FILTERS)
        for level, size in enumerate((128, 64, 32)):
            assert np.array_equal(np.asarray(node.data[level]), root[f"images/{size}"][k])
    bad = CliRunner().invoke(cli, ["export-ngff", str(train), "--ids", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and f"Error: not in {train}: nope\n" in bad.output, bad.output
    empty = CliRunner().invoke(cli, ["export-ngff", str(train), "--ids", " , ", "--out", str(tmp_path)])
    assert empty.exit_code == 2 and "Invalid value for --ids: ' , ' names no sample id" in empty.output, empty.output


def test_inner_chunks_are_one_blosc_block_each(tmp_path):
    """Blosc's zstd restarts on every block: a --codec blosc-zstd store asks for one block per
    inner chunk, and zarr reads it back."""
    from hpa_pipeline.contract.labels import SampleTable
    from hpa_pipeline.contract.store import open_or_create_store, write_levels

    table = SampleTable(ids=("a", "b"), labels=None)
    for dtype, itemsize in (("uint8", 1), ("uint16", 2)):
        spec = StoreSpec(size=128, levels=3, chunk=32, dtype=dtype, codec="blosc-zstd")
        root = open_or_create_store(tmp_path / f"{dtype}.zarr", table, spec).root
        for s in (128, 64, 32):
            blosc, checksum = root[f"images/{s}"].compressors
            assert blosc.cname.value == "zstd" and blosc.clevel == 1
            assert type(checksum).__name__ == "Crc32cCodec"  # every chunk carries its CRC32C
            assert blosc.blocksize == 32 ** 2 * itemsize
        rng = np.random.default_rng(0)
        levels = {s: rng.integers(0, 200, (4, s, s)).astype(dtype) for s in (128, 64, 32)}
        write_levels(str(tmp_path / f"{dtype}.zarr"), 1, levels)
        for s, image in levels.items():
            assert np.array_equal(zarr.open_array(str(tmp_path / f"{dtype}.zarr"), path=f"images/{s}")[1], image)
    assert [type(c).__name__ for c in StoreSpec(codec="none").compressors(4096)] == ["Crc32cCodec"]  # no Blosc


def test_inspect_checks_the_level_with_or_without_a_montage(stores):
    _, train, _ = stores
    result = CliRunner().invoke(cli, ["inspect", str(train), "--level", "999"])
    assert result.exit_code == 2 and f"no level 999 in {train}; levels are [128, 64, 32]" in result.output, \
        result.output


def test_export_ngff_never_writes_outside_out_for_a_store_whose_ids_climb(stores, tmp_path):
    """A store from elsewhere whose ids hold ``../``: refused before anything is written, and
    the folder the id points at is left as it was."""
    import shutil

    _, train, _ = stores
    crafted = tmp_path / "crafted.zarr"
    shutil.copytree(train, crafted)
    root = zarr.open_group(str(crafted), mode="r+")
    meta = dict(root.attrs["hpa"])
    meta["ids"] = ["../../victim", *meta["ids"][1:]]
    root.attrs["hpa"] = meta
    victim = tmp_path / "victim.ome.zarr"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    out = tmp_path / "a" / "b"
    result = CliRunner().invoke(cli, ["export-ngff", str(crafted), "--ids", "../../victim", "--out", str(out)])
    assert result.exit_code == 1 and "'../../victim' is not a sample id" in result.output
    assert "Traceback" not in result.output
    assert (victim / "keep.txt").read_text() == "mine" and not (out.exists() and any(out.iterdir()))


def test_a_store_made_before_the_whole_chunk_rule_is_read_and_resumed(small_dataset, tmp_path, monkeypatch):
    """Stores whose lowest level is smaller than a chunk (the old default for --size 512) keep
    working: described, verified, and resumed with the options they were made with."""
    from click.testing import CliRunner

    from hpa_pipeline.cli import cli
    from hpa_pipeline.prep.ingest import ingest

    store = tmp_path / "old.zarr"
    with monkeypatch.context() as m:
        m.setattr(StoreSpec, "check_new", lambda self: None)  # as the earlier version wrote it
        assert ingest(small_dataset.train_archive, small_dataset.train_csv, store,
                      StoreSpec(size=128, levels=3, chunk=64), workers=1).exit_code == 0
    args = ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--out", str(store),
            "--size", "128", "--chunk", "64"]
    assert CliRunner().invoke(cli, ["verify", str(store)]).exit_code == 0
    assert "32" in CliRunner().invoke(cli, ["inspect", str(store)]).output
    again = CliRunner().invoke(cli, args + ["--levels", "3"])
    assert again.exit_code == 0 and "12/12 samples done (0 written now, 12 already done)" in again.output, again.output
    default = CliRunner().invoke(cli, args)
    assert default.exit_code == 1 and "--levels 3 (stored) vs 2 (asked)" in default.output
    new = CliRunner().invoke(cli, [*args[:5], str(tmp_path / "new.zarr"), *args[6:], "--levels", "3"])
    assert new.exit_code == 2 and "--levels 3 makes level 32 smaller than one --chunk 64 chunk" in new.output


def test_a_store_of_format_version_1_reads_verifies_and_resumes_as_before(small_dataset, tmp_path):
    """Version 1's codec "zstd" was Blosc's: such a store is read as blosc-zstd, verifies, and
    the same ingest command (no --codec) resumes it in Blosc; asking for plain zstd is refused."""
    import zarr

    from hpa_pipeline.contract.shards import ShardReader
    from hpa_pipeline.contract.store import Store

    store = tmp_path / "old.zarr"
    args = ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--out", str(store),
            "--size", "128", "--levels", "2", "--chunk", "64", "--workers", "1"]
    result = CliRunner().invoke(cli, [*args, "--codec", "blosc-zstd"])
    assert result.exit_code == 0, result.output
    root = zarr.open_group(str(store), mode="r+")
    meta = dict(root.attrs["hpa"])
    root.attrs["hpa"] = {**meta, "format_version": 1, "spec": {**meta["spec"], "codec": "zstd"}}
    root[DONE][5] = False  # a sample to write on resume
    assert Store.open(store).spec.codec == "blosc-zstd"
    assert type(ShardReader(str(store), "images/128").compressor).__name__ == "Blosc"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "1 written now" in again.output, again.output
    assert CliRunner().invoke(cli, ["verify", str(store)]).exit_code == 0
    refused = CliRunner().invoke(cli, [*args, "--codec", "zstd"])
    assert refused.exit_code == 1 and "--codec blosc-zstd (stored) vs zstd (asked)" in refused.output


def test_a_new_store_is_plain_zstd_by_default_and_any_zarr_reader_reads_it(small_dataset, tmp_path):
    import zarr
    from zarr.codecs import ZstdCodec

    from hpa_pipeline.contract.store import Store

    store = tmp_path / "new.zarr"
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv),
                                      "--out", str(store), "--size", "128", "--levels", "2", "--chunk", "64",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    opened = Store.open(store)
    assert opened.spec.codec == "zstd" and opened.format_version == 2
    compressor, _ = zarr.open_array(str(store), path="images/128").compressors
    assert isinstance(compressor, ZstdCodec)
    assert np.array_equal(zarr.open_array(str(store), path="images/128")[3], opened.reader(128).read(3))
