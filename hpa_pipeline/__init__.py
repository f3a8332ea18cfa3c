"""hpa-pipeline: Human Protein Atlas full-size archives -> chunked Zarr -> SENet classifiers.

Three subpackages show the architecture (:mod:`hpa_pipeline.contract` is what the halves share):

- :mod:`hpa_pipeline.contract`: what both halves share: the 28 labels and CSV rules, the
  dataset store's layout, whole-shard writes and reads, store locations, atomic writes.
- :mod:`hpa_pipeline.prep`: big-data preprocessing: archives, TIFF decoding, levels, the Dask
  build of a store, inspection and OME-Zarr export, the synthetic data generator. Never
  imports torch or :mod:`hpa_pipeline.model` (tests/test_layout.py holds this).
- :mod:`hpa_pipeline.model`: modelling: the crop loader, SENets, training, inference,
  submissions. Reads data only through the store contract.

``hpa_pipeline.cli`` is the thin Click front end; it imports a command's half only when that
command runs.
"""
__version__ = "0.2.0"
