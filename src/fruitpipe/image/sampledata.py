"""The bundled sample images, and larger synthetic sets grown from them.

No real photo collection can be shipped or downloaded, so fruitpipe carries a small set of
Fruits 360 style images (see data/sample/LICENSE.md) and can multiply it by deterministic
augmentation to exercise the pipeline at scale. Stdlib, numpy and Pillow only: no font, no network.
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

logger = logging.getLogger(__name__)

SPLITS = ("Training", "Test")
SIZE = 100  # side of every image, as in Fruits 360
WHITE = (255, 255, 255)
CHUNK = 200  # images per worker task: large enough to amortise dispatch, small enough to balance
SMALL_JOB = 400  # below this many images a process pool costs more than it saves
_HALF = SIZE / 2
_JPEG = (".jpg", ".jpeg")
INK = 240  # a pixel darker than this in any channel belongs to the fruit (or its shadow)


def package_data_dir(name: str, what: str, marker: str = "") -> Path:
    """fruitpipe's own `data/<name>` folder (holding `marker`), found through package resources so it works
    once installed; FileNotFoundError naming `what` when the package data is missing."""
    try:
        found = resources.files("fruitpipe") / "data" / name
    except (ModuleNotFoundError, TypeError):  # not importable as a package (e.g. run from a checkout)
        found = None
    path = found if isinstance(found, Path) else Path(__file__).resolve().parents[1] / "data" / name
    if not (path / marker).is_dir():
        raise FileNotFoundError(f"{what} not found at {path}: is the package data installed?")
    return path


def bundled_sample_dir() -> Path:
    """Folder of the bundled sample (Fruits 360 layout)."""
    return package_data_dir("sample", "bundled sample images", SPLITS[0])


@dataclass(frozen=True)
class _Task:
    """One worker's share: images [start, stop) of one class; picklable so it can cross processes."""

    seed: int
    class_index: int
    class_name: str
    start: int
    stop: int
    n_train: int
    train_sources: tuple[str, ...]
    test_sources: tuple[str, ...]
    output_dir: str


