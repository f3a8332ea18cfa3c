import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from hpa_pipeline.contract.shards import write_sample_shard


@pytest.mark.parametrize("compressors", [None, [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")],
                                         [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_direct_shards_read_back_through_zarr_like_zarrs_own(tmp_path, compressors, dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (3, 4, 128, 128)).astype(dtype)
    images[1, :, :64] = 0  # some all-fill chunks
    for name in ("ours", "zarrs"):
        zarr.create_array(str(tmp_path / name), shape=(3, 4, 128, 128), dtype=dtype, chunks=(1, 1, 64, 64),
                          shards=(1, 4, 128, 128), compressors=compressors, fill_value=0)
    theirs = zarr.open_array(str(tmp_path / "zarrs"), mode="r+")
    for i in range(3):
        write_sample_shard(str(tmp_path), "ours", i, images[i])
        theirs[i] = images[i]
    ours = zarr.open_array(str(tmp_path / "ours"), mode="r")
    assert np.array_equal(ours[:], images) and np.array_equal(ours[:], theirs[:])
    assert np.array_equal(ours[2, 1, 10:90, 30:100], images[2, 1, 10:90, 30:100])  # partial reads
    assert not list(tmp_path.rglob("*.partial"))


def test_rewriting_a_shard_replaces_it_whole(tmp_path):
    zarr.create_array(str(tmp_path / "a"), shape=(2, 4, 64, 64), dtype="uint8", chunks=(1, 1, 32, 32),
                      shards=(1, 4, 64, 64), fill_value=0, compressors=None)
    write_sample_shard(str(tmp_path), "a", 1, np.full((4, 64, 64), 7, np.uint8))
    write_sample_shard(str(tmp_path), "a", 1, np.full((4, 64, 64), 9, np.uint8))
    array = zarr.open_array(str(tmp_path / "a"), mode="r")
    assert (array[1] == 9).all() and (array[0] == 0).all()


@pytest.mark.parametrize("compressors", [None, [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")]])
def test_shard_reader_regions_equal_zarrs(tmp_path, compressors):
    """The loader's reader (only the chunks a region touches) against zarr, uncompressed and lz4."""
    from hpa_pipeline.contract.shards import ShardReader

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (2, 4, 128, 128)).astype("uint8")
    zarr.create_array(str(tmp_path / "a"), shape=images.shape, dtype="uint8", chunks=(1, 1, 32, 32),
                      shards=(1, 4, 128, 128), compressors=compressors, fill_value=0)
    write_sample_shard(str(tmp_path), "a", 0, images[0])  # sample 1 never written: reads as fill
    reader = ShardReader(str(tmp_path), "a")
    assert reader.layout is not None  # the direct path, not zarr's
    for y, x, h, w in ((0, 0, 128, 128), (7, 50, 64, 64), (96, 96, 32, 32), (31, 1, 33, 90)):
        assert np.array_equal(reader.read(0, y, x, h, w), images[0, :, y:y + h, x:x + w])
        assert not reader.read(1, y, x, h, w).any()
