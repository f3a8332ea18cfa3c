"""The two halves stay apart: ``prep`` never imports torch or ``model``; ``model`` reads data only
through the store contract; commands import only their own half (the store contract)."""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hpa_pipeline

PACKAGE = Path(hpa_pipeline.__file__).parent


def modules_of(half: str) -> list[str]:
    names = [f"hpa_pipeline.{half}"]
    for info in pkgutil.walk_packages([str(PACKAGE / half)], prefix=f"hpa_pipeline.{half}."):
        names.append(info.name)
    return names


def import_with_blocked(modules: list[str], blocked: list[str]) -> subprocess.CompletedProcess:
    """Import ``modules`` in a fresh interpreter where importing any of ``blocked`` fails."""
    code = "\n".join([
        "import sys",
        *[f"sys.modules[{name!r}] = None" for name in blocked],
        *[f"import {name}" for name in modules],
    ])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_prep_and_contract_import_without_torch_or_model():
    modules = modules_of("contract") + modules_of("prep")
    assert "hpa_pipeline.prep.ingest" in modules and "hpa_pipeline.prep.synth.cells" in modules
    result = import_with_blocked(modules, ["torch", "torchvision", "timm", "pretrainedmodels", "hpa_pipeline.model"])
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_model_imports_without_prep():
    modules = modules_of("model")
    assert "hpa_pipeline.model.train" in modules
    result = import_with_blocked(modules, ["hpa_pipeline.prep", "tifffile", "py7zr", "dask", "distributed"])
    assert result.returncode == 0, result.stderr


def relative_imports(path: Path) -> set[str]:
    """Absolute names of the hpa_pipeline modules that ``path`` imports (any form, any place)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("hpa_pipeline")}


@pytest.mark.parametrize("half, forbidden", [("prep", ("hpa_pipeline.model",)),
                                             ("model", ("hpa_pipeline.prep",)),
                                             ("contract", ("hpa_pipeline.model", "hpa_pipeline.prep"))])
def test_no_module_imports_the_other_half_even_lazily(half, forbidden):
    """Also catches imports inside functions, which the import test above cannot see."""
    offenders = {str(path.relative_to(PACKAGE)): sorted(n for n in relative_imports(path) if n.startswith(forbidden))
                 for path in (PACKAGE / half).rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("args", [["--help"], ["evaluate", "--help"], ["build-zarr", "--help"],
                                  ["ingest", "--help"], ["inspect", "--help"], ["extract", "--help"],
                                  ["train", "--help"], ["predict", "--help"]])
@pytest.mark.integration
def test_commands_start_without_torch(args):
    """The CLI module and every command's --help load no torch (train's options come from the
    torch-free TrainConfig)."""
    code = ("import sys\nfrom hpa_pipeline.cli import cli\n"
            f"try:\n    cli.main({args!r}, prog_name='hpa-pipe')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: hpa-pipe" in result.stdout


@pytest.mark.integration
def test_ingest_and_the_store_options_load_without_zarr_or_opencv():
    """``ingest`` starts decoding a new store's archive before it imports zarr (0.2 s) and
    OpenCV: the command line, the store options and the ingest module must not pull them in."""
    code = ("import sys\nimport hpa_pipeline.cli, hpa_pipeline.prep.ingest\n"
            "from hpa_pipeline.contract.spec import StoreSpec\nStoreSpec(size=512)\n"
            "heavy = [m for m in ('zarr', 'cv2', 'tifffile', 'numcodecs', 'dask', 'torch') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_evaluate_runs_without_torch(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("Id,Target\na,0 1\nb,2\n")
    submission = tmp_path / "sub.csv"
    submission.write_text("Id,Predicted\na,0 1\nb,3\n")
    code = ("import sys\nsys.modules['torch'] = None\nfrom hpa_pipeline.cli import cli\n"
            f"cli.main(['evaluate', '--submission', {str(submission)!r}, '--labels', {str(truth)!r}], "
            "prog_name='hpa-pipe', standalone_mode=False)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "macro F1" in result.stdout


def test_prep_extra_installs_no_torch():
    """``pip install 'hpa-pipeline[prep]'`` (what a Dask worker image needs) brings no modelling stack."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(PACKAGE.parent / "setup.cfg")
    core = cfg["options"]["install_requires"].split()
    prep = cfg["options.extras_require"]["prep"].split()
    heavy = ("torch", "torchvision", "timm", "pretrainedmodels")
    assert not [r for r in core + prep if r.split(">")[0].split("=")[0].split("[")[0] in heavy]
    assert "hpa-pipeline[prep,train]" in cfg["options.extras_require"]["all"]


@pytest.mark.parametrize("module, forbidden", [("prep_commands", "hpa_pipeline.model"),
                                               ("model_commands", "hpa_pipeline.prep")])
def test_each_half_of_the_command_line_imports_only_its_own_half(module, forbidden):
    """The commands of one half call only that half's library (and the contract)."""
    imported = relative_imports(PACKAGE / "cli" / f"{module}.py")
    assert any(name.startswith("hpa_pipeline.contract.") for name in imported)  # the parser sees imports
    assert not sorted(name for name in imported if name.startswith(forbidden))


def test_every_command_is_listed_once_in_the_order_of_the_stages():
    from hpa_pipeline.cli import cli
    from hpa_pipeline.cli.group import COMMANDS

    assert list(cli.commands) == [command.name for command in COMMANDS]
    assert list(cli.commands)[:4] == ["synth", "extract", "build-zarr", "ingest"]
