"""One way to build any classifier of this project: :func:`create_model` (in the style of timm's).

Architectures (SENet family, Hu et al. 2018) and the two backends users may have:

=========================  ===========================  ==================================
arch                       pretrainedmodels             timm
=========================  ===========================  ==================================
``se_resnext50_32x4d``     ``se_resnext50_32x4d``       ``legacy_seresnext50_32x4d``
``se_resnet50``            ``se_resnet50``              ``legacy_seresnet50``
``se_resnext101_32x4d``    ``se_resnext101_32x4d``      ``legacy_seresnext101_32x4d``
``senet154``               ``senet154``                 ``legacy_senet154``
``se_resnet_tiny``         -                            SE-ResNet with one basic block a stage
=========================  ===========================  ==================================

Both backends build the same network with the same state-dict keys, so a checkpoint trained
with one loads into the other. ``se_resnet_tiny`` (~5 M parameters) exists for CPU tests and
the demo. Every model takes 4 channels (red, green, blue, yellow), any input size (adaptive
average pooling: pretrainedmodels' SENet has a fixed 7×7 pool, replaced here) and has 28
outputs (logits).

Both backends get the same dropout before the classifier (``drop_rate``; timm's legacy SENets
default to 0.2 and pretrainedmodels' SE-ResNeXts to none, so it is set explicitly), so "the
same network" holds in training too.

Pretrained ImageNet weights never come from the network: ``weights`` is a local file (a state
dict of the 1000-class, 3-channel model from either backend; ``.pth`` or ``.safetensors``),
``"cache"`` to look where timm and pretrainedmodels keep downloads (the torch hub folder,
``torch.hub.get_dir()``, which honours ``TORCH_HOME``; and the Hugging Face cache, which honours
``HF_HOME``), or ``None``/``"none"``/``"scratch"`` for random initialisation. The stem is
widened to 4 channels by the rule: red, green, blue filters copy the RGB filters, yellow gets
their mean (timm's own ``in_chans=4`` adaptation would tile R, G, B, R instead).

Beyond the SENets, ``timm:NAME`` is any model timm builds (``timm:densenet121``, 1st place's
backbone; ``timm:inception_v3``, 2nd and 3rd place's; ``timm:resnet34``), with the same
4-channel rule applied to the stem timm names (``first_conv``), its ImageNet weights taken
from a local file or timm's caches the same way, and exported and classified like the SENets.
``head="avgmax-2fc"`` puts 1st place's classifier on any backbone: global average and max
pooling concatenated, then two fully connected layers (:class:`AvgMaxTwoLayerHead`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..contract.labels import N_CLASSES
from .names import ARCH_SOURCES, ARCHS, BACKENDS, HEADS, TIMM_PREFIX
from ..contract.errors import HpaError

IN_CHANNELS = 4
DEFAULT_DROP_RATE = 0.2

#: each arch of names.ARCHS -> (pretrainedmodels name, timm name, file names of its ImageNet weights in the torch hub
#: folder: pretrainedmodels' first, then timm's release file)
SOURCES = ARCH_SOURCES  # the one list of names (names.py), with their sources
SCRATCH = (None, "", "none", "scratch")


class ModelError(HpaError, ValueError):
    """An unknown arch or backend, or weights that are missing or do not fit."""


class AvgMaxTwoLayerHead(nn.Module):
    """1st place's classifier on a timm backbone: the feature map's global average and max
    pooled together, then BatchNorm, dropout, a hidden fully connected layer, and the output
    layer. ``backbone`` keeps its body (its own classifier and pooling are removed)."""

    HIDDEN = 512

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float):
        super().__init__()
        backbone.reset_classifier(0, "")
        self.backbone = backbone
        width = 2 * backbone.num_features
        self.head = nn.Sequential(nn.BatchNorm1d(width), nn.Dropout(drop_rate), nn.Linear(width, self.HIDDEN),
                                  nn.ReLU(inplace=True), nn.BatchNorm1d(self.HIDDEN), nn.Dropout(drop_rate),
                                  nn.Linear(self.HIDDEN, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        return self.head(torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1))


def _build(arch: str, backend: str, num_classes: int, drop_rate: float, head: str = "linear") -> nn.Module:
    """A randomly initialised 4-channel network with a ``num_classes`` head."""
    if head not in HEADS:
        raise ModelError(f"unknown head {head!r}; choose from {HEADS}")
    if head != "linear" and backend != "timm":
        raise ModelError(f"--head {head} is built on timm's models: use --backend timm")
    model = _build_body(arch, backend, num_classes, drop_rate)
    return model if head == "linear" else AvgMaxTwoLayerHead(model, num_classes, drop_rate)


def _build_timm(name: str, num_classes: int, drop_rate: float) -> nn.Module:
    """``timm:NAME``: any timm model, 4 channels in, ``num_classes`` out."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, in_chans=IN_CHANNELS, num_classes=num_classes,
                                 drop_rate=drop_rate)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        import difflib

        near = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise ModelError(f"--arch {TIMM_PREFIX}{name}: timm has no such model"
                         + (f"; similar: {', '.join(near)}" if near else "")) from None


