"""fruitpipe drift: has the current run's data moved away from the reference run's?

Both runs' raw CNN features are projected on the reference's own `pca_model/` (never refitted) in one
Spark pass that also computes each row's reconstruction residual and, with a model, its prediction.
Spark then does the heavy parts (the classifier two-sample test on every row, the residual quantile and
counts, class counts, confidence histograms); only a seeded sample per side (for MMD and the per-component
diagnostics) and counts reach the driver. The verdict rules are in `decision`; the self-split
calibration on the driver's sample in `selfsplit`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import array_to_vector
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from fruitpipe import sparkapi, storage
from fruitpipe.batch import sinks
from fruitpipe.batch.pipeline import StageTimer
from fruitpipe.batch.session import spark_session
from fruitpipe.config import DriftConfig
from fruitpipe.executor.parquet import ReadTask
from fruitpipe.executor.worker import VIEW
from fruitpipe.ml import CentredPCAModel
from fruitpipe.ml.pca import PcaArrays
from fruitpipe.monitor import decision, figure, selfsplit, statistics
from fruitpipe.monitor.contracts import (
    ClassShare,
    ComponentShift,
    DriftReport,
    PredictionDrift,
    RunSide,
    Settings,
    Space,
    TestResult,
)
from fruitpipe.recognise.bundle import Bundle
from fruitpipe.recognise.train import Source, read_features, read_source
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

DRIFT_JSON, DRIFT_PNG = "drift.json", "drift.png"
SIDE, GROUP, RESIDUAL, PREDICTED, CONFIDENCE = "side", "group", "residual", "predicted", "confidence"
REFERENCE, CURRENT = 0, 1
CONFIDENCE_BINS = 1000
HELD_OUT = 3  # of 10 hash buckets of frame blocks: the classifier test's held-out part
NOVELTY_RATE = 0.01  # the quantile's own exceedance rate


class IncomparableError(ValueError):
    """The runs (or the model) were made differently: comparing them would measure that, not drift."""


def compare_runs(reference: Source, current: Source) -> None:
    """Refuse, in one line naming the difference, runs whose features do not live in the same space."""
    ref, cur = reference.manifest.model, current.manifest.model
    differences = [
        ("model weights sha256", ref.weights_sha256[:16], cur.weights_sha256[:16]),
        ("input size", ref.input_size, cur.input_size),
        ("preprocessing", ref.preprocessing, cur.preprocessing),
        ("feature_dim", reference.manifest.feature_dim, current.manifest.feature_dim),
        ("precision", ref.precision or "fp32", cur.precision or "fp32"),
    ]
    for what, left, right in differences:
        if left != right:
            raise IncomparableError(f"incomparable runs: {what} differs (reference {_short(left)}, "
                                    f"current {_short(right)})")


def compare_model(reference: Source, model: Bundle) -> None:
    entry, run = model.description.model, reference.manifest.model
    for what, left, right in (("model weights sha256", run.weights_sha256[:16], entry.weights_sha256[:16]),
                              ("input size", run.input_size, entry.input_size),
                              ("feature_dim", run.feature_dim, entry.feature_dim)):
        if left != right:
            raise IncomparableError(f"incomparable model: {what} differs (reference run {_short(left)}, "
                               f"--model {_short(right)})")


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Scorer:
    """mapInArrow body: raw features -> projection on the reference's k components, the residual norm of
    the centred vector outside them and, with a model, its predicted class index and confidence."""

    mean: np.ndarray
    components: np.ndarray
    model: Bundle | None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield self.apply(batch)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        dim = len(self.mean)
        x = batch.column("features").flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, dim)
        centred = x - self.mean
        projected = centred @ self.components
        residual = np.sqrt(np.clip((centred * centred).sum(axis=1) - (projected * projected).sum(axis=1), 0, None))
        k = self.components.shape[1]
        columns: dict[str, pa.Array] = {
            SIDE: batch.column(SIDE), GROUP: batch.column(GROUP), "path": batch.column("path"),
            "label": batch.column("label"),
            "pca": pa.ListArray.from_arrays(pa.array(np.arange(len(x) + 1) * k, pa.int32()),
                                            pa.array(projected.reshape(-1), pa.float64())),
            RESIDUAL: pa.array(residual, pa.float64()),
        }
        if self.model is not None:
            probabilities = self.model.classify(x) if len(x) else np.zeros((0, len(self.model.classes)))
            columns[PREDICTED] = pa.array(probabilities.argmax(axis=1).astype(np.int32), pa.int32())
            columns[CONFIDENCE] = pa.array(probabilities.max(axis=1), pa.float64())
        return pa.RecordBatch.from_pydict(columns)


def _schema(with_model: bool) -> str:
    base = f"{SIDE} int, {GROUP} long, path string, label string, pca array<double>, {RESIDUAL} double"
    return base + (f", {PREDICTED} int, {CONFIDENCE} double" if with_model else "")


def frame_group(block: int) -> Column:
    """Class + block of `block` consecutive frame numbers (the number a Fruits 360 file name ends with
    before `_100.jpg`, or its first number); a name without a number is its own group."""
    number = F.regexp_extract(F.element_at(F.split(F.col("path"), "/"), -1), r"(\d+)", 1)
    block_id = F.floor(number.cast("long") / F.lit(block))
    return F.when(number != "", F.xxhash64(F.coalesce(F.col("label"), F.lit("")), block_id)) \
        .otherwise(F.xxhash64(F.col("path")))


def _rows(spark: SparkSession, source: Source, side: int, store: Store, block: int) -> DataFrame:
    """A run's photos (augmented views left out) with their side and frame group."""
    with_views = source.manifest.counts.views is not None
    columns = ("path", "label", "features", *((VIEW,) if with_views else ()))
    data = read_features(spark, source.uri, ReadTask(columns, store))
    if with_views:
        data = data.where(F.col(VIEW) == 0)
    return data.where(F.col("features").isNotNull()).select(
        F.lit(side).alias(SIDE), frame_group(block).alias(GROUP), "path", "label", "features")


