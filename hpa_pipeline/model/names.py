"""The names a training run is built from: one list each, without torch.

``config.py`` offers them as the choices of ``hpa-pipe train``, ``models.py`` and ``losses.py``
build from them; keeping them here lets the command line list them without importing torch.
"""

#: SENet architectures :func:`~hpa_pipeline.model.models.create_model` builds
ARCHS = ("se_resnext50_32x4d", "se_resnet50", "se_resnext101_32x4d", "senet154", "se_resnet_tiny")
#: libraries that build them (the same network and state-dict keys either way)
BACKENDS = ("timm", "pretrainedmodels")
#: training (and validation) losses of :class:`~hpa_pipeline.model.losses.MultilabelLoss`
LOSSES = ("bce", "focal", "focal+lovasz")
#: learning-rate schedules
SCHEDULES = ("cosine", "onecycle")
#: mixed-precision modes on CUDA
PRECISIONS = ("bf16", "fp16", "none")
