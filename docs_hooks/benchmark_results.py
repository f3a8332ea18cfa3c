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
    parts = _split_outside(key, ": ")
    return (": ".join(parts[:depth]), ": ".join(parts[depth:])) if len(parts) > depth else (None, key)


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


def _split_outside(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` outside parentheses."""
    parts, level, start = [], 0, 0
    for i, ch in enumerate(text):
        level += (ch == "(") - (ch == ")")
        if level == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i + len(separator)
    return parts + [text[start:]]


def _one_by_one(key: str, value) -> dict:
    """Figures named one by one in one key (``"7zz t: wall s, CPU s": "7.7, 7.6"``, or a list) as
    one figure each (``"7zz t: wall s"``, ``"7zz t: CPU s"``), so that each gets a column of its
    own; ``"; "`` separates first, then ``", "``. Anything else is returned as it is."""
    head, _, last = key.rpartition(": ")
    for separator in ("; ", ", "):
        names = _split_outside(last, separator)
        values = value if isinstance(value, list) else _split_outside(str(value), separator)
        if len(names) == len(values) > 1 and not _is_table(value):
            out = {}
            for name, v in zip(names, values):
                out.update(_one_by_one(f"{head}: {name}" if head else name, v))
            return out
    return {key: value}


def _expanded(figures: dict) -> dict:
    out = {}
    for key, value in figures.items():
        out.update(_one_by_one(key, value))
    return out


#: a text figure longer than this is written below its table rather than in a column
LONG_TEXT = 60


def _long_text(matrix: dict, variants: list, measures: list) -> list[str]:
    """The measures whose figures are long descriptions (an archive's packing, say): a column of
    them would make every row tall, so they are listed below the table instead."""
    return [m for m in measures
            if all(isinstance(matrix.get((v, m), ""), str) for v in variants)
            and max(len(str(matrix.get((v, m), ""))) for v in variants) > LONG_TEXT]


#: more measures than this, and fewer variants, and the table turns: variants as columns
WIDEST = 7


def _transposed(matrix: dict, variants: list, measures: list) -> str:
    """Many measures of a few variants (an archive packed three ways, say): a column per variant
    keeps the table within the page, where a column per measure would run far past it."""
    return ("\n| figure | " + " | ".join(_cell(v) for v in variants) + " |\n|---|" + "---|" * len(variants) + "\n"
            + "\n".join(f"| {_cell(m)} | " + " | ".join(_cell(matrix.get((v, m), "")) for v in variants) + " |"
                         for m in measures) + "\n")


def _matrix_table(matrix: dict, variants: list, measures: list) -> str:
    described = _long_text(matrix, variants, measures)
    columns = [m for m in measures if m not in described]
    if len(columns) > WIDEST and len(variants) < len(columns):
        out = _transposed(matrix, variants, columns)
    else:
        out = ("\n| | " + " | ".join(_cell(m) for m in columns) + " |\n|---|" + "---|" * len(columns) + "\n"
               + "\n".join(f"| {_cell(v)} | " + " | ".join(_cell(matrix.get((v, m), "")) for m in columns) + " |"
                            for v in variants) + "\n")
    for m in described:
        out += f"\n{_cell(m)}:\n\n" + "\n".join(f"- {_cell(v)}: {_cell(matrix[(v, m)])}"
                                                for v in variants if matrix.get((v, m), "") != "") + "\n"
    return out


def _merged(matrix: dict, variants: list, measures: list) -> tuple[dict, list, list]:
    """Rows that are one variant written two ways become one row:

    - a variant named once in full and elsewhere by its first word (``"old (DataLoader per
      epoch)"`` and ``"old"``) is one row, under its full name;
    - a variant with one more option (``"lz4, 256² chunks, --crop-grid 256"`` beside ``"lz4, 256²
      chunks"``) is the base variant's row, its measures named with the option
      (``"crops/s per core, --crop-grid 256"``).
    """
    full = {v.split(" (")[0]: v for v in variants if " (" in v}
    rows, columns = {}, {}
    for v in variants:
        base, _, option = v.rpartition(", ")
        if v in full:
            rows[v] = (full[v], "")
        elif (base in variants or base in full) and option.startswith("--"):
            rows[v] = (full.get(base, base), f", {option}")
        else:
            rows[v] = (v, "")
    merged = {}
    for (v, m), value in matrix.items():
        row, suffix = rows[v]
        merged[(row, m + suffix)] = value
        columns.setdefault(m + suffix, None)
    order = [m for m in measures if m in columns] + [m for m in columns if m not in measures]
    return merged, [v for v in variants if rows[v] == (v, "")], order


def _tables(figures: dict) -> str:
    """Figures of several variants as one table (variants as rows, measures as columns), the
    others as a two-column table, each in the order the benchmark wrote them."""
    figures = _expanded(figures)
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
    matrix, variants, measures = _merged(matrix, variants, measures)
    out = ""
    if plain:
        out += "| figure | value |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in plain) + "\n"
    if variants:
        out += _matrix_table(matrix, variants, measures)
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
