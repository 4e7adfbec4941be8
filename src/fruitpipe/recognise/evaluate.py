"""`fruitpipe evaluate`: a trained bundle scored on any labelled folder.

list (driver) -> pick the split -> match folder names to the model's classes -> probabilities -> metrics
(`evaluation.compute`) -> metrics.json, per_class.csv and PNGs. Probabilities come one of two ways,
with the same result (<= 1e-5): a handful of local photos through the bundle in this process (no JVM,
seconds), large or s3:// sets through `fruitpipe run`'s Spark read/decode/embed path with the bundle's
arrays applied in the executors (`Bundle.classify`); only (label, probabilities) rows reach the driver.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fruitpipe import storage
from fruitpipe.batch import plots, sources
from fruitpipe.config import EvaluateConfig
from fruitpipe.progress import Reporter
from fruitpipe.recognise import evaluation
from fruitpipe.recognise.bundle import ONNX_FILE, Bundle, photo_probabilities
from fruitpipe.recognise.evaluation import EvaluationReport, UnknownFolder, Unreadable
from fruitpipe.storage import Store

if TYPE_CHECKING:  # the Spark path imports it when it runs
    from fruitpipe.ml import ImageFeaturizer

logger = logging.getLogger(__name__)

SPARK_ABOVE = 2_000  # more photos than this (or any s3:// input) go through Spark
DEFAULT_SPLIT = "Test"
NO_FOLDER = "(no class folder)"  # a flat folder's photos at its top level
METRICS, PER_CLASS = "metrics.json", "per_class.csv"
CONFUSION, RELIABILITY, COVERAGE = "confusion.png", "reliability.png", "coverage.png"
PROBABILITIES = "probabilities"
NOVELTY, OUTLIER = "novelty", "outlier"
SCORED_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("label", pa.string()),
                           pa.field(PROBABILITIES, pa.list_(pa.float64())), pa.field(NOVELTY, pa.float64()),
                           pa.field(OUTLIER, pa.float64()), pa.field("error", pa.string())])


@dataclass(frozen=True)
class Selection:
    """The photos to score: (path, class index) pairs, and what was set apart."""

    layout: str
    split: str | None
    photos: list[tuple[str, int]]
    folders: dict[str, str]  # folder -> class
    unknown: tuple[UnknownFolder, ...]


@dataclass(frozen=True)
class Scored:
    truth: np.ndarray
    probabilities: np.ndarray
    unreadable: tuple[Unreadable, ...]
    novelty: np.ndarray | None = None  # (n,) with the bundle's novelty gate
    outlier: np.ndarray | None = None  # (n,) with its outlier class: P(not a fruit)


# (class index, probabilities, novelty or None, P(not a fruit) or None)
ScoredRow = tuple[int, np.ndarray, float | None, float | None]


def evaluate(config: EvaluateConfig, progress: Reporter | None = None) -> EvaluationReport:
    """Score the model on the labelled folder; writes the outputs when config.output is set. `progress`
    shows the photos scored while they are (default: nothing shown)."""
    store = Store(config.s3)
    progress = progress or Reporter.silent()
    model = Bundle.load(config.model, tta=config.tta, novelty_threshold=config.novelty_threshold,
                        not_fruit=config.not_fruit)
    _refuse_spark_with_views(config, model.tta)
    selection = select(sources.list_images(store, config.input), model.classes, config.split)
    engine = "spark" if use_spark(config, len(selection.photos), model.tta) else "bundle"
    logger.info("evaluating %d photos of %d classes through the %s", len(selection.photos), len(selection.folders),
                "Spark path" if engine == "spark" else "bundle in process")
    scored = (spark_scores(model, selection, config, store, progress) if engine == "spark"
              else bundle_scores(model, selection, store, progress))
    metrics = evaluation.compute(scored.truth, scored.probabilities, model.classes, _threshold(config, model),
                                 model.novel_rows(scored.novelty),
                                 model.not_fruit_rows(scored.probabilities, scored.outlier))
    report = EvaluationReport(
        created=datetime.now(UTC).isoformat(timespec="seconds"), model=str(model.folder),
        input=storage.redact(config.input), layout=selection.layout, split=selection.split, engine=engine,
        folders=selection.folders, unknown_folders=selection.unknown, unreadable=scored.unreadable, metrics=metrics,
        tta=model.tta)
    if config.output:
        with progress.stage("write"):
            write_outputs(store, config.output, report)
    return report


def _threshold(config: EvaluateConfig, model: Bundle) -> float | None:
    """The "not sure" threshold reported on: --threshold, else the bundle's own (None: an uncalibrated bundle)."""
    return config.threshold if config.threshold is not None else model.threshold


def use_spark(config: EvaluateConfig, photos: int, tta: int = 1) -> bool:
    """Spark for s3:// input or many photos, unless test-time views are asked for (tta > 1): the Spark
    path scores features made in executors, which never see the pixels the views are made from, so
    every photo then goes through the bundle in process."""
    return tta == 1 and (config.spark or not storage.is_local(config.input) or photos > SPARK_ABOVE)


