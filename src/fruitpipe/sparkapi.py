"""Every use of Spark beyond the DataFrame API, in one place: classic sessions and Spark Connect alike.

A classic session has a SparkContext and a JVM behind py4j; a Spark Connect session (`sc://HOST:PORT`)
has neither: it talks gRPC to a server whose driver runs the jobs. What fruitpipe needs from that
context (the cores, the application's id and master, the executor list, shipping the model file,
building Spark ML models inside the JVM) is asked here, so the rest of the code is the same for both
and the classic behaviour is exactly what it was (same calls, same values). What Connect cannot give
is None, with the reason logged once.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pyspark import Accumulator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

CONNECT_ONLY_CLASSIC = "needs a classic Spark session (Spark Connect has no JVM access): run it without --remote"
_INDEX = "__fp_index"
FIT_THREADS = 4  # small MLlib fits run at once by `concurrently`'s callers (train's candidates, drift's splits)
WAIT_SLICE_S = 0.2  # how long `concurrently` waits at a time, so that a Ctrl-C is seen and acted on
Item = TypeVar("Item")
Result = TypeVar("Result")
_shipped: set[tuple[str, str]] = set()
_parallelism: dict[str, int] = {}


def is_connect(spark: SparkSession) -> bool:
    """Whether `spark` is a Spark Connect client session (checked by class, so grpc is never imported here)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def session_key(spark: SparkSession) -> str:
    """What per-application registrations (shipped files, data sources) are kept under: the application
    on classic, the server-side session on Connect (artifacts and data sources belong to it)."""
    if is_connect(spark):
        return f"connect:{cast(Any, spark).session_id}"  # a Connect session's attribute, not on the classic type
    return str(spark.sparkContext.applicationId)


def default_parallelism(spark: SparkSession) -> int:
    """The cores Spark plans with (SparkContext.defaultParallelism).

    On Connect there is no SparkContext: `spark.default.parallelism` when the server sets it, else the
    number of partitions Spark gives a `range` (the same default: one tiny job, asked once per session)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    key = session_key(spark)
    if key not in _parallelism:
        configured = spark.conf.get("spark.default.parallelism", None)
        if configured:
            _parallelism[key] = int(configured)
        else:
            from pyspark.sql import functions as F

            last = spark.range(0, 1 << 20).select(F.spark_partition_id().alias("p")).agg(F.max("p")).collect()[0][0]
            _parallelism[key] = int(last) + 1
    return _parallelism[key]


def application_id(spark: SparkSession) -> str | None:
    """The Spark application's id (on Connect: the server's, from its conf)."""
    if not is_connect(spark):
        return str(spark.sparkContext.applicationId)
    return spark.conf.get("spark.app.id", None)


def master(spark: SparkSession) -> str | None:
    """The master URL the application runs on (on Connect: the server's)."""
    if not is_connect(spark):
        return str(spark.sparkContext.master)
    return spark.conf.get("spark.master", None)


def executors(spark: SparkSession) -> list[dict[str, Any]] | None:
    """Every executor the application had, alive or lost, with the tasks it ran (the driver in local mode).

    From Spark's status store, the data behind the UI's Executors tab and the REST API. None on
    Connect: the status store lives in the server's JVM and the protocol does not expose it."""
    if is_connect(spark):
        logger.info("executor list: not available through Spark Connect (recorded as null)")
        return None
    summaries = spark.sparkContext._jsc.sc().statusStore().executorList(False)
    rows = []
    for index in range(summaries.size()):
        summary = summaries.apply(index)
        rows.append({"id": summary.id(), "host": summary.hostPort(), "active": bool(summary.isActive()),
                     "completed_tasks": int(summary.completedTasks()), "failed_tasks": int(summary.failedTasks())})
    return sorted(rows, key=lambda row: (row["id"] != "driver", row["id"].zfill(8)))


def running_tasks(spark: SparkSession) -> int | None:
    """Task attempts still running anywhere in the application (classic), from the status store.

    A job reports failure before the attempts it kills have ended (a Python worker gets
    `spark.python.task.killTimeout` to stop), so whoever cleans up after a failed job waits for this to
    reach 0. None on Connect (no status store on the client)."""
    if is_connect(spark):
        return None
    summaries = spark.sparkContext._jsc.sc().statusStore().executorList(True)
    return sum(int(summaries.apply(index).activeTasks()) for index in range(summaries.size()))


def wait_until_no_task_runs(spark: SparkSession, timeout: float) -> int | None:
    """Wait (at most `timeout` seconds) until `running_tasks` is 0; returns what still runs then (0 when
    settled), or None on Connect, where nothing can be seen."""
    deadline = time.monotonic() + timeout
    running = running_tasks(spark)
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = running_tasks(spark)
    return running


def stage_tasks(spark: SparkSession, seen: set[int]) -> dict[int, tuple[int, int]] | None:
    """(tasks, completed tasks) of every stage active now or listed in `seen` (the active ids are added
    to it), from SparkContext's status tracker: driver-side bookkeeping, no job. None on Connect (the
    tracker lives in the server's JVM), so a caller shows stage-level progress only."""
    if is_connect(spark):
        return None
    tracker = spark.sparkContext.statusTracker()
    seen.update(tracker.getActiveStageIds())
    counts = {}
    for stage in seen:
        info = tracker.getStageInfo(stage)
        if info is not None:
            counts[stage] = (int(info.numTasks), int(info.numCompletedTasks))
    return counts


def cancel_all_jobs(spark: SparkSession) -> None:
    """Cancel every running and pending job of the application (classic) or the session (Connect)."""
    if is_connect(spark):
        spark.interruptAll()
    else:
        spark.sparkContext.cancelAllJobs()


def concurrently(spark: SparkSession, work: Callable[[Item], Result], items: Sequence[Item],
                 threads: int = FIT_THREADS) -> list[Result]:
    """`work` on every item from up to `threads` driver threads, results in the items' order. Spark runs
    the jobs of different threads at once, as MLlib's tuning does with `parallelism`: work made of many
    small jobs (an L-BFGS fit is one job per iteration) then fills the cores its own jobs leave idle. The
    threads carry the caller's job tags and local properties (classic) or its session and tags (Connect,
    whose ML calls need an active session in the calling thread).

    Ctrl-C: the caller waits in short slices, so the interrupt surfaces whichever thread the signal hit
    (a plain blocking wait sees it only when every item is done), then keeps cancelling the jobs the
    threads run or start, by a tag of this call's own, until every thread has ended: a fit that was
    between two of its jobs when the session's handler cancelled the running ones would go on."""
    from pyspark.util import inheritable_thread_target

    tag = f"fruitpipe-concurrently-{uuid.uuid4().hex[:12]}"

    def tagged(item: Item) -> Result:
        with job_tag(spark, tag):
            return work(item)

    target = inheritable_thread_target(spark)(tagged)
    pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(items))))
    futures = [pool.submit(target, item) for item in items]
    try:
        while not all(future.done() for future in futures):
            wait(futures, timeout=WAIT_SLICE_S)
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()  # not started yet: never starts
        while not all(future.done() for future in futures):
            _cancel_tagged(spark, tag)
            wait(futures, timeout=WAIT_SLICE_S)
        raise
    finally:
        pool.shutdown(wait=True)


