"""MkDocs hook: the command-line reference as a browser shows it.

mkdocs-click writes help texts into the page as they are, so ``<id>_<filter>`` reads as two
HTML tags (and vanishes), and Click 8.3's marker for "no default" (``Sentinel.UNSET``) lands in
the Default column. Both are fixed on the rendered page: placeholders in angle brackets are
escaped, and an unset default is shown as a dash.
"""
from __future__ import annotations

import re

#: ``<word>`` placeholders of the help texts (``<id>``, ``<filter>``, ``<tif|png|jpg>``), never HTML
PLACEHOLDER = re.compile(r"<((?:id|filter|n|[a-z0-9]+(?:\|[a-z0-9]+)+))>")


def on_page_content(html: str, page, config, files) -> str:
    if page.file.src_uri != "cli.md":
        return html
    html = html.replace("<code>Sentinel.UNSET</code>", "–").replace("Sentinel.UNSET", "–")
    return PLACEHOLDER.sub(r"&lt;\1&gt;", html)
