"""run(config): list -> featurize -> PCA -> write -> manifest -> _SUCCESS.

The driver lists and plans; features are computed once in executors, kept with
MEMORY_AND_DISK while PCA is fitted and applied, and written by Spark.
"""
from __future__ import annotations

import functools
import logging
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StringType, StructField, StructType

from fruitpipe import __version__, faults, sparkapi, storage
from fruitpipe.batch import cost, lock, plots, report, sampling, sinks, sources, tracking
from fruitpipe.batch.journal import Identity, Index, Journal, Plan
from fruitpipe.batch.manifest import (
    APPENDED,
    REWRITTEN,
    UNCHANGED,
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
from fruitpipe.executor.journal import (
    CURRENT_COLUMNS,
    CURRENT_SCHEMA,
    KEY,
    OUTCOME,
    PLAN_SCHEMA,
    CompactTask,
    CurrentTask,
    JournalTask,
    read_current,
    write_compacted,
)
from fruitpipe.executor.journal import VERSION as VERSION_COL
from fruitpipe.executor.metering import Meter
from fruitpipe.executor.parquet import URI_COLUMN, ReadTask, read_parts
from fruitpipe.executor.worker import ERROR_REASON, ERROR_STAGE, PRIOR_SHA256, PRIOR_VERSION, VIEW
from fruitpipe.image import models, shifts
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
    stages while they run (default: nothing shown). With `config.resume`, an interrupted run in the
    output is continued and a finished one brought up to date: only new or changed images are featurized."""
    timer = StageTimer(progress)
    run_id = new_run_id()
    prepared, listing = prepare(config, timer)
    with lock.held(prepared.store, config.output, run_id):
        journal = open_journal(prepared)
        entries = journal.index() if prepared.mode == sinks.RESUME else None
        published = None if entries is None else up_to_date(prepared, listing, journal, journal.plan(listing, entries))
        if published is not None:
            logger.info("%s is up to date (%d listed: nothing new, changed or removed since %s): nothing rewritten",
                        storage.redact(config.output), listing.listed, published.run_id)
            return unchanged(published, listing, timer)
        publication = sinks.Publication()
        with sinks.unpublished_if_interrupted(prepared.store, config.output, publication), ExitStack() as stack:
            spark = start_spark(stack, config, timer)
            return run_pass(spark, Job(prepared, listing, journal, timer, run_id, publication, entries=entries))


def up_to_date(prepared: Prepared, listing: sources.ImageListing, journal: Journal, plan: Plan) -> RunManifest | None:
    """The published manifest when the output already holds what a pass would publish, else None: nothing
    to featurize or remove; the version made of exactly the journal's segment folders (no pass died after
    featurizing since: its rows are in the journal, not yet in the outputs) with no photo due for a retry;
    the same listing (unsafe paths included), input, PCA settings and CSV choice."""
    config, store = prepared.config, prepared.store
    if plan.pending.num_rows or plan.removed:
        return None
    state = journal.published()
    if (state is None or state.transient or state.passes != journal.passes()
            or not store.exists(storage.join(config.output, sinks.SUCCESS))):
        return None
    where = storage.join(config.output, sinks.MANIFEST)
    manifest = RunManifest.loads(store.read_bytes(where), storage.redact(where))
    same = (manifest.counts.listed == listing.listed and manifest.input == storage.redact(listing.root)
            and manifest.pca.variance_target == config.pca.variance_target
            and config.pca.k in (None, manifest.pca.k)
            and store.exists(storage.join(config.output, sinks.CSV)) == config.csv)
    return manifest if same else None


def unchanged(published: RunManifest, listing: sources.ImageListing, timer: StageTimer) -> RunManifest:
    """What `run --resume` reports for an up-to-date output: the published version (its run id, counts,
    model, PCA) with this invocation's counts (nothing featurized or removed) and time; nothing is written."""
    counts = replace(published.counts, featurized=0, reused=listing.count, removed=0)
    return replace(published, counts=counts, timings_s=Timings({**timer.seconds, "featurize": 0.0}, timer.total()),
                   throughput_img_s=None, featurize_img_s=0.0, cost=None, publication=UNCHANGED)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Prepared:
    """What every pass into one output shares, settled before Spark starts: the settings, the store, the
    model (exported once) and what the output held (FRESH, REPLACE or RESUME)."""

    config: RunConfig
    store: Store
    spec: models.ModelSpec
    runtime: Runtime
    entry: ModelEntry
    identity: Identity
    mode: str


