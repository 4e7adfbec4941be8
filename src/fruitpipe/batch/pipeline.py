"""run(config): list -> featurize -> PCA -> write -> manifest -> _SUCCESS.

The driver lists and plans; features are computed once in executors, kept with
MEMORY_AND_DISK while PCA is fitted and applied, and written by Spark.
"""
from __future__ import annotations

import logging
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruitpipe import __version__, sparkapi, storage
from fruitpipe.batch import cost, plots, report, sampling, sinks, sources, tracking
from fruitpipe.batch.manifest import (
    ClassCount,
    Executor,
    ModelEntry,
    PcaSummary,
    ReportSample,
    RunCounts,
    RunManifest,
    SparkSummary,
    Timings,
)
from fruitpipe.batch.session import java_version, spark_session
from fruitpipe.config import RunConfig
from fruitpipe.executor.worker import ERROR_REASON, ERROR_STAGE, VIEW
from fruitpipe.image import models
from fruitpipe.ml import CentredPCA, CentredPCAModel, ImageFeaturizer
from fruitpipe.progress import Reporter
from fruitpipe.runtime import Runtime, resolve
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)
TRAINING = "Training"  # the only split augmented: Test (and any other split) is featurized as it is
AUGMENT_COL = "__augment"


class StageTimer:
    """Wall-clock seconds per named stage, for the manifest; each stage is shown by the progress reporter;
    and the driver process's CPU since it started (the run's cost)."""

    def __init__(self, progress: Reporter | None = None) -> None:
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.seconds: dict[str, float] = {}
        self.progress = progress or Reporter.silent()

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[None]:
        """Time the block; `total`: the images it handles (shown as done / total while it runs)."""
        began = time.perf_counter()
        try:
            with self.progress.stage(name, total):
                yield
        finally:
            self.seconds[name] = round(time.perf_counter() - began, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def driver_cpu(self) -> float:
        return time.process_time() - self.cpu_started

    def timings(self) -> Timings:
        """The stages so far and the total up to now."""
        return Timings(dict(self.seconds), self.total())


def run(config: RunConfig, progress: Reporter | None = None) -> RunManifest:
    """Run the whole chain; returns the manifest (also written to the output). `progress` shows the
    stages while they run (default: nothing shown)."""
    timer = StageTimer(progress)
    store = Store(config.s3)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    spec = models.with_input_size(models.resolve(config.model), config.image_size)
    runtime = resolve(config.precision, config.executor.infer_batch)  # before Spark: a bad choice fails now
    if config.pca.k is not None and config.pca.k > spec.feature_dim:
        raise ValueError(f"--k {config.pca.k} exceeds the feature dimension {spec.feature_dim} of {spec.name}")
    sinks.check_output(store, config.output, config.overwrite)
    with timer.stage("list"):
        listing = sources.list_images(store, config.input)
    sinks.prepare_output(store, config.output, config.overwrite)
    with timer.stage("model"):
        models.onnx_file(spec)  # export once, cached, before Spark starts timing the featurize stage
    with sinks.discarded_if_interrupted(store, config.output), ExitStack() as stack:
        with timer.stage("spark_start"):
            spark = stack.enter_context(spark_session(config.master, config.spark_conf, remote=config.remote))
        return _run_in_session(spark, store, config, spec, runtime, listing, timer, run_id)


def _run_in_session(spark: SparkSession, store: Store, config: RunConfig, spec: models.ModelSpec, runtime: Runtime,
                    listing: sources.ImageListing, timer: StageTimer, run_id: str) -> RunManifest:
    """The Spark part, its jobs tagged with the run (a shared session's other jobs are not its cost);
    the report is written after the manifest and before _SUCCESS, which lists it."""
    tag = f"fruitpipe-run-{run_id}"
    with sparkapi.tagged_jobs(spark, tag):
        manifest, sample = _featurize_and_summarise(spark, store, config, spec, runtime, listing, timer, run_id,
                                                    tag)
    sinks.write_json(store, storage.join(config.output, sinks.MANIFEST), manifest.to_json())
    sinks.write_json(store, storage.join(config.output, sinks.REPORT_SAMPLE), sample.to_json())
    began = time.perf_counter()
    report.write(store, config.output, report.run_sections(report.RunOutput.read(store, config.output, manifest,
                                                                                 sample)))
    logger.info("report.html written in %.2f s", time.perf_counter() - began)
    sinks.commit(store, config.output, manifest.counts.to_json())
    return manifest


def _featurize_and_summarise(spark: SparkSession, store: Store, config: RunConfig, spec: models.ModelSpec,
                             runtime: Runtime, listing: sources.ImageListing, timer: StageTimer, run_id: str,
                             tag: str) -> tuple[RunManifest, ReportSample]:
    images = sources.to_dataframe(spark, listing, config.executor.rows_per_partition)
    if config.augment:
        images = images.withColumn(AUGMENT_COL, F.coalesce(F.col("split") == TRAINING, F.lit(False)))
    featurizer = ImageFeaturizer(modelName=config.model, imageSize=config.image_size or 0,
                                 precision=runtime.precision, inferBatch=runtime.infer_batch,
                                 batchSize=config.executor.batch_size,
                                 readThreads=config.executor.read_threads, maxBytes=config.limits.max_bytes,
                                 maxPixels=config.limits.max_pixels, s3Options=store.options.to_wire(),
                                 augment=config.augment, augmentCol=AUGMENT_COL if config.augment else "")
    meter = sparkapi.cpu_meter(spark)
    featurized = featurizer.meter_cpu(meter).transform(images).drop(AUGMENT_COL).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts, per_class, pca = _featurize_fit_write(featurized, store, config, listing, timer, run_id)
        with timer.stage("report_sample"):
            photos = featurized.where(F.col(ERROR_STAGE).isNull() & (F.col(VIEW) == 0))
            sample = sampling.stratified_sample(photos, pca, per_class)
    finally:  # also when a stage fails: a notebook's or a test's session keeps running
        featurized.unpersist(blocking=True)  # no block removal left running when the session stops next
    cpu = cost.CpuSeconds(task=sparkapi.task_cpu_seconds(spark, tag),
                          python_workers=None if meter is None else float(meter.value), driver=timer.driver_cpu(),
                          missing=() if meter is not None else (
                              "null on Spark Connect: the status store (task CPU) and accumulators (Python "
                              "worker CPU) live on the server, out of the client's reach",))
    manifest = _manifest(spark, config, spec, runtime, listing, pca, counts, timer, run_id)
    cores = manifest.spark.default_parallelism
    return replace(manifest, class_counts=per_class,
                   cost=cost.estimate(cpu, counts.listed, manifest.timings_s.total, cores,
                                      config.price_per_vcpu_hour)), sample


def _featurize_fit_write(featurized: DataFrame, store: Store, config: RunConfig, listing: sources.ImageListing,
                         timer: StageTimer, run_id: str) -> tuple[RunCounts, tuple[ClassCount, ...], CentredPCAModel]:
    """featurize (counted per class) -> errors/ -> PCA fit on the photos (view 0) -> features/ (views too) +
    model + scree; (counts, per-class counts, model)."""
    with timer.stage("featurize", len(listing.rows)), tracking.follow_tasks(featurized.sparkSession, timer.progress,
                                                                           len(listing.rows)):
        ok_count, rejected, views, per_class = _count_outcomes(featurized)
    errors = featurized.where(F.col(ERROR_STAGE).isNotNull()).select(
        "path", F.col(ERROR_STAGE).alias("stage"), F.col(ERROR_REASON).alias("reason"))
    if listing.rejected:  # unsafe paths, refused at listing: a few rows from the driver
        errors = errors.unionByName(featurized.sparkSession.createDataFrame(
            [(path, sources.LIST_STAGE, reason) for path, reason in listing.rejected], errors.schema))
        rejected += len(listing.rejected)
    with timer.stage("write_errors"):
        sinks.write_errors(errors, config.output, run_id, store, rejected)
    if ok_count < 2:
        raise ValueError(f"only {ok_count} of {listing.listed} images could be featurized "
                         f"(reasons in {storage.join(config.output, sinks.ERRORS)}); PCA needs at least 2")
    ok = featurized.where(F.col(ERROR_STAGE).isNull()).drop(ERROR_STAGE, ERROR_REASON)
    with timer.stage("pca_fit"):
        pca = CentredPCA(inputCol="features", outputCol="pca", k=config.pca.k,
                         varianceTarget=config.pca.variance_target).fit(ok.where(F.col(VIEW) == 0))
    with timer.stage("write"):
        _write_outputs(ok, pca, store, config, run_id)
    return RunCounts(listed=listing.listed, ok=ok_count, rejected=rejected, views=views), per_class, pca


def _count_outcomes(featurized: DataFrame) -> tuple[int, int, int, tuple[ClassCount, ...]]:
    """One pass that computes (and caches) every feature vector, counting photos (ok, rejected) per class
    and split, and views; (ok, rejected, views, per class)."""
    per_class, views = sampling.outcomes(featurized)
    return sum(count.ok for count in per_class), sum(count.rejected for count in per_class), views, per_class


def _write_outputs(ok: DataFrame, pca: CentredPCAModel, store: Store, config: RunConfig, run_id: str) -> None:
    sinks.write_features(ok, config.output, run_id, store, pca.projection().apply)
    if config.csv:
        sinks.write_csv(pca.transform(ok), config.output, pca.components, run_id, store)
    pca.write().using(store).save(storage.join(config.output, sinks.PCA_MODEL))  # by the driver, see ml.persist
    scree = plots.scree_png(pca.spectrum, pca.components, config.pca.variance_target)
    store.write_bytes(storage.join(config.output, sinks.SCREE), scree)


def _manifest(spark: SparkSession, config: RunConfig, spec: models.ModelSpec, runtime: Runtime,
              listing: sources.ImageListing, pca: CentredPCAModel, counts: RunCounts, timer: StageTimer,
              run_id: str) -> RunManifest:
    timings = timer.timings()
    total = timings.total
    listed = sparkapi.executors(spark)
    return RunManifest(
        run_id=run_id,
        input=storage.redact(listing.root),
        output=storage.redact(config.output),
        layout=listing.layout,
        classes=tuple(listing.labels),
        model=ModelEntry.of(spec, runtime, onnx_sha256=storage.file_sha256(models.onnx_file(spec))),
        feature_dim=spec.feature_dim,
        pca=PcaSummary(
            k=pca.components,
            variance_target=config.pca.variance_target,
            variance_kept=round(pca.variance_kept, 6),
            explained_variance_ratio=tuple(pca.spectrum),
        ),
        counts=counts,
        timings_s=timings,
        throughput_img_s=round(counts.listed / total, 2) if total else None,
        featurize_img_s=round(counts.listed / timer.seconds["featurize"], 2),
        versions=_versions(sparkapi.is_connect(spark)),
        augment=config.augment,
        spark=SparkSummary(
            master=sparkapi.master(spark),
            application_id=sparkapi.application_id(spark),
            executors=None if listed is None else tuple(Executor(**row) for row in listed),  # None: Spark Connect
            default_parallelism=sparkapi.default_parallelism(spark),
            partitions=sources.partition_count(counts.listed, sparkapi.default_parallelism(spark),
                                               config.executor.rows_per_partition),
        ),
    )


def _versions(connect: bool = False) -> dict[str, str]:
    """The driver's versions; a Spark Connect client runs no JVM (it needs no Java): no java then."""
    packages = ("pyspark", "onnxruntime", "openvino", "numpy", "pillow", "pyarrow")
    versions = {"fruitpipe": __version__, "python": platform.python_version()}
    if not connect:
        versions["java"] = str(java_version())
    versions.update({name: models.package_version(name) for name in packages})
    return versions
