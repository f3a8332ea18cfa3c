"""Where a store lives: a local folder, or any fsspec URL (``s3://bucket/train.zarr``, ``gs://...``).

Zarr opens both kinds itself; this module covers the few files the pipeline writes beside
zarr (``report.json``, whole shards) and the questions only a local folder can answer
(leftover temporary files, bytes on disk).

Remote credentials and endpoints come from the filesystem's own configuration, never from
our options: for S3, the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_ENDPOINT_URL`` variables or ``~/.aws``; for GCS, ``GOOGLE_APPLICATION_CREDENTIALS``
(see fsspec's "configuration" docs for per-protocol defaults files).

Why object stores need no temporary names: a PUT of one object is atomic (readers see the
old object or the new one, never half), so writing a whole shard or a report in one PUT gives
the same guarantee that temporary-name-then-rename gives on a local disk.
"""
from __future__ import annotations

from pathlib import Path


def is_url(location: str | Path) -> bool:
    """True for ``protocol://...`` locations other than ``file://``."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...`` for a URL or a local path."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def filesystem(url: str):
    """``(fsspec filesystem, path inside it)`` of a URL: the one place a URL is resolved."""
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def file_names(location: str | Path) -> list[str]:
    """The names (last part) of every file or object under ``location``."""
    if is_url(location):
        fs, path = filesystem(str(location))
        return [name.rsplit("/", 1)[-1] for name in fs.find(path)]
    return [p.name for p in Path(location).rglob("*") if p.is_file()]


def remove_tree(location: str | Path) -> None:
    """Delete ``location`` and everything under it (a folder, or the objects under a prefix)."""
    if is_url(location):
        fs, path = filesystem(str(location))
        fs.rm(path, recursive=True)
    elif Path(location).is_symlink():  # a link to a folder elsewhere: empty the folder, keep the link
        import shutil

        for child in Path(location).iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        import shutil

        shutil.rmtree(location)


def put_bytes(url: str, data: bytes) -> None:
    """Write one object in a single PUT (atomic on object stores)."""
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def get_bytes(location: str) -> bytes | None:
    """The bytes of a file or object (local path or URL), or ``None`` when there is none."""
    fs, path = filesystem(str(location))
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def bytes_under(location: str | Path) -> int:
    """Total size of the files (objects) under ``location``; 0 when there is none."""
    if is_url(location):
        fs, path = filesystem(str(location))
        return int(fs.du(path)) if fs.exists(path) else 0
    root = Path(location)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
