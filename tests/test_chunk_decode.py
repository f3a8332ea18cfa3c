"""Crops decoded from the chunks' stored bytes (the GPU feed's path) equal the loader's own,
bit for bit, on the CPU; on a GPU the same batch decoded by nvCOMP equals the CPU's (CUDA only)."""
import numpy as np
import pytest
import torch

from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.chunk_decode import FRAME_ALIGNMENT, choose_decoder, crops_of, read_compressed_batch
from hpa_pipeline.model.data import StoreDataset
from hpa_pipeline.prep.ingest import ingest

from .helpers import with_sample_3_damaged



def needs_cuda(test):
    """nvCOMP's decode against the CPU's, on a GPU (``make bench-gpu`` runs these first)."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module", params=[("zstd", "uint8"), ("none", "uint8"), ("zstd", "uint16")])
def store(request, small_dataset, tmp_path_factory):
    codec, dtype = request.param
    out = tmp_path_factory.mktemp("chunks") / f"{codec}-{dtype}.zarr"
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, out,
                  StoreSpec(size=256, levels=2, chunk=64, codec=codec, dtype=dtype)).exit_code == 0
    return out, codec


def test_crops_from_stored_chunks_equal_the_loaders_bit_for_bit(store):
    path, codec = store
    for crop, grid in ((96, 1), (64, 64), (128, 1)):
        dataset = StoreDataset(str(path), 256, np.arange(12), crop=crop, train=True, seed=3, crop_grid=grid)
        for epoch in (0, 1):
            items = [(epoch, k) for k in range(12)]
            expected = dataset.__getitems__(items)
            got = crops_of(read_compressed_batch(dataset, items, codec), codec, torch.device("cpu"))
            assert got[0].dtype == expected[0].dtype and torch.equal(got[0], expected[0])
            for a, b in zip(got[1:], expected[1:]):
                assert torch.equal(a, b)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.integration)])
def test_whole_images_from_stored_chunks_equal_the_loaders_bit_for_bit(store, workers):
    """What validation and predict read with --decode gpu (here decoded on the CPU): every whole
    image of the level in order, as the loader's own workers give it."""
    from hpa_pipeline.model.inference import whole_image_batches

    path, codec = store
    for level in (256, 128):  # 128: two chunks a side, one more row and column of empty tiles
        dataset = StoreDataset(str(path), level, np.arange(12))
        cpu = torch.device("cpu")
        with whole_image_batches(dataset, 5, workers, cpu) as batches:
            theirs = [tuple(t.clone() for t in b) for b in batches]
        with whole_image_batches(dataset, 5, workers, cpu, codec=codec) as batches:
            ours = list(batches)
        assert [len(b[0]) for b in ours] == [len(b[0]) for b in theirs] == [5, 5, 2]
        for a, b in zip(ours, theirs):
            assert a[0].shape[-1] == level and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.integration)])
def test_a_damaged_chunk_read_for_the_gpu_is_named_by_its_sample(store, tmp_path, workers):
    """Chunks read as stored for a GPU to decode are checked in the slot: a flipped byte is the
    damaged-shard line naming the sample, from the workers as in this process."""
    from hpa_pipeline.contract.shards import DamagedShard
    from hpa_pipeline.contract.store import Store
    from hpa_pipeline.model.chunk_decode import GpuDecoding

    path, codec = store
    damaged = with_sample_3_damaged(path, tmp_path, 256)
    sample = Store.open(damaged).ids[3]
    decoding = GpuDecoding(StoreDataset(str(damaged), 256, np.arange(12)), 4, workers, torch.device("cpu"), codec)
    try:
        with pytest.raises(DamagedShard, match=f"sample {sample}: an inner chunk fails its CRC32C checksum"):
            list(decoding.batches(range(12)))
    finally:
        decoding.close()


def test_every_chunk_read_for_the_gpu_starts_where_nvcomp_can_read_it(store):
    """nvCOMP's batched decoders read a frame only from an address aligned to 8 bytes; stored
    chunks lie back to back in a shard at any offset, so each is read to an aligned place."""
    path, codec = store
    dataset = StoreDataset(str(path), 256, np.arange(12), crop=96, train=True, seed=3)
    batch = read_compressed_batch(dataset, list(range(12)), codec)
    starts = batch.starts.numpy()
    assert FRAME_ALIGNMENT % 8 == 0 and len(starts) > 12
    assert (starts % FRAME_ALIGNMENT == 0).all(), starts[starts % FRAME_ALIGNMENT != 0][:5]


