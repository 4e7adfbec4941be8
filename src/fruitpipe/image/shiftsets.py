"""Shifted, labelled image sets written from the bundled Test images (`fruitpipe sample-data --shift`).

Only Test images are used, so a set never holds a photo the recogniser was trained on; the layout is
Fruits 360's with a Test split only (`<output>/Test/<Class>/<n>_100.jpg`), so `fruitpipe run` labels
the rows Test and `fruitpipe train` refuses such a folder (it needs a Training split). With
`all-evaluation` every evaluation-side family gets its own such folder, `<output>/<family>/Test/...`.
Each image draws from a generator seeded by a hash of (seed, family, class, index): the same request
gives byte-identical files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fruitpipe.image import sampledata, shifts

logger = logging.getLogger(__name__)

ALL_EVALUATION = "all-evaluation"
SPLIT = "Test"
QUALITY = 95  # the files' own JPEG quality: high, so the shift (not the saving) is what changes them


@dataclass(frozen=True)
class ShiftedSet:
    """What one request wrote: per family, the folder and images per class."""

    output_dir: str
    seed: int
    per_class: int
    classes: tuple[str, ...]
    folders: dict[str, str]  # family -> folder holding Test/<Class>/

    def to_json(self) -> dict[str, object]:
        return {"output_dir": self.output_dir, "seed": self.seed, "per_class": self.per_class,
                "classes": list(self.classes), "folders": dict(self.folders),
                "total": self.per_class * len(self.classes) * len(self.folders)}


def shift_names(shift: str) -> tuple[str, ...]:
    """The families a --shift value asks for; ValueError naming every valid value otherwise."""
    if shift == ALL_EVALUATION:
        return shifts.EVALUATION_SIDE
    if shift not in shifts.FAMILIES:
        raise ValueError(f"unknown shift {shift!r}; choose one of {', '.join(shifts.FAMILIES)} or {ALL_EVALUATION}")
    return (shift,)


def write_shifted(output_dir: str | Path, shift: str, per_class: int | None = None, seed: int = 0,
                  source: Path | None = None) -> ShiftedSet:
    """Write the shifted set; `per_class` None: one image per source Test image (cycled when larger)."""
    names = shift_names(shift)
    out = Path(output_dir)
    if per_class is not None and (isinstance(per_class, bool) or per_class < 1):
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    sampledata.check_output_seed(out, seed)
    catalogue = sampledata.scan(Path(source) if source is not None else sampledata.bundled_sample_dir())[SPLIT]
    count = per_class or min(len(files) for files in catalogue.values())
    folders = {}
    for name in names:
        folder = out / name if len(names) > 1 else out
        _write_family(folder, shifts.family(name), catalogue, count, seed)
        folders[name] = str(folder)
    logger.info("wrote %d shifted images (%s) in %s", count * len(catalogue) * len(names), shift, out)
    return ShiftedSet(str(out), seed, count, tuple(sorted(catalogue)), folders)


def _write_family(folder: Path, family: shifts.Family, catalogue: dict[str, list[Path]], count: int,
                  seed: int) -> None:
    for class_name in sorted(catalogue):
        target = folder / SPLIT / class_name
        target.mkdir(parents=True, exist_ok=True)
        files = catalogue[class_name]
        for index in range(count):
            with Image.open(files[index % len(files)]) as image:
                pixels = np.asarray(image.convert("RGB"))
            rng = np.random.default_rng(shifts.seed_words("shift", seed, family.name, class_name, index))
            shifted = family.apply(pixels, rng)
            Image.fromarray(shifted, "RGB").save(target / f"{index}_100.jpg", "JPEG", quality=QUALITY)
