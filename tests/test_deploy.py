"""From a trained run to the microscope: a bioimage.io package that bioimageio.spec validates and
bioimageio.core's model test reproduces from the package alone, ONNX Runtime agreeing with
PyTorch (on the real SE-ResNeXt50 too), and classify giving the probabilities that ingest
followed by predict gives, from a run (PyTorch) or a package (ONNX Runtime, no torch)."""
import csv
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.probs_table import read_probs
from hpa_pipeline.prep.synth import SynthSpec

from .helpers import synthetic_stores

pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.spec")
pytestmark = pytest.mark.integration  # whole runs and exports


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    d, _, _ = synthetic_stores(tmp, SynthSpec(n_train=24, n_test=6, image_sizes=(256, 384), seed=9),
                               StoreSpec(size=128, levels=2, chunk=64))
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp / "train.zarr"), "--out", str(tmp / "run"), "--arch",
                                      "se_resnet_tiny", "--level", "64", "--crop", "48", "--folds", "3", "--epochs",
                                      "1", "--batch-size", "8", "--workers", "0", "--steps-per-epoch", "2",
                                      "--weights", "none", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    package = tmp / "package"
    exported = CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(package)])
    assert exported.exit_code == 0, exported.output
    return d, tmp, package, exported.output


def test_a_timm_backbone_with_the_first_places_head_trains_exports_and_classifies(trained, tmp_path):
    """timm:resnet18 with avgmax-2fc: a run, a valid package (ONNX within tolerance of PyTorch),
    and classify from that package agreeing with predict from the run."""
    d, tmp, _, _ = trained
    run, package = tmp_path / "run", tmp_path / "package"
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp / "train.zarr"), "--out", str(run), "--arch",
                                      "timm:resnet18", "--head", "avgmax-2fc", "--level", "64", "--crop", "48",
                                      "--folds", "3", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                                      "--steps-per-epoch", "2", "--weights", "none", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(cli, ["export", str(run), "--out", str(package)])
    assert exported.exit_code == 0 and "valid-format" in exported.output, exported.output
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    assert rdf["config"]["hpa_pipeline"]["arch"] == "timm:resnet18"
    predicted = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(run), "--out",
                                         str(tmp_path / "sub.csv"), "--probs", str(tmp_path / "probs.csv"),
                                         "--workers", "0", "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    classified = _classify(d.test_archive, "--model", package, "--out", tmp_path / "c.csv")
    assert classified.exit_code == 0, classified.output
    ids, expected = read_probs(tmp_path / "probs.csv")
    rows = {r["Id"]: [float(r[str(c)]) for c in range(28)] for r in csv.DictReader((tmp_path / "c.csv").open())}
    np.testing.assert_allclose(np.array([rows[i] for i in ids]), expected, atol=1e-4)


def test_the_package_is_valid_and_reproduces_its_test_outputs(trained):
    from bioimageio.core import test_model

    _, tmp, package, output = trained
    assert "rdf.yaml (valid-format" in output
    for name in ("rdf.yaml", "weights.onnx", "weights_torchscript.pt", "test_input.npy", "test_output.npy",
                 "cover.png", "README.md"):
        assert (package / name).is_file(), name
    summary = test_model(package / "rdf.yaml")  # the package alone, as a consumer runs it
    assert summary.status == "passed", [d.name for d in summary.details if d.status != "passed"]
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    config = rdf["config"]["hpa_pipeline"]
    run_thresholds = json.loads((tmp / "run" / "thresholds.json").read_text())["thresholds"]
    assert config["thresholds"] == pytest.approx(run_thresholds) and len(config["class_names"]) == 28
    assert config["level"] == 64 and config["store_sizes"] == [128, 64] and config["dtype"] == "uint8"
    assert config["onnx_max_difference"] <= 1e-4
    assert config["test_time"] == {"views": 1, "crops": 0, "crop": 48, "crop_mode": "tiled", "crop_reduce": "max"}
    assert "**Test time**" in (package / "README.md").read_text() and "the whole 64² image" in (
        package / "README.md").read_text()
    assert [c for c in rdf["inputs"][0]["axes"] if c["type"] == "channel"][0]["channel_names"] == [
        "red", "green", "blue", "yellow"]
    assert np.load(package / "test_input.npy").shape == (1, 4, 64, 64)


