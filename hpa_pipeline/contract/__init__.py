"""The contract between preprocessing and modelling: what a store holds and how it is read.

- :mod:`.labels`: the 28 classes, the four filters in channel order, strict CSV parsing.
- :mod:`.store`: the dataset store's layout (levels, arrays, attributes, statistics, done flags,
  report) and opening it.
- :mod:`.spec`: what a store is asked to be (sizes, levels, dtype, codec); imports without zarr.
- :mod:`.shards`: whole-sample shards in Zarr v3's sharding format, written and read directly.
- :mod:`.locations`: local folders and fsspec URLs (``s3://...``).
- :mod:`.atomic`: write-to-temporary-then-rename, so nothing is ever half-written.

Needs zarr and numpy, never torch, OpenCV or Dask.
"""