def run_drift(config: DriftConfig) -> DriftReport:
    """Compare, decide, write drift.json + drift.png under config.output; returns the report."""
    started = time.perf_counter()
    store = Store(config.s3)
    reference, current = read_source(store, config.reference), read_source(store, config.current)
    compare_runs(reference, current)
    model = Bundle.load(Path(config.model), threads=1) if config.model else None
    if model is not None:
        compare_model(reference, model)
    pca = CentredPCAModel.read().using(store).load(storage.join(config.reference, sinks.PCA_MODEL)).arrays()
    with spark_session(config.master, config.spark_conf, remote=config.remote) as spark:
        report, points = _compare(spark, store, config, (reference, current), pca, model, started)
    write_outputs(store, config.output, report, figure.drift_png(report, *points))
    return report


def _compare(spark: SparkSession, store: Store, config: DriftConfig, runs: tuple[Source, Source], pca: PcaArrays,
             model: Bundle | None, started: float) -> tuple[DriftReport, tuple[np.ndarray, np.ndarray]]:
    """The report, and both samples on the first two reference components (the figure's scatter)."""
    reference, current = runs
    rows = _rows(spark, reference, REFERENCE, store, config.block).unionByName(
        _rows(spark, current, CURRENT, store, config.block))
    scored = rows.mapInArrow(Scorer(pca.mean, pca.components, model), _schema(model is not None)).persist()
    try:
        timer = StageTimer()
        with timer.stage("project"):
            counts = _side_counts(scored)
        rng = np.random.default_rng(config.seed)
        with timer.stage("sample"):
            samples = _samples(rows, scored, config, pca)
        with timer.stage("mmd"):
            mmd = _mmd_test(samples, config, rng, counts)
        with timer.stage("classifier"):
            classifier = _classifier_test(scored, config, counts)
        with timer.stage("reconstruction"):
            novelty = _novelty_test(scored, samples, config, rng, pca.k, counts)
        tests = (mmd, classifier, novelty)
        with timer.stage("diagnostics"):
            components = _component_shifts(samples[0].projected, samples[1])
            prediction = _prediction_drift(scored, model, config.model) if model is not None else None
        logger.info("drift stages (s): %s", ", ".join(f"{name} {seconds:.1f}"
                                                      for name, seconds in timer.timings().stages.items()))
    finally:
        scored.unpersist()
    status, reasons = decision.verdict(tests, prediction, config.alpha)
    report = DriftReport(
        created=datetime.now(UTC).isoformat(timespec="seconds"), status=status, reasons=reasons,
        reference=_side(reference, counts[REFERENCE]), current=_side(current, counts[CURRENT]),
        space=Space(model=reference.manifest.model.name, weights_sha256=reference.manifest.model.weights_sha256,
                    input_size=reference.manifest.model.input_size, feature_dim=reference.manifest.feature_dim,
                    k=pca.k, variance_kept=round(pca.variance_kept, 6)),
        settings=Settings(alpha=config.alpha, sample=config.sample, seed=config.seed, permutations=config.permutations,
                          calibration_splits=config.calibration_splits,
                          classifier_calibration_splits=config.classifier_splits, block=config.block,
                          auc_floor=decision.AUC_FLOOR, novelty_floor=decision.NOVELTY_FLOOR),
        tests=tests, components=components, prediction=prediction,
        notes=("image properties (brightness, saturation, hue) are not computed: drift reads features only, "
               "never the photos",),
        seconds=round(time.perf_counter() - started, 3))
    return report, (samples[0].projected[:, :2], samples[1].projected[:, :2])