def _cancel_tagged(spark: SparkSession, tag: str) -> None:
    """Cancel the running and pending jobs tagged `tag` (Connect: this session's operations with it)."""
    if is_connect(spark):
        spark.interruptTag(tag)
    else:
        spark.sparkContext.cancelJobsWithTag(tag)


@contextmanager
def job_tag(spark: SparkSession, tag: str) -> Iterator[None]:
    """Every Spark job (classic: SparkContext job tags) or operation (Connect: the session's tags) this
    thread starts inside carries `tag`."""
    add, remove = ((spark.addTag, spark.removeTag) if is_connect(spark)
                   else (spark.sparkContext.addJobTag, spark.sparkContext.removeJobTag))
    add(tag)
    try:
        yield
    finally:
        remove(tag)


def tagged_jobs(spark: SparkSession, tag: str) -> AbstractContextManager[None]:
    """`job_tag` for `task_cpu_seconds`: this run's jobs and none of a shared session's others, read from
    the status store. On Connect it does nothing: nothing here can read the server's status store."""
    return nullcontext() if is_connect(spark) else job_tag(spark, tag)


def task_cpu_seconds(spark: SparkSession, tag: str) -> float | None:
    """CPU seconds of the JVM task threads of the jobs tagged `tag`: Spark's `executorCpuTime` summed over
    their stages' attempts (failed attempts included: they were paid for), from the status store.

    Python workers' CPU is not in it (a task thread only waits on their socket). The status store is fed
    by the listener bus asynchronously, so the bus is drained first (bounded wait). None on Connect."""
    if is_connect(spark):
        logger.info("task CPU time: not available through Spark Connect (recorded as null)")
        return None
    context = spark.sparkContext._jsc.sc()
    try:  # void: it returns once drained and throws TimeoutException after 30 s
        context.listenerBus().waitUntilEmpty(30_000)
    except Exception:  # py4j's Py4JJavaError wrapping the timeout
        logger.warning("Spark's listener bus did not drain in 30 s: task CPU time may miss the last tasks")
    store = context.statusStore()
    jobs = store.jobsList(None)
    stages: set[int] = set()
    for index in range(jobs.size()):
        job = jobs.apply(index)
        if job.jobTags().contains(tag):
            ids = job.stageIds()
            stages.update(int(ids.apply(position)) for position in range(ids.size()))
    return sum(_stage_cpu_nanoseconds(store, stage) for stage in stages) / 1e9


