"""Parquet part files -> Arrow batches, read in executors through storage (local paths or s3://).

Spark's own Parquet reader goes through Hadoop, which has no S3 connector here; reading the part
files fruitpipe wrote with pyarrow keeps one code path for every location.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from fruitpipe.storage import Store

URI_COLUMN = "uri"


@dataclass(frozen=True)
class ReadTask:
    """Which columns to read; small and picklable, built on the driver."""

    columns: tuple[str, ...]
    store: Store = field(default_factory=Store)  # where the part files are (pickled with the task)


def read_parts(task: ReadTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: rows naming part files in, those files' rows (selected columns) out."""
    import pyarrow.parquet as pq

    for batch in batches:
        for uri in batch.column(URI_COLUMN).to_pylist():
            table = pq.read_table(io.BytesIO(task.store.read_bytes(uri)), columns=list(task.columns))
            yield from table.to_batches()
