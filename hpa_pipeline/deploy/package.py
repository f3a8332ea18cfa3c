"""The ``rdf.yaml`` of an exported package (bioimage.io model spec 0.5), and reading a package back.

The description is built with ``bioimageio.spec``'s own classes, so the spec checks it as it is
made; :func:`validate_package` loads the written file back the way a consumer does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml

from .. import __version__
from ..contract.labels import CLASS_NAMES
from ..model.run_folder import RunError, are_level_sizes, is_number

RDF = "rdf.yaml"


#: the ONNX opset of the exported graph
OPSET = 17
#: the largest difference allowed between ONNX Runtime's and PyTorch's probabilities
ONNX_TOLERANCE = 1e-4
PROJECT_URL = "https://github.com/hpa-pipeline/hpa-pipeline"
CITATIONS = (
    ("Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image Classification "
     "competition. Nature Methods 16, 1254-1261 (2019)", "10.1038/s41592-019-0658-6"),
    ("Hu J, Shen L, Sun G. Squeeze-and-Excitation Networks. CVPR 2018", "10.1109/CVPR.2018.00745"),
)
EMPTY_ROW_RULE = "a sample with no probability above its class's threshold gets its most probable class"


def class_id(name: str) -> str:
    """A class name as a bioimage.io channel identifier (``Nuclear membrane`` -> ``nuclear_membrane``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def package_config(deployed, difference: float) -> dict:
    """What this project's ``classify`` and any consumer read from ``config.hpa_pipeline``."""
    return {"class_names": list(CLASS_NAMES), "thresholds": [float(t) for t in deployed.thresholds],
            "empty_row_rule": EMPTY_ROW_RULE, "level": deployed.level, "store_sizes": deployed.sizes,
            "dtype": deployed.dtype, "normalization": json.loads(json.dumps(deployed.normalization)),
            "normalize": deployed.config.get("normalize", "store"), "arch": deployed.config["arch"],
            "runs": [str(r) for r in deployed.runs], "onnx_max_difference": difference,
            "test_time": {"views": deployed.config.get("tta", 1), "crops": deployed.config.get("tta_crops", 0),
                          "crop": deployed.config.get("crop"), "crop_mode": deployed.config.get("tta_crop_mode"),
                          "crop_reduce": deployed.config.get("tta_crop_reduce")},
            "version": __version__}


def _tensors(deployed, image: np.ndarray):
    from bioimageio.spec.model import v0_5 as spec

    space = [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=64, step=32),
                                 scale=2048 / deployed.level,
                                 description=f"pixels of the {deployed.level}² level; scale: full-size (2048²) "
                                             f"pixels per pixel") for a in ("y", "x")]
    top = float(np.iinfo(image.dtype).max)
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("image"), description="raw pixels, channels red, green, blue, yellow; normalised in the graph",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in
                                                                 ("red", "green", "blue", "yellow")]), *space],
        test_tensor=spec.FileDescr(source=Path("test_input.npy")),
        data=spec.IntervalOrRatioDataDescr(type=str(image.dtype), range=(0.0, top)))
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"), description="probability of each of the 28 locations (sigmoid in the graph)",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(class_id(n)) for n in CLASS_NAMES])],
        test_tensor=spec.FileDescr(source=Path("test_output.npy")),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
    return inputs, outputs


def write_description(deployed, folder: Path, image: np.ndarray, difference: float) -> Path:
    """Build, check and write ``rdf.yaml`` for the files already in ``folder``."""
    import torch
    from bioimageio.spec import ValidationContext, save_bioimageio_yaml_only
    from bioimageio.spec.model import v0_5 as spec

    with ValidationContext(root=folder, perform_io_checks=True):
        inputs, outputs = _tensors(deployed, image)
        descr = spec.ModelDescr(
            name=f"HPA protein localisation {deployed.config['arch'].replace(':', ' ')}",  # the spec's name characters
            description="Multilabel classifier of the 28 subcellular protein locations of the Human Protein Atlas "
                        "Image Classification competition (4-channel confocal images), from hpa-pipeline.",
            authors=[spec.Author(name="hpa-pipeline contributors")],
            cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in CITATIONS],
            license=spec.LicenseId("MIT"), git_repo=spec.HttpUrl(PROJECT_URL),
            documentation=spec.FileDescr(source=Path("README.md")), covers=[spec.FileDescr(source=Path("cover.png"))],
            tags=["classification", "human-protein-atlas", "subcellular-localization", "fluorescence", "2d"],
            version=spec.Version(__version__), inputs=[inputs], outputs=[outputs],
            weights=spec.WeightsDescr(
                onnx=spec.OnnxWeightsDescr(source=Path("weights.onnx"), opset_version=OPSET),
                torchscript=spec.TorchscriptWeightsDescr(source=Path("weights_torchscript.pt"),
                                                         pytorch_version=spec.Version(torch.__version__.split("+")[0]))),
            config={"hpa_pipeline": package_config(deployed, difference),
                    "bioimageio": {"reproducibility_tolerance": [{"absolute_tolerance": 1e-4, "relative_tolerance": 1e-3,
                                                                  "mismatched_elements_per_million": 0}]}},
        )
    save_bioimageio_yaml_only(descr, folder / RDF)
    return folder / RDF


