"""MkDocs hook: the command-line reference as a browser shows it.

mkdocs-click writes help texts into the page as they are, so ``<id>_<filter>`` reads as two
HTML tags (and vanishes), and Click 8.3's marker for "no default" (``Sentinel.UNSET``) lands in
the Default column, as does ``None`` for an option whose default the command works out. All are
fixed on the rendered page: placeholders in angle brackets are escaped, a worked-out default
shows the words ``--help`` shows for it (the option's ``show_default`` text), and an unset one
a dash.
"""
from __future__ import annotations

import html as html_text
import re

#: ``<word>`` placeholders of the help texts (``<id>``, ``<filter>``, ``<tif|png|jpg>``), never HTML
PLACEHOLDER = re.compile(r"<((?:id|filter|n|[a-z0-9]+(?:\|[a-z0-9]+)+))>")
#: one command's section of the page: its heading's id, then everything up to the next heading
SECTION = re.compile(r'(<h[23] id="([\w-]+)".*?)(?=<h[23] id=|\Z)', re.S)
ROW = re.compile(r"<tr>\s*<td><code>(--[\w-]+)</code>.*?</tr>", re.S)


def worked_out_defaults() -> dict[tuple[str, str], str]:
    """``(command, option) -> text`` for every option whose default is ``None`` but whose
    ``show_default`` says in words what the command takes."""
    from hpa_pipeline.cli import cli

    found = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if getattr(param, "default", 0) is None and isinstance(getattr(param, "show_default", None), str):
                found[(name, param.opts[0])] = param.show_default
    return found


def _fill_defaults(section: str, command: str, defaults: dict) -> str:
    def row(match: re.Match) -> str:
        text = defaults.get((command, match.group(1)))
        cell = html_text.escape(text) if text else "–"
        return match.group(0).replace("<td>None</td>", f"<td>{cell}</td>")

    return ROW.sub(row, section)


def on_page_content(html: str, page, config, files) -> str:
    if page.file.src_uri != "cli.md":
        return html
    html = html.replace("<code>Sentinel.UNSET</code>", "–").replace("Sentinel.UNSET", "–")
    defaults = worked_out_defaults()
    html = SECTION.sub(lambda m: _fill_defaults(m.group(1), m.group(2), defaults), html)
    return PLACEHOLDER.sub(r"&lt;\1&gt;", html)