def test_an_out_holding_something_else_is_refused(trained, tmp_path):
    _, tmp, _, _ = trained
    (tmp_path / "notes.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "holds no package" in result.output
    assert (tmp_path / "notes.txt").read_text() == "keep"


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_of_package(package, tmp_path):
    earlier = tmp_path / "package"
    shutil.copytree(package, earlier)
    return earlier, _files(earlier)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_an_export_killed_midway_leaves_the_earlier_package_whole(trained, tmp_path, signum):
    """Stopped after the weights are written: the earlier package is as it was (its rdf.yaml
    still matches its files), and the same command then replaces it whole."""
    from .helpers import hpa_pipe_signalled_at

    _, tmp, package, _ = trained
    earlier, before = _copy_of_package(package, tmp_path)
    command = hpa_pipe_signalled_at("hpa_pipeline.deploy.export", "write_weights", 1, signum,
                                    ["export", str(tmp / "run"), "--out", str(earlier)])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL), result.stderr[-2000:]
    assert _files(earlier) == before
    again = CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(earlier)])
    assert again.exit_code == 0, again.output
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # no partial folder left


def test_a_failed_first_export_leaves_nothing_and_blocks_nothing(trained, tmp_path, monkeypatch):
    import errno

    import hpa_pipeline.deploy.export as export_module

    _, tmp, _, _ = trained

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "write_cover", full)
    out = tmp_path / "package"
    result = CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(out)])
    assert result.exit_code == 1 and "no space left" in result.output.lower(), result.output
    assert list(tmp_path.iterdir()) == []  # no package, no partial folder, no lock file
    monkeypatch.undo()
    assert CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(out)]).exit_code == 0


def test_a_full_disk_leaves_the_earlier_package_whole(trained, tmp_path):
    """A real tmpfs with room for the earlier package and not for a second: the new one cannot
    be built beside it; the earlier one stays as it was, and nothing half-written is left."""
    import os

    _, tmp, package, _ = trained
    size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    disk.mkdir()
    room = size + (1 << 20)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        earlier, before = _copy_of_package(package, disk)
        result = CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(earlier)])
        assert result.exit_code == 1 and "no space left" in result.output.lower(), result.output
        assert "Traceback" not in result.output
        assert _files(earlier) == before
        assert sorted(os.listdir(disk)) == [".package.hpa-lock", "package"]  # no partial folder left
        assert (disk / ".package.hpa-lock").read_text() == ""  # the lock released: no holder recorded
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_export_never_writes_through_a_link_in_an_earlier_package(trained, tmp_path):
    _, tmp, package, _ = trained
    earlier, _ = _copy_of_package(package, tmp_path)
    outside = tmp_path / "outside.md"
    outside.write_text("mine")
    (earlier / "README.md").unlink()
    (earlier / "README.md").symlink_to(outside)
    result = CliRunner().invoke(cli, ["export", str(tmp / "run"), "--out", str(earlier)])
    assert result.exit_code == 0, result.output
    assert outside.read_text() == "mine" and not (earlier / "README.md").is_symlink()


def test_a_run_saved_before_its_dtype_and_levels_were_exports_as_one_that_has_them(trained, tmp_path):
    """Older runs' config.yaml lacks the dtype and the store's levels: read_config brings them
    up (uint8; the levels from the store) in one place, and the package is the same."""
    _, tmp, package, _ = trained
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    for field in ("dtype", "sizes"):
        config["normalization"].pop(field)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "package")])
    assert result.exit_code == 0, result.output
    ours = yaml.safe_load((tmp_path / "package" / "rdf.yaml").read_text())["config"]["hpa_pipeline"]
    theirs = yaml.safe_load((package / "rdf.yaml").read_text())["config"]["hpa_pipeline"]
    assert (ours["store_sizes"], ours["dtype"]) == (theirs["store_sizes"], theirs["dtype"]) == ([128, 64], "uint8")


