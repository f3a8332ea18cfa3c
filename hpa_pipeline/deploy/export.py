"""``export``: a trained run as a bioimage.io model package (model spec 0.5).

The folder holds ``rdf.yaml``, the weights twice, test tensors and a cover::

    rdf.yaml               the description: inputs, outputs, weights, authors, licence, citations
    weights.onnx           ONNX (opset OPSET), dynamic batch, height and width, sigmoid in the graph
    weights_torchscript.pt TorchScript (traced), the same graph
    test_input.npy         a real sample of the training store at the run's level, (1, 4, L, L)
    test_output.npy        its probabilities, (1, 28) float32
    cover.png              that sample as an RGB composite (yellow shown as yellow)
    README.md              the classes, thresholds, the empty-row rule, how the input is made

Both weights take raw pixels (uint8 or uint16, as the store holds them) and apply the run's own
normalisation inside the graph (:mod:`.graph`), so every consumer gets the run's probabilities
without re-implementing its preprocessing; the statistics are also written in ``config``.

Why these formats: ONNX runs in every consumer (ONNX Runtime: ilastik, QuPath, deepImageJ,
the microscope PC without torch). TorchScript is deprecated upstream, but it is the one
PyTorch format bioimage.io consumers load without this project's code (the spec has no
``torch.export`` weights format); ``torch.export`` itself cannot yet trace the SENets with a
dynamic height and width (their pooling's shape arithmetic), so ONNX uses the TorchScript-based
exporter too. A cross-validation folder becomes one package whose graph averages its folds.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..contract.atomic import replacing_folder
from ..contract.errors import OptionError
from ..contract.labels import CLASS_NAMES
from ..contract.locks import store_locked
from ..contract.store import Store
from ..model.run_folder import RunError
from .graph import DeployedRun, load_deployed
from .package import EMPTY_ROW_RULE, ONNX_TOLERANCE, OPSET, RDF, class_id, validate_package, write_description

@dataclass
class ExportResult:
    folder: Path
    onnx_max_difference: float  # ONNX Runtime against PyTorch, largest over the checks
    runs: list[Path]
    status: str  # bioimageio.spec's validation of the written package (``valid-format``)


log = logging.getLogger(__name__)


def test_sample(deployed: DeployedRun) -> tuple[str, np.ndarray]:
    """The first done sample of the run's training store at its level, ``(1, 4, L, L)``."""
    store = deployed.config["store"]
    opened = Store.open(store)
    done = np.flatnonzero(opened.done())
    if not len(done):
        raise RunError(f"{store}: no done sample to make the package's test tensors from")
    image = opened.reader(deployed.level).read(int(done[0]))
    return opened.ids[int(done[0])], image[np.newaxis]


def write_weights(module: torch.nn.Module, example: torch.Tensor, folder: Path) -> None:
    """``weights.onnx`` and ``weights_torchscript.pt`` of ``module`` (traced at ``example``)."""
    with warnings.catch_warnings():  # the exporters' deprecation notices: the choice is explained above
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(folder / "weights.onnx"), input_names=["image"],
                          output_names=["probabilities"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"image": {0: "batch", 2: "y", 3: "x"}, "probabilities": {0: "batch"}})
        torch.jit.trace(module, example).save(str(folder / "weights_torchscript.pt"))


