"""fruitpipe train: a run's PCA features -> Spark MLlib classifier, Test metrics, portable bundle.

The classifier is chosen on a validation part of Training (per class, deterministic), refitted on
all of Training and evaluated once on Test; Test never influences a choice. Metrics come from the
confusion matrix, computed distributed (only n_classes^2 counts reach the driver).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.feature import StringIndexerModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from fruitpipe import sparkapi, storage
from fruitpipe.batch import plots, sinks, sources
from fruitpipe.batch.manifest import ModelEntry, RunManifest
from fruitpipe.batch.pipeline import StageTimer
from fruitpipe.batch.session import spark_session
from fruitpipe.config import BUNDLED_OUTLIERS, DecodeLimits, TrainConfig
from fruitpipe.executor.parquet import URI_COLUMN, ReadTask, read_parts
from fruitpipe.executor.worker import ERROR_STAGE, VIEW
from fruitpipe.image import models
from fruitpipe.ml import CentredPCAModel, ImageFeaturizer, save_logistic_regression
from fruitpipe.progress import Reporter
from fruitpipe.recognise import bundle, calibration, evaluation, novelty, outliers
from fruitpipe.recognise.contracts import (
    BundleDescription,
    BundlePca,
    Calibration,
    Classifier,
    Metrics,
    Novelty,
    Outliers,
    Scores,
    Selection,
    SourceRun,
    TrainCounts,
    TrainManifest,
)
from fruitpipe.runtime import Runtime
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

TRAINING, TEST = "Training", "Test"
CLASSIFIER, METRICS, PER_CLASS, CONFUSION = "classifier", "metrics.json", "per_class.csv", "confusion_matrix.png"
LABEL_INDEX, VECTOR = "label_index", "pca_vector"
FEATURE_COLUMNS = ("path", "label", "split", VIEW, "pca")  # what training reads of a run's rows
FEATURE_TYPES = {"path": "string", "label": "string", "split": "string", VIEW: "int", "pca": "array<float>",
                 "features": "array<float>"}


@dataclass(frozen=True)
class Candidate:
    """One classifier configuration; the first in CANDIDATES is the default and wins ties."""

    name: str
    reg_param: float
    standardization: bool = True

    def estimator(self) -> LogisticRegression:
        return LogisticRegression(featuresCol=VECTOR, labelCol=LABEL_INDEX, family="multinomial",
                                  regParam=self.reg_param, elasticNetParam=0.0,
                                  standardization=self.standardization, maxIter=300, tol=1e-7)

    def describe(self) -> Classifier:
        return Classifier(type="multinomial logistic regression (Spark MLlib)", name=self.name,
                          reg_param=self.reg_param, elastic_net_param=0.0, standardization=self.standardization)


CANDIDATES = (
    Candidate("lr-l2-0.01-standardised", 0.01),
    Candidate("lr-l2-0.001-standardised", 0.001),
    Candidate("lr-l2-0.1-standardised", 0.1),
    Candidate("lr-l2-0.01-raw", 0.01, standardization=False),
)


@dataclass(frozen=True)
class NoveltyGate:
    """The novelty gate `train` writes into the bundle: its settings and the unit class centroids."""

    settings: Novelty
    centroids: np.ndarray  # (Novelty.centroids, k), from all of Training


@dataclass(frozen=True)
class OutlierRows:
    """The outlier photos as training rows (path, label, split, view, pca), and how many could be used."""

    rows: DataFrame
    source: str
    photos: int
    unreadable: int


@dataclass(frozen=True)
class Source:
    """The run output trained on, and its fingerprints."""

    uri: str
    manifest: RunManifest
    manifest_sha256: str

    def runtime(self) -> Runtime:
        """The precision the run's features were made with (refused here if this machine cannot run it)."""
        return self.manifest.model.recorded_runtime(f"run {storage.redact(self.uri)}")

    def fingerprint(self) -> SourceRun:
        return SourceRun(run_id=self.manifest.run_id, manifest_sha256=self.manifest_sha256,
                         run_output=storage.redact(self.uri), input=self.manifest.input)


