"""``hpa-pipe verify``: damage at rest is found and named per sample, and ``--repair`` followed by
the same ingest command rebuilds exactly the damaged samples into a store equal to a clean build."""
import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.ingest import ingest

from .helpers import assert_same_stores

SPEC = dict(size=128, levels=2, chunk=64)


@pytest.fixture(scope="module", params=["zstd", "none"])
def clean(small_dataset, tmp_path_factory, request):
    store = tmp_path_factory.mktemp("verify") / f"clean-{request.param}.zarr"
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, store,
                  StoreSpec(codec=request.param, **SPEC)).exit_code == 0
    return store


def _copy(clean, tmp_path):
    store = tmp_path / "damaged.zarr"
    shutil.copytree(clean, store)
    return store


def _shard(store, level, index):
    return store / "images" / str(level) / "c" / str(index) / "0" / "0" / "0"


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _verify(*args):
    return CliRunner().invoke(cli, ["verify", *map(str, args)])


def test_an_undamaged_store_verifies_clean(clean):
    result = _verify(clean)
    assert result.exit_code == 0, result.output
    assert "12 done samples checked, 0 damaged, 0 store problems" in result.output
    report = json.loads(_verify(clean, "--json").stdout)
    assert report["clean"] and report["checked"] == 12 and report["chunk_checksums"]


def test_each_kind_of_damage_is_one_line_naming_the_sample(clean, tmp_path, small_dataset):
    store = _copy(clean, tmp_path)
    ids = zarr.open_group(str(store), mode="r").attrs["hpa"]["ids"]
    _flip(_shard(store, 128, 1), 100)  # a bit inside a chunk
    _shard(store, 64, 4).unlink()  # a deleted shard
    shard = _shard(store, 128, 7)
    shard.write_bytes(shard.read_bytes()[:50])  # a shard cut short
    _flip(_shard(store, 64, 9), -10)  # a bit of the index
    result = _verify(store)
    assert result.exit_code == 3
    damaged = [line for line in result.output.splitlines() if line.strip().startswith("damaged:")]
    assert len(damaged) == 4
    for index, what in ((1, "CRC32C"), (4, "missing"), (7, "cut short"), (9, "index fails its CRC32C")):
        [line] = [d for d in damaged if f"damaged: {ids[index]}:" in d]
        assert what in line and f"/c/{index}/0/0/0" in line
    assert "4 damaged" in result.output and "--repair" in result.output
    report = json.loads(_verify(store, "--json").stdout)
    assert not report["clean"] and set(report["damaged"]) == {ids[i] for i in (1, 4, 7, 9)}


def test_repair_then_the_same_ingest_rebuilds_exactly_the_damaged_samples(clean, tmp_path, small_dataset):
    store = _copy(clean, tmp_path)
    codec = "none" if "none" in clean.name else "zstd"
    _flip(_shard(store, 128, 2), 200)
    _shard(store, 64, 5).unlink()
    result = _verify(store, "--repair")
    assert result.exit_code == 3 and "2 marked not done" in result.output
    assert not zarr.open_group(str(store), mode="r")["done"][:][[2, 5]].any()
    assert _verify(store).exit_code == 0  # what is left is sound (and the statistics agree with it)
    again = ingest(small_dataset.train_archive, small_dataset.train_csv, store, StoreSpec(codec=codec, **SPEC))
    assert again.exit_code == 0 and (again.written, again.done_before) == (2, 10)
    assert_same_stores(store, clean, ["images/128", "images/64", "labels", "done", "channel_sums", "source_shape"],
                       statistics=True)
    for index in range(12):
        for level in (128, 64):
            assert _shard(store, level, index).read_bytes() == _shard(clean, level, index).read_bytes()


def test_a_lost_labels_chunk_and_stale_statistics_are_store_problems(clean, tmp_path):
    store = _copy(clean, tmp_path)
    (store / "labels" / "c" / "0" / "0").unlink()  # would read as "no label" for every sample
    group = zarr.open_group(str(store), mode="r+")
    meta = dict(group.attrs["hpa"])
    meta["statistics"]["128"]["mean"][0] += 1.0
    group.attrs["hpa"] = meta
    result = _verify(store)
    assert result.exit_code == 3
    assert "a chunk of labels is missing" in result.output and "statistics do not match" in result.output


def test_a_damaged_metadata_file_is_one_line_naming_it(clean, tmp_path):
    store = _copy(clean, tmp_path)
    level_meta = store / "images" / "64" / "zarr.json"
    level_meta.write_text(level_meta.read_text()[:40])
    result = _verify(store)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{level_meta}: damaged metadata file" in result.output


def test_a_store_without_chunk_checksums_is_still_checked_by_its_sums(small_dataset, tmp_path, monkeypatch):
    """A store written before chunks carried a CRC32C: verify says so, and a flipped pixel is
    still found, because the pixels no longer add up to the sums written with them."""
    from zarr.codecs import BloscCodec

    monkeypatch.setattr(StoreSpec, "compressors", lambda self, nbytes: [] if self.codec == "none" else [
        BloscCodec(cname=self.codec, clevel=self.clevel, shuffle="noshuffle", blocksize=nbytes)])
    store = tmp_path / "old.zarr"
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, store,
                  StoreSpec(codec="none", **SPEC)).exit_code == 0
    assert "no chunk checksums" in _verify(store).output and _verify(store).exit_code == 0
    _flip(_shard(store, 128, 3), 1000)
    result = _verify(store)
    assert result.exit_code == 3 and "do not add up to the sums" in result.output