def prepare(config: RunConfig, timer: StageTimer) -> tuple[Prepared, sources.ImageListing]:
    """Check the settings and the output, list the input, export the model: each can fail in one line
    before Spark starts; an output made another way is refused here, before anything in it is touched."""
    store = Store(config.s3)
    spec = models.with_input_size(models.resolve(config.model), config.image_size)
    runtime = resolve(config.precision, config.executor.infer_batch)  # before Spark: a bad choice fails now
    families = shifts.view_families(config.augment_families)  # an unknown or suite family: refused at once
    if config.pca.k is not None and config.pca.k > spec.feature_dim:
        raise ValueError(f"--k {config.pca.k} exceeds the feature dimension {spec.feature_dim} of {spec.name}")
    mode = sinks.check_output(store, config.output, config.overwrite, config.resume)
    listing = _list(store, config, timer)
    with timer.stage("model"):
        onnx = models.onnx_file(spec)  # export once, cached, before Spark starts timing the featurize stage
    entry = ModelEntry.of(spec, runtime, onnx_sha256=storage.file_sha256(onnx))
    identity = Identity.of(entry, config.augment, families, config.augment_strength)
    if mode == sinks.RESUME:
        _refuse_other_model(store, config.output, identity)
        Journal(store, config.output, identity).refuse_others()
    return Prepared(config, store, spec, runtime, entry, identity, mode), listing


def list_input(prepared: Prepared, timer: StageTimer) -> sources.ImageListing:
    """The input listed again (a later `watch` pass)."""
    return _list(prepared.store, prepared.config, timer)


def _list(store: Store, config: RunConfig, timer: StageTimer) -> sources.ImageListing:
    with timer.stage("list"):
        return sources.list_images(store, config.input)


def open_journal(prepared: Prepared) -> Journal:
    """The output made ready (cleared for REPLACE, write-checked) and its journal; the lock is held."""
    sinks.prepare_run_output(prepared.store, prepared.config.output, prepared.mode)
    journal = Journal.open(prepared.store, prepared.config.output, prepared.identity)
    faults.arm_driver()
    return journal


def start_spark(stack: ExitStack, config: RunConfig, timer: StageTimer) -> SparkSession:
    with timer.stage("spark_start"):
        return stack.enter_context(spark_session(config.master, config.spark_conf, remote=config.remote))


def _refuse_other_model(store: Store, output: str, identity: Identity) -> None:
    """An output from before the journal has only its manifest to say how it was made: compared here."""
    if Journal(store, output, identity).others() or not store.exists(storage.join(output, sinks.MANIFEST)):
        return  # Journal.open compares journals
    where = storage.redact(storage.join(output, sinks.MANIFEST))
    manifest = RunManifest.loads(store.read_bytes(storage.join(output, sinks.MANIFEST)), where)
    differences = identity.differences(Identity.of(manifest.model, manifest.augment or 0,
                                                   manifest.augment_families or (), manifest.augment_strength or 1.0))
    if differences:
        raise ValueError(f"{storage.redact(output)} was made differently ({'; '.join(differences)}); features "
                         "of two models never mix: pass --overwrite to start over, or choose another --output")


@dataclass(frozen=True)
class Job:
    """One pass's inputs, handed down the Spark part. `frozen`: a PCA to keep instead of fitting one
    (`watch` between refits); `entries`: the journal's index when the caller has read it already."""

    prepared: Prepared
    listing: sources.ImageListing
    journal: Journal
    timer: StageTimer
    run_id: str
    publication: sinks.Publication
    frozen: FrozenPca | None = None
    entries: Index | None = None

    @property
    def config(self) -> RunConfig:
        return self.prepared.config

    @property
    def store(self) -> Store:
        return self.prepared.store