def _build_body(arch: str, backend: str, num_classes: int, drop_rate: float) -> nn.Module:
    if arch.startswith(TIMM_PREFIX):
        if backend != "timm":
            raise ModelError(f"--arch {arch} is a timm model: use --backend timm")
        return _build_timm(arch[len(TIMM_PREFIX):], num_classes, drop_rate)
    if arch not in ARCHS:
        raise ModelError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)} or {TIMM_PREFIX}NAME")
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    pm_name, timm_name, _ = SOURCES[arch]
    if arch == "se_resnet_tiny":
        from timm.models.senet import SENet, SEResNetBlock

        return SENet(SEResNetBlock, layers=(1, 1, 1, 1), groups=1, reduction=16, drop_rate=drop_rate,
                     in_chans=IN_CHANNELS, num_classes=num_classes)
    if backend == "timm":
        import timm

        return timm.create_model(timm_name, pretrained=False, in_chans=IN_CHANNELS, num_classes=num_classes,
                                 drop_rate=drop_rate)
    import pretrainedmodels  # noqa: F401 - needs `six`, which it does not declare (setup.cfg has it)

    # pretrainedmodels has no in_chans, num_classes of its own choosing or adaptive pooling
    model = pretrainedmodels.__dict__[pm_name](num_classes=1000, pretrained=None)
    model.avg_pool = nn.AdaptiveAvgPool2d(1)  # the original 7x7 pool fixes the input at 224²
    model.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
    _widen_stem(model)
    _replace_head(model, num_classes)
    return model


def _stem_conv(model: nn.Module) -> nn.Conv2d:
    return model.layer0.conv1