def _refuse_spark_with_views(config: EvaluateConfig, tta: int) -> None:
    if config.spark and tta > 1:
        raise ValueError(f"--spark scores one view per photo; with tta {tta} evaluate runs in process "
                         "(drop --spark, or pass --tta 1 for the Spark path)")


def select(listing: sources.ImageListing, classes: list[str], split: str | None) -> Selection:
    """The split to evaluate (Fruits 360: Test unless told), folder names matched to classes."""
    chosen = _split(listing, split)
    counts: dict[str, int] = {}
    paths: dict[str, list[str]] = {}
    for path, label, row_split in listing.rows:
        if listing.layout == "fruits360" and row_split != chosen:
            continue
        folder = label if label is not None else NO_FOLDER
        counts[folder] = counts.get(folder, 0) + 1
        paths.setdefault(folder, []).append(path)
    folders, unknown = match_folders(counts, classes)
    if not folders:
        where = f"the {chosen} split of " if chosen else ""
        raise ValueError(f"no folder in {where}{storage.redact(listing.root)} matches a class of the model "
                         f"(folders: {', '.join(sorted(counts)[:8])}; classes: {', '.join(classes[:8])}"
                         f"{', ...' if len(classes) > 8 else ''})")
    index = {name: i for i, name in enumerate(classes)}
    photos = [(path, index[folders[folder]]) for folder in sorted(folders) for path in paths[folder]]
    if unknown:
        logger.warning("folders matching no class, not scored: %s",
                       ", ".join(f"{folder.name} ({folder.photos} photos)" for folder in unknown))
    return Selection(listing.layout, chosen, photos, folders, unknown)


def _split(listing: sources.ImageListing, wanted: str | None) -> str | None:
    if listing.layout != "fruits360":
        if wanted is not None:
            raise ValueError(f"--split applies to the Fruits 360 layout (<Split>/<Class>/photo); "
                             f"{storage.redact(listing.root)} is a flat folder (<Class>/photo)")
        return None
    present = sorted({split for _, _, split in listing.rows if split is not None})
    name = wanted or DEFAULT_SPLIT
    for split in present:
        if split.casefold() == name.casefold():
            logger.info("Fruits 360 layout: evaluating the %s split%s", split,
                        "" if wanted else " (--split to choose another)")
            return split
    raise ValueError(f"{storage.redact(listing.root)} has no {name} split (it has {', '.join(present)}); "
                     "choose one with --split")


def match_folders(counts: dict[str, int], classes: Iterable[str]) -> tuple[dict[str, str], tuple[UnknownFolder, ...]]:
    """Folder name -> class: exact first, then ignoring case, spaces and underscores (when that names
    exactly one class); the rest are unknown folders (name, photo count)."""
    classes = list(classes)
    exact = set(classes)
    loose: dict[str, list[str]] = {}
    for name in classes:
        loose.setdefault(_loose(name), []).append(name)
    matched: dict[str, str] = {}
    unknown = []
    for folder in sorted(counts):
        candidates = loose.get(_loose(folder), [])
        if folder in exact:
            matched[folder] = folder
        elif folder != NO_FOLDER and len(candidates) == 1:
            matched[folder] = candidates[0]
        else:
            unknown.append(UnknownFolder(folder, counts[folder]))
    return matched, tuple(unknown)


def _loose(name: str) -> str:
    return "".join(name.casefold().replace("_", " ").split())


def bundle_scores(model: Bundle, selection: Selection, store: Store, progress: Reporter | None = None) -> Scored:
    """Probabilities in this process (no Spark): `predict`'s read/decode/embed."""
    truth = dict(selection.photos)
    rows: list[ScoredRow] = []
    unreadable = []
    progress = progress or Reporter.silent()
    with progress.stage("score", len(selection.photos)):
        for done, result in enumerate(photo_probabilities(model, [path for path, _ in selection.photos],
                                                          store=store), start=1):
            if result.probabilities is None:
                unreadable.append(Unreadable(result.photo, result.error or "unreadable"))
            else:
                rows.append((truth[result.photo], result.probabilities, result.novelty, result.outlier))
            progress.update(done)
    return _scored(rows, unreadable, len(model.classes))


