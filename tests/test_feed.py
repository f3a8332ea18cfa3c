"""The GPU feed: persistent workers filling shared batch slots give exactly the batches
of in-process reading, start once per run, fail loudly, and the step loop never waits for the device."""
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

import hpa_pipeline.model.train as train_module
from hpa_pipeline.contract.errors import HpaError
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.data import EpochSampler, StoreDataset
from hpa_pipeline.model.feed import BatchFeed, FeedError
from hpa_pipeline.model.train import TrainConfig, train
from hpa_pipeline.prep.synth import SynthSpec

from .helpers import synthetic_stores, with_sample_3_damaged


@pytest.fixture(scope="module", params=["none", "zstd"])
def store(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"feed_{request.param}")
    _, out, _ = synthetic_stores(tmp, SynthSpec(n_train=24, n_test=1, image_sizes=(256,), seed=2),
                                 StoreSpec(size=128, levels=2, chunk=32, codec=request.param), test=False)
    return out


def in_process(dataset, sampler, batch):
    items = list(sampler)
    return [dataset.__getitems__(items[k:k + batch]) for k in range(0, len(items) - batch + 1, batch)]


def test_feed_gives_the_batches_of_in_process_reading_every_epoch(store):
    dataset = StoreDataset(str(store), 128, np.arange(24), crop=48, train=True, seed=1)  # any offset
    sampler = EpochSampler(24, seed=1, tag_epoch=True)
    feed = BatchFeed(dataset, batch_size=5, workers=2)
    try:
        for epoch in (0, 3):
            sampler.set_epoch(epoch)
            got = [tuple(t.clone() for t in b) for b in feed.batches(sampler, drop_last=True)]
            want = in_process(dataset, sampler, 5)
            assert len(got) == len(want) == 4
            for g, w in zip(got, want):
                for a, b in zip(g, w):
                    assert torch.equal(a, b)
        assert feed.worker_starts == 2  # started once, not per epoch
    finally:
        feed.close()


def test_a_consumer_that_stops_early_leaves_the_feed_usable(store):
    dataset = StoreDataset(str(store), 128, np.arange(24), crop=32, train=True)
    feed = BatchFeed(dataset, batch_size=4, workers=2, slots=4)
    try:
        first = next(iter(feed.batches(range(24))))
        assert first[0].shape == (4, 4, 32, 32)
        batches = list(feed.batches(range(10)))  # a new pass after an abandoned one
        assert [len(b[2]) for b in batches] == [4, 4, 2]
        assert torch.cat([b[2] for b in batches]).tolist() == list(range(10))
    finally:
        feed.close()


class Broken(StoreDataset):
    def fill(self, item, out):
        if item == 5:
            raise ValueError("sample 5 cannot be read")
        return super().fill(item, out)


def test_a_worker_error_names_its_cause(store):
    feed = BatchFeed(Broken(str(store), 64, np.arange(24)), batch_size=4, workers=1)
    try:
        with pytest.raises(FeedError, match="sample 5 cannot be read"):
            list(feed.batches(range(24)))
    finally:
        feed.close()


@pytest.mark.integration
def test_a_damaged_shard_stops_every_worker_count_with_its_line(store, tmp_path):
    """Workers that read a shard failing its checks hand the error over as itself (not a bug's
    traceback) and the pass ends: no wait for an answer that never comes."""
    from hpa_pipeline.contract.shards import DamagedShard

    damaged = with_sample_3_damaged(store, tmp_path, 128)
    from hpa_pipeline.contract.store import Store

    sample = Store.open(damaged).ids[3]
    for workers in (1, 2):
        feed = BatchFeed(StoreDataset(str(damaged), 128, np.arange(24)), batch_size=4, workers=workers)
        try:
            with pytest.raises(DamagedShard, match=f"sample {sample}:") as caught:
                list(feed.batches(range(24)))
            assert "Traceback" not in caught.value.line() and "hpa-pipe verify" in caught.value.line()
            assert not feed._processes  # stopped, not left waiting on their queue
            assert [len(b[2]) for b in feed.batches(range(3))] == [3]  # a new pass starts afresh
        finally:
            feed.close()


