"""The drift figures of docs/drift.md: false alarms over seeded reference self-splits and detection rates at
the documented shift strengths (`python -m fruitpipe.benchmark.driftrates --work DIR`).

One `pipeline.run` featurizes every variant of the bundled sample (flat folder `<variant>/<class>/`): the
photos as they are, and the same photos shifted (brightness x0.7, hue +30 degrees, Gaussian blur 1.5 px,
the evaluation-side families grayscale and textured_background), plus 17 non-fruit photos. Each measurement
derives two run outputs from it: for seed s the unshifted photos are split by frame blocks per class (split
seed 10,000 + s, independent of the drift command's own self-splits) into a reference half, which gets its
own PCA like a run, and a current half; under no drift the current is that half as it is, under a shift the
same photos shifted (or with the non-fruit photos added, or half of the classes left out). Then `run_drift`
decides with `--seed s`. The rules were fixed before these figures existed and are not tuned on them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fruitpipe.benchmark.recognition import cpu_name

logger = logging.getLogger(__name__)

BRIGHTNESS, HUE_DEGREES, BLUR_RADIUS = 0.7, 30, 1.5  # the documented strengths
EVALUATION_FAMILIES = ("grayscale", "textured_background")
PHOTO_SHIFTS = ("bright", "hue", "blur", *EVALUATION_FAMILIES)
SPLIT_SEED_OFFSET = 10_000
BLOCK = 4  # as the drift command's own default


def _pillow_shift(name: str) -> Callable[[Any], Any]:
    from PIL import Image, ImageEnhance, ImageFilter

    def hue(image: Any) -> Any:
        h, s, v = image.convert("HSV").split()
        turned = h.point(lambda value: (value + round(HUE_DEGREES * 256 / 360)) % 256)
        return Image.merge("HSV", (turned, s, v)).convert("RGB")

    shifts: dict[str, Callable[[Any], Any]] = {
        "bright": lambda image: ImageEnhance.Brightness(image).enhance(BRIGHTNESS),
        "hue": hue,
        "blur": lambda image: image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)),
    }
    return shifts[name]


def write_variant(source: Path, target: Path, name: str) -> None:
    """`source/<class>/*.jpg` shifted into `target/<class>/`: a Pillow shift or an evaluation-side family."""
    from PIL import Image

    from fruitpipe.image import shifts

    for photo in sorted(source.rglob("*.jpg")):
        out = target / photo.parent.name / photo.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photo) as image:
            rgb = image.convert("RGB")
        if name in EVALUATION_FAMILIES:
            rng = np.random.default_rng(shifts.seed_words("drift", name, photo.parent.name, photo.name))
            Image.fromarray(shifts.family(name).apply(np.asarray(rgb), rng), "RGB").save(out, quality=95)
        else:
            _pillow_shift(name)(rgb).save(out, quality=95)


def derive_run(combined: Path, target: Path, rows: pa.Table, spark: Any, fit_pca: bool) -> Path:
    """A run output holding `rows` (columns of the combined run's features/), the combined run's manifest
    and `_SUCCESS`; its own `pca_model/` fitted with CentredPCA when it plays a reference."""
    from fruitpipe.batch import sinks
    from fruitpipe.batch.manifest import RunManifest
    from fruitpipe.ml import CentredPCA
    from fruitpipe.storage import Store

    if fit_pca:  # its own PCA, and the `pca` column made with it, as a run writes them
        vectors = [(list(map(float, v)),) for v in rows.column("features").to_pylist()]
        data = spark.createDataFrame(vectors, "features array<float>")
        model = CentredPCA(inputCol="features", outputCol="pca").fit(data)
        model.write().save(str(target / "pca_model"))
        projected = pa.Table.from_batches([model.projection().apply(batch) for batch in
                                           rows.drop_columns(["pca"]).to_batches()])
        rows = projected.select(rows.column_names)
    else:
        shutil.copytree(combined / "pca_model", target / "pca_model")
    (target / "features").mkdir(parents=True)
    pq.write_table(rows, target / "features" / "part-00000.parquet")
    manifest = RunManifest.loads((combined / "manifest.json").read_bytes(), str(combined / "manifest.json"))
    (target / "manifest.json").write_text(json.dumps(replace(manifest, run_id=target.name).to_json()))
    sinks.commit(Store(), str(target), {"ok": rows.num_rows})
    return target


def relabelled(table: pa.Table, split: str = "Test") -> pa.Table:
    """The combined run's rows with label = class folder (the flat layout labelled them by variant)."""
    labels = [path.split("/")[-2] for path in table.column("path").to_pylist()]
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.string()))
    return table.set_column(table.schema.get_field_index("split"), "split", pa.array([split] * table.num_rows,
                                                                                     pa.string()))