def test_verify_of_a_folder_that_is_no_store_is_one_line(tmp_path):
    result = _verify(tmp_path)
    assert result.exit_code == 1 and "no dataset store there" in result.output


def test_a_corrected_csv_on_rerun_updates_the_stores_labels(clean, tmp_path, small_dataset):
    """Same ids, one label fixed: the rerun writes the CSV's labels (images untouched) and says so."""
    store = _copy(clean, tmp_path)
    rows = small_dataset.train_csv.read_text().splitlines()
    sample_id, target = rows[3].split(",")
    fixed = "27" if target != "27" else "0"
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(rows[:3] + [f"{sample_id},{fixed}"] + rows[4:]) + "\n")
    codec = "none" if "none" in clean.name else "zstd"
    report = ingest(small_dataset.train_archive, csv, store, StoreSpec(codec=codec, **SPEC))
    assert report.exit_code == 0 and report.labels_updated == [sample_id]
    assert f"labels of 1 samples updated from the CSV ({sample_id})" in report.summary()
    labels = zarr.open_group(str(store), mode="r")["labels"][:]
    assert np.flatnonzero(labels[2]).tolist() == [int(fixed)]
    assert_same_stores(store, clean, ["images/128", "images/64", "done"])


def _ingest_again(store, small_dataset, clean):
    codec = clean.stem.removeprefix("clean-")
    return CliRunner().invoke(cli, ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv),
                                    "--out", str(store), "--size", "128", "--levels", "2", "--chunk", "64",
                                    "--workers", "1", "--codec", codec])


@pytest.mark.integration  # whole ingests and commands
@pytest.mark.parametrize("array", ["done", "labels", "phash", "channel_sums"])
def test_a_damaged_per_sample_array_is_named_and_the_same_ingest_rebuilds_it(clean, tmp_path, small_dataset,
                                                                              array):
    """A flipped byte in a per-sample array's chunk: every command names the array in one line,
    verify counts it a store problem, and the same ingest makes it again (every sample is
    written again), after which the store equals a clean build."""
    if "none" in clean.name:
        pytest.skip("the per-sample arrays are the same in every codec's store")
    store = _copy(clean, tmp_path)
    _flip(next(p for p in sorted((store / array / "c").rglob("*")) if p.is_file()), 9)
    said = f"{store / array}: damaged, a chunk does not decode"
    commands = [["inspect", store]] + ([["train", "--store", store, "--out", tmp_path / "run", "--arch",
                                         "se_resnet_tiny", "--level", "64", "--crop", "48", "--epochs", "1",
                                         "--workers", "0", "--weights", "none"]] if array != "channel_sums" else [])
    stopped = 0
    for command in commands:  # a command that reads the array stops with its line; none shows a traceback
        result = CliRunner().invoke(cli, [str(c) for c in command])
        assert "Traceback" not in result.output and result.exit_code in (0, 1), result.output
        stopped += result.exit_code == 1 and said in result.output
    assert stopped >= (array != "channel_sums")
    result = _verify(store)
    assert result.exit_code == 3 and said in result.output, result.output
    again = _ingest_again(store, small_dataset, clean)
    assert again.exit_code == 0 and f"{store / array}: damaged" in again.output and "12 written now" in again.output, \
        again.output
    assert _verify(store).exit_code == 0
    assert_same_stores(clean, store, ["images/128", "images/64", "labels", "done"], statistics=True)


@pytest.mark.integration  # whole ingests and commands
@pytest.mark.parametrize("name", ["images/64/zarr.json", "phash/zarr.json", "done/zarr.json", "labels/zarr.json"])
def test_a_damaged_array_metadata_file_is_written_again_by_the_same_ingest(clean, tmp_path, small_dataset, name):
    if "none" in clean.name and name != "images/64/zarr.json":
        pytest.skip("the per-sample arrays are the same in every codec's store")
    store = _copy(clean, tmp_path)
    (store / name).write_text((store / name).read_text()[:40])
    assert _verify(store).exit_code == 1
    again = _ingest_again(store, small_dataset, clean)
    assert again.exit_code == 0 and f"{store / name}: metadata file damaged or missing; written again" in again.output
    assert _verify(store).exit_code == 0
    assert_same_stores(clean, store, ["images/128", "images/64", "labels", "done"], statistics=True)


def test_a_shard_index_pointing_past_two_to_the_64_is_damage_named_by_id(clean, tmp_path):
    """An index whose offset plus length wraps around 2**64 (its CRC32C made to match): one
    line naming the sample's id, no OverflowError."""
    import google_crc32c

    from hpa_pipeline.contract.shards import DamagedShard
    from hpa_pipeline.contract.store import Store

    store = _copy(clean, tmp_path)
    shard = _shard(store, 64, 2)
    data = bytearray(shard.read_bytes())
    n_index = 4 * 16  # 64² level, 64² chunks: one chunk per channel
    start = len(data) - n_index - 4
    data[start:start + 16] = (2**64 - 8).to_bytes(8, "little") + (16).to_bytes(8, "little")
    data[-4:] = google_crc32c.value(bytes(data[start:start + n_index])).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    opened = Store.open(store)
    with pytest.raises(DamagedShard, match=f"sample {opened.ids[2]}'s shard index points past the end"):
        opened.reader(64).read(2)
    assert f"sample {opened.ids[2]}'s shard index points past" in _verify(store).output