def test_a_run_folder_with_bad_statistics_is_one_line(trained, tmp_path):
    """NaN in the saved std would give NaN probabilities from an export that validates."""
    _, tmp, _, _ = trained
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    for field, value, says in (("std", [float("nan"), 1.0, 1.0, 1.0], "normalization.std must be 4 finite numbers"),
                               ("mean", [1.0, 2.0, 3.0], "normalization.mean must be 4 finite numbers"),
                               ("std", [0.0, 1.0, 1.0, 1.0], "normalization.std must be above 0"),
                               ("sizes", [128, 32], "level 64 is not one of the store's levels [128, 32]")):
        config = yaml.safe_load((tmp / "run" / "config.yaml").read_text())
        config["normalization"][field] = value
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "package")])
        assert result.exit_code == 1 and says in result.output and "config.yaml" in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "package").exists()


def _edited_package(package, tmp_path, name, edit=None, onnx=None):
    """A copy of ``package`` with its rdf.yaml edited (``edit(rdf)``) and/or other ONNX weights."""
    import hashlib

    folder = tmp_path / name
    shutil.copytree(package, folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    if onnx is not None:
        (folder / "weights.onnx").write_bytes(onnx)
        rdf["weights"]["onnx"]["sha256"] = hashlib.sha256(onnx).hexdigest()
    if edit is not None:
        edit(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder


def _onnx_of(module, example) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, input_names=["image"], output_names=["probabilities"],
                      opset_version=17, dynamo=False, dynamic_axes={"image": {0: "batch"}})
    return buffer.getvalue()


def test_a_package_from_elsewhere_is_checked_value_by_value(trained, tmp_path):
    """Every value classify reads from a package, and the weights its rdf.yaml names (inside
    the package, their sha256), is checked: one line naming the file and the field."""
    import torch

    d, _, package, _ = trained

    def config(field, value):
        return lambda rdf: rdf["config"]["hpa_pipeline"].__setitem__(field, value)

    def weights(source):
        return lambda rdf: rdf["weights"]["onnx"].__setitem__("source", source)

    class Head(torch.nn.Module):
        def __init__(self, channels, outputs):
            super().__init__()
            self.linear = torch.nn.Linear(channels, outputs)

        def forward(self, x):
            return self.linear(x.float().mean(dim=(2, 3)))

    (tmp_path / "outside.onnx").write_bytes((package / "weights.onnx").read_bytes())
    cases = [
        (dict(edit=config("thresholds", [float("nan")] * 28)), "config.hpa_pipeline.thresholds must be 28 numbers"),
        (dict(edit=config("level", 10 ** 9)), "config.hpa_pipeline.level 1000000000 is not one of store_sizes"),
        (dict(edit=config("store_sizes", [128, 32])), "config.hpa_pipeline.level 64 is not one of store_sizes"),
        (dict(edit=config("dtype", "float64")), "config.hpa_pipeline.dtype must be one of uint8, uint16"),
        (dict(edit=weights("../outside.onnx")), "weights.onnx.source '../outside.onnx' lies outside the package"),
        (dict(edit=weights("/etc/passwd")), "lies outside the package"),
        (dict(edit=lambda rdf: rdf["weights"]["onnx"].__setitem__("sha256", "0" * 64)),
         "does not match the sha256 weights.onnx records"),
        (dict(onnx=_onnx_of(Head(3, 28), torch.zeros(1, 3, 64, 64, dtype=torch.uint8))), "expects image"),
        (dict(onnx=_onnx_of(Head(4, 28), torch.zeros(1, 4, 64, 64))), "tensor(float)"),
        (dict(onnx=_onnx_of(Head(4, 14), torch.zeros(1, 4, 64, 64, dtype=torch.uint8))), "not (batch, 28)"),
        (dict(onnx=b"not a model"), "not an ONNX model ONNX Runtime can load"),
    ]
    for k, (change, says) in enumerate(cases):
        folder = _edited_package(package, tmp_path, f"p{k}", **change)
        out = tmp_path / f"r{k}.csv"
        result = _classify(d.test_archive, "--model", folder, "--out", out)
        assert result.exit_code == 1 and says in result.output, (says, result.output)
        assert "Traceback" not in result.output and not out.exists()


def _classify(*args):
    return CliRunner().invoke(cli, ["classify", *map(str, args)])


def test_classify_equals_ingest_then_predict(trained, tmp_path):
    d, tmp, package, _ = trained
    predicted = CliRunner().invoke(cli, ["predict", "--store", str(tmp / "test.zarr"), "--run", str(tmp / "run"),
                                         "--out", str(tmp_path / "sub.csv"), "--probs", str(tmp_path / "probs.csv"),
                                         "--workers", "0", "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    ids, expected = read_probs(tmp_path / "probs.csv")
    for how, source in (("--run", tmp / "run"), ("--model", package)):
        out = tmp_path / f"classified{how}.csv"
        result = _classify(d.test_archive, how, source, "--out", out)
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(out.open()))
        assert [r["Id"] for r in rows] == sorted(ids)
        got = np.array([[float(r[str(c)]) for c in range(28)] for r in rows])
        order = np.argsort(ids)
        np.testing.assert_allclose(got, expected[order], atol=2e-6 if how == "--run" else 1e-4)
    submission = {r["Id"]: r["Predicted"] for r in csv.DictReader((tmp_path / "sub.csv").open())}
    assert {r["Id"]: r["Predicted"] for r in csv.DictReader((tmp_path / "classified--run.csv").open())} == submission


def test_bad_and_incomplete_samples_are_listed_and_the_rest_classified(trained, tmp_path):
    d, tmp, package, _ = trained
    from hpa_pipeline.prep.extract import extract_archives

    folder = tmp_path / "tiff"
    extract_archives([d.test_archive], folder)
    files = sorted(folder.glob("*.tif"))
    files[0].unlink()  # one sample loses a channel
    files[5].write_bytes(b"not a tiff")  # another's file is damaged
    single = tmp_path / "single"
    single.mkdir()
    for f in files[8:12]:  # one more sample given as four single files
        shutil.copy(f, single / f.name)
    result = _classify(folder, "--model", package, "--out", tmp_path / "r.csv")
    assert result.exit_code == 3, result.output
    assert result.output.count("not classified:") == 2 and "missing channel(s)" in result.output
    assert "unreadable TIFF" in result.output and "Traceback" not in result.output
    assert "4 samples classified, 2 not" in result.output
    again = _classify(*sorted(single.iterdir()), "--model", package, "--out", tmp_path / "s.csv")
    assert again.exit_code == 0 and "1 samples classified, 0 not" in again.output


def _declare_size(zip_path, name: str, size: int) -> None:
    """Rewrite the unpacked size the zip's central directory declares for member ``name``."""
    import struct

    data = bytearray(zip_path.read_bytes())
    at = data.find(b"PK\x01\x02" + b"", data.find(b"PK\x01\x02"))
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + length] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
            zip_path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name} not in {zip_path}")