@dataclass(frozen=True)
class FrozenPca:
    """The published PCA a pass keeps, the photos it was fitted on, and from how many photos (ok) the pass
    refits instead (None: it keeps it whatever the count)."""

    model: CentredPCAModel
    fitted_rows: int
    refit_at_rows: int | None = None

    def kept_for(self, photos: int) -> bool:
        return self.refit_at_rows is None or photos < self.refit_at_rows


def run_pass(spark: SparkSession, job: Job) -> RunManifest:
    """One pass, the Spark part, its jobs tagged with the run (a shared session's other jobs are not its cost);
    the report is written after the manifest and before _SUCCESS, which lists it; the journal is
    compacted before it when due (`_compaction_due`) and cleaned after it (a pass that appended or did not
    compact keeps its segments as they are)."""
    tag = f"fruitpipe-run-{job.run_id}"
    config, store = job.config, job.store
    with sparkapi.tagged_jobs(spark, tag):
        manifest, sample, compacted = _featurize_and_summarise(spark, job, tag)
    sinks.write_json(store, storage.join(config.output, sinks.MANIFEST), manifest.to_json())
    sinks.write_json(store, storage.join(config.output, sinks.REPORT_SAMPLE), sample.to_json())
    began = time.perf_counter()
    report.write(store, config.output, report.run_sections(report.RunOutput.read(store, config.output, manifest,
                                                                                 sample)))
    logger.info("report.html written in %.2f s", time.perf_counter() - began)
    faults.reached("driver-before-success")
    sinks.commit(store, config.output, manifest.counts.to_json())
    job.journal.clean_up(job.run_id, compacted=compacted,
                         transient=job.journal.transient_count(job.run_id))
    return manifest


@dataclass(frozen=True)
class Published:
    """The output's published version a pass adds its photos to (see `_appendable`)."""

    manifest: RunManifest
    sample: ReportSample
    pca: FrozenPca


MAX_SEGMENT_FOLDERS = 64  # passes appended since the last compaction; past it a pass rewrites (and compacts)


def _appendable(job: Job, plan: Plan, entries: Index) -> Published | None:
    """The published version this pass may add its photos to instead of rewriting every output, or None.

    Only under a kept (frozen) PCA, when the pass only adds: nothing removed, no listed image changed or
    refused at listing, and the published version is made of exactly the journal's segments (no pass
    died after featurizing since) with no photo due for a retry. The appended version then holds what a
    rewrite would: the same rows, projections, counts and sample."""
    config, store = job.config, job.store
    frozen = job.frozen
    if frozen is None or plan.removed or job.listing.rejected:
        return None
    if pc.any(pc.is_in(plan.pending.column(KEY), value_set=entries.table.column(KEY))).as_py():
        return None  # a new version of an image the journal has
    state = job.journal.published()
    if (state is None or state.transient or not store.exists(storage.join(config.output, sinks.SUCCESS))
            or len(state.passes) >= MAX_SEGMENT_FOLDERS or state.passes != job.journal.passes()):
        return None
    manifest_uri, sample_uri = (storage.join(config.output, name) for name in (sinks.MANIFEST, sinks.REPORT_SAMPLE))
    manifest = RunManifest.loads(store.read_bytes(manifest_uri), storage.redact(manifest_uri))
    if (manifest.counts.listed != plan.reused or manifest.class_counts is None
            or not frozen.kept_for(manifest.counts.ok + plan.pending.num_rows)):
        return None
    if not store.exists(sample_uri):
        return None
    return Published(manifest, ReportSample.loads(store.read_bytes(sample_uri), storage.redact(sample_uri)), frozen)