def _side(source: Source, rows: int) -> RunSide:
    return RunSide(output=storage.redact(source.uri), run_id=source.manifest.run_id, rows=rows,
                   manifest_sha256=source.manifest_sha256)


def _side_counts(scored: DataFrame) -> dict[int, int]:
    counts = {int(row[SIDE]): int(row["count"]) for row in scored.groupBy(SIDE).count().collect()}
    for side, name in ((REFERENCE, "reference"), (CURRENT, "current")):
        if counts.get(side, 0) < 4:
            raise ValueError(f"the {name} run has {counts.get(side, 0)} featurized photos; drift needs at least 4")
    return counts


@dataclass(frozen=True)
class CurrentSample:
    projected: np.ndarray


def _sample_order(seed: int) -> Column:
    return F.xxhash64(F.col("path"), F.lit(seed))


def _samples(rows: DataFrame, scored: DataFrame, config: DriftConfig,
             pca: PcaArrays) -> tuple[selfsplit.ReferenceSample, CurrentSample]:
    """Up to `sample` rows per side, chosen by a seeded hash of the path (the same rows for the same seed).
    The reference rows come with their raw features (the novelty calibration refits on them), projected
    on the driver with the same arithmetic as `Scorer`; the current rows with their projection only."""
    reference = rows.where(F.col(SIDE) == REFERENCE).orderBy(_sample_order(config.seed)).limit(config.sample) \
        .select(GROUP, F.coalesce(F.col("label"), F.lit("")).alias("label"), "features").toArrow()
    features = np.array(reference.column("features").to_pylist(), dtype=np.float64)
    current = scored.where(F.col(SIDE) == CURRENT).orderBy(_sample_order(config.seed)).limit(config.sample) \
        .select("pca").toArrow()
    return (selfsplit.ReferenceSample(groups=np.asarray(reference.column(GROUP).to_numpy(zero_copy_only=False)),
                                      classes=np.array(reference.column("label").to_pylist(), dtype=object),
                                      projected=(features - pca.mean) @ pca.components, features=features),
            CurrentSample(np.array(current.column("pca").to_pylist(), dtype=np.float64)))


def _mmd_test(samples: tuple[selfsplit.ReferenceSample, CurrentSample], config: DriftConfig,
              rng: np.random.Generator, counts: dict[int, int]) -> TestResult:
    reference, current = samples
    sigma2 = statistics.median_bandwidth(reference.projected)
    result = statistics.mmd_permutation_test(reference.projected, current.projected, sigma2, config.permutations, rng)
    calibration = selfsplit.mmd_calibration(reference, len(current.projected), sigma2, config.calibration_splits, rng)
    return decision.judge("mmd", result.statistic, result.p_value, config.alpha, calibration, decision.MMD_FLOOR,
                          (len(reference.projected), len(current.projected)),
                          "MMD^2 (RBF, median-heuristic bandwidth of the reference)")


