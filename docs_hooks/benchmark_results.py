"""MkDocs hook: the benchmarks page's tables, generated from ``benchmarks/results/*.json``.

Each results file becomes a section: what it measures (the benchmark module's docstring, first
paragraph), the command, machine and date, and a table of its figures. So no figure on the site
is typed by hand: a new ``make bench`` run changes the page.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- benchmark-results -->"


def _purpose(name: str) -> str:
    module = ROOT / "benchmarks" / f"bench_{name.removesuffix('_dry_run')}.py"
    if not module.exists():
        return ""
    doc = ast.get_docstring(ast.parse(module.read_text())) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _section(record: dict) -> str:
    machine = record["machine"]
    rows = "\n".join(f"| {key} | {value} |" for key, value in record["figures"].items())
    return (f"### {record['benchmark']}\n\n{_purpose(record['benchmark'])}\n\n"
            f"`{record.get('command', 'make bench')}` on {machine['cpu']}, {machine['cores']} cores, "
            f"{machine.get('memory_gb')} GB, Python {machine['python']}, zarr {machine['zarr']}; "
            f"{record['date']}.\n\n| figure | value |\n|---|---|\n{rows}\n")


def results_markdown() -> str:
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))
               if not p.name.endswith("_dry_run.json")]
    if not records:
        return "No results yet: run `make bench`."
    return "\n".join(_section(r) for r in records)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, results_markdown()) if MARKER in markdown else markdown