def test_a_damaged_shard_stops_the_stream_loader_with_its_line(store, tmp_path):
    """``--stream``: DataLoader workers hand the damaged shard's error over as itself."""
    from hpa_pipeline.contract.shards import DamagedShard
    from hpa_pipeline.model.streaming import ShardStream, make_stream_loader

    damaged = with_sample_3_damaged(store, tmp_path, 128)
    for workers in (0, 1, 2):
        stream = ShardStream(StoreDataset(str(damaged), 128, np.arange(24), crop=64, train=True), buffer=2)
        with pytest.raises(DamagedShard) as caught:
            list(make_stream_loader(stream, 4, workers))
        assert "Traceback" not in caught.value.line() and "hpa-pipe verify" in caught.value.line()


class Slow(StoreDataset):
    def fill(self, item, out):
        time.sleep(0.5)
        return super().fill(item, out)


@pytest.mark.integration
def test_a_dead_worker_is_an_error_not_a_hang(store, monkeypatch):
    import hpa_pipeline.model.feed as feed_module

    monkeypatch.setattr(feed_module, "POLL_S", 0.2)
    feed = BatchFeed(Slow(str(store), 64, np.arange(24)), batch_size=4, workers=1)
    try:
        batches = feed.batches(range(24))
        feed._start()
        os.kill(feed._processes[0].pid, signal.SIGKILL)
        with pytest.raises(FeedError, match="died") as caught:
            list(batches)
        assert isinstance(caught.value, HpaError)  # one line for the user, not a bug's traceback
        assert caught.value.line().startswith("a loader worker died: out of memory? (process ")
        assert "SIGKILL" in str(caught.value)
    finally:
        feed.close()


def test_uncompressed_crops_are_read_straight_into_the_batch(store):
    """``preadv`` puts each row of a crop in its place: for an uncompressed store the reader
    makes no intermediate copy of the chunk (one read per chunk and channel, no pread) once it
    has checked that chunk's CRC32C, which it does by reading the chunk whole the first time."""
    from hpa_pipeline.contract import shards

    dataset = StoreDataset(str(store), 128, np.arange(24), crop=48, train=True)
    reader = dataset.reader()
    calls = {"pread": 0}
    real = os.pread

    def counting(*args):
        calls["pread"] += 1
        return real(*args)

    import zarr

    expected = zarr.open_array(str(store), path="images/128")[3, :, 10:58, 17:65]
    uncompressed = reader.compressor is None
    for first_time in (True, False):
        calls["pread"] = 0
        os.pread = counting
        try:
            out = np.empty((4, 48, 48), np.uint8)
            reader.read(3, 10, 17, 48, 48, out=out)
        finally:
            os.pread = real
        np.testing.assert_array_equal(out, expected)
        whole_chunks = first_time or not uncompressed  # the index, then each chunk it reads whole
        assert calls["pread"] == (1 + 4 * 2 * 3 if whole_chunks else 1)
    assert shards._read_into is not None


