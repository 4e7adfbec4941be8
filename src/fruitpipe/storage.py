"""One storage interface for every location (local paths today, s3:// through fsspec later).

Used by the driver to list and to write small files, and by executors to read image bytes.
Credentials are never handled here: fsspec backends take them from the standard chain.
"""
from __future__ import annotations

import logging
import os
import posixpath
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import fsspec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A parsed URI: its filesystem and the path that filesystem understands."""

    fs: fsspec.AbstractFileSystem
    path: str
    scheme: str

    def uri(self, path: str | None = None) -> str:
        """The user-facing URI of `path` (default: this location)."""
        path = self.path if path is None else path
        return path if self.scheme == "file" else f"{self.scheme}://{path}"


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def locate(uri: str) -> Location:
    """Parse a URI; bare paths are local and made absolute."""
    if is_local(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return Location(fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path)), "file")
    scheme = uri.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot open {uri}: {exc}") from exc
    return Location(fs, path.rstrip("/"), scheme)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching its scheme."""
    if is_local(uri):
        return os.path.join(locate(uri).path, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def spark_path(uri: str) -> str:
    """The form Spark's own readers and writers take (absolute file: URI for local paths)."""
    return f"file://{locate(uri).path}" if is_local(uri) else uri


def list_files(uri: str, extensions: Iterable[str]) -> list[tuple[str, str]]:
    """All files below `uri` with one of `extensions` (case-insensitive), skipping hidden ones.

    Returns (full URI, path relative to `uri` in NFC) pairs, sorted by relative path.
    """
    location = locate(uri)
    if not location.fs.exists(location.path):
        raise ValueError(f"input not found: {uri}")
    if not location.fs.isdir(location.path):
        raise ValueError(f"input is not a folder: {uri}")
    wanted = tuple(ext.lower() for ext in extensions)
    found = []
    root = location.path.rstrip("/") + "/"
    for path in location.fs.find(location.path):
        relative = path[len(root):] if path.startswith(root) else posixpath.basename(path)
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if relative.lower().endswith(wanted):
            found.append((location.uri(path), unicodedata.normalize("NFC", relative)))
    found.sort(key=lambda item: item[1])
    return found


def read_bytes(uri: str, limit: int | None = None) -> bytes:
    """Whole object; with `limit`, refuse objects larger than it without reading them."""
    location = locate(uri)
    if limit is not None:
        size = location.fs.size(location.path)
        if size is not None and size > limit:
            raise ValueError(f"file too large: {size} bytes > limit {limit}")
    return location.fs.cat_file(location.path)


def exists(uri: str) -> bool:
    location = locate(uri)
    return location.fs.exists(location.path)


def is_empty_dir(uri: str) -> bool:
    location = locate(uri)
    return location.fs.isdir(location.path) and not location.fs.ls(location.path)


def remove_tree(uri: str) -> None:
    location = locate(uri)
    if location.fs.exists(location.path):
        location.fs.rm(location.path, recursive=True)


def make_dirs(uri: str) -> None:
    location = locate(uri)
    location.fs.makedirs(location.path, exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a small file whole (manifest, plots, markers)."""
    location = locate(uri)
    parent = posixpath.dirname(location.path)
    if parent:
        location.fs.makedirs(parent, exist_ok=True)
    location.fs.pipe_file(location.path, data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def list_tree(uri: str) -> list[str]:
    """Every file below `uri`, as paths relative to it, sorted."""
    location = locate(uri)
    root = location.path.rstrip("/") + "/"
    return sorted(path[len(root):] for path in location.fs.find(location.path) if path.startswith(root))
