"""The deployment half: trained runs out of the project, and raw images classified without a store.

- :mod:`.graph`: a run (or a cross-validation's folds) as one module from raw pixels to
  probabilities, normalisation and sigmoid inside;
- :mod:`.export`: that module as a bioimage.io model package (ONNX and TorchScript weights,
  ``rdf.yaml`` of model spec 0.5, test tensors from a real training sample);
- :mod:`.classify`: images from a folder, archive or file list classified with a run (PyTorch)
  or a package (ONNX Runtime, no torch), read and brought to the run's level exactly as
  ``ingest`` does.

It may import both other halves; neither imports it.
"""
