import numpy as np
import pytest

from hpa_pipeline.prep.imaging import ImageError, area_resize, level_sizes, make_levels, read_tiff
from hpa_pipeline.contract.labels import FILTERS

from .helpers import random_sample, tiff_bytes


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "zstd", "packbits"])
@pytest.mark.parametrize("tile", [None, (64, 64)])
@pytest.mark.parametrize("container", [bytes, bytearray])  # archive members arrive as bytearray
def test_reads_strips_or_tiles_any_codec_8_or_16_bit(dtype, compression, tile, container):
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, (192, 192), dtype=dtype)
    decoded = read_tiff(container(tiff_bytes(image, compression, tile)), "x_red.tif")
    assert decoded.dtype == dtype and np.array_equal(decoded, image)


def test_a_file_in_memory_reads_like_bytesio():
    """MemoryFile (TIFFs read from archive buffers without a copy) seeks and reads as io.BytesIO."""
    import io

    from hpa_pipeline.prep.imaging import MemoryFile

    data = bytearray(range(256)) * 4
    ours, theirs = MemoryFile(data), io.BytesIO(bytes(data))
    for whence, offset, size in [(0, 10, 5), (1, 3, 0), (2, -7, 20), (0, 2000, 4), (1, -1990, 300), (0, 0, -1)]:
        assert ours.seek(offset, whence) == theirs.seek(offset, whence)
        assert ours.read(size) == theirs.read(size) and ours.tell() == theirs.tell()
    with pytest.raises(ValueError):
        ours.seek(-1)


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("layout", [{}, {"rowsperstrip": 16}, {"tile": (64, 192)}, {"tile": (64, 64)}])
def test_uncompressed_tiffs_in_memory_read_the_same_as_tifffile(byteorder, layout):
    """The no-copy path for uncompressed TIFFs (one strip, strips back to back, full-width tiles)
    gives tifffile's own array, native byte order, in either file byte order; tiles that are not
    full-width go through tifffile."""
    import io

    import tifffile

    image = np.random.default_rng(2).integers(0, 65535, (192, 192), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, byteorder=byteorder, photometric="minisblack", **layout)
    decoded = read_tiff(buffer.getvalue(), "x_red.tif")
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative and np.array_equal(decoded, image)


def test_reads_from_a_path_and_squeezes_a_leading_axis(tmp_path):
    image = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    path = tmp_path / "a_red.tif"
    path.write_bytes(tiff_bytes(image))
    assert read_tiff(path).shape == (64, 64)


@pytest.mark.parametrize("data, message", [
    (b"not a tiff at all", "unreadable TIFF"),
    (tiff_bytes(np.random.default_rng(0).integers(0, 255, (128, 128), np.uint8), "zlib")[:4000], "truncated TIFF"),
    (tiff_bytes(np.ones((256, 256), np.uint8))[:30000], "truncated TIFF"),
    (tiff_bytes(np.ones((32, 32, 3), np.uint8)), "single-channel"),  # RGB
    (tiff_bytes(np.ones((32, 32), np.float32)), "sample type float32"),
    (b"", "unreadable TIFF"),
])
def test_bad_tiffs_name_the_file_and_the_cause(data, message):
    for container in (bytes, bytearray):
        with pytest.raises(ImageError) as err:
            read_tiff(container(data), "abc_green.tif")
        assert str(err.value).startswith("abc_green.tif: ") and message in str(err.value)


def test_corrupt_compressed_data_is_an_image_error():
    data = bytearray(tiff_bytes(np.random.default_rng(1).integers(0, 255, (128, 128), np.uint8), "zlib"))
    data[200:260] = b"\xff" * 60  # damage the deflate stream, keep the header
    with pytest.raises(ImageError, match="abc_blue.tif: unreadable TIFF"):
        read_tiff(bytes(data), "abc_blue.tif")


def expected_levels(channels, size, levels, scale=1.0):
    """Independent reference: float block means of the source at each level size, rounded."""
    out, source = {}, np.stack([channels[f] for f in FILTERS]).astype(np.float64)
    for s in level_sizes(size, levels):
        f = source.shape[-1] // s
        out[s] = np.rint(source.reshape(4, s, f, s, f).mean(axis=(2, 4)) / scale)
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("factor", [3, 4])
def test_block_means_equal_opencvs_area_average(dtype, factor):
    """The block sums used for factors 3 and 4 (3072 -> 1024, 4096 -> 1024) give the
    working-precision level that OpenCV's INTER_AREA gives from the widened source: exactly for
    8-bit sources, within float32 rounding for 16-bit ones; all-max blocks included."""
    import cv2

    from hpa_pipeline.prep.imaging import _block_mean, _working_precision

    top = np.iinfo(dtype).max
    image = np.random.default_rng(factor).integers(0, top, (48 * factor, 48 * factor), dtype=dtype, endpoint=True)
    image[:factor, :factor] = top
    ours = _block_mean(image, factor)
    theirs = cv2.resize(_working_precision(image), (48, 48), interpolation=cv2.INTER_AREA)
    assert ours.dtype == theirs.dtype
    if dtype == np.uint8:
        assert np.array_equal(ours, theirs)
    else:
        assert np.allclose(ours, theirs, rtol=0, atol=top * 2e-7)  # float32 rounding of values up to 65535
    assert ours[0, 0] == (65280 if dtype == np.uint8 else top)