def train(config: TrainConfig, progress: Reporter | None = None) -> TrainManifest:
    """Fit, choose, evaluate, write MODEL_DIR; returns its manifest (metrics included). `progress` shows
    the stages while they run (default: nothing shown)."""
    timer = StageTimer(progress)
    store = Store(config.s3)
    candidates_for(config.classifier)  # an unknown name: refused before anything starts
    _refuse_overlap(config.features, config.output)
    source = read_source(store, config.features)
    spec = _model_spec(source.manifest)
    source.runtime()  # refused before Spark starts if the bundle could not embed photos as the run did
    sinks.check_output(store, config.output, config.overwrite)
    onnx = models.onnx_file(spec)
    _check_onnx(source.manifest, onnx)
    sinks.prepare_output(store, config.output, config.overwrite)
    with sinks.discarded_if_interrupted(store, config.output), \
            spark_session(config.master, config.spark_conf, remote=config.remote) as spark:
        return _train_in_session(spark, store, config, source, spec, str(onnx), timer)


def read_source(store: Store, run_output: str) -> Source:
    """The run's manifest; only a complete fruitpipe run (with _SUCCESS) is accepted."""
    try:
        raw = store.read_bytes(storage.join(run_output, sinks.MANIFEST))
    except FileNotFoundError:
        raise ValueError(f"{storage.redact(run_output)} is not a fruitpipe run output (no {sinks.MANIFEST})") from None
    if sinks.read_success(store, run_output) is None:
        raise ValueError(f"{storage.redact(run_output)} is an incomplete run (no {sinks.SUCCESS}); run it again")
    manifest = RunManifest.loads(raw, f"{sinks.MANIFEST} of {storage.redact(run_output)}")
    return Source(run_output, manifest, hashlib.sha256(raw).hexdigest())


def _refuse_overlap(features: str, output: str) -> None:
    """--overwrite must never delete the run being trained on."""
    source, target = storage.canonical(features).rstrip("/"), storage.canonical(output).rstrip("/")
    if source == target or source.startswith(target + "/") or target.startswith(source + "/"):
        raise ValueError(f"--output {output} overlaps the run output {features}; choose a separate model folder")


def _model_spec(manifest: RunManifest) -> models.ModelSpec:
    """The CNN the run used (same weights, same input size), from the registry."""
    entry = manifest.model
    spec = models.with_input_size(models.resolve(entry.name), entry.input_size)
    recorded = entry.weights_sha256
    if recorded and recorded != spec.weights_sha256:
        raise ValueError(f"the run used {spec.name} weights {recorded[:16]}…, the registry now has "
                         f"{spec.weights_sha256[:16]}…; the bundle would not reproduce the run's features")
    return spec


def _check_onnx(manifest: RunManifest, onnx: Path) -> None:
    """The bundle must carry the very ONNX graph the run's executors ran (exports change across versions)."""
    recorded = manifest.model.onnx_sha256
    if recorded and recorded != storage.file_sha256(onnx):
        raise ValueError(f"the run's ONNX file ({recorded[:16]}…) differs from this fruitpipe's export of "
                         f"{manifest.model.name}; run the pipeline again with this version before training")


def read_features(spark: SparkSession, run_output: str, task: ReadTask) -> DataFrame:
    """features/ of a run (path, label, split, pca), read in executors through the task's store."""
    folder = storage.join(run_output, sinks.FEATURES)
    parts = [storage.join(folder, *relative.split("/")) for relative in task.store.list_tree(folder)
             if relative.rsplit("/", 1)[-1].startswith("part-") and relative.endswith(".parquet")]
    if not parts:
        raise ValueError(f"{storage.redact(folder)} holds no Parquet part files")
    uris = spark.createDataFrame([(part,) for part in parts], f"{URI_COLUMN} string")
    uris = uris.repartition(min(len(parts), sparkapi.default_parallelism(spark)))
    schema = ", ".join(f"{name} {FEATURE_TYPES[name]}" for name in task.columns)
    return uris.mapInArrow(functools.partial(read_parts, task), schema)