def _stage_cpu_nanoseconds(store: Any, stage: int) -> int:
    """executorCpuTime of every attempt of one stage; 0 for a stage the store no longer keeps
    (spark.ui.retainedStages), logged."""
    try:
        last = store.lastStageAttempt(stage)
        earlier = [store.stageAttempt(stage, attempt, False)._1() for attempt in range(int(last.attemptId()))]
    except Exception:  # py4j's error for a NoSuchElementException: evicted from the store
        logger.warning("stage %d is no longer in Spark's status store: its task CPU time is not counted", stage)
        return 0
    return sum(int(attempt.executorCpuTime()) for attempt in (*earlier, last))


def cpu_meter(spark: SparkSession) -> Accumulator[float] | None:
    """A float accumulator the Python workers add their CPU seconds to (`executor.metering`); None on
    Connect, which has no accumulators."""
    if is_connect(spark):
        logger.info("Python worker CPU time: no accumulators through Spark Connect (recorded as null)")
        return None
    return spark.sparkContext.accumulator(0.0)


def ship_file(spark: SparkSession, path: str) -> str:
    """Make a driver-side file readable by every executor; returns the name `SparkFiles.get` resolves there.

    Classic: SparkContext.addFile. Connect: a file artifact of the session (the server adds it to the
    session's files, which its Python workers find with SparkFiles.get as well). Once per
    application/session: Spark refuses to re-add a path (and warns)."""
    key = (session_key(spark), path)
    if key not in _shipped:
        if is_connect(spark):
            spark.addArtifacts(path, file=True)
        else:
            spark.sparkContext.addFile(path)
        _shipped.add(key)
    return os.path.basename(path)


def parallelize(spark: SparkSession, table: pa.Table, schema: StructType, partitions: int) -> DataFrame:
    """`table` (its columns named and typed as `schema`'s) as a DataFrame of `partitions` contiguous
    slices (neighbouring rows stay together); the driver never turns it into Python rows.

    Classic: each slice goes to its partition as Arrow IPC bytes and becomes rows there (`i*n//p` cuts,
    as SparkContext.parallelize cuts a list). Connect has no RDDs: the table goes up as a local relation
    with its row index, and a range repartition on it gives contiguous slices in order."""
    import pyarrow as pa

    table = table.select(schema.fieldNames())
    if not is_connect(spark):
        rows, count = table.num_rows, max(1, partitions)
        slices = [_ipc_bytes(table.slice(i * rows // count, (i + 1) * rows // count - i * rows // count))
                  for i in range(count)]
        return spark.createDataFrame(spark.sparkContext.parallelize(slices, count).flatMap(_ipc_rows), schema)
    indexed = table.append_column(_INDEX, pa.array(range(table.num_rows), pa.int64()))
    frame = spark.createDataFrame(indexed)
    return frame.repartitionByRange(partitions, _INDEX).sortWithinPartitions(_INDEX).drop(_INDEX)


def _ipc_bytes(table: pa.Table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _ipc_rows(data: bytes) -> Iterator[tuple[Any, ...]]:
    """Executor side: one slice's rows as tuples."""
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    return zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True)


def quiet_logs(spark: SparkSession, level: str = "WARN") -> None:
    """The driver's log level (classic). A Connect server's logging is the server's business."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(level)


def driver_jvm_pid(spark: SparkSession) -> int:
    """The pid of the classic session's driver JVM."""
    _require_classic(spark, "the driver JVM's pid")
    jvm: Any = spark.sparkContext._jvm
    return int(jvm.java.lang.ProcessHandle.current().pid())


def java_model(spark: SparkSession, class_name: str, *args: Any) -> Any:
    """A JVM Spark ML model `class_name(*args)`, Python values (ML vectors, matrices) converted for py4j.

    Classic only: fruitpipe's own transforms are numpy, so only callers who ask for Spark's models need this."""
    _require_classic(spark, f"building {class_name.rsplit('.', 1)[-1]}")
    from pyspark.ml.common import _py2java

    sc = spark.sparkContext
    java_class: Any = sc._jvm
    for part in class_name.split("."):
        java_class = getattr(java_class, part)
    return java_class(*(_py2java(sc, arg) for arg in args))


def _require_classic(spark: SparkSession, what: str) -> None:
    if is_connect(spark):
        raise ValueError(f"{what} {CONNECT_ONLY_CLASSIC}")
