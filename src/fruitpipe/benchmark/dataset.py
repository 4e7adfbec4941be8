"""The benchmark's image sets: one synthetic set (`sampledata.synthesize`), balanced subsets hard-linked from it.

Generated once and reused (a marker file records what was asked for), so a resumed run finds the same data.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from fruitpipe.config import IMAGE_EXTENSIONS
from fruitpipe.image import sampledata

logger = logging.getLogger(__name__)

MARKER = "bench-dataset.json"
SEED = 0


def prepare(root: Path, sizes: list[int]) -> dict[int, Path]:
    """Folder per requested size (Fruits 360 layout), all drawn from one set as large as the largest size."""
    full = _full_set(root, max(sizes))
    images = _listing(full)
    return {size: _subset(root, full, images, size) for size in sorted(set(sizes))}


def _full_set(root: Path, size: int) -> Path:
    classes = len([p for p in (sampledata.bundled_sample_dir() / sampledata.SPLITS[0]).iterdir() if p.is_dir()])
    per_class = max(2, math.ceil(size / classes))
    folder = root / f"synth-{per_class}-per-class-seed{SEED}"
    if _complete(folder, {"per_class": per_class, "seed": SEED}):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("synthesising %d images per class in %s (once, reused by later runs)", per_class, folder)
    result = sampledata.synthesize(folder, per_class, seed=SEED)
    _mark(folder, {"per_class": per_class, "seed": SEED, "total": result["total"]})
    return folder


def _listing(folder: Path) -> list[str]:
    """Relative paths interleaved across class folders, so any prefix of the list is class-balanced."""
    by_folder: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            relative = path.relative_to(folder).as_posix()
            by_folder.setdefault(relative.rsplit("/", 1)[0], []).append(relative)
    columns = [sorted(files, key=_natural) for _, files in sorted(by_folder.items())]
    return [files[i] for i in range(max(map(len, columns))) for files in columns if i < len(files)]


def _natural(relative: str) -> tuple[int, str]:
    stem = relative.rsplit("/", 1)[-1].split("_", 1)[0]
    return (int(stem) if stem.isdigit() else 1 << 30, relative)


def _subset(root: Path, full: Path, images: list[str], size: int) -> Path:
    if size > len(images):
        raise ValueError(f"asked for {size} images, the synthetic set has {len(images)}")
    folder = root / f"subset-{size}-of-{full.name}"
    if _complete(folder, {"size": size, "source": full.name}):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for relative in images[:size]:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(full / relative, target)  # same file system: no copy
    _mark(folder, {"size": size, "source": full.name})
    return folder


def _complete(folder: Path, expected: dict[str, Any]) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    return all(recorded.get(key) == value for key, value in expected.items())


def _mark(folder: Path, content: dict[str, Any]) -> None:
    """Written last: a folder without it is incomplete and rebuilt."""
    (folder / MARKER).write_text(json.dumps(content), encoding="utf-8")