def _train_in_session(spark: SparkSession, store: Store, config: TrainConfig, source: Source,
                      spec: models.ModelSpec, onnx: str, timer: StageTimer) -> TrainManifest:
    persisted: list[DataFrame] = []  # released however the stages end
    try:
        with timer.stage("read"):
            data = _read_with_views(spark, config.features, source, store)
            classes = _classes(data, storage.redact(config.features))
            extra = read_outliers(spark, store, config, source, spec, persisted) if config.outliers else None
            fruit = len(classes)
            outlier_index = fruit if extra else None
            indexer = StringIndexerModel.from_labels(classes + ([outliers.OUTLIER_LABEL] if extra else []),
                                                     inputCol="label", outputCol=LABEL_INDEX)
            rows = data.where(F.col("split").isin(TRAINING, TEST)).select(*FEATURE_COLUMNS)
            prepared = indexer.transform((rows.unionByName(extra.rows) if extra else rows)
                                         .withColumn(VECTOR, array_to_vector(F.col("pca")))).persist()
            persisted.append(prepared)
            training = prepared.where(F.col("split") == TRAINING)
            test = prepared.where((F.col("split") == TEST) & (F.col(VIEW) == 0))
            fit_part, validation = validation_split(training, config.validation_fraction, config.seed)
            counts = TrainCounts(training=_photos(training, fruit), validation=_photos(validation, fruit),
                                 test=test.count())
        with timer.stage("select"):  # no validation images (one per class): nothing to compare, the default stands
            candidates = candidates_for(config.classifier)
            chosen, fitted, scores = (_choose(fit_part, validation, fruit + int(extra is not None), candidates)
                                      if counts.validation else (candidates[0], None, {}))
        with timer.stage("calibrate"):  # no validation images: no temperature (T = 1), no threshold, no gate
            calibrated = (calibrate(fitted, validation, config.target_precision, outlier_index)
                          if fitted is not None else None)
            gate = (novelty_gate(_fruit(fit_part, fruit), _fruit(validation, fruit), _fruit(training, fruit), fruit)
                    if fitted is not None else None)
            exposure = outlier_summary(extra, fitted, validation, fruit) if extra else None
        with timer.stage("fit"):
            classifier = chosen.estimator().fit(training)
        with timer.stage("evaluate"):
            metrics = metrics_from_confusion(confusion_matrix(classifier, test, fruit, outlier_index), classes)
            if calibrated is not None:
                metrics["calibration"] = selective_metrics(classifier, test, calibrated, gate, outlier_index)
    finally:
        for frame in persisted:
            frame.unpersist()
    headline = Metrics(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
    with timer.stage("write"):
        _write_evaluation(store, config.output, metrics, classes)
        save_logistic_regression(classifier, storage.join(config.output, CLASSIFIER), store=store)
        _write_bundle(store, config, source, spec, onnx, classifier, chosen, classes, headline, calibrated, gate,
                      exposure)
    note = f"input: array_to_vector(pca) as {VECTOR}; prediction indexes classes"
    manifest = TrainManifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source.fingerprint(),
        model=ModelEntry.of(spec, source.runtime()),
        classifier=replace(chosen.describe(), spark_model=CLASSIFIER,
                           load_with="fruitpipe.ml.load_logistic_regression", features_col=VECTOR,
                           note=note + (f"; index {fruit} is 'not a fruit' (outlier photos)" if extra else "")),
        selection=Selection(metric=(f"given (--classifier {config.classifier})" if config.classifier
                                    else "validation accuracy, then macro-F1, then log-loss"),
                            validation_fraction=config.validation_fraction,
                            seed=config.seed, candidates=scores, chosen=chosen.name),
        classes=tuple(classes),
        counts=counts,
        metrics=headline,
        timings_s=timer.timings(),
        calibration=calibrated,
        novelty=gate.settings if gate else None,
        outliers=exposure,
    )
    sinks.write_json(store, storage.join(config.output, sinks.MANIFEST), manifest.to_json())
    sinks.commit(store, config.output, counts.to_json())
    return manifest


def _fruit(rows: DataFrame, fruit: int) -> DataFrame:
    """The fruit rows (the outlier class, when there is one, is the index after the fruit classes)."""
    return rows.where(F.col(LABEL_INDEX) < fruit)


def _photos(rows: DataFrame, fruit: int) -> int:
    """Fruit photos among the rows (views and outlier photos not counted)."""
    return _fruit(rows, fruit).where(F.col(VIEW) == 0).count()