def onnx_difference(module: torch.nn.Module, folder: Path, example: np.ndarray) -> float:
    """Largest |ONNX Runtime - PyTorch| over the test sample and a batch of two at another size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "weights.onnx"), providers=["CPUExecutionProvider"])
    size = example.shape[-1]
    other = np.random.default_rng(0).integers(0, np.iinfo(example.dtype).max, (2, 4, size // 2 + 32, size // 2 + 32))
    worst = 0.0
    for x in (example, other.astype(example.dtype)):
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(session.run(None, {"image": x})[0] - expected).max()))
    return worst


def write_cover(image: np.ndarray, path: Path) -> None:
    """The test sample as the RGB composite ``inspect`` draws (yellow shown as yellow), a PNG."""
    import matplotlib.image

    from ..prep.inspect import composite

    matplotlib.image.imsave(path, composite(image[0]))


def _test_time(config: dict, level: int) -> str:
    """How a consumer should feed the graph to match the thresholds (views, crops, reduction)."""
    views = config.get("tta", 1)
    seen = (f"the mean over the first {views} of the 8 flips and quarter turns of each input"
            if views > 1 else "each input as it is")
    crops = config.get("tta_crops", 0)
    if not crops:
        return f"the whole {level}² image, {seen}."
    where = "on a square grid from corner to corner" if config.get("tta_crop_mode") == "tiled" else "at random"
    return (f"{crops} crops of {config.get('crop')}² pixels of the whole image, {where}, {seen}, then the "
            f"{config.get('tta_crop_reduce')} over the crops for each class.")


def write_documentation(deployed: DeployedRun, path: Path, sample_id: str) -> None:
    rows = "\n".join(f"| {c} | {name} | `{class_id(name)}` | {t:.3f} |"
                     for c, (name, t) in enumerate(zip(CLASS_NAMES, deployed.thresholds)))
    normalisation = ("each image by its own per-channel mean and std" if deployed.config.get("normalize") == "image"
                     else f"per-channel mean {deployed.normalization['mean']} and std {deployed.normalization['std']} "
                          f"of the training store at level {deployed.level}")
    path.write_text(f"""# Protein localisation in HPA images ({deployed.config['arch']})

Multilabel classifier of the 28 subcellular locations of the Human Protein Atlas Image
Classification competition, trained with hpa-pipeline {__version__} ({len(deployed.runs)} fold(s)).

**Input** `image`: `(batch, 4, y, x)` {deployed.dtype} pixels, channels red (microtubules), green
(the protein), blue (nucleus), yellow (endoplasmic reticulum), one field of view brought to
{deployed.level}² pixels by area averaging (a 2048² or 3072² full-size image; the training store's
levels were {deployed.sizes}). The graph normalises ({normalisation}) and applies the sigmoid.

**Output** `probabilities`: `(batch, 28)`. A class is predicted where its probability is above its
threshold below; {EMPTY_ROW_RULE}.

**Test time**, as the out-of-fold table the thresholds were chosen on was made: {_test_time(deployed.config, deployed.level)}

The test tensors are sample `{sample_id}` of the training store.

| class | name | channel | threshold |
|---|---|---|---|
{rows}
""")


def export_package(run: str | Path, out: str | Path) -> ExportResult:
    """Write the bioimage.io package of ``run`` (a run or cross-validation folder) as ``out``.

    The package is built and validated in a new folder beside ``out``, which then takes
    ``out``'s place whole: a kill, a full disk or a failed check leaves an earlier package as
    it was, and nothing is written through the links an earlier folder may hold."""
    deployed = load_deployed(run)
    target = Path(out)
    with store_locked(target, what="package folder"):
        if target.is_dir() and any(target.iterdir()) and not (target / RDF).exists():
            raise OptionError(f"--out {target} exists, is not empty and holds no package; choose another --out")
        with replacing_folder(target) as folder:
            difference, sample_id = _write_package(deployed, folder)
            status = validate_package(folder)
    log.debug("exported %s (%d run(s)) with test sample %s as %s", run, len(deployed.runs), sample_id, target)
    return ExportResult(target, difference, deployed.runs, status)


def _write_package(deployed: DeployedRun, folder: Path) -> tuple[float, str]:
    """Every file of the package into the empty ``folder``; the ONNX difference and the test sample."""
    sample_id, image = test_sample(deployed)
    example = torch.from_numpy(image)
    with torch.no_grad():
        output = deployed.module(example).numpy().astype(np.float32)
    np.save(folder / "test_input.npy", image)
    np.save(folder / "test_output.npy", output)
    write_weights(deployed.module, example, folder)
    difference = onnx_difference(deployed.module, folder, image)
    if difference > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {difference:.2e} (> {ONNX_TOLERANCE}): a bug")
    write_cover(image, folder / "cover.png")
    write_documentation(deployed, folder / "README.md", sample_id)
    write_description(deployed, folder, image, difference)
    return difference, sample_id
