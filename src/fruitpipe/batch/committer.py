"""Dataset writes to any storage: a Spark Python Data Source with a driver-side commit.

Each task attempt stages one part file under `<dataset>/_temporary/<run_id>/`, named by its task
attempt id. Only the driver publishes, and only the files that successful attempts reported, one
per partition, so a retried or speculative attempt never duplicates rows; abort removes the
staging area. Readers (pyarrow, Spark, pandas) ignore `_`-prefixed folders meanwhile. Publishing is
one move per part, not one atomic step: a driver that dies mid-commit leaves a run without
`_SUCCESS`, which is how readers tell a complete output (see sinks.commit).
"""
from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.datasource import DataSource, DataSourceArrowWriter, WriterCommitMessage
from pyspark.sql.types import StructType

from fruitpipe import sparkapi, storage
from fruitpipe.config import S3Options
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)
FORMAT_NAME = "fruitpipe_staged"
EXTENSIONS = {"parquet": "parquet", "csv": "csv"}


@dataclass
class StagedPart(WriterCommitMessage):
    """What a successful task attempt reports: where its part is staged and how many rows it has."""

    partition: int
    staged: str
    rows: int


class StagedDataSource(DataSource):
    """`df.write.format("fruitpipe_staged").option("run_id", ...).save(uri)`; options:
    format (parquet | csv), run_id, s3 (`S3Options.to_wire`; absent: the default AWS chain) and
    part_tag (parts added next to a dataset's existing ones are named with it; see `part_name`)."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def writer(self, schema: StructType, overwrite: bool) -> StagedWriter:
        if overwrite:  # old parts would survive next to new ones: fruitpipe clears an output before writing
            raise ValueError(f"{FORMAT_NAME} appends only; remove the old dataset first")
        return StagedWriter(dict(self.options), schema)


class StagedWriter(DataSourceArrowWriter):
    def __init__(self, options: dict[str, str], schema: StructType) -> None:
        self.target = options["path"]
        self.run_id = options["run_id"]
        self.format = options.get("format", "parquet")
        if self.format not in EXTENSIONS:
            raise ValueError(f"unknown format {self.format!r}")
        self.store = Store(S3Options.from_wire(options["s3"])) if options.get("s3") else Store()
        self.schema = schema
        self.part_tag = options.get("part_tag", "")

    @property
    def staging(self) -> str:
        return staging_folder(self.target, self.run_id)

    def final_name(self, partition: int) -> str:
        return part_name(self.target, partition, self.format, self.part_tag)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> StagedPart:
        batches = list(iterator)
        table = pa.Table.from_batches(batches) if batches else empty_table(self.schema)
        return stage_part(self.store, self.target, self.run_id, self.format, table)

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        """Publish one staged part per partition (empty ones skipped unless all are), then clean up."""
        publish(self.store, self.target, self.run_id, self.format, [m for m in messages if isinstance(m, StagedPart)],
                empty_table(self.schema).schema, self.part_tag)

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        logger.warning("write to %s aborted; removing staged parts", storage.redact(self.target))
        remove_staging(self.store, self.target, self.run_id)


def staging_folder(target: str, run_id: str) -> str:
    return storage.join(target, "_temporary", run_id)


def stage_part(store: Store, target: str, run_id: str, fmt: str, table: pa.Table) -> StagedPart:
    """Write this task attempt's part under the staging folder (executor side)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        raise RuntimeError("stage_part runs inside a Spark task (it names the part by partition and attempt)")
    partition, attempt = context.partitionId(), context.taskAttemptId()
    staged = storage.join(staging_folder(target, run_id), f"part-{partition:05d}-attempt-{attempt}.{EXTENSIONS[fmt]}")
    store.write_bytes(staged, encode(table, fmt))
    return StagedPart(partition, staged, table.num_rows)


def publish(store: Store, target: str, run_id: str, fmt: str, staged: list[StagedPart], schema: pa.Schema,
            part_tag: str = "") -> None:
    """Driver side: one staged part per partition (the first reported; empty ones skipped unless all
    are) moved to its final name, then the staging removed. With `part_tag` the parts join a dataset that
    exists already: named with the tag (no clash with its parts), and no empty part for no rows."""
    parts: dict[int, StagedPart] = {}
    for part in staged:
        parts.setdefault(part.partition, part)
    published = [part for part in parts.values() if part.rows] or ([] if part_tag else list(parts.values())[:1])
    for part in sorted(published, key=lambda p: p.partition):
        store.move(part.staged, part_name(target, part.partition, fmt, part_tag))
    if not parts and not part_tag:  # no partitions at all: still leave a readable, empty dataset
        _write_empty_table(store, target, schema, fmt)
    remove_staging(store, target, run_id)
    logger.info("published %d parts, %d rows to %s", max(1, len(published)),
                sum(p.rows for p in parts.values()), storage.redact(target))