def read_outliers(spark: SparkSession, store: Store, config: TrainConfig, source: Source, spec: models.ModelSpec,
                  persisted: list[DataFrame]) -> OutlierRows:
    """`--outliers` photos through the run's own featurization (same model, input size and precision) and PCA,
    as Training rows of the outlier label; photos that cannot be read or decoded are counted and left out."""
    uri = outliers.source_uri(str(config.outliers))
    listing = sources.list_images(store, uri)
    featurizer = ImageFeaturizer(modelName=spec.name, imageSize=spec.preprocessing.input_size,
                                 precision=source.runtime().precision, s3Options=store.options.to_wire())
    featurized = featurizer.transform(sources.to_dataframe(spark, listing)).persist()
    persisted.append(featurized)
    usable = featurized.where(F.col(ERROR_STAGE).isNull())
    photos = usable.count()
    if photos < 2:
        raise ValueError(f"--outliers {storage.redact(uri)} holds {photos} usable photo(s); give at least 2, "
                         "or --outliers none")
    pca = CentredPCAModel.read().using(store).load(storage.join(config.features, sinks.PCA_MODEL))
    rows = pca.transform(usable.select("path", featurizer.getOutputCol())).select(
        "path", F.lit(outliers.OUTLIER_LABEL).alias("label"), F.lit(TRAINING).alias("split"),
        F.lit(0).alias(VIEW), F.col("pca"))
    unreadable = listing.count - photos
    if unreadable:
        logger.warning("%d outlier photos could not be read or decoded: left out", unreadable)
    name = "bundled" if config.outliers == BUNDLED_OUTLIERS else storage.redact(uri)
    return OutlierRows(rows, name, photos, unreadable)


def outlier_summary(extra: OutlierRows, model: LogisticRegressionModel | None, validation: DataFrame,
                    fruit: int) -> Outliers:
    """How the fit-part model does on the held-out outlier photos and fruit rows (only counts reach the driver)."""
    if model is None:  # no validation part: nothing held out to say it with
        return Outliers(extra.source, extra.photos, extra.unreadable, 0, 0.0, 0.0)
    is_outlier = (F.col(LABEL_INDEX) == fruit).alias("outlier")
    rejected = (F.col("prediction") == fruit).cast("int")
    found = {row["outlier"]: (row["rows"], row["rejected"] or 0) for row in model.transform(validation).groupBy(
        is_outlier).agg(F.count(F.lit(1)).alias("rows"), F.sum(rejected).alias("rejected")).collect()}
    held, held_rejected = found.get(True, (0, 0))
    fruit_rows, fruit_rejected = found.get(False, (0, 0))
    return Outliers(extra.source, extra.photos, extra.unreadable, int(held),
                    held_rejected / held if held else 0.0, fruit_rejected / fruit_rows if fruit_rows else 0.0)


def _classes(data: DataFrame, run_output: str) -> list[str]:
    """Sorted Training labels; Test may only hold those (a class never trained on cannot be scored).

    A run with photos but no Training rows (a `sample-data --shift` suite, Test only) is refused by
    name: the evaluation suite must never be fitted on."""
    labels = data.groupBy("split").agg(F.collect_set("label").alias("labels")).collect()
    by_split = {row["split"]: set(row["labels"]) for row in labels}
    if not by_split.get(TRAINING) and by_split:
        raise ValueError(f"no {TRAINING} rows in {run_output}: train needs a {TRAINING} split "
                         "(a sample-data --shift set is for evaluate only)")
    if not by_split.get(TRAINING) or not by_split.get(TEST):
        raise ValueError(f"training needs a {TRAINING} and a {TEST} split (the Fruits 360 layout); "
                         f"this run has {sorted(str(s) for s in by_split) or 'no images'}")
    unknown = by_split[TEST] - by_split[TRAINING]
    if unknown:
        raise ValueError(f"{TEST} has classes with no {TRAINING} images: {', '.join(sorted(unknown))}")
    if len(by_split[TRAINING]) < 2:
        raise ValueError("training needs at least 2 classes")
    return sorted(by_split[TRAINING])


def _read_with_views(spark: SparkSession, run_output: str, source: Source, store: Store) -> DataFrame:
    """path, label, split, view, pca; runs from before `--augment` (no `view` column) are all photos."""
    if source.manifest.counts.views is None:
        data = read_features(spark, run_output, ReadTask(("path", "label", "split", "pca"), store))
        return data.withColumn(VIEW, F.lit(0))
    return read_features(spark, run_output, ReadTask(("path", "label", "split", VIEW, "pca"), store))