def validate_package(folder: str | Path) -> str:
    """Load ``rdf.yaml`` as a consumer would; the validation summary's status (``valid-format``)."""
    from bioimageio.spec import load_description

    descr = load_description(Path(folder) / RDF, perform_io_checks=True)
    return descr.validation_summary.status


def read_package(folder: str | Path) -> dict:
    """This project's part of a package's ``config`` (class names, thresholds, level, sizes,
    dtype), read without bioimageio.spec: a microscope PC needs only ONNX Runtime. Every value
    is checked, as a package may come from anywhere; ``onnx`` is added: the path of the ONNX
    weights that ``rdf.yaml`` names, inside the package, with the sha256 it records."""
    path = Path(folder) / RDF
    try:
        rdf = yaml.safe_load(path.read_text())
        config = rdf["config"]["hpa_pipeline"]
    except FileNotFoundError:
        raise RunError(f"{path}: no such file (give the folder hpa-pipe export wrote)") from None
    except (yaml.YAMLError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not a package exported by hpa-pipeline ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path}: config.hpa_pipeline is not a mapping")
    _check_config(config, path)
    return {**config, "onnx": onnx_weights(rdf, Path(folder), path)}


def _check_config(config: dict, path: Path) -> None:
    from ..contract.spec import DTYPES

    def bad(field: str, why: str) -> RunError:
        return RunError(f"{path}: config.hpa_pipeline.{field} {why}")

    thresholds = config.get("thresholds")
    if not isinstance(thresholds, list) or len(thresholds) != len(CLASS_NAMES) or not all(
            is_number(t) and 0 <= t <= 1 for t in thresholds):
        raise bad("thresholds", f"must be {len(CLASS_NAMES)} numbers in [0, 1]")
    sizes = config.get("store_sizes")
    if not are_level_sizes(sizes):
        raise bad("store_sizes", f"must be the training store's level sizes in pixels, not {sizes!r}")
    level = config.get("level")
    if not are_level_sizes([level]) or level not in sizes:
        raise bad("level", f"{level!r} is not one of store_sizes {sizes}")
    if config.get("dtype") not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}, not {config.get('dtype')!r}")


def onnx_weights(rdf: dict, folder: Path, path: Path) -> Path:
    """The ONNX file ``rdf.yaml`` names: inside ``folder`` (no absolute path, no ``..``, no link
    out of it), present, and matching its recorded sha256."""
    import hashlib

    try:
        entry = rdf["weights"]["onnx"]
        source = entry["source"]
    except (KeyError, TypeError):
        raise RunError(f"{path}: weights.onnx.source missing (export wrote ONNX weights)") from None
    if not isinstance(source, str) or "://" in source:
        raise RunError(f"{path}: weights.onnx.source {source!r} must be a file inside the package")
    root = folder.resolve()
    weights = (folder / source).resolve()
    if root not in weights.parents:
        raise RunError(f"{path}: weights.onnx.source {source!r} lies outside the package {folder}")
    if not weights.is_file():
        raise RunError(f"{path}: weights.onnx.source {source!r}: no such file in the package")
    expected = entry.get("sha256")
    if expected is not None:
        digest = hashlib.sha256()
        with weights.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != str(expected).lower():
            raise RunError(f"{path}: {source} does not match the sha256 weights.onnx records (damaged or replaced)")
    return weights