def _auc(data: DataFrame, seed: int) -> tuple[float, int, int]:
    """Held-out AUC of a logistic regression telling side 1 from side 0 (frame blocks never straddle the
    fit / held-out parts), and the held-out counts per side."""
    bucket = F.abs(F.xxhash64(F.col(GROUP), F.lit(seed))) % 10
    prepared = data.select(F.col(SIDE).cast("double").alias("is_current"),
                           array_to_vector(F.col("pca")).alias("vector"), (bucket < HELD_OUT).alias("held"))
    fit, held = prepared.where(~F.col("held")), prepared.where(F.col("held"))
    model = LogisticRegression(featuresCol="vector", labelCol="is_current", regParam=0.01, elasticNetParam=0.0,
                               standardization=True, maxIter=50).fit(fit)
    auc = BinaryClassificationEvaluator(labelCol="is_current", rawPredictionCol="rawPrediction",
                                        metricName="areaUnderROC").evaluate(model.transform(held))
    held_counts = {int(row["is_current"]): int(row["count"]) for row in held.groupBy("is_current").count().collect()}
    return float(auc), held_counts.get(1, 0), held_counts.get(0, 0)


def _stratified_halves(reference: DataFrame, seed: int, share: float) -> DataFrame:
    """The reference as two halves (SIDE 0 / 1), stratified by class like `selfsplit.split`: each class's
    frame blocks ranked by a seeded hash, every other block to side 1 (parity drawn per class), side 1
    then thinned to `share` of its rows (the current run's size)."""
    blocks = reference.select("label", GROUP).distinct().withColumn(
        "rank", F.dense_rank().over(Window.partitionBy("label").orderBy(F.xxhash64(F.col(GROUP), F.lit(seed)))))
    parity = F.abs(F.xxhash64(F.col("label"), F.lit(-seed))) % 2
    blocks = blocks.select(GROUP, ((F.col("rank") + parity) % 2 == 0).alias("second"))
    joined = reference.join(blocks, on=GROUP, how="inner")
    return joined.where(~F.col("second") | (F.rand(seed) < share)).select(
        F.when(F.col("second"), 1).otherwise(0).alias(SIDE), GROUP, "pca")


def _classifier_test(scored: DataFrame, config: DriftConfig, counts: dict[int, int]) -> TestResult:
    """The classifier two-sample test on every row, and its calibration: the same test between block
    halves of the reference, the "current" half sized like the current run."""
    data = scored.select(SIDE, GROUP, F.coalesce(F.col("label"), F.lit("")).alias("label"), "pca")
    reference = data.where(F.col(SIDE) == REFERENCE)
    share = min(1.0, counts[CURRENT] / max(1.0, counts[REFERENCE] / 2))

    def measured(split: int) -> tuple[float, int, int]:  # split 0: reference vs current; then the self-splits
        if split == 0:
            return _auc(data, config.seed)
        seed = config.seed * 1000 + split
        return _auc(_stratified_halves(reference, seed, share), seed)

    (auc, positives, negatives), *splits = sparkapi.concurrently(
        data.sparkSession, measured, range(config.classifier_splits + 1))  # independent fits, run at once
    p_value = statistics.auc_p_value(auc, positives, negatives) if positives and negatives else 1.0
    calibration = [split_auc for split_auc, _, _ in splits]
    return decision.judge("classifier", auc, p_value, config.alpha, calibration, decision.AUC_FLOOR,
                          (counts[REFERENCE], counts[CURRENT]),
                          "held-out AUC of a logistic regression telling current from reference")


