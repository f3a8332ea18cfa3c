import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from hpa_pipeline.contract.shards import write_sample_shard


@pytest.mark.parametrize("compressors", [None, [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")],
                                         [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
                                         [ZstdCodec(level=1, checksum=False), Crc32cCodec()]])
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


@pytest.mark.parametrize("compressors", [None, [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
                                         [ZstdCodec(level=1, checksum=False), Crc32cCodec()]])
def test_shard_reader_regions_equal_zarrs(tmp_path, compressors):
    """The loader's reader (only the chunks a region touches) against zarr, uncompressed and lz4."""
    from hpa_pipeline.contract.shards import DamagedShard, ShardReader

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (2, 4, 128, 128)).astype("uint8")
    zarr.create_array(str(tmp_path / "a"), shape=images.shape, dtype="uint8", chunks=(1, 1, 32, 32),
                      shards=(1, 4, 128, 128), compressors=compressors, fill_value=0)
    write_sample_shard(str(tmp_path), "a", 0, images[0])  # sample 1 never written
    reader = ShardReader(str(tmp_path), "a")
    assert reader.layout is not None  # the direct path, not zarr's
    for y, x, h, w in ((0, 0, 128, 128), (7, 50, 64, 64), (96, 96, 32, 32), (31, 1, 33, 90)):
        assert np.array_equal(reader.read(0, y, x, h, w), images[0, :, y:y + h, x:x + w])
        with pytest.raises(DamagedShard, match="sample 1's shard is missing"):  # never zeros
            reader.read(1, y, x, h, w)


@pytest.fixture(scope="module")
def damaged_inputs(small_dataset, tmp_path_factory):
    """A clean 4-sample test store and a trained tiny run to predict with."""
    from hpa_pipeline.contract.store import StoreSpec
    from hpa_pipeline.prep.ingest import ingest

    tmp = tmp_path_factory.mktemp("damage")
    spec = StoreSpec(size=128, levels=2, chunk=64)
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, tmp / "clean.zarr", spec).exit_code == 0
    return small_dataset, tmp / "clean.zarr"


def _damage(store, how):
    import shutil

    damaged = store.parent / f"{how}.zarr"
    if damaged.exists():
        shutil.rmtree(damaged)
    shutil.copytree(store, damaged)
    shard = damaged / "images" / "64" / "c" / "3" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    if how == "deleted":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(bytes(data[:40]))
    elif how == "index_flipped":
        data[-10] ^= 0xFF
        shard.write_bytes(bytes(data))
    return damaged, shard


@pytest.mark.parametrize("how", ["deleted", "truncated", "index_flipped"])
def test_a_done_samples_damaged_shard_is_an_error_naming_the_file_never_zeros(damaged_inputs, how):
    from hpa_pipeline.contract.shards import DamagedShard, ShardReader

    _, clean = damaged_inputs
    damaged, shard = _damage(clean, how)
    reader = ShardReader(str(damaged), "images/64")
    assert reader.read(2).any()  # the samples around it read as before
    with pytest.raises(DamagedShard, match=rf"{shard}: sample 3"):
        reader.read(3)


@pytest.mark.parametrize("codec", ["zstd", "blosc-zstd", "lz4", "none"])
def test_a_flipped_byte_inside_a_chunk_is_found_by_the_reader_and_by_zarr(small_dataset, tmp_path, codec):
    """Damage that leaves the index intact: each inner chunk's CRC32C (zarr's crc32c codec, so
    any Zarr v3 reader checks it) is checked by the loader's reader, on the uncompressed fast
    path too, before a pixel of it is used."""
    from hpa_pipeline.contract.shards import DamagedShard, ShardReader
    from hpa_pipeline.contract.store import StoreSpec
    from hpa_pipeline.prep.ingest import ingest

    store = tmp_path / "s.zarr"
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, store,
                  StoreSpec(size=128, levels=2, chunk=64, codec=codec)).exit_code == 0
    shard = store / "images" / "128" / "c" / "5" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01  # one bit of the first chunk's payload
    shard.write_bytes(bytes(data))
    reader = ShardReader(str(store), "images/128")
    assert reader.checksummed
    with pytest.raises(DamagedShard, match=rf"{shard}: sample 5: an inner chunk fails its CRC32C"):
        reader.read(5, 0, 0, 48, 48)  # a crop inside the damaged chunk
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        zarr.open_array(str(store), path="images/128")[5]
    assert reader.read(4).any()


@pytest.mark.parametrize("kind", ["big_endian", "fill_value", "dot_keys"])
def test_layouts_the_direct_path_does_not_assume_go_through_zarr(tmp_path, kind):
    """Each assumption of the direct writer and reader is checked, not taken: a big-endian bytes
    codec, a fill value other than 0 and '.'-separated chunk keys are written and read by zarr."""
    from zarr.codecs import BytesCodec

    from hpa_pipeline.contract.shards import ShardReader

    options = {"big_endian": dict(serializer=BytesCodec(endian="big"), dtype="uint16"),
               "fill_value": dict(fill_value=7, dtype="uint8"),
               "dot_keys": dict(chunk_key_encoding={"name": "default", "separator": "."}, dtype="uint8")}[kind]
    dtype = options.pop("dtype")
    zarr.create_array(str(tmp_path / "a"), shape=(2, 4, 64, 64), dtype=dtype, chunks=(1, 1, 32, 32),
                      shards=(1, 4, 64, 64), compressors=None, **options)
    image = np.random.default_rng(0).integers(0, 200, (4, 64, 64)).astype(dtype)
    write_sample_shard(str(tmp_path), "a", 1, image)
    reader = ShardReader(str(tmp_path), "a")
    assert reader.layout is None
    assert np.array_equal(reader.read(1), image)
    assert np.array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[1], image)