def test_uncompressed_chunks_are_used_where_they_lie(store):
    """A ``--codec none`` store's chunks need no decoding: the batch's pixels are a view of the
    bytes read, each chunk at the slot's fixed stride, not a copy of every chunk."""
    from hpa_pipeline.model.chunk_decode import decode_chunks

    path, codec = store
    if codec != "none":
        pytest.skip("a compressed store's chunks are decoded")
    dataset = StoreDataset(str(path), 256, np.arange(12), crop=96, train=True, seed=3)
    batch = read_compressed_batch(dataset, list(range(12)), codec)
    pixels = decode_chunks(batch, codec, torch.device("cpu"))
    assert pixels.untyped_storage().data_ptr() == batch.data.untyped_storage().data_ptr()


def test_a_chunk_larger_than_the_slot_is_damage_not_an_overflow(store):
    """The slot holds the largest chunk the layout can store; a shard whose index claims more
    (checked here with a slot too small for a real chunk) stops the read with the damage line
    instead of writing past the slot."""
    from hpa_pipeline.contract.shards import DamagedShard

    path, _ = store
    reader = StoreDataset(str(path), 256, np.arange(12)).reader()
    out = np.zeros(100, np.uint8)
    with pytest.raises(DamagedShard, match="larger than any chunk of this layout"):
        reader.read_stored_into(3, [(0, 0, 0), (1, 0, 0)], out, 0)
    assert not out.any()


@needs_cuda
def test_whole_images_decoded_on_the_gpu_equal_the_cpus(store):
    from hpa_pipeline.model.inference import whole_image_batches

    path, codec = store
    if codec == "zstd":
        pytest.importorskip("nvidia.nvcomp")
    dataset = StoreDataset(str(path), 256, np.arange(12))
    with whole_image_batches(dataset, 4, 0, torch.device("cpu"), codec=codec) as batches:
        cpu = [b[0] for b in batches]
    with whole_image_batches(dataset, 4, 2, torch.device("cuda"), codec=codec) as batches:
        gpu = [b[0].cpu() for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(gpu, cpu)) and len(gpu) == 3


@needs_cuda
def test_gpu_decoding_equals_cpu_decoding(store):
    path, codec = store
    if codec == "zstd":
        pytest.importorskip("nvidia.nvcomp")
    dataset = StoreDataset(str(path), 256, np.arange(12), crop=96, train=True, seed=3)
    batch = read_compressed_batch(dataset, list(range(12)), codec)
    cpu = crops_of(batch, codec, torch.device("cpu"))[0]
    gpu = crops_of(batch.pin_memory(), codec, torch.device("cuda"))[0]
    assert torch.equal(gpu.cpu(), cpu)


def test_the_decoder_is_chosen_with_its_reason():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_decoder("auto", "zstd", cpu) == ("cpu", "decoding on the CPU: training runs on cpu, not a GPU")
    chosen, why = choose_decoder("auto", "blosc-zstd", cuda)
    assert chosen == "cpu" and "Blosc's container" in why and "--codec zstd" in why
    assert choose_decoder("cpu", "zstd", cuda)[0] == "cpu"
    assert choose_decoder("auto", "none", cuda)[0] == "gpu"  # uncompressed chunks need no nvCOMP
    with pytest.raises(Exception, match="--decode gpu: training runs on cpu"):
        choose_decoder("gpu", "zstd", cpu)
    chosen, why = choose_decoder("auto", "none", cuda, ruled_out=["--stream reads whole shards"])
    assert chosen == "cpu" and why == "decoding on the CPU: --stream reads whole shards"
    with pytest.raises(Exception, match="--decode gpu: --stream reads whole shards"):
        choose_decoder("gpu", "none", cuda, ruled_out=["--stream reads whole shards"])