def spark_scores(model: Bundle, selection: Selection, config: EvaluateConfig, store: Store,
                 progress: Reporter | None = None) -> Scored:
    """Probabilities through `fruitpipe run`'s Spark read/decode/embed; the bundle's arrays applied in the
    executors, so only (label, probabilities) rows are collected."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from fruitpipe.batch import tracking
    from fruitpipe.batch.session import spark_session

    progress = progress or Reporter.silent()
    featurizer = _featurizer(model, store)
    classes = model.classes
    photos = [(path, classes[index], selection.split) for path, index in selection.photos]
    listing = sources.ImageListing.of_rows(config.input, selection.layout, photos)
    with spark_session(config.master, config.spark_conf, remote=config.remote) as spark:
        features = featurizer.transform(sources.to_dataframe(spark, listing))
        with progress.stage("featurize", listing.count), tracking.follow_tasks(spark, progress, listing.count):
            scored = features.mapInArrow(functools.partial(classify_batches, model, featurizer.getOutputCol()),
                                         from_arrow_schema(SCORED_SCHEMA)).toArrow()
    index = {name: i for i, name in enumerate(classes)}
    rows: list[ScoredRow] = []
    unreadable = []
    for path, label, probabilities, novelty_score, outlier_score, error in zip(
            *(scored.column(name).to_pylist() for name in SCORED_SCHEMA.names), strict=True):
        if probabilities is None:
            unreadable.append(Unreadable(path, error or "unreadable"))
        else:
            rows.append((index[label], np.asarray(probabilities, dtype=np.float64), novelty_score, outlier_score))
    return _scored(rows, sorted(unreadable, key=lambda photo: photo.photo), len(classes))


def _featurizer(model: Bundle, store: Store) -> ImageFeaturizer:
    """`fruitpipe run`'s featurizer for the bundle's CNN; refused when this fruitpipe's export of it is not
    the graph the bundle carries (the Spark path would then compute other features)."""
    from fruitpipe.image import models
    from fruitpipe.ml import ImageFeaturizer

    entry = model.description.model
    featurizer = ImageFeaturizer(modelName=entry.name, imageSize=entry.input_size, precision=model.runtime.precision,
                                 maxBytes=model.limits.max_bytes, maxPixels=model.limits.max_pixels,
                                 s3Options=store.options.to_wire())
    if storage.file_sha256(models.onnx_file(featurizer.spec())) != model.description.files[ONNX_FILE]:
        raise ValueError(f"this fruitpipe's ONNX export of {entry.name} differs from the bundle's {ONNX_FILE}: "
                         "evaluate without --spark (local photos), or train the model again with this version")
    return featurizer


def classify_batches(model: Bundle, features_col: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body (executors): features -> the bundle's probabilities; failed rows keep their reason."""
    from fruitpipe.executor.worker import ERROR_REASON, ERROR_STAGE

    for batch in batches:
        columns = batch.to_pydict()
        failed = [stage is not None for stage in columns[ERROR_STAGE]]
        ok = [vector for vector, bad in zip(columns[features_col], failed, strict=True) if not bad]
        scored = model.score_features(np.asarray(ok, dtype=np.float32)) if ok else None
        probabilities = iter(scored.probabilities if scored else [])
        novelty = iter(scored.novelty if scored and scored.novelty is not None else [])
        outlier = iter(scored.outlier if scored and scored.outlier is not None else [])
        yield pa.RecordBatch.from_arrays([
            pa.array(columns["path"], pa.string()), pa.array(columns["label"], pa.string()),
            pa.array([None if bad else next(probabilities).tolist() for bad in failed], pa.list_(pa.float64())),
            pa.array([None if bad or model.novelty_threshold is None else float(next(novelty)) for bad in failed],
                     pa.float64()),
            pa.array([None if bad or not model.has_outlier_class else float(next(outlier)) for bad in failed],
                     pa.float64()),
            pa.array([f"{stage}: {reason}" if stage is not None else None
                      for stage, reason in zip(columns[ERROR_STAGE], columns[ERROR_REASON], strict=True)],
                     pa.string()),
        ], schema=SCORED_SCHEMA)


def _scored(rows: list[ScoredRow], unreadable: list[Unreadable], n_classes: int) -> Scored:
    if unreadable:
        logger.warning("%d photos could not be read or decoded (not scored; listed in %s)", len(unreadable), METRICS)
    truth = np.asarray([row[0] for row in rows], dtype=np.int64)
    probabilities = np.stack([row[1] for row in rows]) if rows else np.zeros((0, n_classes))
    return Scored(truth, probabilities, tuple(unreadable), _column([row[2] for row in rows]),
                  _column([row[3] for row in rows]))


def _column(scores: list[float | None]) -> np.ndarray | None:
    """Per-row scores as an array; None when there are none (no rows, or the bundle has no such score)."""
    return None if not scores or any(score is None for score in scores) else np.asarray(scores, dtype=np.float64)


def write_outputs(store: Store, output: str, report: EvaluationReport) -> None:
    """metrics.json, per_class.csv, confusion.png, reliability.png, coverage.png under `output`."""
    from fruitpipe.batch import sinks

    metrics = report.metrics
    sinks.write_json(store, storage.join(output, METRICS), report.to_json())
    store.write_bytes(storage.join(output, PER_CLASS), evaluation.per_class_csv(list(metrics.per_class)))
    store.write_bytes(storage.join(output, CONFUSION),
                      plots.confusion_matrix_png([list(row) for row in metrics.confusion], metrics.classes,
                                                 report.split or "the evaluated photos"))
    store.write_bytes(storage.join(output, RELIABILITY), plots.reliability_png(
        [(b.lower, b.upper, b.count, b.confidence, b.accuracy) for b in metrics.reliability], metrics.ece))
    store.write_bytes(storage.join(output, COVERAGE), plots.coverage_png(
        [(p.threshold, p.coverage, p.accuracy) for p in metrics.coverage_curve],
        metrics.at_threshold.threshold if metrics.at_threshold else None))
