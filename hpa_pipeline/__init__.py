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

For your own training loop, the names below import from here (each loaded on first use, so
``import hpa_pipeline`` stays light)::

    from hpa_pipeline import Store, StoreDataset, make_folds, macro_f1, choose_thresholds
"""
__version__ = "0.2.0"

#: the Python API: name -> the module that defines it
API = {
    "Store": "hpa_pipeline.contract.store",
    "StoreSpec": "hpa_pipeline.contract.spec",
    "StoreDataset": "hpa_pipeline.model.torch_dataset",
    "Normalizer": "hpa_pipeline.model.data",
    "make_folds": "hpa_pipeline.model.folds",
    "create_model": "hpa_pipeline.model.models",
    "macro_f1": "hpa_pipeline.model.metrics",
    "predict_labels": "hpa_pipeline.model.metrics",
    "search_thresholds": "hpa_pipeline.model.metrics",
    "choose_thresholds": "hpa_pipeline.model.thresholds",
    "ratio_thresholds": "hpa_pipeline.model.thresholds",
    "CLASS_NAMES": "hpa_pipeline.contract.labels",
    "read_sample_table": "hpa_pipeline.contract.labels",
}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'hpa_pipeline' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(API[name]), name)


def __dir__():
    return sorted(set(globals()) | set(API))
