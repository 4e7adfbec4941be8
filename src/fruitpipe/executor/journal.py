"""The run journal's executor side: what a task featurized is written down as it goes, once per batch.

Each featurized batch becomes one small Parquet segment under the pass's folder, written once and
atomically (`Store.write_bytes`: temp + rename locally, one PUT on S3), named by partition, attempt and
batch, so a retried task first reads what its earlier attempts wrote and skips those images: at most the
batch in flight is redone. Reads that failed for a passing reason go to a separate folder (reported,
never remembered as done). The driver's side (which images to featurize, which rows stand) is
`fruitpipe.batch.journal`.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from fruitpipe import faults, storage
from fruitpipe.executor.worker import (
    ERROR_REASON,
    ERROR_STAGE,
    SAME_AS,
    SHA256,
    VIEW,
    FeaturizeTask,
    featurize_partition,
    is_transient,
)
from fruitpipe.storage import Store

KEY, VERSION = "key", "version"
OUTCOME = "outcome"
FEATURIZED, REJECTED, SAME, TRANSIENT = "featurized", "rejected", "same", "transient"
SEGMENT_FIELDS = (
    pa.field(KEY, pa.string()), pa.field(VERSION, pa.string()), pa.field("path", pa.string()),
    pa.field("label", pa.string()), pa.field("split", pa.string()), pa.field(SHA256, pa.string()),
    pa.field(SAME_AS, pa.string()), pa.field(VIEW, pa.int32()), pa.field("width", pa.int32()),
    pa.field("height", pa.int32()), pa.field("features", pa.list_(pa.float32())),
    pa.field(ERROR_STAGE, pa.string()), pa.field(ERROR_REASON, pa.string()),
)
SEGMENT_SCHEMA = pa.schema(SEGMENT_FIELDS)
SUMMARY_SCHEMA = pa.schema([pa.field(KEY, pa.string()), pa.field(OUTCOME, pa.string())])
# the rows a run's current state is made of: the segment columns but the alias (resolved away)
CURRENT_COLUMNS = tuple(f.name for f in SEGMENT_FIELDS if f.name != SAME_AS)


@dataclass(frozen=True)
class JournalTask:
    """Where this pass writes; small and picklable, built on the driver."""

    segments: str  # folder of this pass's segments
    transient: str  # folder of this pass's passing read failures
    store: Store = field(default_factory=Store)


def segment_name(partition: int, attempt: int, batch: int) -> str:
    return f"p{partition:05d}-a{attempt:02d}-b{batch:05d}.parquet"


def write_table(store: Store, uri: str, table: pa.Table) -> None:
    """One Parquet file, written whole (never seen half-written)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_bytes(uri, buffer.getvalue())