def tiny(store, out, **overrides):
    values = dict(store=str(store), out=str(out), arch="se_resnet_tiny", level=64, crop=48, folds=4, fold=0,
                  epochs=3, batch_size=4, lr=2e-3, workers=2, seed=0, drop_rate=0.0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.integration
def test_workers_start_once_per_run_and_train_like_in_process_reading(store, tmp_path, monkeypatch):
    feeds = []
    real_init = BatchFeed.__init__

    def record(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        feeds.append(self)

    monkeypatch.setattr(BatchFeed, "__init__", record)
    train(tiny(store, tmp_path / "workers"))
    assert [f.worker_starts for f in feeds] == [2, 1]  # training and validation, for 3 epochs
    train(tiny(store, tmp_path / "inline", workers=0))
    a = torch.load(tmp_path / "workers" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "inline" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.integration  # over a second: the fast tier has a minute
def test_epoch_size_sets_the_steps_and_draws_with_replacement(store, tmp_path):
    summary = train(tiny(store, tmp_path / "run", epochs=1, epoch_size=40, workers=0))
    assert summary["step"] == 10  # 40 draws from a fold of ~18, batches of 4
    draws = list(EpochSampler(18, seed=0, draws=40))
    assert len(draws) == 40 and len(set(draws)) < 18 + 1


SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")


@pytest.mark.integration
def test_the_step_loop_does_not_wait_for_the_device(store, tmp_path, monkeypatch):
    """Every call in our code that would make the host wait for the device, made while an epoch
    trains, comes from the periodic loss read (check_finite), never from the per-step path."""
    package = os.path.dirname(train_module.__file__)
    calls = []

    def watch(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(package):
                stack = []
                f = frame
                while f is not None:
                    stack.append(f.f_code.co_name)
                    f = f.f_back
                if "train_one_epoch" in stack:
                    calls.append((name, frame.f_code.co_name))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in SYNCING:
        watch(name)
    monkeypatch.setattr(train_module, "LOG_EVERY", 1000)
    train(tiny(store, tmp_path / "run", epochs=2, ema=0.9, epoch_size=48, workers=0))
    places = {place for _, place in calls}
    assert places <= {"check_finite", "all_finite"}, calls
    # 12 steps an epoch: reads after the warm-up steps and at the end, not per step
    assert len(calls) <= 2 * 3 * 2, calls


def test_the_feed_grows_to_the_workers_the_measured_wait_asks_for(store):
    dataset = StoreDataset(str(store), 128, np.arange(24), crop=32, train=True)
    feed = BatchFeed(dataset, batch_size=4, workers=1)
    try:
        first = [b[2].clone() for b in feed.batches(range(12))]
        feed.wait_s = 5.0  # the loop waited half of a 10 s window: the feed gives ~half the demand
        assert feed.balance(max_workers=8, elapsed_s=10.0) == 3  # ceil(1.2 * 1 / 0.5)
        assert feed.balance(max_workers=8, elapsed_s=10.0) == 3  # no wait since: no change
        feed.wait_s = 9.0
        assert feed.balance(max_workers=4, elapsed_s=10.0) == 4  # never beyond the cap
        again = [b[2].clone() for b in feed.batches(range(12))]
        assert [a.tolist() for a in again] == [a.tolist() for a in first]  # same batches, in order
        assert feed.worker_starts == 4  # each worker started once
    finally:
        feed.close()


@pytest.mark.integration
def test_workers_auto_trains_like_in_process_reading(store, tmp_path):
    train(tiny(store, tmp_path / "auto", workers=None, epochs=2))
    train(tiny(store, tmp_path / "inline", workers=0, epochs=2))
    a = torch.load(tmp_path / "auto" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "inline" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("refuse_at", [None, 2])
def test_pinned_slots_are_unregistered_before_their_memory_goes(store, monkeypatch, refuse_at):
    """A CUDA registration that outlives its mapping makes CUDA refuse what is mapped there next
    (an H100 run failed with "resource already mapped" in the following convolution): close()
    unregisters every pinned slot once; a refused registration undoes the others at once."""
    import hpa_pipeline.model.feed as feed_module

    registered, unregistered = [], []

    def register(tensor):
        if len(registered) == refuse_at:
            return False
        registered.append(tensor.data_ptr())
        return True

    monkeypatch.setattr(feed_module, "_register_pinned", register)
    monkeypatch.setattr(feed_module, "_unregister_pinned", lambda tensor: unregistered.append(tensor.data_ptr()))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)  # no GPU here: the registration logic only
    dataset = StoreDataset(str(store), 128, np.arange(24), crop=32, train=True)
    feed = BatchFeed(dataset, batch_size=4, workers=1, device="cuda")
    if refuse_at is None:
        assert feed.pinned and len(registered) == 4 and unregistered == []
    else:
        assert not feed.pinned and unregistered == registered == [t.data_ptr() for t in feed._slot_tensors()][:2]
    feed.close()
    feed.close()
    assert not feed.pinned and sorted(unregistered) == sorted(registered)