def validation_split(training: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Per class, a deterministic `fraction` of the photos (view 0; at least one when a class has two or
    more) is held out with its augmented views. The fit part keeps its photos' views; the validation part
    is the held-out photos *and* their views (made by the training-side shift families), so the choice of
    classifier, the temperature and the threshold are all made on a validation set shifted the way the
    issue asks, and no view of a validation photo is ever fitted on. Without --augment: photos only.
    A photo is drawn by a hash of its file name within its class, never of its full path: the same photos
    in another folder or bucket give the same split, so the same model, temperature and threshold."""
    photos = training.where(F.col(VIEW) == 0)
    by_class = Window.partitionBy("label")
    size = F.count(F.lit(1)).over(by_class)
    name = F.element_at(F.split(F.col("path"), "/"), -1)
    rank = F.row_number().over(by_class.orderBy(F.xxhash64(name, F.lit(seed)), F.col("path")))
    quota = F.when(size >= 2, F.greatest(F.lit(1), F.floor(size * fraction))).otherwise(0)
    held = photos.select("path", (rank <= quota).alias("__held"))
    ranked = training.join(held, on="path", how="inner")
    validation = ranked.where(F.col("__held"))
    return ranked.where(~F.col("__held")).drop("__held"), validation.drop("__held")


def candidates_for(name: str | None) -> tuple[Candidate, ...]:
    """Every candidate (None), or the one called `name`; ValueError naming the valid ones otherwise."""
    if name is None:
        return CANDIDATES
    named = tuple(candidate for candidate in CANDIDATES if candidate.name == name)
    if not named:
        raise ValueError(f"unknown --classifier {name!r}; choose one of {', '.join(c.name for c in CANDIDATES)}")
    return named


def _choose(fit_part: DataFrame, validation: DataFrame, n_classes: int, candidates: tuple[Candidate, ...]
            ) -> tuple[Candidate, LogisticRegressionModel, dict[str, Scores]]:
    """The best of `candidates` on validation, its model fitted on the fit part (calibration's input), all
    scores. The candidates are fitted and scored concurrently: each L-BFGS iteration is a small Spark job
    whose scheduling, not its data, bounds a fit at the sizes train sees, so one fit's jobs leave cores
    idle. On 2 local cores (AMD EPYC) selection took 0.77-0.93x the time of one fit after the other (an
    eight-view run of the bundled sample, ~6,500 rows: 33.9 s vs 44.1 s; the notebook's 52 photos:
    17.0-18.3 s vs 19.6-22.2 s), with the same choice and coefficients."""

    def scored(candidate: Candidate) -> tuple[LogisticRegressionModel, Scores]:
        model = candidate.estimator().fit(fit_part)
        metrics = metrics_from_confusion(confusion_matrix(model, validation, n_classes))
        return model, Scores(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
                             log_loss=log_loss(model, validation))

    results = sparkapi.concurrently(fit_part.sparkSession, scored, candidates)
    scores: dict[str, Scores] = {}
    best: tuple[float, float, float] | None = None
    chosen, chosen_model = candidates[0], None
    for candidate, (model, score) in zip(candidates, results, strict=True):
        scores[candidate.name] = score
        key = (score.accuracy, score.macro_f1, -round(score.log_loss, 6))
        if best is None or key > best:  # strictly better only: ties keep the earlier (default) candidate
            best, chosen, chosen_model = key, candidate, model
        logger.info("candidate %s: validation accuracy %.4f, macro-F1 %.4f, log-loss %.4f", candidate.name,
                    score.accuracy, score.macro_f1, score.log_loss)
    if chosen_model is None:  # CANDIDATES is never empty: the first candidate always sets it
        raise RuntimeError("no classifier candidates to choose from")
    return chosen, chosen_model, scores


def calibrate(model: LogisticRegressionModel, validation: DataFrame, target_precision: float,
              outlier_index: int | None = None) -> Calibration:
    """Temperature and "not sure" threshold of the chosen candidate, fitted on validation only.

    The margins come from the candidate fitted on the fit part during the choice (the model that has not
    seen the validation rows; not fitted again); the final model, refitted on all of Training, inherits T
    and the threshold. Only n_validation x n_classes margins reach the driver."""
    rows = model.transform(validation).select(vector_to_array(F.col("rawPrediction")).alias("margins"),
                                              F.col(LABEL_INDEX).cast("int").alias("label")).collect()
    margins = np.array([row["margins"] for row in rows], dtype=np.float64)
    labels = np.array([row["label"] for row in rows], dtype=np.int64)
    calibrated = calibration.calibrate(margins, labels, target_precision, outlier_index)
    logger.info("calibration on %d validation rows: temperature %.4g (ECE %.4f -> %.4f), threshold %.4f answers "
                "%.1f%% at precision %.3f", len(labels), calibrated.temperature, calibrated.ece_before,
                calibrated.ece_after, calibrated.threshold, 100 * calibrated.coverage_at_threshold,
                calibrated.precision_at_threshold)
    return calibrated


def novelty_gate(fit_part: DataFrame, validation: DataFrame, training: DataFrame, n_classes: int) -> NoveltyGate:
    """recognise/novelty.py's gate: the threshold from the validation rows' novelty against the fit part's
    centroids, the bundle's centroids from all of Training. Per-group sums are aggregated in the executors
    (at most partitions x groups rows of k numbers reach the driver); of validation, only its scores."""
    fit_centroids, _ = class_centroids(fit_part, n_classes)
    scored = validation.select("pca", (F.col(VIEW) == 0).alias("photo")).mapInArrow(
        functools.partial(_novelty_batches, fit_centroids), "photo boolean, novelty double").toArrow()
    scores, photos = scored.column("novelty").to_numpy(), scored.column("photo").to_numpy(zero_copy_only=False)
    choice = novelty.choose_threshold(scores)
    photos_flagged = float(np.mean(scores[photos] > choice.threshold)) if photos.any() else 0.0
    centroids, rows = class_centroids(training, n_classes)
    logger.info("novelty gate: threshold %.4f (the %.0f%% quantile of %d validation rows; %.1f%% above it, "
                "%.1f%% of the photos), %d centroids of %d Training rows", choice.threshold,
                100 * novelty.NOVELTY_QUANTILE, len(scores), 100 * choice.flagged, 100 * photos_flagged,
                len(centroids), rows)
    return NoveltyGate(Novelty(threshold=choice.threshold, quantile=novelty.NOVELTY_QUANTILE,
                               validation_rows=len(scores), validation_flagged=choice.flagged, centroid_rows=rows,
                               centroids=len(centroids), validation_photos_flagged=photos_flagged),
                       centroids)


def class_centroids(data: DataFrame, n_classes: int) -> tuple[np.ndarray, int]:
    """(unit centroids of each class's unit `pca` photos and, when there are any, of its views; rows used),
    the sums made per partition (novelty.group_of numbers the groups)."""
    parts = sparkapi.default_parallelism(data.sparkSession)  # coalesce: never more partial rows than cores x groups
    partial = data.select(F.col(LABEL_INDEX).cast("int").alias("label"), VIEW, "pca").coalesce(parts).mapInArrow(
        functools.partial(_class_sum_batches, n_classes), "group int, rows long, sums array<double>").collect()
    if not partial:
        raise ValueError("no Training rows to make the novelty gate's centroids from")
    sums = np.zeros((2 * n_classes, len(partial[0]["sums"])))
    counts = np.zeros(2 * n_classes, dtype=np.int64)
    for row in partial:
        sums[row["group"]] += np.asarray(row["sums"], dtype=np.float64)
        counts[row["group"]] += int(row["rows"])
    return novelty.centroids(sums, counts), int(counts.sum())


def _pca_rows(batch: pa.RecordBatch) -> np.ndarray:
    """The `pca` list column of an Arrow batch as an (n, k) float64 array (rows are never null)."""
    column = batch.column("pca")
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(column), -1)


def _class_sum_batches(n_classes: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: one partition's per-group sums of unit rows (novelty.group_of), one row per group
    present."""
    groups = 2 * n_classes
    sums: np.ndarray | None = None
    counts = np.zeros(groups, dtype=np.int64)
    for batch in batches:
        if not len(batch):
            continue
        group = novelty.group_of(batch.column("label").to_numpy(), batch.column(VIEW).to_numpy(), n_classes)
        batch_sums, batch_counts = novelty.class_sums(_pca_rows(batch), group, groups)
        sums = batch_sums if sums is None else sums + batch_sums
        counts += batch_counts
    present = np.flatnonzero(counts)
    yield pa.RecordBatch.from_arrays(
        [pa.array(present, pa.int32()), pa.array(counts[present], pa.int64()),
         pa.array([sums[i].tolist() for i in present] if sums is not None else [], pa.list_(pa.float64()))],
        names=["group", "rows", "sums"])


def _novelty_batches(centroids: np.ndarray, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: `pca` rows -> their novelty (extra columns pass through unchanged)."""
    for batch in batches:
        scores = novelty.novelty(_pca_rows(batch), centroids) if len(batch) else np.zeros(0)
        kept = [name for name in batch.schema.names if name != "pca"]
        yield pa.RecordBatch.from_arrays([*(batch.column(name) for name in kept), pa.array(scores, pa.float64())],
                                         names=[*kept, "novelty"])


def calibrated_probability(temperature: float) -> Column:
    """softmax(rawPrediction / T) as an array column, in Spark: the batch path's calibrated probabilities
    (Spark's own `probability` column is softmax(rawPrediction), T = 1)."""
    scaled = F.transform(vector_to_array(F.col("rawPrediction")), lambda margin: margin / F.lit(temperature))
    shifted = F.transform(scaled, lambda value: F.exp(value - F.array_max(scaled)))
    total = F.aggregate(shifted, F.lit(0.0).cast("double"), lambda sum_, value: sum_ + value)
    return F.transform(shifted, lambda value: value / total)


def selective_metrics(model: LogisticRegressionModel, data: DataFrame, calibrated: Calibration,
                      gate: NoveltyGate | None = None, outlier_index: int | None = None) -> dict[str, Any]:
    """Calibrated ECE, and coverage and accuracy of the answered rows at the threshold (and, with the
    novelty gate, not unlike the training photos; with outlier photos, not "not a fruit"), aggregated in
    Spark (15 bins of counts reach the driver). Reported for Test; never used for a choice."""
    probabilities = calibrated_probability(calibrated.temperature)
    fruit = probabilities if outlier_index is None else F.slice(probabilities, 1, outlier_index)
    predicted = F.col("prediction") if outlier_index is None else fruit_prediction(outlier_index)
    not_fruit = (F.lit(False) if outlier_index is None
                 else F.element_at(probabilities, outlier_index + 1) >= F.array_max(fruit))
    scored = model.transform(data).select(
        F.array_max(fruit).alias("confidence"), (predicted == F.col(LABEL_INDEX)).cast("double").alias("correct"),
        not_fruit.alias("not_fruit"), "pca")
    if gate is None:
        scored = scored.drop("pca").withColumn("novel", F.lit(False))
    else:
        scored = scored.mapInArrow(functools.partial(_novelty_batches, gate.centroids),
                                   "confidence double, correct double, not_fruit boolean, novelty double") \
            .withColumn("novel", F.col("novelty") > F.lit(gate.settings.threshold))
    answering = (F.col("confidence") >= calibrated.threshold) & ~F.col("novel") & ~F.col("not_fruit")
    bins = F.least(F.floor(F.col("confidence") * calibration.ECE_BINS), F.lit(calibration.ECE_BINS - 1))
    per_bin = scored.groupBy(bins.cast("int").alias("bin")).agg(
        F.count(F.lit(1)).alias("rows"), F.sum("confidence").alias("confidence"), F.sum("correct").alias("correct"),
        F.sum(answering.cast("int")).alias("answered"), F.sum(F.col("novel").cast("int")).alias("novel"),
        F.sum(F.col("not_fruit").cast("int")).alias("not_fruit"),
        F.sum(F.when(answering, F.col("correct"))).alias("answered_correct"),
    ).collect()
    rows, answered = sum(row["rows"] for row in per_bin), sum(row["answered"] for row in per_bin)
    answered_correct = sum(row["answered_correct"] or 0.0 for row in per_bin)
    novel = {"unlike_training": sum(row["novel"] for row in per_bin)} if gate else {}
    if outlier_index is not None:
        novel["not_fruit"] = sum(row["not_fruit"] for row in per_bin)
    return {**novel, "temperature": calibrated.temperature, "threshold": calibrated.threshold,
            "ece": calibration.ece_from_bins(np.array([row["rows"] for row in per_bin]),
                                             np.array([row["confidence"] for row in per_bin]),
                                             np.array([row["correct"] for row in per_bin])),
            "coverage": answered / rows if rows else 0.0,
            "accuracy_answered": answered_correct / answered if answered else 0.0, "unknown": rows - answered}


def log_loss(model: LogisticRegressionModel, data: DataFrame) -> float:
    """Mean -log p(true class): separates candidates that classify equally well by how sure they are."""
    true_probability = vector_to_array(F.col("probability"))[F.col(LABEL_INDEX).cast("int")]
    row = model.transform(data).select(F.mean(-F.log(F.greatest(true_probability, F.lit(1e-15))))).first()
    if row is None or row[0] is None:
        raise ValueError("log-loss of an empty set: the validation part has no rows")
    return float(row[0])


def confusion_matrix(model: LogisticRegressionModel, data: DataFrame, n_classes: int,
                     outlier_index: int | None = None) -> np.ndarray:
    """Counts[true, predicted], aggregated in Spark. With `outlier_index` (a model with the "not a fruit"
    class, scored on fruit rows): predicted is the most probable *fruit*, as evaluate's top-1 is."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    predicted = F.col("prediction") if outlier_index is None else fruit_prediction(outlier_index)
    rows = model.transform(data).groupBy(LABEL_INDEX, predicted.alias("predicted")).count().collect()
    for row in rows:
        counts[int(row[LABEL_INDEX]), int(row["predicted"])] += int(row["count"])
    return counts


def fruit_prediction(fruit: int) -> Column:
    """The index of the highest of the first `fruit` margins (the first of equals, as numpy's argmax)."""
    margins = F.slice(vector_to_array(F.col("rawPrediction")), 1, fruit)
    return (F.array_position(margins, F.array_max(margins)) - 1).cast("double")


def metrics_from_confusion(counts: np.ndarray, classes: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support (0 where undefined, as sklearn's
    zero_division=0); the macro average runs over the classes present in the truth or the predictions."""
    precision, recall, f1, support = evaluation.class_scores(counts)
    correct, predicted = np.diag(counts).astype(float), counts.sum(axis=0)
    present = (support > 0) | (predicted > 0)
    total = int(counts.sum())
    metrics: dict[str, Any] = {
        "accuracy": float(correct.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "count": total,
    }
    if classes is not None:
        metrics["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                       "f1": float(f1[i]), "support": int(support[i])}
                                for i, name in enumerate(classes)}
        metrics["confusion_matrix"] = {"classes": classes, "counts": counts.tolist()}
    return metrics


def _write_evaluation(store: Store, output: str, metrics: dict[str, Any], classes: list[str]) -> None:
    sinks.write_json(store, storage.join(output, METRICS), metrics)
    rows = [evaluation.ClassScores(name, row["precision"], row["recall"], row["f1"], row["support"])
            for name, row in metrics["per_class"].items()]
    store.write_bytes(storage.join(output, PER_CLASS), evaluation.per_class_csv(rows))
    store.write_bytes(storage.join(output, CONFUSION),
                      plots.confusion_matrix_png(metrics["confusion_matrix"]["counts"], classes))


def _write_bundle(store: Store, config: TrainConfig, source: Source, spec: models.ModelSpec, onnx: str,
                  classifier: LogisticRegressionModel, chosen: Candidate, classes: list[str],
                  metrics: Metrics, calibrated: Calibration | None, gate: NoveltyGate | None,
                  exposure: Outliers | None) -> None:
    """numpy arrays out of the two models, written as a bundle locally, then copied to MODEL_DIR/bundle."""
    pca = CentredPCAModel.read().using(store).load(storage.join(config.features, sinks.PCA_MODEL)).arrays()
    arrays = bundle.Arrays(mean=pca.mean, components=pca.components,
                           coefficients=classifier.coefficientMatrix.toArray(),
                           intercepts=classifier.interceptVector.toArray(),
                           centroids=gate.centroids if gate else None)
    description = BundleDescription(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=replace(ModelEntry.of(spec, source.runtime()), runtime=None),
        limits=DecodeLimits(),
        pca=BundlePca(k=pca.k, variance_kept=round(pca.variance_kept, 6)),
        classifier=chosen.describe(),
        source=source.fingerprint(),
        metrics=metrics,
        classes=tuple(classes),
        calibration=calibrated,
        tta=config.tta,
        novelty=gate.settings if gate else None,
        outliers=exposure,
    )
    with tempfile.TemporaryDirectory(prefix="fruitpipe-bundle-") as folder:
        bundle.write(folder, onnx, description, arrays)
        store.copy_tree_from_local(folder, storage.join(config.output, bundle.BUNDLE_DIR))
