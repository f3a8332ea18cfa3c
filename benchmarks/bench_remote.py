"""Training crops from a store on S3: random access against streaming order.

The store (1024 level, default layout) is served by a real S3 API on localhost (moto's server,
as in the tests) and read with s3fs. Baseline: ``StoreDataset``, each 512² crop read where it
lies (zarr fetches the shard index and the inner chunks the crop touches, one request each).
Ours: ``ShardStream`` (``--stream``), one GET per sample's whole shard and a shuffle buffer.
One process, no loader workers, so the figure is per core; on a real network each request
also pays a round trip (~1-20 ms), which makes the request count matter more than here.
"""
from __future__ import annotations

import os

import numpy as np

from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.model.data import StoreDataset, make_loader
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.streaming import ShardStream, make_stream_loader

from .common import full_size_tiffs, report, timer

CROP, BATCH, N_SAMPLES = 512, 8, 48


def s3_endpoint():
    """A moto S3 server on localhost; AWS_* variables point s3fs at it. Returns the server."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("bench")
    return server


def crops_per_second(loader) -> float:
    with timer() as t:
        n = sum(len(batch[0]) for batch in loader)
    return n / t()


def run() -> dict:
    data, tiff = full_size_tiffs()
    server = s3_endpoint()
    try:
        url = "s3://bench/train.zarr"
        assert build_zarr(tiff, data / "train.csv", url, StoreSpec(), workers=os.cpu_count() or 1).exit_code == 0
        dataset = StoreDataset(url, 1024, np.arange(N_SAMPLES), crop=CROP, train=True)
        random_access = crops_per_second(make_loader(dataset, BATCH, 0))
        streamed = crops_per_second(make_stream_loader(ShardStream(dataset, buffer=8), BATCH, 0))
    finally:
        server.stop()
    return report("remote", {
        "store": f"{N_SAMPLES} samples, 1024 level, 256² chunks, zstd-1, on moto S3 (localhost) via s3fs",
        "baseline: random access (StoreDataset), crops/s per core": round(random_access, 1),
        "ours: streaming order (ShardStream, buffer 8), crops/s per core": round(streamed, 1),
        "ratio": round(streamed / random_access, 2),
    })


if __name__ == "__main__":
    run()
