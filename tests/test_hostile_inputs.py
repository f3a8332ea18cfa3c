"""Inputs that declare more than they should: a member whose header declares gigabytes (a zip
bomb), a TIFF or PNG header declaring 100,000² pixels. Each is checked against a documented
limit before anything is allocated; only its sample fails, the others are written."""
import io
import struct
import zipfile

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.prep.members import MAX_MEMBER_BYTES
from hpa_pipeline.prep.imaging import ImageError, MAX_PIXELS, read_image

from .helpers import read_archive_members

STORE_ARGS = ["--size", "128", "--levels", "1", "--chunk", "64", "--workers", "1"]


def _zip(path, members, declare=None):
    """A stored zip of ``members``; ``declare``: (name, size) whose headers claim that size."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    if declare is None:
        return path
    name, size = declare
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while at >= 0:
            length = struct.unpack_from("<H", data, at + (26 if signature == b"PK\x03\x04" else 28))[0]
            if bytes(data[at + name_at:at + name_at + length]) == encoded:
                struct.pack_into("<I", data, at + size_at, size)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def test_a_member_declaring_gigabytes_fails_only_its_sample(small_dataset, tmp_path):
    members = read_archive_members(small_dataset.train_archive)
    bomb = sorted(name for name, _ in members)[0]
    archive = _zip(tmp_path / "train.zip", members, declare=(bomb, 3 * 2**30))
    assert zipfile.ZipFile(archive).getinfo(bomb).file_size == 3 * 2**30 > MAX_MEMBER_BYTES
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["ingest", str(archive), "--csv", str(small_dataset.train_csv), "--out", str(out),
                                      *STORE_ARGS])
    assert result.exit_code == 3, result.output
    assert "11/12 samples done" in result.output and "Traceback" not in result.output
    assert f"{bomb}: declares 3.0 GiB unpacked, over the limit" in result.output


def _tiff_declaring(width: int, height: int) -> bytes:
    """A real 64² TIFF whose ImageWidth and ImageLength tags are rewritten to declare more."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((64, 64), np.uint8), photometric="minisblack")
    data = bytearray(buffer.getvalue())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag = struct.unpack_from("<H", data, at)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", data, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def test_an_image_header_declaring_100000_squared_is_refused_before_decoding():
    with pytest.raises(ImageError, match=r"declares 100000x100000 pixels, over the limit"):
        read_image(_tiff_declaring(100_000, 100_000), "x_green.tif")
    png = bytearray(__import__("imagecodecs").png_encode(np.zeros((8, 8), np.uint8)))
    struct.pack_into(">II", png, 16, 100_000, 100_000)
    with pytest.raises(ImageError, match="declares 100000x100000 pixels"):
        read_image(bytes(png), "x_green.png")
    assert 3072 * 3072 < MAX_PIXELS < 100_000 ** 2


def test_a_huge_tiff_header_fails_only_its_sample(small_dataset, tmp_path):
    members = read_archive_members(small_dataset.train_archive)
    victim = sorted(name for name, _ in members)[5]
    members = [(n, _tiff_declaring(100_000, 100_000) if n == victim else d) for n, d in members]
    archive = _zip(tmp_path / "train.zip", members)
    result = CliRunner().invoke(cli, ["ingest", str(archive), "--csv", str(small_dataset.train_csv), "--out",
                                      str(tmp_path / "s.zarr"), *STORE_ARGS])
    assert result.exit_code == 3 and "11/12 samples done" in result.output, result.output
    assert "declares 100000x100000 pixels" in result.output


@pytest.mark.parametrize("decoder", ["7zz", "py7zr"])
def test_member_names_with_wildcards_and_leading_spaces_are_read_by_both_decoders(small_dataset, tmp_path, decoder):
    """Legal names that 7-Zip's list file would take as wildcards (``*``, ``?``) or whose spaces
    a listing parser would strip: every sample is read, whatever its folder is called."""
    from hpa_pipeline.prep.archive import resolve_decoder

    if decoder == "7zz" and resolve_decoder("auto") is None:
        pytest.skip("no 7zz here")
    from .helpers import write_7z

    folders = [" lead", "star*", "what?", "trail ", "plain"]
    members = [(f"{folders[k % len(folders)]}/{name}", data)
               for k, (name, data) in enumerate(sorted(read_archive_members(small_dataset.train_archive)))]
    archive = write_7z(tmp_path / "odd.7z", members)
    result = CliRunner().invoke(cli, ["ingest", str(archive), "--csv", str(small_dataset.train_csv), "--out",
                                      str(tmp_path / "s.zarr"), "--decoder", decoder, *STORE_ARGS])
    assert result.exit_code == 0, result.output
    assert "12/12 samples done" in result.output
