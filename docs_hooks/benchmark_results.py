"""MkDocs hook: the benchmarks page's tables, generated from ``benchmarks/results/*.json``.

Each results file becomes a section: what it measures (the benchmark module's docstring, first
paragraph), the command, machine and date, and a table of its figures. So no figure on the site
is typed by hand: a new ``make bench`` run changes the page.
"""
from __future__ import annotations

import ast
import json
import re
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


LOCAL_PATH = re.compile(r"\s*\((/[^()\s]+)\)|(?<![\w./])/(?:[\w.+-]+/){2,}([\w.+-]+)")


def _cell(value) -> str:
    """A figure as a table cell: lists joined, a machine's local paths left out."""
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    text = str(value)
    return LOCAL_PATH.sub(lambda m: "" if m.group(1) else m.group(2), text).replace("|", "\\|")


def _split(key: str, depth: int) -> tuple[str | None, str]:
    """``"variant: measure"`` -> its two parts, the variant being the first ``depth`` parts;
    a key with fewer parts -> ``(None, key)``."""
    parts = _parts(key)
    return (": ".join(parts[:depth]), ": ".join(parts[depth:])) if len(parts) > depth else (None, key)


def _parts(key: str) -> list[str]:
    """``key`` split at each ``": "`` outside parentheses."""
    parts, level, start = [], 0, 0
    for i, ch in enumerate(key):
        level += (ch == "(") - (ch == ")")
        if level == 0 and key.startswith(": ", i):
            parts.append(key[start:i])
            start = i + 2
    return parts + [key[start:]]


def _layout(keys: list[str]) -> int:
    """How many leading ``: ``-parts name the variant: the split that puts the most figures in
    measures shared by two or more variants (0: no table of variants)."""
    best, best_depth = 0, 0
    for depth in (1, 2, 3):
        seen: dict[str, set] = {}
        for key in keys:
            variant, measure = _split(key, depth)
            if variant is not None:
                seen.setdefault(measure, set()).add(variant)
        shared = sum(len(v) for v in seen.values() if len(v) >= 2)
        if shared > best:
            best, best_depth = shared, depth
    return best_depth


def _tables(figures: dict) -> str:
    """Figures of several variants as one table (variants as rows, measures as columns), the
    others as a two-column table, each in the order the benchmark wrote them."""
    keys = [k for k, v in figures.items() if not _is_table(v)]
    depth = _layout(keys)
    counts: dict[str, int] = {}
    for key in keys:
        variant, measure = _split(key, depth) if depth else (None, key)
        if variant is not None:
            counts[measure] = counts.get(measure, 0) + 1
    plain, matrix, variants, measures = [], {}, [], []
    for key in keys:
        variant, measure = _split(key, depth) if depth else (None, key)
        if variant is None or counts[measure] < 2:
            plain.append((key, figures[key]))
            continue
        matrix[(variant, measure)] = figures[key]
        variants += [variant] if variant not in variants else []
        measures += [measure] if measure not in measures else []
    out = ""
    if plain:
        out += "| figure | value |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in plain) + "\n"
    if variants:
        out += ("\n| | " + " | ".join(_cell(m) for m in measures) + " |\n|---|" + "---|" * len(measures) + "\n"
                + "\n".join(f"| {_cell(v)} | " + " | ".join(_cell(matrix.get((v, m), "")) for m in measures) + " |"
                             for v in variants) + "\n")
    return out


def _section(record: dict) -> str:
    figures = record["figures"]
    tables = "".join(f"\n{key}:\n\n" + "\n".join(value) + "\n" for key, value in figures.items() if _is_table(value))
    title = record["benchmark"] + (f" ({record['machine']['cpu']})" if "source" in record else "")
    source = f" Source: {record['source']}." if "source" in record else ""
    plot = (f"\n![{record['benchmark']}](plots/{record['benchmark']}.png)\n"
            if (ROOT / "docs" / "plots" / f"{record['benchmark']}.png").exists() else "")
    return (f"### {title}\n\n{_purpose(record['benchmark'])}\n\n"
            f"`{record.get('command', 'make bench')}` on {_machine(record['machine'])}; "
            f"{record['date']}.{source}\n{plot}\n{_tables(figures)}{tables}")


def results_markdown() -> str:
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))
               if not p.name.endswith("_dry_run.json")]
    if not records:
        return "No results yet: run `make bench`."
    return "\n".join(_section(r) for r in records)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, results_markdown()) if MARKER in markdown else markdown
