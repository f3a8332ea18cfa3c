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


def _machine(machine: dict) -> str:
    """``Intel Xeon, 16 cores, 23.5 GB, Python 3.11, zarr 3.1.6, torch 2.11``: what is known."""
    parts = [machine.get("cpu", "unknown CPU"), f"{machine.get('cores')} cores"]
    if machine.get("memory_gb"):
        parts.append(f"{machine['memory_gb']} GB")
    parts += [f"{name} {machine[key]}" for key, name in (("python", "Python"), ("zarr", "zarr"), ("torch", "torch"))
              if machine.get(key)]
    return ", ".join(parts)


def _is_table(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.startswith("|") for v in value)


def _section(record: dict) -> str:
    figures = record["figures"]
    rows = "\n".join(f"| {key} | {value} |" for key, value in figures.items() if not _is_table(value))
    tables = "".join(f"\n{key}:\n\n" + "\n".join(value) + "\n" for key, value in figures.items() if _is_table(value))
    title = record["benchmark"] + (f" ({record['machine']['cpu']})" if "source" in record else "")
    source = f" Source: {record['source']}." if "source" in record else ""
    return (f"### {title}\n\n{_purpose(record['benchmark'])}\n\n"
            f"`{record.get('command', 'make bench')}` on {_machine(record['machine'])}; "
            f"{record['date']}.{source}\n\n| figure | value |\n|---|---|\n{rows}\n{tables}")


def results_markdown() -> str:
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))
               if not p.name.endswith("_dry_run.json")]
    if not records:
        return "No results yet: run `make bench`."
    return "\n".join(_section(r) for r in records)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, results_markdown()) if MARKER in markdown else markdown
