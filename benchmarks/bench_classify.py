"""Images classified per second by an exported model: ONNX Runtime against PyTorch, same graph.

SE-ResNeXt50 (random weights: the speed does not depend on them) as ``hpa-pipe export`` packs
it (raw uint8 pixels in, normalisation and sigmoid inside), whole images at 512² and 1024²,
batch 1 as a microscope hands them over. Baseline: PyTorch eager on the same device; ours: the
package's ONNX weights in ONNX Runtime (what ``classify --model`` runs). CPU here; ``make
bench-gpu`` runs :func:`measure` on the GPU too (PyTorch, and ONNX Runtime's CUDA provider when
the image has it).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .common import report, timer

SIZES = (512, 1024)
IMAGES = int(os.environ.get("CLASSIFY_IMAGES", 6))


def _module():
    import torch

    from hpa_pipeline.deploy.graph import RawToProbabilities
    from hpa_pipeline.model.data import Normalizer
    from hpa_pipeline.model.models import create_model

    torch.manual_seed(0)
    return RawToProbabilities([create_model("se_resnext50_32x4d", weights="none").eval()],
                              [Normalizer([20.0] * 4, [30.0] * 4)]).eval()


def measure(device: str = "cpu") -> dict:
    """Images/s of PyTorch and ONNX Runtime at each size on ``device``."""
    import onnxruntime
    import torch

    from hpa_pipeline.deploy.export import write_weights

    module = _module().to(device)
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        providers = None
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        example = np.random.default_rng(0).integers(0, 255, (1, 4, 256, 256)).astype(np.uint8)
        write_weights(module.cpu(), torch.from_numpy(example), Path(tmp))
        module.to(device)
        session = onnxruntime.InferenceSession(str(Path(tmp) / "weights.onnx"), providers=providers) if providers else None
        for size in SIZES:
            image = np.random.default_rng(1).integers(0, 255, (1, 4, size, size)).astype(np.uint8)
            x = torch.from_numpy(image).to(device)
            with torch.no_grad():
                module(x)  # warm-up
                with timer() as t:
                    for _ in range(IMAGES):
                        module(x).cpu()
            torch_rate = IMAGES / t()
            figures[f"{size}²: baseline PyTorch ({device}) images/s"] = round(torch_rate, 2)
            if session is not None:
                session.run(None, {"image": image})
                with timer() as t:
                    for _ in range(IMAGES):
                        session.run(None, {"image": image})
                figures[f"{size}²: ours ONNX Runtime ({device}) images/s"] = round(IMAGES / t(), 2)
                figures[f"{size}²: ratio ONNX Runtime / PyTorch"] = round(IMAGES / t() / torch_rate, 2)
    return figures


def run() -> dict:
    import torch

    figures = {"model": "SE-ResNeXt50 as exported (uint8 in, normalisation and sigmoid in the graph), batch 1",
               "torch threads": torch.get_num_threads(), **measure("cpu")}
    return report("classify", figures)


if __name__ == "__main__":
    run()