def _featurize_and_summarise(spark: SparkSession, job: Job, tag: str) -> tuple[RunManifest, ReportSample, bool]:
    """Featurize what the journal lacks, then publish from the journal's current rows: (manifest, report
    sample, whether the journal was compacted)."""
    config, timer, listing = job.config, job.timer, job.listing
    meter = sparkapi.cpu_meter(spark)
    entries = job.journal.index() if job.entries is None else job.entries
    plan = job.journal.plan(listing, entries)
    logger.info("journal: %d of %d images done before, %d to featurize, %d no longer listed",
                plan.reused, listing.count, plan.pending.num_rows, plan.removed)
    published = _appendable(job, plan, entries)
    with timer.stage("featurize", plan.pending.num_rows), tracking.follow_tasks(spark, timer.progress,
                                                                               plan.pending.num_rows):
        _featurize_pass(spark, job, plan, meter)
    this_pass = job.journal.index(job.journal.segment_files(job.journal.segments(job.run_id)))
    same_bytes = this_pass.aliases
    if published is not None and job.journal.segment_files(job.journal.transient(job.run_id)):
        published = None  # a photo to retry next pass: this version must say so in errors/ and be rewritten then
    index = this_pass if published is not None else entries.merged(this_pass)
    plan_rows = job.journal.current(job.listing, index)
    partitions = _readback_partitions(spark, job, plan_rows.num_rows)
    featurized = _current_rows(spark, job, plan_rows, partitions)
    compacted = published is None and _compaction_due(index, plan_rows.num_rows, partitions)
    featurized = featurized.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if published is None:
            counts, per_class, pca = _featurize_fit_write(featurized, job)
        else:
            counts, per_class, pca = _append_outputs(featurized, job, published)
        # from the journal, not the tasks' summaries: a retried task's summary lacks what its dead attempt did
        counts = replace(counts, featurized=len(this_pass) - same_bytes, reused=plan.reused + same_bytes,
                         removed=plan.removed)
        with timer.stage("report_sample"):
            photos = featurized.where(F.col(ERROR_STAGE).isNull() & (F.col(VIEW) == 0))
            sample = (sampling.stratified_sample(photos, pca, per_class) if published is None
                      else sampling.extended_sample(published.sample, photos, pca, per_class))
        if compacted:
            with timer.stage("journal_compact"):
                _compact(featurized.where(~F.col(TRANSIENT_COL)), job)
    finally:  # also when a stage fails: a notebook's or a test's session keeps running
        featurized.unpersist(blocking=True)  # no block removal left running when the session stops next
    cpu = cost.CpuSeconds(task=sparkapi.task_cpu_seconds(spark, tag),
                          python_workers=None if meter is None else float(meter.value), driver=timer.driver_cpu(),
                          missing=() if meter is not None else (
                              "null on Spark Connect: the status store (task CPU) and accumulators (Python "
                              "worker CPU) live on the server, out of the client's reach",))
    manifest = _manifest(spark, job, pca, counts)
    cores = manifest.spark.default_parallelism
    return replace(manifest, class_counts=per_class, publication=REWRITTEN if published is None else APPENDED,
                   cost=cost.estimate(cpu, counts.listed, manifest.timings_s.total, cores,
                                      config.price_per_vcpu_hour)), sample, compacted


PENDING_SCHEMA = StructType([*sources.SCHEMA.fields, StructField(KEY, StringType(), False),
                             StructField(VERSION_COL, StringType(), False),
                             StructField(PRIOR_SHA256, StringType(), True),
                             StructField(PRIOR_VERSION, StringType(), True)])
TRANSIENT_COL = "__transient"


def _featurize_pass(spark: SparkSession, job: Job, plan: Plan, meter: Meter | None) -> None:
    """The images the journal lacks, featurized into this pass's segments (what they hold is what counts)."""
    if not plan.pending.num_rows:
        return
    config = job.config
    cores = max(1, sparkapi.default_parallelism(spark))
    partitions = sources.partition_count(plan.pending.num_rows, cores, config.executor.rows_per_partition)
    images = sparkapi.parallelize(spark, plan.pending, PENDING_SCHEMA, partitions)
    if config.augment:
        images = images.withColumn(AUGMENT_COL, F.coalesce(F.col("split") == TRAINING, F.lit(False)))
    task = JournalTask(job.journal.segments(job.run_id), job.journal.transient(job.run_id), job.store)
    summary = featurizer(job.prepared).meter_cpu(meter).journal(images, task)
    outcomes = {row[OUTCOME]: int(row["count"]) for row in summary.groupBy(OUTCOME).count().collect()}
    logger.info("featurize pass: %s (a retried task reports only what its last attempt did)", outcomes)


