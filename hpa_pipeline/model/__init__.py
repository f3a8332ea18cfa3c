"""Modelling: dataset stores in, SENet runs and submissions out (``pip install hpa-pipeline[train]``).

- :mod:`.config`: ``TrainConfig``, every training option (no torch: the CLI reads it).
- :mod:`.data`, :mod:`.streaming`: the crop loader over a store; streaming for remote stores.
- :mod:`.models`: ``create_model``, SENets from timm or pretrainedmodels, 4-channel stem.
- :mod:`.train`: the training loop; :mod:`.distributed`: torchrun / DDP.
- :mod:`.inference`: a run's weights, probabilities with TTA, ``predict``.
- :mod:`.submission`, :mod:`.metrics`, :mod:`.folds`: submissions and ``evaluate``, macro F1
  and thresholds, multilabel folds (no torch: ``evaluate`` starts fast).

Reads images only through :mod:`hpa_pipeline.contract`, never a TIFF or an archive.
"""
