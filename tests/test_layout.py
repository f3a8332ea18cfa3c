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
    result = import_with_blocked(modules, ["hpa_pipeline.prep", "tifffile", "py7zr", "dask", "distributed", "cv2"])
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
                                             ("contract", ("hpa_pipeline.model", "hpa_pipeline.prep")),
                                             ("common", ("hpa_pipeline.model", "hpa_pipeline.prep",
                                                         "hpa_pipeline.contract", "hpa_pipeline.deploy",
                                                         "hpa_pipeline.cli"))])
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


def module_file(name: str) -> Path | None:
    """The file of module ``name`` of hpa_pipeline (a package's ``__init__.py``), or None."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def imported_files(path: Path) -> set[Path]:
    """The files of hpa_pipeline that ``path`` imports, anywhere in it (inside functions too):
    ``from . import x`` and ``from .pkg import x`` count x's file where x is a module."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if not module.startswith("hpa_pipeline"):
                continue
            for alias in node.names:
                target = module_file(f"{module}.{alias.name}") or module_file(module)
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(module_file(alias.name) for alias in node.names if alias.name.startswith("hpa_pipeline"))
    return {f for f in found if f is not None and f != path}


def test_no_import_circle_between_two_files_even_lazily():
    """A circle between files (lazy imports included) means neither can be understood, or
    moved, without the other: every module's imports form a tree, cli on top, contract below."""
    files = sorted(PACKAGE.rglob("*.py"))
    edges = {f: imported_files(f) for f in files}
    circles, state = [], {}

    def visit(node: Path, trail: list[Path]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                circles.append([str(p.relative_to(PACKAGE)) for p in trail[trail.index(nxt):] + [nxt]])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "closed"

    for f in files:
        if f not in state:
            visit(f, [f])
    assert imported_files(PACKAGE / "model" / "train.py")  # the parser sees imports
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def _package_source_outside(*allowed: str) -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")
            if str(p.relative_to(PACKAGE)) not in allowed}


def test_the_store_layout_names_are_read_in_the_store_module_alone():
    """``images/<size>``, ``attributes["hpa"]`` and the per-sample arrays are named in
    ``contract/store.py``; everything else goes through :class:`Store`."""
    import re

    pattern = re.compile(r'''f?["']images/|attrs\[["']hpa|attrs\.get\(["']hpa|(root|group)\[["'](done|labels|phash|channel_sums|source_shape|source_dtype)["']\]''')
    found = {name: sorted(set(m.group(0) for m in pattern.finditer(text)))
             for name, text in _package_source_outside("contract/store.py").items()}
    assert not {name: hits for name, hits in found.items() if hits}


def test_every_error_a_user_sees_is_an_hpa_error_with_its_exit_code():
    """Every exception class the package defines is an HpaError, but those that mark a bug or
    a stop (and private control-flow ones); the CLI maps them by their exit_code."""
    import importlib
    import inspect as pyinspect

    from hpa_pipeline.contract.errors import EXIT_DIVERGED, EXIT_ERROR, HpaError

    # Ctrl-C as raised; a loader worker's bug (its traceback); the CLI's rendering of an HpaError
    not_for_users = {"Interrupted", "FeedError", "OneLine"}
    others = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for cls_name, cls in vars(module).items():
            if (pyinspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name
                    and not cls_name.startswith("_") and cls_name not in not_for_users
                    and not issubclass(cls, HpaError)):
                others.append(f"{name}.{cls_name}")
    assert not others
    from hpa_pipeline.model.feed import LoaderWorkerDied
    from hpa_pipeline.model.train import TrainingDiverged

    assert TrainingDiverged.exit_code == EXIT_DIVERGED and LoaderWorkerDied.exit_code == EXIT_ERROR
    assert issubclass(LoaderWorkerDied, HpaError)


def test_no_command_exits_with_a_literal_status():
    import re

    literal = re.compile(r"(SystemExit|sys\.exit|ctx\.exit)\((\d|\d+ if|0 if)")
    found = {name: literal.findall(text) for name, text in _package_source_outside().items()
             if name.startswith("cli/")}
    assert not {k: v for k, v in found.items() if v}


def test_one_disk_full_error():
    from hpa_pipeline.contract.errors import DiskFull

    texts = _package_source_outside("contract/errors.py")
    assert not [n for n, t in texts.items() if "class DiskSpaceError" in t or "class DiskFull" in t]
    assert not [n for n, t in texts.items() if "run the same command again to go on" in t and "hint=" not in t]
    assert "free space" in DiskFull.hint


def test_layout_options_come_from_the_store_spec():
    """build-zarr's and ingest's layout options are StoreSpec's fields, with its defaults and choices."""
    import dataclasses

    from hpa_pipeline.cli import cli
    from hpa_pipeline.contract.spec import CODECS, DTYPES, LAYOUT_FIELDS, StoreSpec

    assert LAYOUT_FIELDS == tuple(f.name for f in dataclasses.fields(StoreSpec))
    default = StoreSpec()
    for command in ("build-zarr", "ingest"):
        params = {p.name: p for p in cli.commands[command].params}
        for name in LAYOUT_FIELDS:
            if name not in ("levels", "codec"):  # levels: from --size and --chunk; codec: the store's own
                assert params[name].default == getattr(default, name), (command, name)
        assert params["codec"].default is None and default.codec in params["codec"].show_default
        assert tuple(params["codec"].type.choices) == CODECS and tuple(params["dtype"].type.choices) == DTYPES


def test_names_are_listed_once():
    from hpa_pipeline.cli import cli
    from hpa_pipeline.contract.duplicates import DEFAULT_MAX_DISTANCE
    from hpa_pipeline.model.config import TrainConfig
    from hpa_pipeline.model.names import ARCH_SOURCES, ARCHS, STRATEGIES

    assert ARCHS == tuple(ARCH_SOURCES)
    assert tuple(cli.commands["thresholds"].params[[p.name for p in cli.commands["thresholds"].params].index(
        "strategy")].type.choices) == STRATEGIES
    assert TrainConfig().duplicate_distance == DEFAULT_MAX_DISTANCE
    duplicates = {p.name: p for p in cli.commands["duplicates"].params}["max_distance"]
    assert duplicates.opts[:2] == ["--duplicate-distance", "--max-distance"]
    assert duplicates.default == DEFAULT_MAX_DISTANCE and "another name" in duplicates.help


def test_loader_workers_run_without_opencv():
    """``pip install 'hpa-pipeline[train]'`` has no OpenCV: a loader worker's set-up must not need it."""
    code = ("import sys\nsys.modules['cv2'] = None\n"
            "from hpa_pipeline.common.machine import one_thread_per_task\none_thread_per_task()\n"
            "import numcodecs.blosc\nassert numcodecs.blosc.use_threads is False\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