def featurizer(prepared: Prepared) -> ImageFeaturizer:
    """The featurize stage of a run made with these settings (a pass, and `watch`'s keep-warm jobs)."""
    config, runtime = prepared.config, prepared.runtime
    return ImageFeaturizer(modelName=config.model, imageSize=config.image_size or 0,
                           precision=runtime.precision, inferBatch=runtime.infer_batch,
                           batchSize=config.executor.batch_size,
                           readThreads=config.executor.read_threads, maxBytes=config.limits.max_bytes,
                           maxPixels=config.limits.max_pixels, s3Options=prepared.store.options.to_wire(),
                           augment=config.augment, augmentCol=AUGMENT_COL if config.augment else "",
                           augmentFamilies=",".join(config.augment_families),
                           augmentStrength=config.augment_strength)


READBACK_BYTES_PER_PARTITION = 32 * 2**20  # features per task when rows are read back from the journal


def readback_rows_per_partition(feature_dim: int, rows_per_partition: int) -> int:
    """Rows per task when the current rows are read back from the journal (each task becomes one features/
    part, and one segment when compacted): sized by the features' bytes, not by the CNN's images per task
    (`rows_per_partition`, its floor). A row read back costs microseconds, a task tenths of a second
    (measured, 10k rows on 2 cores: 40 tasks took 5.9-6.1 s to read back and count, 4 tasks 2.5-3.3 s), and parts
    of a few MB make slow readers downstream."""
    return max(rows_per_partition, READBACK_BYTES_PER_PARTITION // (4 * feature_dim))  # float32 features


def _readback_partitions(spark: SparkSession, job: Job, rows: int) -> int:
    """Partitions of the current rows (views are rows too) read back from the journal."""
    cores = max(1, sparkapi.default_parallelism(spark))
    per_partition = readback_rows_per_partition(job.prepared.spec.feature_dim, job.config.executor.rows_per_partition)
    return sources.partition_count(max(1, rows), cores, per_partition)


COMPACT_FILES_PER_PARTITION = 16  # a small segment costs a read of milliseconds (one GET on S3): 16 per task are cheap
STALE_SHARE = 0.1  # journal pairs no listed image stands on (removed, replaced), past which a rewrite compacts


def _compaction_due(index: Index, current_rows: int, partitions: int) -> bool:
    """Compaction rewrites every row of the journal, so a rewriting pass does it only when it pays: more
    than COMPACT_FILES_PER_PARTITION times the segment files it would write (reads of many small files),
    MAX_SEGMENT_FOLDERS folders (appending stops there), or more than STALE_SHARE of the journal's pairs
    standing for no listed image."""
    folders = {uri.rsplit("/", 2)[-2] for uri in index.segments}
    stale = len(index) - current_rows
    due = (len(index.segments) > COMPACT_FILES_PER_PARTITION * partitions or len(folders) >= MAX_SEGMENT_FOLDERS
           or stale > STALE_SHARE * max(1, current_rows))
    logger.info("journal: %d segment files in %d folders, %d of %d entries stale, %d partitions: compaction %s",
                len(index.segments), len(folders), stale, len(index), partitions, "due" if due else "not due")
    return due


def _current_rows(spark: SparkSession, job: Job, rows: pa.Table, partitions: int) -> DataFrame:
    """Every listed image's rows from the journal (`rows`: `Journal.current`'s read plan, read in executors),
    plus this pass's passing read failures (reported, not remembered): the run's featurized rows."""
    plan = sparkapi.parallelize(spark, rows, from_arrow_schema(PLAN_SCHEMA), partitions)
    schema = from_arrow_schema(CURRENT_SCHEMA)
    current = plan.mapInArrow(functools.partial(read_current, CurrentTask(job.store)), schema)
    current = current.withColumn(TRANSIENT_COL, F.lit(False))
    failed = job.journal.segment_files(job.journal.transient(job.run_id))
    if failed:
        uris = spark.createDataFrame([(uri,) for uri in failed], f"{URI_COLUMN} string")
        read = uris.mapInArrow(functools.partial(read_parts, ReadTask(CURRENT_COLUMNS, job.store)), schema)
        current = current.unionByName(read.withColumn(TRANSIENT_COL, F.lit(True)))
    return current


def _compact(current: DataFrame, job: Job) -> None:
    """The journal rewritten as one segment per partition of the current rows (stale ones go after _SUCCESS)."""
    task = CompactTask(job.journal.compacted(job.run_id), job.store)
    current.drop(TRANSIENT_COL).mapInArrow(functools.partial(write_compacted, task), "rows long").collect()


def _featurize_fit_write(featurized: DataFrame, job: Job) -> tuple[RunCounts, tuple[ClassCount, ...], CentredPCAModel]:
    """current rows (counted per class) -> errors/ -> PCA fit on the photos (view 0) -> features/ (views
    too) + model + scree; (counts, per-class counts, model). The published version is replaced from here."""
    config, store, timer, listing = job.config, job.store, job.timer, job.listing
    with timer.stage("resolve"):
        ok_count, rejected, views, per_class = _count_outcomes(featurized)
    errors = _error_rows(featurized)
    if listing.rejected:  # unsafe paths, refused at listing: a few rows from the driver
        errors = errors.unionByName(featurized.sparkSession.createDataFrame(
            [(path, sources.LIST_STAGE, reason) for path, reason in listing.rejected], errors.schema))
        rejected += len(listing.rejected)
    if ok_count < 2:
        raise ValueError(f"only {ok_count} of {listing.listed} images could be featurized "
                         f"(reasons in the log and {storage.join(config.output, sinks.ERRORS)} of a run that "
                         "publishes); PCA needs at least 2")
    ok = _ok_rows(featurized)
    if job.frozen is not None and job.frozen.kept_for(ok_count):
        pca = job.frozen.model
        logger.info("PCA kept (fitted on %d photos, %d now)", job.frozen.fitted_rows, ok_count)
    else:
        with timer.stage("pca_fit"):
            pca = CentredPCA(inputCol="features", outputCol="pca", k=config.pca.k,
                             varianceTarget=config.pca.variance_target).fit(ok.where(F.col(VIEW) == 0))
    faults.reached("driver-before-publish")
    job.publication.started = True
    sinks.unpublish(store, config.output)
    with timer.stage("write_errors"):
        sinks.write_errors(errors, config.output, job.run_id, store, rejected)
    with timer.stage("write"):
        _write_outputs(ok, pca, store, config, job.run_id)
    return RunCounts(listed=listing.listed, ok=ok_count, rejected=rejected, views=views), per_class, pca


def _append_outputs(added: DataFrame, job: Job, published: Published
                    ) -> tuple[RunCounts, tuple[ClassCount, ...], CentredPCAModel]:
    """This pass's rows added to the published version under its frozen PCA: `_SUCCESS` removed first,
    then new parts next to the old ones in features/ (errors/, csv/); nothing else is rewritten but the
    manifest, the sample and the report. (counts, per-class counts, model) of the whole new version."""
    config, store, timer = job.config, job.store, job.timer
    with timer.stage("resolve"):
        ok_count, rejected, views, per_class = _count_outcomes(added)
    pca = published.pca.model
    logger.info("appending %d photos (%d rejected) to the published version; PCA kept (fitted on %d photos)",
                ok_count, rejected, published.pca.fitted_rows)
    faults.reached("driver-before-publish")
    job.publication.started = True
    store.remove(storage.join(config.output, sinks.SUCCESS))
    if rejected:
        with timer.stage("write_errors"):
            sinks.write_dataset(_error_rows(added), storage.join(config.output, sinks.ERRORS), job.run_id, store,
                                part_tag=job.run_id)
    with timer.stage("write"):
        _write_rows(_ok_rows(added), pca, store, config, job.run_id, part_tag=job.run_id)
    before = published.manifest.counts
    counts = RunCounts(listed=before.listed + ok_count + rejected, ok=before.ok + ok_count,
                       rejected=before.rejected + rejected, views=(before.views or 0) + views)
    return counts, sampling.added_counts(published.manifest.class_counts or (), per_class), pca


def _count_outcomes(featurized: DataFrame) -> tuple[int, int, int, tuple[ClassCount, ...]]:
    """One pass that reads (and caches) every current row, counting photos (ok, rejected) per class
    and split, and views; (ok, rejected, views, per class)."""
    per_class, views = sampling.outcomes(featurized)
    return sum(count.ok for count in per_class), sum(count.rejected for count in per_class), views, per_class


def _error_rows(featurized: DataFrame) -> DataFrame:
    """The rejected rows as errors/ holds them: path, stage, reason."""
    return featurized.where(F.col(ERROR_STAGE).isNotNull()).select(
        "path", F.col(ERROR_STAGE).alias("stage"), F.col(ERROR_REASON).alias("reason"))


def _ok_rows(featurized: DataFrame) -> DataFrame:
    return featurized.where(F.col(ERROR_STAGE).isNull()).drop(ERROR_STAGE, ERROR_REASON)


def _write_rows(ok: DataFrame, pca: CentredPCAModel, store: Store, config: RunConfig, run_id: str,
                part_tag: str = "") -> None:
    """features/ (and csv/) of `ok` projected with `pca`; `part_tag`: added next to the parts there."""
    sinks.write_features(ok, config.output, run_id, store, pca.projection().apply, part_tag=part_tag)
    if config.csv:
        sinks.write_csv(pca.transform(ok), config.output, pca.components, run_id, store, part_tag=part_tag)


def _write_outputs(ok: DataFrame, pca: CentredPCAModel, store: Store, config: RunConfig, run_id: str) -> None:
    _write_rows(ok, pca, store, config, run_id)
    pca.write().using(store).save(storage.join(config.output, sinks.PCA_MODEL))  # by the driver, see ml.persist
    scree = plots.scree_png(pca.spectrum, pca.components, config.pca.variance_target)
    store.write_bytes(storage.join(config.output, sinks.SCREE), scree)


def _manifest(spark: SparkSession, job: Job, pca: CentredPCAModel, counts: RunCounts) -> RunManifest:
    config, listing, timer = job.config, job.listing, job.timer
    kept = job.frozen.fitted_rows if job.frozen is not None and pca is job.frozen.model else None  # PCA kept
    timings = timer.timings()
    total = timings.total
    listed = sparkapi.executors(spark)
    featurize_seconds = timer.seconds["featurize"]
    return RunManifest(
        run_id=job.run_id,
        input=storage.redact(listing.root),
        output=storage.redact(config.output),
        layout=listing.layout,
        classes=tuple(listing.labels),
        model=job.prepared.entry,
        feature_dim=job.prepared.spec.feature_dim,
        pca=PcaSummary(
            k=pca.components,
            variance_target=config.pca.variance_target,
            variance_kept=round(pca.variance_kept, 6),
            explained_variance_ratio=tuple(pca.spectrum),
            fitted_rows=counts.ok if kept is None else kept,
            refitted=kept is None,
        ),
        counts=counts,
        timings_s=timings,
        throughput_img_s=round(counts.listed / total, 2) if total else None,
        featurize_img_s=round((counts.featurized or 0) / featurize_seconds, 2) if featurize_seconds else 0.0,
        versions=_versions(sparkapi.is_connect(spark)),
        augment=config.augment,
        augment_families=shifts.view_families(config.augment_families) if config.augment else None,
        augment_strength=config.augment_strength if config.augment else None,
        spark=SparkSummary(
            master=sparkapi.master(spark),
            application_id=sparkapi.application_id(spark),
            executors=None if listed is None else tuple(Executor(**row) for row in listed),  # None: Spark Connect
            default_parallelism=sparkapi.default_parallelism(spark),
            partitions=sources.partition_count(max(1, counts.featurized or 0), sparkapi.default_parallelism(spark),
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