def _widen_stem(model: nn.Module) -> None:
    """Replace the 3-channel first convolution by a 4-channel one with the same RGB weights."""
    old = _stem_conv(model)
    new = nn.Conv2d(IN_CHANNELS, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    _set_stem_from_rgb(new, old.weight.data)
    model.layer0.conv1 = new


@torch.no_grad()
def _set_stem_from_rgb(stem: nn.Conv2d, rgb: torch.Tensor) -> None:
    """Red, green and blue keep their weights; yellow gets their mean."""
    stem.weight[:, :3] = rgb
    stem.weight[:, 3:] = rgb.mean(dim=1, keepdim=True)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    model.last_linear = nn.Linear(model.last_linear.in_features, num_classes)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def find_cached_weights(arch: str) -> Path | None:
    """The ImageNet weights of ``arch`` where timm or pretrainedmodels left a download, if any:
    the torch hub folder (``torch.hub.get_dir()/checkpoints``), then the Hugging Face cache
    (``timm/<timm name>.in1k``, where timm 0.9+ downloads to). Never touches the network."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if arch.startswith(TIMM_PREFIX):
        return _find_cached_timm_weights(arch[len(TIMM_PREFIX):], hub)
    pm_name, timm_name, file_names = SOURCES.get(arch, (None, None, ()))
    for name in file_names:
        if (hub / name).exists():
            return hub / name
    if timm_name is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for file_name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(f"timm/{timm_name}.in1k", file_name)
        if isinstance(found, str):
            return Path(found)
    return None


def _find_cached_timm_weights(name: str, hub: Path) -> Path | None:
    """Where timm downloads a model's default weights: the Hugging Face cache (its ``hf_hub_id``),
    or the torch hub folder (its ``url``'s file)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        for file_name in ("model.safetensors", "pytorch_model.bin") if try_to_load_from_cache else ():
            found = try_to_load_from_cache(cfg.hf_hub_id, file_name)
            if isinstance(found, str):
                return Path(found)
    if cfg.url and (hub / cfg.url.rsplit("/", 1)[-1]).exists():
        return hub / cfg.url.rsplit("/", 1)[-1]
    return None


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors of a file that is not weights
        raise ModelError(f"{path} is not a PyTorch weights file ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state.get("state_dict", state)


def _stem_and_classifier(model: nn.Module) -> tuple[str, str]:
    """The names of the first convolution and of the classifier: timm's own record of them
    (``pretrained_cfg``) for any timm model, the SENets' otherwise."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv, classifier = cfg.get("first_conv"), cfg.get("classifier")
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0]
    return (first_conv or "layer0.conv1"), (classifier or "last_linear")


def load_imagenet_weights(model: nn.Module, path: str | Path) -> None:
    """Load a 1000-class 3-channel state dict into a 4-channel model's body (its classifier
    stays new; under :class:`AvgMaxTwoLayerHead`, the backbone's)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    body = model.backbone if isinstance(model, AvgMaxTwoLayerHead) else model
    stem, classifier = _stem_and_classifier(body)
    state = dict(_read_state_dict(path))
    stem_key = f"{stem}.weight"
    if stem_key not in state:
        raise ModelError(f"{path}: not weights of this arch (no {stem_key})")
    rgb = state.pop(stem_key)
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith((f"{classifier}.", f"{stem}."))]
    if missing or unexpected:
        raise ModelError(f"{path} does not fit this arch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    conv = body.get_submodule(stem)
    if rgb.shape[1] == 3:
        _set_stem_from_rgb(conv, rgb)
    elif rgb.shape[1] == IN_CHANNELS:
        with torch.no_grad():
            conv.weight.copy_(rgb)
    else:
        raise ModelError(f"{path}: stem has {rgb.shape[1]} input channels, expected 3 or 4")


def create_model(arch: str = "se_resnext50_32x4d", backend: str = "timm", weights: str | Path | None = None,
                 num_classes: int = N_CLASSES, drop_rate: float = DEFAULT_DROP_RATE, head: str = "linear") -> nn.Module:
    """A 4-channel, ``num_classes``-output network of ``arch`` (an SENet, or ``timm:NAME``)
    from ``backend``, with the classifier ``head``.

    ``weights``: ``None``/``"none"``/``"scratch"`` (random init), a path to ImageNet weights, or
    ``"cache"`` (a clear error if they were never downloaded).
    """
    model = _build(arch, backend, num_classes, drop_rate, head)
    path = resolve_weights(arch, weights)
    if path is not None:
        load_imagenet_weights(model, path)
    return model


def resolve_weights(arch: str, weights: str | Path | None) -> Path | None:
    """The weights file that ``--weights`` names, checked before any work starts."""
    if weights in SCRATCH or (isinstance(weights, str) and weights.lower() in SCRATCH):
        return None
    if weights == "cache":
        if arch not in ARCHS and not arch.startswith(TIMM_PREFIX):
            raise ModelError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)} or {TIMM_PREFIX}NAME")
        cached = find_cached_weights(arch)
        if cached is None:
            where = (f"timm's caches for {arch[len(TIMM_PREFIX):]}" if arch.startswith(TIMM_PREFIX) else
                     f"{SOURCES[arch][2]} in {Path(torch.hub.get_dir()) / 'checkpoints'} and "
                     f"timm/{SOURCES[arch][1]}.in1k in the Hugging Face cache")
            raise ModelError(f"no cached ImageNet weights for {arch} (looked for {where}); pass --weights PATH to a "
                             f"local file, or --weights none")
        return cached
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found (use --weights none to train from scratch, "
                         f"or --weights cache)")
    return path
