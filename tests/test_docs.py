"""The documentation site builds offline with --strict (a broken link or a missing page fails),
its CLI reference is generated from every command, and nothing in the project points outside it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_the_site_builds_strictly_with_every_command_and_the_benchmark_results(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocs_click")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from hpa_pipeline.cli import cli

    reference = (tmp_path / "cli" / "index.html").read_text()
    for param in cli.params:  # the group's own: --config, --debug, -v, -q, --version
        assert any(opt in reference for opt in param.opts), param.opts
    for name, command in cli.commands.items():
        assert f"hpa-pipe {name}" in reference, name
        for param in command.params:
            if getattr(param, "opts", None) and param.opts[0].startswith("--") and param.opts[0] != "--help":
                assert param.opts[0] in reference, (name, param.opts[0])
    assert "Sentinel" not in reference and "<td>None</td>" not in reference  # no default: a dash
    assert "<td>zstd for a new store, an existing store&#x27;s own</td>" in reference  # worked out: in words
    assert "&lt;id&gt;_&lt;filter&gt;" in reference and "<id>" not in reference  # not eaten as HTML tags
    benchmarks = (tmp_path / "benchmarks" / "index.html").read_text()
    assert "checksum" in benchmarks and "<!-- benchmark-results -->" not in benchmarks
    assert "What changed for users" in (tmp_path / "changelog" / "index.html").read_text()
    assert "<th>figure</th>" in benchmarks and 'src="../plots/loader.png"' in benchmarks  # tables and plots
    assert (tmp_path / "plots" / "loader.png").stat().st_size > 10_000
    home = (tmp_path / "index.html").read_text()
    assert "Quick start" in home and "images/demo_curves.png" in home
    for page in tmp_path.rglob("*.html"):  # read offline: nothing fetched from elsewhere
        assert "fonts.googleapis.com" not in page.read_text(), page


def test_nothing_in_the_project_reads_or_links_outside_it():
    offenders = []
    for path in [*REPO.glob("hpa_pipeline/**/*.py"), *REPO.glob("docs/**/*.md"), REPO / "README.md",
                 *REPO.glob("pipelines/*.yaml"), REPO / "Makefile"]:
        if "../shared" in path.read_text():
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_the_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for needed in ("make demo", "make test", ".venv/bin/hpa-pipe", "--codec", "export", "Exit statuses"):
        assert needed in readme, needed
    assert shutil.which("make") is None or "docs:" in (REPO / "Makefile").read_text()


def test_the_architecture_page_lists_every_module():
    page = (REPO / "docs" / "architecture.md").read_text()
    modules = [p for p in (REPO / "hpa_pipeline").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [str(p.relative_to(REPO)) for p in modules if f"{p.name}`" not in page]
    assert not missing, f"docs/architecture.md does not list {missing}"


def test_code_blocks_fit_eighty_columns():
    """The site's code column holds 80 characters at a laptop's width; a longer line wraps at a
    hyphen (``--`` apart from ``out``) and a diagram falls apart. The README is read in a terminal."""
    too_long = []
    for path in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        in_block = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_block = not in_block
            elif in_block and len(line.rstrip()) > 80:
                too_long.append(f"{path.relative_to(REPO)}:{number}")
    assert not too_long


def _benchmark_tables(figures: dict) -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_results", REPO / "docs_hooks" / "benchmark_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._tables(figures)


def test_benchmark_tables_give_each_figure_a_cell_of_its_own():
    """Figures a benchmark wrote several to a key (``wall s, CPU s``), a variant written twice (its
    full name and its first word; with one more option) and a long description are laid out
    as a table a reader can scan: one figure per cell, one row per variant, the description
    below."""
    long = "243 MiB, 65 members in 1 solid block(s); first block: one LZMA2 stream: decoded on one thread"
    table = _benchmark_tables({
        "a (one stream): archive": long, "a (one stream): 7zz: wall s, CPU s": "7.74, 7.67",
        "a: samples": 3, "a, --crop-grid 256: crops/s": 580.8,
        "b: archive": long.replace("1 solid", "2 solid"), "b: 7zz: wall s, CPU s": [3.91, 7.63],
        "b: samples": 4, "b, --crop-grid 256: crops/s": 557.7,
    })
    lines = table.strip().splitlines()
    assert lines[0] == "| | 7zz: wall s | 7zz: CPU s | samples | crops/s, --crop-grid 256 |"
    assert lines[2] == "| a (one stream) | 7.74 | 7.67 | 3 | 580.8 |"
    assert lines[3] == "| b | 3.91 | 7.63 | 4 | 557.7 |"
    assert "archive:" in table and f"- a (one stream): {long}" in table and long not in lines[2]


def test_benchmark_tables_turn_when_a_few_variants_have_many_measures():
    figures = {f"{v}: measure {m}": m for v in ("a", "b") for m in range(9)}
    lines = _benchmark_tables(figures).strip().splitlines()
    assert lines[0] == "| figure | a | b |" and lines[2] == "| measure 0 | 0 | 0 |" and len(lines) == 2 + 9


def test_every_list_starts_after_a_blank_line():
    """Python-Markdown (the site) reads a list right under a line of text as part of that
    paragraph, so its items run together; GitHub renders it either way, so only the site shows it."""
    joined = []
    for path in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md", REPO / "CHANGELOG.md"]:
        lines, in_block = path.read_text().splitlines(), False
        for number in range(1, len(lines)):
            line, previous = lines[number], lines[number - 1]
            in_block ^= line.lstrip().startswith("```")
            starts_list = line.startswith("- ") or line[:3] == "1. "
            if (not in_block and starts_list and previous.strip()
                    and not previous.startswith(("- ", " ")) and not previous[:1].isdigit()):
                joined.append(f"{path.relative_to(REPO)}:{number + 1}")
    assert not joined