def synthesize(
    output_dir: str | Path,
    per_class: int,
    seed: int = 0,
    source: Path | None = None,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write `per_class` images per class in Fruits 360 layout, grown from `source` (default: bundled).

    Training images are made only from source Training images and Test from Test, so the split
    stays leak-free. The split ratio follows the source's. Each image draws from its own
    generator seeded with (seed, class index, image index), so the same (seed, per_class, source)
    gives byte-identical files whatever the number of workers or their scheduling.
    """
    out = Path(output_dir)
    _check_request(out, per_class, seed)
    catalogue = scan(Path(source) if source is not None else bundled_sample_dir())
    _load.cache_clear()  # a source file may have changed since an earlier call (workers fork this cache)
    classes = sorted(catalogue[SPLITS[0]])
    n_train = _train_count(per_class, catalogue)
    for split in SPLITS:
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    tasks = _plan(out, classes, catalogue, per_class, n_train, seed)
    written = _run(tasks, per_class * len(classes), workers)
    counts = {SPLITS[0]: n_train * len(classes), SPLITS[1]: (per_class - n_train) * len(classes)}
    if written != sum(counts.values()):
        raise RuntimeError(f"wrote {written} images, expected {sum(counts.values())}")
    logger.info("synthesised %d images of %d classes in %s", written, len(classes), out)
    return {
        "output_dir": str(out),
        "seed": seed,
        "per_class": per_class,
        "classes": classes,
        "counts": counts,
        "per_class_counts": {SPLITS[0]: n_train, SPLITS[1]: per_class - n_train},
        "total": written,
    }


def _check_request(out: Path, per_class: int, seed: int) -> None:
    """Refuse requests that would mix with old files or leave a split empty."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 2:
        raise ValueError(
            f"per_class must be an integer >= 2 (one Training and one Test image), got {per_class!r}"
        )
    check_output_seed(out, seed)


def check_output_seed(out: Path, seed: int) -> None:
    """A written set starts in a new or empty folder, from a non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output folder {out} already exists and is not empty: choose a new or empty folder")


def scan(source: Path) -> dict[str, dict[str, list[Path]]]:
    """Map split -> class -> image files, sorted so that choices do not depend on the file system."""
    catalogue: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        folder = source / split
        if not folder.is_dir():
            raise ValueError(f"source {source} has no {split}/ folder (expected Fruits 360 layout)")
        catalogue[split] = {
            d.name: sorted((f for f in d.iterdir() if f.suffix.lower() in _JPEG), key=_natural_key)
            for d in folder.iterdir()
            if d.is_dir()
        }
    train, test = catalogue[SPLITS[0]], catalogue[SPLITS[1]]
    if set(train) != set(test) or not train:
        raise ValueError(f"source {source}: Training and Test must hold the same, non-empty set of classes")
    empty = sorted(
        f"{split}/{name}"
        for split in SPLITS
        for name, files in catalogue[split].items()
        if not files
    )
    if empty:
        raise ValueError(f"source {source}: no JPEG images in {', '.join(empty)}")
    return catalogue


def _natural_key(path: Path) -> tuple[float, str]:
    """Order `<n>_100.jpg` files by n, as a person would."""
    head = path.name.split("_", 1)[0]
    return (float(head), path.name) if head.isdigit() else (math.inf, path.name)


def _train_count(per_class: int, catalogue: dict[str, dict[str, list[Path]]]) -> int:
    """Training images per class, keeping the source's Training:Test ratio and both splits non-empty."""
    n_train_src = sum(len(v) for v in catalogue[SPLITS[0]].values())
    n_test_src = sum(len(v) for v in catalogue[SPLITS[1]].values())
    share = n_train_src / (n_train_src + n_test_src)
    return min(per_class - 1, max(1, math.floor(per_class * share + 0.5)))


def _plan(
    out: Path,
    classes: list[str],
    catalogue: dict[str, dict[str, list[Path]]],
    per_class: int,
    n_train: int,
    seed: int,
) -> list[_Task]:
    """Cut the work into chunks of consecutive image indices per class."""
    return [
        _Task(
            seed=seed,
            class_index=class_index,
            class_name=name,
            start=start,
            stop=min(per_class, start + CHUNK),
            n_train=n_train,
            train_sources=tuple(str(p) for p in catalogue[SPLITS[0]][name]),
            test_sources=tuple(str(p) for p in catalogue[SPLITS[1]][name]),
            output_dir=str(out),
        )
        for class_index, name in enumerate(classes)
        for start in range(0, per_class, CHUNK)
    ]


def _run(tasks: list[_Task], total: int, workers: int | None) -> int:
    """Run tasks in-process for small jobs, else on a process pool; return the number of images written."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or total < SMALL_JOB:
        return sum(_render_task(task) for task in tasks)
    written, next_report = 0, total // 10
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for count in pool.map(_render_task, tasks):
            written += count
            if written >= next_report:
                logger.info("synthesised %d / %d images", written, total)
                next_report += max(1, total // 10)
    return written


def _render_task(task: _Task) -> int:
    """Write the images of one task; the file name index counts within its split, from 0."""
    for index in range(task.start, task.stop):
        rng = np.random.default_rng([task.seed, task.class_index, index])
        if index < task.n_train:
            split, local, sources = SPLITS[0], index, task.train_sources
        else:
            split, local, sources = SPLITS[1], index - task.n_train, task.test_sources
        image, radius = _load(sources[local % len(sources)])  # cycle so every source view is used
        quality = int(rng.integers(82, 96))
        target = Path(task.output_dir) / split / task.class_name / f"{local}_100.jpg"
        _augment(image, radius, rng).save(target, "JPEG", quality=quality)
    return task.stop - task.start


@lru_cache(maxsize=1024)
def _load(path: str) -> tuple[Image.Image, float]:
    """Decode a source image once per process, with the radius of its fruit around the centre."""
    with Image.open(path) as im:
        image = im.convert("RGB").resize((SIZE, SIZE)) if im.size != (SIZE, SIZE) else im.convert("RGB")
    ink = np.asarray(image).min(axis=2) < INK
    ys, xs = np.nonzero(ink)
    if xs.size == 0:
        return image, 1.0
    radius = float(np.sqrt((xs + 0.5 - _HALF) ** 2 + (ys + 0.5 - _HALF) ** 2).max()) + 1.0
    return image, radius


def _augment(image: Image.Image, radius: float, rng: np.random.Generator) -> Image.Image:
    """Re-pose and re-light one image; the fruit stays inside the frame and white stays white."""
    posed = image.transform(
        (SIZE, SIZE),
        Image.Transform.AFFINE,
        _pose_matrix(radius, rng),
        resample=Image.Resampling.BILINEAR,  # bicubic costs 3x here, for no visible gain at these scales
        fillcolor=WHITE,
    )
    table, pixels = _tone_table(rng), np.asarray(posed)
    toned = Image.fromarray(np.stack([table[c].take(pixels[..., c]) for c in range(3)], axis=-1), "RGB")
    return ImageEnhance.Color(toned).enhance(float(rng.uniform(0.8, 1.2)))


def _pose_matrix(radius: float, rng: np.random.Generator) -> tuple[float, ...]:
    """Inverse affine coefficients (output -> input pixel) for flip, rotation, scale and shift."""
    angle = math.radians(rng.uniform(-180.0, 180.0))
    room = _HALF - 1.0  # keep a pixel of white all round
    scale = min(float(rng.uniform(0.85, 1.1)), room / radius)
    slack = max(0.0, min(8.0, room - scale * radius))
    shift_x, shift_y = rng.uniform(-slack, slack, size=2) / math.sqrt(2.0)  # |shift| <= slack
    flip_x, flip_y = (-1.0 if f else 1.0 for f in rng.random(2) < 0.5)
    # forward: p' = centre + shift + scale * R(angle) @ F @ (p - centre); inverse: F @ R(-angle) / scale
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a, b, d, e = flip_x * cos, flip_x * sin, -flip_y * sin, flip_y * cos
    ox, oy = _HALF + shift_x, _HALF + shift_y
    return (a, b, _HALF - a * ox - b * oy, d, e, _HALF - d * ox - e * oy)


def _tone_table(rng: np.random.Generator) -> np.ndarray:
    """Per-channel lookup table (3 x 256): gamma (brightness), tint (colour) and an S-curve (contrast).

    Every curve fixes 0 and 255, so the white background is never tinted or greyed.
    """
    gamma = rng.uniform(0.8, 1.25) * rng.uniform(0.93, 1.07, size=(3, 1))
    contrast = rng.uniform(-0.5, 0.8)  # the S-curve stays monotone for values in (-2, 1)
    y = np.linspace(0.0, 1.0, 256) ** gamma
    y = y + contrast * (-2 * y**3 + 3 * y**2 - y)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