def variant_of(path: str) -> str:
    return path.split("/")[-3]


def block_halves(table: pa.Table, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two halves, stratified by class: each class's blocks of BLOCK consecutive frame
    numbers in random order, every other block to the second half (parity drawn per class)."""
    rng = np.random.default_rng(seed)
    keys = [(path.split("/")[-2], int(path.split("/")[-1].split("_")[0]) // BLOCK)
            for path in table.column("path").to_pylist()]
    second: set[tuple[str, int]] = set()
    for name in sorted({label for label, _ in keys}):
        blocks = [key for key in sorted(set(keys)) if key[0] == name]
        order = rng.permutation(len(blocks))
        second.update(blocks[i] for i in order[int(rng.integers(2))::2])
    first = np.array([key not in second for key in keys])
    return np.flatnonzero(first), np.flatnonzero(~first)


def build(work: Path) -> Path:
    """The images and the one featurizing run (reused when present)."""
    from fruitpipe.batch import pipeline
    from fruitpipe.benchmark.nonfruit import non_fruit_photos
    from fruitpipe.config import RunConfig
    from fruitpipe.image.sampledata import bundled_sample_dir

    combined = work / "combined"
    if (combined / "_SUCCESS").exists():
        return combined
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    sample = Path(bundled_sample_dir())
    for split in ("Training", "Test"):  # one pool of frames: Test numbers moved past Training's
        for folder in sorted((sample / split).iterdir()):
            for photo in sorted(folder.glob("*.jpg")):
                number = int(photo.name.split("_")[0]) + (1000 if split == "Test" else 0)
                (images / "base" / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(photo, images / "base" / folder.name / f"{number}_100.jpg")
    for name in PHOTO_SHIFTS:
        write_variant(images / "base", images / name, name)
    non_fruit_photos(images / "unseen" / "Not a fruit")
    (images / "unseen" / "Not a fruit" / "LICENSES.json").unlink()
    pipeline.run(RunConfig(input=str(images), output=str(combined), master="local[2]", image_size=112))
    return combined


def measure(work: Path, null_seeds: int, detection_seeds: int, results: Path) -> dict[str, Any]:
    from pyspark.sql import SparkSession

    from fruitpipe.config import DriftConfig
    from fruitpipe.monitor.drift import run_drift

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this Python (pyarrow, fruitpipe)
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    combined = build(work)
    table = relabelled(pq.read_table(combined / "features"))
    variants = np.array([variant_of(path) for path in table.column("path").to_pylist()])
    base = table.filter(pa.array(variants == "base"))
    record: dict[str, Any] = {"cpu": cpu_name(), "command": f"python -m fruitpipe.benchmark.driftrates --work {work} "
                              f"--null-seeds {null_seeds} --detection-seeds {detection_seeds}", "runs": []}
    cases = [("none", s) for s in range(null_seeds)] + [(name, s) for s in range(detection_seeds)
                                                         for name in (*PHOTO_SHIFTS, "unseen", "half_classes")]
    for case, seed in cases:
        folder = work / "pairs" / f"{case}-{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        reference_rows, current_rows = block_halves(base, SPLIT_SEED_OFFSET + seed)
        current = _current(table, variants, base.take(pa.array(current_rows)), case)
        reference = derive_run(combined, folder / "reference", base.take(pa.array(reference_rows)), spark, True)
        current_run = derive_run(combined, folder / "current", current, spark, False)
        started = time.perf_counter()
        report = run_drift(DriftConfig(reference=str(reference), current=str(current_run),
                                       output=str(folder / "drift"), seed=seed, master="local[2]"))
        record["runs"].append({"case": case, "seed": seed, "status": report.status,
                               "seconds": round(time.perf_counter() - started, 2),
                               "rows": [report.reference.rows, report.current.rows],
                               "tests": {t.name: {"flagged": t.flagged, "significant": t.significant,
                                                  "statistic": t.statistic, "p_value": t.p_value,
                                                  "q99": t.calibration_q99} for t in report.tests}})
        logger.info("%s seed %d: %s", case, seed, report.status)
        results.write_text(json.dumps({**record, "summary": summary(record["runs"])}, indent=2))
    return record


def timing(work: Path, rows: int, results: Path) -> dict[str, Any]:
    """Wall time of `run_drift` on `rows` vs `rows` rows. The runs repeat the pool's featurized rows (the
    reference: the unshifted photos, the current: every variant) under new paths, since featurizing 2 x 10k
    photos did not fit the shared machine's time; the drift command's work depends on the row count and k,
    not on whether rows repeat."""
    from pyspark.sql import SparkSession

    from fruitpipe.config import DriftConfig
    from fruitpipe.monitor.drift import run_drift

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    combined = build(work)
    table = relabelled(pq.read_table(combined / "features"))
    variants = np.array([variant_of(path) for path in table.column("path").to_pylist()])
    folder = work / f"timing-{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    sides = {}
    for name, source, fit in (("reference", table.filter(pa.array(variants == "base")), True),
                              ("current", table, False)):
        repeated = source.take(pa.array(np.arange(rows) % source.num_rows))
        paths = [f"{path.rsplit('/', 1)[0]}/{i // source.num_rows}{path.rsplit('/', 1)[1]}"
                 for i, path in enumerate(repeated.column("path").to_pylist())]
        repeated = repeated.set_column(repeated.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
        sides[name] = derive_run(combined, folder / name, repeated, spark, fit)
    started = time.perf_counter()
    report = run_drift(DriftConfig(reference=str(sides["reference"]), current=str(sides["current"]),
                                   output=str(folder / "drift"), master="local[2]"))
    record = {"cpu": cpu_name(), "rows": [report.reference.rows, report.current.rows], "k": report.space.k,
              "status": report.status, "seconds": round(time.perf_counter() - started, 1),
              "command": f"python -m fruitpipe.benchmark.driftrates --work {work} --timing {rows}"}
    results.write_text(json.dumps(record, indent=2))
    return record


def _current(table: pa.Table, variants: np.ndarray, half: pa.Table, case: str) -> pa.Table:
    """The current side of a case: the half itself, its photos shifted, plus non-fruit photos, or half its classes."""
    if case == "none":
        return half
    if case == "half_classes":
        classes = sorted(set(half.column("label").to_pylist()))[::2]
        return half.filter(pa.array([label in classes for label in half.column("label").to_pylist()]))
    wanted = {f"{label}/{path.split('/')[-1]}" for label, path in
              zip(half.column("label").to_pylist(), half.column("path").to_pylist(), strict=True)}
    keys = [f"{path.split('/')[-2]}/{path.split('/')[-1]}" for path in table.column("path").to_pylist()]
    if case == "unseen":
        mask = (variants == "unseen") | np.array([(v == "base") and (k in wanted) for v, k in zip(variants, keys,
                                                                                                  strict=True)])
    else:
        mask = np.array([(v == case) and (k in wanted) for v, k in zip(variants, keys, strict=True)])
    return table.filter(pa.array(mask))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case: how often each verdict test flagged and how often the status was drift."""
    cases: dict[str, Any] = {}
    for run in runs:
        entry = cases.setdefault(run["case"], {"runs": 0, "drift": 0, "warning": 0, "flagged": {}, "seconds": []})
        entry["runs"] += 1
        entry["drift"] += run["status"] == "drift"
        entry["warning"] += run["status"] == "warning"
        entry["seconds"].append(run["seconds"])
        for name, test in run["tests"].items():
            entry["flagged"][name] = entry["flagged"].get(name, 0) + int(test["flagged"])
    for entry in cases.values():
        entry["median_seconds"] = float(np.median(entry.pop("seconds")))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", type=Path, required=True, help="working folder (images, runs, pairs)")
    parser.add_argument("--null-seeds", type=int, default=20)
    parser.add_argument("--detection-seeds", type=int, default=5)
    parser.add_argument("--timing", type=int, metavar="ROWS", help="instead: time drift on ROWS vs ROWS rows")
    parser.add_argument("--results", type=Path, default=Path("bench/drift.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.timing:
        timing(args.work, args.timing, args.results)
    else:
        measure(args.work, args.null_seeds, args.detection_seeds, args.results)


if __name__ == "__main__":
    main()
