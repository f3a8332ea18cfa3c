"""The contract between preprocessing and modelling: what a store holds and how it is read.

- :mod:`.store`: :class:`.store.Store`, the dataset store's layout (levels, arrays, attributes,
  statistics, done flags, report), opening and creating one; array and attribute names are
  defined there and nowhere else.
- :mod:`.spec`: what a store is asked to be (sizes, levels, dtype, codec); imports without zarr.
- :mod:`.labels`: the 28 classes, the four filters in channel order, strict CSV parsing.
- :mod:`.shards`: whole-sample shards in Zarr v3's sharding format, written and read directly.
- :mod:`.duplicates`: near-duplicate pairs from the perceptual hashes a store holds.
- :mod:`.locations`: local folders and fsspec URLs (``s3://...``).
- :mod:`.locks`: one writer (or many readers) of a store or run folder at a time.
- :mod:`.atomic`: write-to-temporary-then-rename, so nothing is ever half-written.
- :mod:`.errors`: :class:`.errors.HpaError`, the base of every error a user sees, and its exit codes.

Needs zarr and numpy, never torch, OpenCV or Dask.
"""