@pytest.fixture(scope="module")
def hostile_zip(trained, tmp_path_factory):
    """A real zip of the test samples: one member declaring 2 GiB, one (a 256 MB run of zeros)
    declaring 1000 bytes, and the others as they should be."""
    import zipfile

    from hpa_pipeline.prep.extract import extract_archives

    d, _, _, _ = trained
    tmp = tmp_path_factory.mktemp("zip")
    extract_archives([d.test_archive], tmp / "tiff")
    files = sorted((tmp / "tiff").glob("*.tif"))
    ids = sorted({f.name.rsplit("_", 1)[0] for f in files})
    path = tmp / "hostile.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            data = bytes(256 << 20) if f.name == f"{ids[1]}_red.tif" else f.read_bytes()
            archive.writestr(f.name, data)
    _declare_size(path, f"{ids[0]}_red.tif", 2 << 30)
    _declare_size(path, f"{ids[1]}_red.tif", 1000)
    return path, ids


def test_zip_members_inflate_a_block_at_a_time_within_their_declared_size(hostile_zip):
    import tracemalloc

    from hpa_pipeline.prep.archive import stream_members

    path, ids = hostile_zip
    got = {}
    tracemalloc.start()
    try:
        stream_members(path, lambda m: m.name.startswith(ids[1]), lambda m, data, error: got.update({m.name: error}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak  # the 256 MB member is never inflated whole
    assert "Bad CRC" in got[f"{ids[1]}_red.tif"] or "declared" in got[f"{ids[1]}_red.tif"]


def test_classify_reports_every_sample_of_a_hostile_zip(trained, hostile_zip, tmp_path):
    _, _, package, _ = trained
    path, ids = hostile_zip
    result = _classify(path, "--model", package, "--out", tmp_path / "r.csv")
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "r.report.json").read_text())
    assert sorted(report["failed"]) == ids[:2] and report["classified"] == len(ids) - 2
    assert "GiB unpacked, over the limit" in report["failed"][ids[0]]
    assert f"not classified: {ids[0]}_red.tif: declares" in result.output and "report in" in result.output and "Traceback" not in result.output
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == len(ids) - 2


