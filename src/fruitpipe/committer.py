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
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceArrowWriter, WriterCommitMessage
from pyspark.sql.types import StructType

from fruitpipe import storage
from fruitpipe.config import S3Options

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
    format (parquet | csv), run_id, and the S3 options endpoint_url / region / addressing_style."""

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
        self.s3 = S3Options(endpoint_url=options.get("endpoint_url") or None,
                            region=options.get("region") or None,
                            addressing_style=options.get("addressing_style") or None)
        self.schema = schema

    @property
    def staging(self) -> str:
        return storage.join(self.target, "_temporary", self.run_id)

    def final_name(self, partition: int) -> str:
        return part_name(self.target, partition, self.format)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> StagedPart:
        from pyspark import TaskContext

        storage.configure(self.s3)
        context = TaskContext.get()
        partition, attempt = context.partitionId(), context.taskAttemptId()
        batches = list(iterator)
        table = pa.Table.from_batches(batches) if batches else empty_table(self.schema)
        staged = storage.join(self.staging, f"part-{partition:05d}-attempt-{attempt}.{EXTENSIONS[self.format]}")
        storage.write_bytes(staged, encode(table, self.format))
        return StagedPart(partition, staged, table.num_rows)

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        """Publish one staged part per partition (empty ones skipped unless all are), then clean up."""
        storage.configure(self.s3)
        parts: dict[int, StagedPart] = {}
        for message in messages:
            if isinstance(message, StagedPart) and message.partition not in parts:
                parts[message.partition] = message
        published = [part for part in parts.values() if part.rows] or list(parts.values())[:1]
        for part in sorted(published, key=lambda p: p.partition):
            storage.move(part.staged, self.final_name(part.partition))
        if not parts:  # no partitions at all: still leave a readable, empty dataset
            write_empty(self.target, self.schema, self.format)
        self._remove_staging()
        logger.info("published %d parts, %d rows to %s", max(1, len(published)),
                    sum(p.rows for p in parts.values()), storage.redact(self.target))

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        storage.configure(self.s3)
        logger.warning("write to %s aborted; removing staged parts", storage.redact(self.target))
        self._remove_staging()

    def _remove_staging(self) -> None:
        """This run's staging area, and the `_temporary` folder once no other run uses it."""
        storage.remove_tree(self.staging)
        parent = storage.join(self.target, "_temporary")
        if not storage.list_tree(parent):
            storage.remove_tree(parent)


def part_name(target: str, partition: int, fmt: str) -> str:
    return storage.join(target, f"part-{partition:05d}.{EXTENSIONS[fmt]}")


def empty_table(schema: StructType) -> pa.Table:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema).empty_table()


def write_empty(target: str, schema: StructType, fmt: str = "parquet") -> None:
    """A readable dataset with no rows (one empty part), written by the driver: no Spark job needed."""
    storage.write_bytes(part_name(target, 0, fmt), encode(empty_table(schema), fmt))


def encode(table: pa.Table, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buffer, compression="zstd")
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, buffer)
    return buffer.getvalue()