def read_table(store: Store, uri: str, columns: Iterable[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(store.read_bytes(uri)), columns=None if columns is None else list(columns))


def journal_partition(task: FeaturizeTask, journal: JournalTask,
                      batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: featurize (task.identify), write each batch as a segment, yield (key, outcome)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition, attempt = (context.partitionId(), context.attemptNumber()) if context else (0, 0)
    done = _written_before(journal, partition) if attempt else set()
    if done:
        batches = (batch.filter(pa.array([key not in done for key in batch.column(KEY).to_pylist()]))
                   for batch in batches)
    for index, batch in enumerate(featurize_partition(task, batches)):
        transient = [is_transient(stage, reason) for stage, reason
                     in zip(batch.column(ERROR_STAGE).to_pylist(), batch.column(ERROR_REASON).to_pylist(),
                            strict=True)]
        name = segment_name(partition, attempt, index)
        rows = pa.Table.from_batches([batch]).select([f.name for f in SEGMENT_FIELDS]).cast(SEGMENT_SCHEMA)
        if any(transient):
            write_table(journal.store, storage.join(journal.transient, name), rows.filter(pa.array(transient)))
        write_table(journal.store, storage.join(journal.segments, name),
                    rows.filter(pa.array([not flag for flag in transient])))
        if attempt == 0 and partition == 0:
            faults.reached("worker-after-segment", index + 1)
        if faults.armed("driver-after-segments"):
            faults.reached("driver-after-segments", min(faults.armed("driver-after-segments") or 0,
                                                        len(journal.store.list_tree(journal.segments))))
        yield _summary(batch, transient)


def _written_before(journal: JournalTask, partition: int) -> set[str]:
    """Keys an earlier attempt of this partition wrote down in this pass (its segments and failed reads)."""
    prefix = f"p{partition:05d}-"
    keys: set[str] = set()
    for folder in (journal.segments, journal.transient):
        for name in journal.store.list_tree(folder):
            if name.startswith(prefix):
                keys.update(read_table(journal.store, storage.join(folder, name), [KEY]).column(KEY).to_pylist())
    return keys


def _summary(batch: pa.RecordBatch, transient: list[bool]) -> pa.RecordBatch:
    """One (key, outcome) row per photo of the batch (view 0)."""
    keys, outcomes = [], []
    columns = zip(batch.column(KEY).to_pylist(), batch.column(VIEW).to_pylist(), batch.column(SAME_AS).to_pylist(),
                  batch.column(ERROR_STAGE).to_pylist(), transient, strict=True)
    for key, view, same_as, stage, passing in columns:
        if view == 0:
            keys.append(key)
            outcomes.append(SAME if same_as else TRANSIENT if passing else REJECTED if stage else FEATURIZED)
    return pa.RecordBatch.from_arrays([pa.array(keys, pa.string()), pa.array(outcomes, pa.string())],
                                      schema=SUMMARY_SCHEMA)


SEGMENT_COLUMN, SOURCE_VERSION = "segment", "source_version"
PLAN_SCHEMA = pa.schema([pa.field(SEGMENT_COLUMN, pa.string()), pa.field(KEY, pa.string()),
                         pa.field(SOURCE_VERSION, pa.string()), pa.field(VERSION, pa.string()),
                         pa.field("path", pa.string()), pa.field("label", pa.string()),
                         pa.field("split", pa.string())])
CURRENT_SCHEMA = pa.schema([SEGMENT_SCHEMA.field(name) for name in CURRENT_COLUMNS])


@dataclass(frozen=True)
class CurrentTask:
    """Which store the segments are in; the plan rows say which rows of which segment stand."""

    store: Store = field(default_factory=Store)


def read_current(task: CurrentTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: plan rows (segment, key, source_version, version, path, label, split) in, sorted by
    segment; each segment read once, its planned rows (every view) out, under the listing's current
    version, path, label and split."""
    for batch in batches:
        plan = pa.Table.from_batches([batch])
        segments = plan.column(SEGMENT_COLUMN).to_pylist()
        start = 0
        while start < len(segments):
            end = start
            while end < len(segments) and segments[end] == segments[start]:
                end += 1
            yield from _planned_rows(task, plan.slice(start, end - start))
            start = end


def _planned_rows(task: CurrentTask, plan: pa.Table) -> Iterator[pa.RecordBatch]:
    segment = read_table(task.store, plan.column(SEGMENT_COLUMN)[0].as_py(), CURRENT_COLUMNS)
    wanted = {(key, version): index for index, (key, version) in enumerate(
        zip(plan.column(KEY).to_pylist(), plan.column(SOURCE_VERSION).to_pylist(), strict=True))}
    rows, plans = [], []
    for row, pair in enumerate(zip(segment.column(KEY).to_pylist(), segment.column(VERSION).to_pylist(),
                                   strict=True)):
        if pair in wanted:
            rows.append(row)
            plans.append(wanted[pair])
    if not rows:
        return
    picked = segment.take(pa.array(rows, pa.int64()))
    current = plan.take(pa.array(plans, pa.int64()))
    for name in (VERSION, "path", "label", "split"):
        picked = picked.set_column(picked.schema.get_field_index(name), name, current.column(name))
    yield from picked.cast(CURRENT_SCHEMA).to_batches()


@dataclass(frozen=True)
class CompactTask:
    """Where the compacted segments go (one per partition of the current rows)."""

    folder: str
    store: Store = field(default_factory=Store)


def write_compacted(task: CompactTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: a partition of the current rows written as one segment; yields its row count."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition, attempt = (context.partitionId(), context.attemptNumber()) if context else (0, 0)
    table = pa.Table.from_batches(list(batches), schema=CURRENT_SCHEMA)
    if table.num_rows:
        rows = table.append_column(pa.field(SAME_AS, pa.string()), pa.nulls(table.num_rows, pa.string()))
        write_table(task.store, storage.join(task.folder, segment_name(partition, attempt, 0)),
                    rows.select([f.name for f in SEGMENT_FIELDS]).cast(SEGMENT_SCHEMA))
    yield pa.RecordBatch.from_pylist([{"rows": table.num_rows}], schema=pa.schema([pa.field("rows", pa.int64())]))