def test_classify_summarises_many_failures_and_lists_them_in_its_report(trained, tmp_path):
    _, _, package, _ = trained
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(60):
        (folder / f"s{k:02d}_green.tif").write_bytes(b"x")  # each sample lacks three channels
    result = _classify(folder, "--model", package, "--out", tmp_path / "r.csv")
    assert result.exit_code == 3
    assert result.output.count("not classified:") == 50 and "... and 10 more: see" in result.output, result.output
    assert len(json.loads((tmp_path / "r.report.json").read_text())["failed"]) == 60


def test_a_package_classifies_without_torch(trained, tmp_path):
    d, _, package, _ = trained
    program = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails
               "sys.argv = ['hpa-pipe', *sys.argv[1:]]\nfrom hpa_pipeline.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", program, "classify", str(d.test_archive), "--model", str(package),
                             "--out", str(tmp_path / "r.csv")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 6


def test_a_cross_validation_exports_as_one_averaged_package(trained, tmp_path):
    _, tmp, _, _ = trained
    cv = tmp_path / "cv"
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp / "train.zarr"), "--out", str(cv), "--arch",
                                      "se_resnet_tiny", "--level", "64", "--crop", "48", "--folds", "2", "--fold",
                                      "all", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                                      "--steps-per-epoch", "1", "--weights", "none", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(cli, ["export", str(cv), "--out", str(tmp_path / "pkg")])
    assert exported.exit_code == 0 and "2 fold(s)" in exported.output, exported.output
    config = yaml.safe_load((tmp_path / "pkg" / "rdf.yaml").read_text())["config"]["hpa_pipeline"]
    assert config["thresholds"] == pytest.approx(json.loads((cv / "thresholds.json").read_text())["thresholds"])
    assert len(config["runs"]) == 2


@pytest.mark.slow
def test_onnx_runtime_agrees_with_pytorch_on_se_resnext50(tmp_path):
    """The real architecture (random weights: no download), 4 channels, raw uint8 in, sigmoid
    out: ONNX Runtime's probabilities within 1e-4 of PyTorch's at two sizes and batches."""
    import torch

    from hpa_pipeline.deploy.export import ONNX_TOLERANCE, onnx_difference, write_weights
    from hpa_pipeline.deploy.graph import RawToProbabilities
    from hpa_pipeline.model.data import Normalizer
    from hpa_pipeline.model.models import create_model

    torch.manual_seed(0)
    model = create_model("se_resnext50_32x4d", weights="none").eval()
    module = RawToProbabilities([model], [Normalizer([20.0] * 4, [30.0] * 4)]).eval()
    example = np.random.default_rng(0).integers(0, 255, (1, 4, 128, 128)).astype(np.uint8)
    write_weights(module, torch.from_numpy(example), tmp_path)
    difference = onnx_difference(module, tmp_path, example)
    print(f"SE-ResNeXt50: largest |ONNX Runtime - PyTorch| = {difference:.2e}")
    assert difference <= ONNX_TOLERANCE