@pytest.mark.parametrize("source", [256, 384])  # 2x and 3x exact block means, like 2048 and 3072 -> 1024
def test_levels_match_an_independent_area_average_within_one_grey_level(source):
    channels = random_sample(np.random.default_rng(source), source)
    result = make_levels(channels, 128, 3)
    expected = expected_levels(channels, 128, 3)
    assert sorted(result.levels) == [32, 64, 128]
    for s, image in result.levels.items():
        assert image.dtype == np.uint8 and image.shape == (4, s, s)
        assert np.abs(image.astype(int) - expected[s]).max() <= 1
    assert result.source_shape == (source, source) and result.source_bits == 8


def test_16_bit_sources_become_uint8_by_v_over_257_or_stay_uint16():
    channels = random_sample(np.random.default_rng(5), 256, np.uint16)
    as8 = make_levels(channels, 128, 2)
    expected = expected_levels(channels, 128, 2, scale=257.0)
    assert as8.source_bits == 16
    for s, image in as8.levels.items():
        assert image.dtype == np.uint8 and np.abs(image.astype(int) - expected[s]).max() <= 1
    as16 = make_levels(channels, 128, 2, dtype="uint16")
    expected16 = expected_levels(channels, 128, 2)
    for s, image in as16.levels.items():
        assert image.dtype == np.uint16 and np.abs(image.astype(int) - expected16[s]).max() <= 1


def test_non_integer_ratio_is_still_area_weighted():
    image = np.zeros((300, 300), np.uint8)
    image[:, 150:] = 200
    out = area_resize(image, 128)
    assert out.shape == (128, 128)
    assert abs(out.mean() - 100) < 0.5  # area preserved
    assert out[:, 0].max() == 0 and out[:, -1].min() == pytest.approx(200, abs=1e-3)


def test_channels_must_agree():
    rng = np.random.default_rng(0)
    channels = random_sample(rng, 256)
    channels["yellow"] = channels["yellow"][:192, :192]
    with pytest.raises(ImageError, match="s1: channels differ in shape: .*yellow 192x192"):
        make_levels(channels, 128, 2, sample_id="s1")
    channels = random_sample(rng, 256)
    del channels["blue"]
    with pytest.raises(ImageError, match="s2: missing channel\\(s\\) blue"):
        make_levels(channels, 128, 2, sample_id="s2")
    channels = random_sample(rng, 256)
    channels["red"] = channels["red"].astype(np.uint16)
    with pytest.raises(ImageError, match="differ in sample type"):
        make_levels(channels, 128, 2, sample_id="s3")
    channels = {f: np.zeros((256, 320), np.uint8) for f in FILTERS}
    with pytest.raises(ImageError, match="256x320, expected a square image"):
        make_levels(channels, 128, 2, sample_id="s4")


def test_cannot_upsample_unless_asked_and_levels_must_halve():
    sample = random_sample(np.random.default_rng(0), 64)
    with pytest.raises(ImageError, match="s: source is 64x64, smaller than --size 128 .*--upscale"):
        make_levels(sample, 128, 1, sample_id="s")
    up = make_levels(sample, 128, 2, sample_id="s", upscale=True).levels
    assert up[128].shape == (4, 128, 128) and up[64].shape == (4, 64, 64)
    with pytest.raises(ValueError, match="cannot be halved"):
        level_sizes(100, 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_channel_sums_are_the_exact_sums_and_sums_of_squares(dtype):
    from hpa_pipeline.prep.imaging import channel_sums

    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    sizes = (1024, 64, 32)
    levels = {s: rng.integers(0, top, (4, s, s), dtype=dtype, endpoint=True) for s in sizes}
    levels[64][1] = top  # a saturated channel: the last bin counts
    levels[1024][2] = top
    sums = channel_sums(levels)
    for k, s in enumerate(sizes):
        values = levels[s].reshape(4, -1).astype(np.int64)
        assert sums[k, :, 0].tolist() == values.sum(axis=1).tolist()
        assert sums[k, :, 1].tolist() == (values ** 2).sum(axis=1).tolist()


FREED_BUFFER_SCRIPT = """
import ctypes, resource, sys
from hpa_pipeline.prep.memory import keep_freed_buffers
if sys.argv[1] == "on":
    assert keep_freed_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 20 << 20  # a 16-bit 3072x3072 member is 18.9 MB
for _ in range(2):  # the first round touches new memory either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.integration
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's malloc")
def test_freed_sample_buffers_are_reused_without_page_faults():
    """The second sample's buffers come from memory the first one freed: no page faults
    (without it, glibc maps such a block afresh or trims it, and all 5,120 pages fault in)."""
    import subprocess
    import sys

    def faults(mode):
        run = subprocess.run([sys.executable, "-c", FREED_BUFFER_SCRIPT, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert faults("off") > 4000
    assert faults("on") < 100
