"""Read the files packed in a Qt binary resource file (`.rcc`, format versions 1-3), stdlib only.

GCompris ships its photos inside such files (Debian `gcompris-qt-data`); the non-fruit yardstick
(`nonfruit.py`) takes its photos from there. Layout (Qt's rcc writer): a 'qres' header with the format
version and the offsets of the node tree, the data and the names; a node is a directory (its children's
count and first index) or a file (its data offset); a file's data is its size then its bytes, zlib-
compressed (4-byte uncompressed size first) when flagged so. zstd-compressed entries are refused.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

MAGIC = b"qres"
COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 0x1, 0x2, 0x4


def read_resource(rcc: str | Path, resource: str) -> bytes:
    """The bytes of one file (`/a/b/c.webp`, the path under ':' in Qt) in the resource file `rcc`."""
    blob = Path(rcc).read_bytes()
    if blob[:4] != MAGIC:
        raise ValueError(f"{rcc} is not a Qt resource file")
    version, tree, data, names = struct.unpack(">4I", blob[4:20])
    node_size = 14 if version < 2 else 22
    node = 0  # the root
    for part in [piece for piece in resource.split("/") if piece]:
        node = _child(blob, tree, names, node_size, node, part, rcc, resource)
    flags, offset = _file_node(blob, tree, node_size, node, rcc, resource)
    start = data + offset
    (size,) = struct.unpack(">I", blob[start:start + 4])
    payload = blob[start + 4:start + 4 + size]
    if flags & COMPRESSED_ZSTD:
        raise ValueError(f"{resource} in {rcc} is zstd-compressed, which this reader does not support")
    return zlib.decompress(payload[4:]) if flags & COMPRESSED else payload


def _name(blob: bytes, names: int, offset: int) -> str:
    (length,) = struct.unpack(">H", blob[names + offset:names + offset + 2])
    start = names + offset + 6  # length, then a 4-byte hash, then UTF-16 code units
    return blob[start:start + 2 * length].decode("utf-16-be")


def _child(blob: bytes, tree: int, names: int, node_size: int, node: int, part: str, rcc: object,
           resource: str) -> int:
    at = tree + node * node_size
    flags = struct.unpack(">H", blob[at + 4:at + 6])[0]
    if not flags & DIRECTORY:
        raise FileNotFoundError(f"{resource} is not in {rcc}")
    count, first = struct.unpack(">II", blob[at + 6:at + 14])
    for child in range(first, first + count):
        (name_offset,) = struct.unpack(">I", blob[tree + child * node_size:tree + child * node_size + 4])
        if _name(blob, names, name_offset) == part:
            return child
    raise FileNotFoundError(f"{resource} is not in {rcc}")


def _file_node(blob: bytes, tree: int, node_size: int, node: int, rcc: object, resource: str) -> tuple[int, int]:
    at = tree + node * node_size
    flags = struct.unpack(">H", blob[at + 4:at + 6])[0]
    if flags & DIRECTORY:
        raise IsADirectoryError(f"{resource} in {rcc} is a folder")
    (offset,) = struct.unpack(">I", blob[at + 10:at + 14])
    return flags, offset