def test_an_nvcomp_too_old_for_the_batch_call_keeps_decoding_on_the_cpu(monkeypatch):
    """The decoder carves a batch's frames out of one buffer (nvCOMP 6's ``as_arrays`` by
    offsets); an older nvCOMP, as other GPU libraries bring it, is a reason, not a traceback
    in the middle of training. (A stand-in module: this machine has no nvCOMP to downgrade.)"""
    import sys
    import types

    import hpa_pipeline.model.chunk_decode as chunk_decode

    cuda = torch.device("cuda")
    for version, usable in (("5.1.0", False), ("6.0.0", True), ("7.2.1", True)):
        monkeypatch.setitem(sys.modules, "nvidia.nvcomp", types.SimpleNamespace(__version__=version))
        assert (chunk_decode.nvcomp_available() is None) == usable
    monkeypatch.setitem(sys.modules, "nvidia.nvcomp", types.SimpleNamespace(__version__="5.1.0"))
    chosen, why = choose_decoder("auto", "zstd", cuda)
    assert chosen == "cpu" and why == ("decoding on the CPU: nvCOMP 5.1.0 is installed; decoding on the GPU "
                                       "needs 6.0 or later (pip install 'hpa-pipeline[gpu]')")
    with pytest.raises(Exception, match=r"--decode gpu: nvCOMP 5\.1\.0 is installed"):
        choose_decoder("gpu", "zstd", cuda)


def test_an_nvcomp_that_cannot_decode_here_keeps_auto_on_the_cpu(monkeypatch):
    """An nvCOMP that loads but cannot decode (a wheel for another CUDA than the driver's; here
    there is no GPU driver at all) is found by ``auto``'s test batch and named, not met in the
    middle of training; ``gpu`` is taken at its word."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "nvidia.nvcomp", types.SimpleNamespace(__version__="6.0.0"))
    cuda = torch.device("cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the stand-in nvCOMP would be what fails")
    chosen, why = choose_decoder("auto", "zstd", cuda)
    assert chosen == "cpu" and why.startswith("decoding on the CPU: nvCOMP failed a test decode on cuda (")
    assert "\n" not in why
    assert choose_decoder("gpu", "zstd", cuda)[0] == "gpu"


@needs_cuda
def test_nvcomp_decodes_the_test_batch_here():
    """What ``--decode auto`` checks before it uses the GPU, on a GPU."""
    from hpa_pipeline.model.chunk_decode import nvcomp_fails

    pytest.importorskip("nvidia.nvcomp")
    assert nvcomp_fails(torch.device("cuda")) is None


@pytest.mark.integration  # loader worker processes
def test_the_compressed_feed_gives_the_batches_of_the_loader_feed(store):
    """Worker processes reading stored bytes, the batch decoded in this process: the same
    batches, in the same order, as the loader workers that decode crops themselves."""
    from hpa_pipeline.model.data import EpochSampler
    from hpa_pipeline.model.feed import BatchFeed
    from hpa_pipeline.model.chunk_decode import GpuDecoding

    path, codec = store
    dataset = StoreDataset(str(path), 256, np.arange(12), crop=96, train=True, seed=5)
    sampler = EpochSampler(12, seed=5, tag_epoch=True)
    cpu = torch.device("cpu")
    decoding = GpuDecoding(dataset, 4, 2, cpu, codec)
    feed = BatchFeed(dataset, 4, 1, cpu)
    try:
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            ours = [tuple(t.clone() for t in b) for b in decoding.batches(sampler, drop_last=True)]
            theirs = [tuple(t.clone() for t in b) for b in feed.batches(sampler, drop_last=True)]
            assert len(ours) == len(theirs) == 3
            for a, b in zip(ours, theirs):
                assert all(torch.equal(x, y) for x, y in zip(a, b))
    finally:
        feed.close()
        decoding.close()


@pytest.mark.integration  # a training command
def test_decode_gpu_on_a_machine_without_one_is_one_line(small_dataset, tmp_path):
    from click.testing import CliRunner

    from hpa_pipeline.cli import cli

    out = tmp_path / "s.zarr"
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, out,
                  StoreSpec(size=128, levels=2, chunk=64)).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "--store", str(out), "--out", str(tmp_path / "run"), "--arch",
                                      "se_resnet_tiny", "--level", "64", "--crop", "48", "--epochs", "1",
                                      "--workers", "0", "--weights", "none", "--device", "cpu", "--decode", "gpu"])
    assert result.exit_code == 2 and "--decode gpu: training runs on cpu, not a GPU" in result.output
    assert "Traceback" not in result.output