def remove_staging(store: Store, target: str, run_id: str) -> None:
    """This run's staging area, and the `_temporary` folder once no other run uses it."""
    store.remove_tree(staging_folder(target, run_id))
    parent = storage.join(target, "_temporary")
    if not store.list_tree(parent):
        store.remove_tree(parent)


SETTLE_SECONDS = 60.0  # the longest a failed job's killed attempts are waited for
CONNECT_GRACE_SECONDS = 3.0  # Connect cannot see tasks: Spark's Python kill timeout (2 s) and a margin


def discard_failed_write(spark: SparkSession, store: Store, target: str, run_id: str) -> None:
    """Remove a failed write's staging once no attempt can still add to it.

    Spark reports a job's failure while the attempts it kills may still be running, and one of them can
    stage its part after a first clean-up (seen in CI: a `part-00002-attempt-N` left behind). So: clean
    up, wait until no task runs (classic; on Connect a fixed grace), clean up again."""
    remove_staging(store, target, run_id)
    running = sparkapi.wait_until_no_task_runs(spark, SETTLE_SECONDS)
    if running is None:
        time.sleep(CONNECT_GRACE_SECONDS)
    elif running:
        logger.warning("%d task attempts still running after %.0f s; staging under %s may keep their parts",
                       running, SETTLE_SECONDS, storage.redact(target))
    remove_staging(store, target, run_id)


BatchTransform = Callable[[pa.RecordBatch], pa.RecordBatch]
STAGED_SCHEMA = "partition int, staged string, rows long"
STAGED_ARROW = pa.schema([("partition", pa.int32()), ("staged", pa.string()), ("rows", pa.int64())])


@dataclass(frozen=True)
class StageTransformed:
    """mapInArrow body: transform every batch, stage the partition's part, report it (one row)."""

    target: str
    run_id: str
    fmt: str
    store: Store
    transform: BatchTransform
    schema: pa.Schema  # of the transformed batches (an empty partition still gets a typed table)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches([self.transform(batch) for batch in batches], schema=self.schema)
        part = stage_part(self.store, self.target, self.run_id, self.fmt, table)
        yield pa.RecordBatch.from_pylist([{"partition": part.partition, "staged": part.staged, "rows": part.rows}],
                                         schema=STAGED_ARROW)


def write_transformed(df: DataFrame, target: str, run_id: str, store: Store, transform: BatchTransform,
                      fmt: str = "parquet", part_tag: str = "") -> None:
    """The same staged commit as the Data Source, fused with a per-batch transform in ONE Python pass.

    For the features dataset (projection + write): the vectors cross from the JVM to Python once instead
    of twice, and no Data Source planning process starts (its first use costs ~3 s per application);
    measured in docs/performance.md. Only successful task attempts' reports reach `collect`, so each
    partition is published once; any failure removes the staging area."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = transform(pa.RecordBatch.from_pylist([], schema=to_arrow_schema(df.schema))).schema
    task = StageTransformed(target, run_id, fmt, store, transform, schema)
    try:
        rows = df.mapInArrow(task, STAGED_SCHEMA).collect()
        publish(store, target, run_id, fmt, [StagedPart(r["partition"], r["staged"], r["rows"]) for r in rows], schema,
                part_tag)
    except BaseException:
        discard_failed_write(df.sparkSession, store, target, run_id)
        raise


def part_name(target: str, partition: int, fmt: str, part_tag: str = "") -> str:
    """`part-00003.parquet`; with a tag (a pass appending to the dataset) `part-00003-<tag>.parquet`."""
    tag = f"-{part_tag}" if part_tag else ""
    return storage.join(target, f"part-{partition:05d}{tag}.{EXTENSIONS[fmt]}")


def empty_table(schema: StructType) -> pa.Table:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema).empty_table()


def write_empty(store: Store, target: str, schema: StructType, fmt: str = "parquet") -> None:
    """A readable dataset with no rows (one empty part), written by the driver: no Spark job needed."""
    _write_empty_table(store, target, empty_table(schema).schema, fmt)


def _write_empty_table(store: Store, target: str, schema: pa.Schema, fmt: str) -> None:
    store.write_bytes(part_name(target, 0, fmt), encode(schema.empty_table(), fmt))


def encode(table: pa.Table, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        # dictionary encoding only for columns that repeat (paths, labels): on float vectors it made
        # files 1.5x larger and encoding 4x slower (measured on 10k feature rows, docs/performance.md)
        repeating = [f.name for f in table.schema if not pa.types.is_list(f.type) and not pa.types.is_floating(f.type)]
        pq.write_table(table, buffer, compression="zstd", use_dictionary=repeating)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, buffer)
    return buffer.getvalue()
