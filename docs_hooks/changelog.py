"""MkDocs hook: ``changelog.md`` is the repository's ``CHANGELOG.md`` (one file to edit)."""
from __future__ import annotations

from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"


def on_page_markdown(markdown: str, page, config, files) -> str:
    return CHANGELOG.read_text() if page.file.src_uri == "changelog.md" else markdown
