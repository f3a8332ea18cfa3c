"""Synthetic HPA data in the real on-disk format (see :mod:`.dataset`) and how it is drawn (:mod:`.cells`)."""
from .dataset import (
    ARCHIVE_METHODS, FORMS, TEST_ARCHIVE, TIFF_COMPRESSIONS, TRAIN_ARCHIVE, SynthResult, SynthSpec, make_dataset,
)

__all__ = [
    "ARCHIVE_METHODS", "FORMS", "TEST_ARCHIVE", "TIFF_COMPRESSIONS", "TRAIN_ARCHIVE", "SynthResult", "SynthSpec",
    "make_dataset",
]