def _novelty_test(scored: DataFrame, samples: tuple[selfsplit.ReferenceSample, CurrentSample], config: DriftConfig,
                  rng: np.random.Generator, k: int, counts: dict[int, int]) -> TestResult:
    """Share of current rows whose residual outside the reference's k components exceeds the reference's
    99th percentile scaled by the out-of-sample ratio (selfsplit.novelty_calibration): content the
    reference never had (an unseen class) lies far from its subspace."""
    reference = samples[0]
    calibrated = selfsplit.novelty_calibration(reference, min(counts[CURRENT], len(reference.groups) // 2), k,
                                               config.calibration_splits, rng)
    q99 = scored.where(F.col(SIDE) == REFERENCE).select(F.percentile_approx(RESIDUAL, 0.99, 10000)).first()
    threshold = float(q99[0] if q99 else 0.0) * calibrated.ratio
    beyond = scored.where((F.col(SIDE) == CURRENT) & (F.col(RESIDUAL) > threshold)).count()
    share = beyond / counts[CURRENT]
    p_value = statistics.binomial_excess_p_value(beyond, counts[CURRENT], NOVELTY_RATE)
    return decision.judge("reconstruction", share, p_value, config.alpha, calibrated.shares, decision.NOVELTY_FLOOR,
                          (counts[REFERENCE], counts[CURRENT]),
                          f"share of current rows with reconstruction residual > {threshold:.4g} (the reference's "
                          f"99th percentile x {calibrated.ratio:.3f}, its out-of-sample ratio)")


def _component_shifts(reference: np.ndarray, current: CurrentSample) -> tuple[ComponentShift, ...]:
    """Diagnostics: KS and PSI per reference component on the samples, BH-adjusted over the components."""
    results = [statistics.ks_test(reference[:, j], current.projected[:, j]) for j in range(reference.shape[1])]
    q_values = statistics.benjamini_hochberg([p for _, p in results])
    return tuple(ComponentShift(component=j + 1, ks=ks, p_value=p, q_value=float(q_values[j]),
                                psi=statistics.psi(reference[:, j], current.projected[:, j]))
                 for j, (ks, p) in enumerate(results))


def _prediction_drift(scored: DataFrame, model: Bundle, model_dir: str | None) -> PredictionDrift:
    """Class counts and 1000-bin confidence histograms per side, aggregated in Spark."""
    classes = model.classes
    mix = np.zeros((2, len(classes)), dtype=np.int64)
    for row in scored.groupBy(SIDE, PREDICTED).count().collect():
        mix[int(row[SIDE]), int(row[PREDICTED])] = int(row["count"])
    histogram = np.zeros((2, CONFIDENCE_BINS), dtype=np.int64)
    bins = F.least(F.floor(F.col(CONFIDENCE) * CONFIDENCE_BINS), F.lit(CONFIDENCE_BINS - 1)).cast("int")
    for row in scored.groupBy(SIDE, bins.alias("bin")).count().collect():
        histogram[int(row[SIDE]), int(row["bin"])] = int(row["count"])
    means = {int(row[SIDE]): float(row["mean"]) for row in
             scored.groupBy(SIDE).agg(F.mean(CONFIDENCE).alias("mean")).collect()}
    change = statistics.class_mix_change(mix[REFERENCE].tolist(), mix[CURRENT].tolist())
    ks, ks_p = statistics.ks_from_histograms(histogram[REFERENCE].tolist(), histogram[CURRENT].tolist())
    shares = mix / mix.sum(axis=1, keepdims=True)
    return PredictionDrift(
        model=model_dir or "", chi2=change.chi2, p_value=change.p_value, jensen_shannon=change.jensen_shannon,
        classes=tuple(ClassShare(name, float(shares[0, i]), float(shares[1, i]), float(shares[1, i] - shares[0, i]))
                      for i, name in enumerate(classes)),
        appeared=tuple(name for i, name in enumerate(classes) if mix[0, i] == 0 and mix[1, i] > 0),
        vanished=tuple(name for i, name in enumerate(classes) if mix[0, i] > 0 and mix[1, i] == 0),
        confidence_ks=ks, confidence_p_value=ks_p, reference_confidence=means[REFERENCE],
        current_confidence=means[CURRENT])


def write_outputs(store: Store, output: str, report: DriftReport, png: bytes) -> None:
    """drift.json and drift.png under `output` (only these two files are replaced)."""
    sinks.write_json(store, storage.join(output, DRIFT_JSON), report.to_json())
    store.write_bytes(storage.join(output, DRIFT_PNG), png)


def load(store: Store, output: str) -> tuple[DriftReport, bytes]:
    """A drift output folder -> (its report, its PNG bytes): what the run report and the notebook show."""
    where = f"{DRIFT_JSON} of {storage.redact(output)}"
    report = DriftReport.loads(store.read_bytes(storage.join(output, DRIFT_JSON)), where)
    return report, store.read_bytes(storage.join(output, DRIFT_PNG))


