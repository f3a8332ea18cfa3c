"""The decoders benchmark's model of a long archive (``benchmarks/bench_decoders.projected``):
its README figures say which limit holds, so the arithmetic is checked here."""
import pytest

from benchmarks.bench_decoders import projected


def test_one_stream_is_bound_by_the_archive_whatever_the_cores():
    # 7zz t: 10 CPU-s on its one thread; in ingest 7zz took 10.4, and the samples 1.5 CPU-s
    ratio, limit = projected(floor_cpu=10.0, decoder_cpu=10.4, work=1.5, parallel=1, cores=16)
    assert ratio == pytest.approx(1.04) and limit.startswith("the archive (1 stream(s) for 16 cores)")


def test_many_streams_are_bound_by_the_cores_and_add_the_samples_work():
    ratio, limit = projected(floor_cpu=10.0, decoder_cpu=10.4, work=1.5, parallel=100, cores=16)
    assert ratio == pytest.approx((10.4 + 1.5) / 10.0) and limit.startswith("the cores")


def test_samples_that_need_more_than_the_other_cores_set_the_time():
    # deflated TIFFs: the samples' work (20 CPU-s) over 1 worker beside the decoder on 2 cores
    ratio, limit = projected(floor_cpu=10.0, decoder_cpu=10.0, work=20.0, parallel=1, cores=2)
    assert ratio == pytest.approx(2.0) and limit.startswith("the cores")
