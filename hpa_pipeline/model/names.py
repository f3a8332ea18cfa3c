"""The names a training run is built from: one list each, without torch.

``config.py`` offers them as the choices of ``hpa-pipe train``, ``models.py`` and ``losses.py``
build from them; keeping them here lets the command line list them without importing torch.
"""

#: each SENet :func:`~hpa_pipeline.model.models.create_model` builds: its pretrainedmodels name, its
#: timm name, and the ImageNet weight files either library caches for it (se_resnet_tiny: tests, demo)
ARCH_SOURCES = {
    "se_resnext50_32x4d": ("se_resnext50_32x4d", "legacy_seresnext50_32x4d",
                           ("se_resnext50_32x4d-a260b3a4.pth", "legacy_se_resnext50_32x4d-f3651bad.pth")),
    "se_resnet50": ("se_resnet50", "legacy_seresnet50", ("se_resnet50-ce0d4300.pth",)),
    "se_resnext101_32x4d": ("se_resnext101_32x4d", "legacy_seresnext101_32x4d",
                            ("se_resnext101_32x4d-3b2fe3d8.pth", "legacy_se_resnext101_32x4d-37725eac.pth")),
    "senet154": ("senet154", "legacy_senet154", ("senet154-c7b49a05.pth", "legacy_senet154-e9eb9fe6.pth")),
    "se_resnet_tiny": (None, None, ()),
}
#: the architectures, in the order ``--arch`` lists them; besides them, ``timm:NAME`` is any
#: model timm builds (``timm:densenet121``, ``timm:inception_v3``, ``timm:resnet34``)
ARCHS = tuple(ARCH_SOURCES)
TIMM_PREFIX = "timm:"
#: the classifier on top of the backbone: the backbone's own (one linear layer on average
#: pooling), or 1st place's (average and max pooling concatenated, two fully connected layers)
HEADS = ("linear", "avgmax-2fc")


def is_arch(name: str) -> bool:
    """Whether ``name`` names an architecture: one of :data:`ARCHS`, or ``timm:NAME``."""
    return name in ARCHS or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))
#: what ``--arch`` defaults to
DEFAULT_ARCH = "se_resnext50_32x4d"
#: libraries that build them (the same network and state-dict keys either way)
BACKENDS = ("timm", "pretrainedmodels")
#: the terms a training (and validation) loss adds up (:class:`~hpa_pipeline.model.losses.MultilabelLoss`):
#: ``--loss`` is one, or several joined by ``+`` (``focal+lovasz+hard``: 1st place's)
LOSS_TERMS = ("bce", "focal", "lovasz", "hard")
#: the losses the docs and recipes name
LOSSES = ("bce", "focal", "focal+lovasz", "focal+lovasz+hard")
#: how the Lovász hinge is taken: over the batch's (sample, class) pairs as one binary problem,
#: or per image (each sample's 28 classes, averaged over the batch: the reference's default)
LOVASZ_MODES = ("batch", "image")


def loss_terms(loss: str) -> list[str] | None:
    """The terms of ``loss`` (``"focal+lovasz"`` -> ``["focal", "lovasz"]``), or None when it
    names an unknown term, none, or one twice."""
    terms = loss.split("+") if isinstance(loss, str) else []
    if not terms or any(t not in LOSS_TERMS for t in terms) or len(set(terms)) != len(terms):
        return None
    return terms
#: learning-rate schedules
SCHEDULES = ("cosine", "onecycle")
#: mixed-precision modes on CUDA
PRECISIONS = ("bf16", "fp16", "none")
#: how thresholds are chosen from out-of-fold probabilities (:mod:`.thresholds`)
STRATEGIES = ("f1", "ratio", "fixed")

#: how ``predict`` labels with ``ratio`` thresholds: matched again on the set it predicts
#: (the default), or as fixed on the out-of-fold table
RATIO_ON = ("predicted", "oof")

#: test-time crops: how they are placed, and how their probabilities are reduced
#: (:class:`~hpa_pipeline.model.inference.TestCrops`)
CROP_MODES = ("tiled", "random")
CROP_REDUCTIONS = ("max", "mean")


def fits_crop_grid(count: int, mode: str) -> bool:
    """Whether ``count`` test-time crops can lie as ``mode`` asks: tiled ones on a square grid."""
    return count >= 0 and (mode != "tiled" or round(count ** 0.5) ** 2 == count)

#: where training crops are decoded (:mod:`~hpa_pipeline.model.chunk_decode`): chosen (auto),
#: in the loader workers (cpu), or on the GPU from the chunks' stored bytes (gpu)
DECODERS = ("auto", "cpu", "gpu")
