"""watch(config, schedule): incremental passes into one output, in one long-lived Spark session.

Each pass is `run --resume` without its start-up cost (the JVM, the Spark session, the model export and
the writer lock are taken once): list, featurize what the journal lacks, publish a new version with
`_SUCCESS` last. A pass with nothing new, changed or removed publishes nothing. PCA is frozen between
refits (features of one pass project like the last's) and refitted on the schedule. While it waits, tiny
keep-warm jobs keep the Python workers and their loaded model alive (Spark ends workers idle for a
minute, and the next pass would load the model again). The first SIGTERM or Ctrl-C lets the current pass
finish and stops; a second one stops at once (nothing partial published).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace

from pyspark.sql import SparkSession

from fruitpipe import signals, sparkapi, storage
from fruitpipe.batch import lock, pipeline, sinks, sources
from fruitpipe.batch.journal import Journal
from fruitpipe.batch.manifest import RunManifest
from fruitpipe.batch.session import first_line
from fruitpipe.config import RunConfig, WatchSchedule
from fruitpipe.ml import CentredPCAModel, ImageFeaturizer
from fruitpipe.progress import Reporter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassReport:
    """One pass: its number, the manifest it published (None: nothing changed, nothing published), the
    images listed and its wall-clock seconds."""

    number: int
    manifest: RunManifest | None
    listed: int
    seconds: float


@dataclass(frozen=True)
class WarmJob:
    """One keep-warm job: its wall-clock seconds and, per task, the Python worker's pid and whether that
    worker already had the model (False: it was loaded now, by a worker that is new or had been ended)."""

    seconds: float
    workers: tuple[tuple[int, bool], ...]


def log_warm(job: WarmJob) -> None:
    """The default listener: a worker that had to load the model again is worth a line; the rest is debug."""
    loaded = sum(1 for _, had in job.workers if not had)
    (logger.info if loaded else logger.debug)("keep-warm: %d of %d Python workers loaded the model, %.2f s",
                                              loaded, len(job.workers), job.seconds)


@dataclass
class _KeepWarm:
    """Waits between passes, running a keep-warm job whenever the Python workers have been idle for
    `every_s` (0: never); `last` is when they last ran a task (-inf: not yet in this session)."""

    spark: SparkSession
    featurizer: ImageFeaturizer
    every_s: float
    on_warm: Callable[[WarmJob], None]
    last: float = -math.inf

    def used(self) -> None:
        self.last = time.monotonic()

    def wait(self, stop: signals.StopRequest, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.every_s and not stop.requested:
            due = self.last + self.every_s  # -inf for workers not used yet: at once
            if due >= deadline or stop.wait(max(0.0, due - time.monotonic())):
                break
            self.warm()
        stop.wait(max(0.0, deadline - time.monotonic()))

    def warm(self) -> None:
        """One keep-warm job, a task per core; a failure is a warning (an optimisation only: the next pass
        meets whatever broke, and says so)."""
        began = time.perf_counter()
        try:
            workers = self.featurizer.warm(self.spark, max(1, sparkapi.default_parallelism(self.spark)))
        except Exception as exc:
            logger.warning("keep-warm job failed (%s); the next pass loads the model if it must", first_line(exc))
            workers = []
        self.used()
        if workers:
            self.on_warm(WarmJob(round(time.perf_counter() - began, 3), tuple(workers)))


@dataclass
class _Fit:
    """The PCA in force: the photos it was fitted on and the passes since (None: refit on the next pass)."""

    fitted_rows: int | None = None
    passes_since: int = 0


def watch(config: RunConfig, schedule: WatchSchedule, on_pass: Callable[[PassReport], None],
          progress: Reporter | None = None, on_warm: Callable[[WarmJob], None] = log_warm) -> signals.StopRequest:
    """Passes until `schedule.max_passes` or a stop signal; `on_pass` hears each one, `on_warm` each keep-warm
    job. Returns the stop request (its signal says why the watch ended, None when the passes ran out)."""
    config = replace(config, resume=True, overwrite=False)
    setup_timer = pipeline.StageTimer(progress)
    owner = pipeline.new_run_id()
    prepared, listing = pipeline.prepare(config, setup_timer)
    with lock.held(prepared.store, config.output, owner), ExitStack() as stack:
        journal = pipeline.open_journal(prepared)
        spark = pipeline.start_spark(stack, config, setup_timer)
        stop = stack.enter_context(signals.stop_after_current())
        fit = _Fit(fitted_rows=_published_fit(prepared))
        warmth = _KeepWarm(spark, pipeline.featurizer(prepared), schedule.keep_warm_s, on_warm)
        number = 0
        while not stop.requested:
            number += 1
            if number == 1:  # listed and timed before Spark started: the first pass's
                report = _one_pass(spark, prepared, journal, schedule, fit, number, setup_timer, listing)
            else:
                timer = pipeline.StageTimer(progress)
                report = _one_pass(spark, prepared, journal, schedule, fit, number, timer,
                                   pipeline.list_input(prepared, timer))
            if report.manifest is not None:  # a publishing pass ran Python tasks (read-back, PCA, write)
                warmth.used()
            on_pass(report)
            if schedule.max_passes is not None and number >= schedule.max_passes:
                break
            warmth.wait(stop, schedule.interval_s)
        return stop


def _one_pass(spark: SparkSession, prepared: pipeline.Prepared, journal: Journal, schedule: WatchSchedule,
              fit: _Fit, number: int, timer: pipeline.StageTimer, listing: sources.ImageListing) -> PassReport:
    began = timer.started
    entries = journal.index()
    plan = journal.plan(listing, entries)
    if pipeline.up_to_date(prepared, listing, journal, plan) is not None:
        return PassReport(number, None, listing.listed, round(time.perf_counter() - began, 3))
    frozen = None
    published = prepared.store.exists(storage.join(prepared.config.output, sinks.SUCCESS))
    if fit.fitted_rows is not None and published and not schedule.refit_now(fit.passes_since + 1):
        frozen = pipeline.FrozenPca(_published_pca(prepared), fit.fitted_rows, schedule.refit_at(fit.fitted_rows))
    job = pipeline.Job(prepared, listing, journal, timer, pipeline.new_run_id(), sinks.Publication(), frozen, entries)
    with sinks.unpublished_if_interrupted(prepared.store, prepared.config.output, job.publication):
        manifest = pipeline.run_pass(spark, job)
    if manifest.pca.refitted:
        fit.fitted_rows, fit.passes_since = manifest.counts.ok, 0
    else:
        fit.passes_since += 1
    return PassReport(number, manifest, listing.listed, round(time.perf_counter() - began, 3))


def _published_fit(prepared: pipeline.Prepared) -> int | None:
    """The photos the output's published PCA was fitted on (a restarted watch keeps it frozen until its
    schedule says otherwise); None when nothing is published: the first pass fits."""
    output, store = prepared.config.output, prepared.store
    if prepared.mode != sinks.RESUME or not store.exists(storage.join(output, sinks.SUCCESS)):
        return None
    where = storage.join(output, sinks.MANIFEST)
    manifest = RunManifest.loads(store.read_bytes(where), storage.redact(where))
    return manifest.pca.fitted_rows if manifest.pca.fitted_rows is not None else manifest.counts.ok


def _published_pca(prepared: pipeline.Prepared) -> CentredPCAModel:
    model: CentredPCAModel = CentredPCAModel.read().using(prepared.store).load(
        storage.join(prepared.config.output, sinks.PCA_MODEL))
    return model
