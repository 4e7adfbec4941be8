"""Live featurize progress from Spark's own bookkeeping: no extra job, nothing counted in executors.

While a featurizing action runs, a daemon thread on the driver polls the status tracker (through
`sparkapi.stage_tasks`) for the stages that started since, and turns the widest one's completed tasks
into images: the driver planned the partitions (`sources.to_dataframe`, contiguous slices of equal
size), so a completed task is rows/partitions images. On Spark Connect there is no tracker on the
client: the reporter then shows the stage alone (start, end, time).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from fruitpipe import sparkapi
from fruitpipe.progress import Reporter

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.5


@contextmanager
def follow_tasks(spark: SparkSession, reporter: Reporter, images: int) -> Iterator[None]:
    """Report `images` x the completed fraction of the widest stage Spark runs inside the block."""
    if not reporter.enabled:
        yield
        return
    if sparkapi.is_connect(spark):
        logger.info("live task progress is not available through Spark Connect: stage-level progress only")
        yield
        return
    stop = threading.Event()
    seen: set[int] = set()
    before = set(sparkapi.stage_tasks(spark, set()) or {})  # stages of earlier actions still running: not ours
    thread = threading.Thread(target=_poll, args=(spark, reporter, images, seen, before, stop),
                              name="fruitpipe-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _poll(spark: SparkSession, reporter: Reporter, images: int, seen: set[int], before: set[int],
          stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        try:
            stages = sparkapi.stage_tasks(spark, seen)
        except Exception:  # the session stopping under us (Ctrl-C): progress is never worth an error
            logger.debug("status tracker poll failed", exc_info=True)
            return
        reporter.update(images_done(stages or {}, before, images))


def images_done(stages: dict[int, tuple[int, int]], before: set[int], images: int) -> int:
    """Images behind the completed tasks of the widest stage (the one with a task per partition)."""
    ours = [counts for stage, counts in stages.items() if stage not in before and counts[0] > 0]
    if not ours:
        return 0
    tasks, completed = max(ours)
    return min(images, images * completed // tasks)
