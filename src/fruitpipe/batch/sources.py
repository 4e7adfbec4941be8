"""Images -> DataFrame of (path, label, split): listing on the driver, partitions sized for the cores.

Two layouts: Fruits 360 (`<Split>/<Class>/img.jpg`, Split in Training/Test/...) and flat
(`<Class>/img.jpg`, no split). Bytes are not read here: executors read them.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StringType, StructField, StructType

from fruitpipe import sparkapi, storage
from fruitpipe.config import IMAGE_EXTENSIONS, ExecutorSettings
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

SPLIT_FOLDERS = {"training", "train", "test", "validation", "val"}
SCHEMA = StructType([
    StructField("path", StringType(), False),
    StructField("label", StringType(), True),
    StructField("split", StringType(), True),
])
ROWS_PER_PARTITION = ExecutorSettings.rows_per_partition  # amortises task start, small enough to balance 2 cores
TASKS_PER_CORE = 2
LIST_STAGE = "list"


LISTING_SCHEMA = pa.schema([pa.field("path", pa.string(), False), pa.field("label", pa.string()),
                            pa.field("split", pa.string()), pa.field("key", pa.string()),
                            pa.field("version", pa.string())])


@dataclass(frozen=True)
class ImageListing:
    """What the driver found: one row per image in `table` (LISTING_SCHEMA: its URI, class and split, key =
    its relative path (NFC), version), and the layout it saw. Arrow, not Python rows: a million images cost
    the table's bytes (~150 B each), not a million tuples. Key and version are null in a listing made
    from rows (`of_rows`: evaluate's selection)."""

    root: str
    layout: str  # "fruits360" | "flat"
    table: pa.Table
    rejected: tuple[tuple[str, str], ...] = ()  # (path, reason): listed but unsafe (storage.unsafe_reason)

    @classmethod
    def of_rows(cls, root: str, layout: str, rows: Sequence[tuple[str, str | None, str | None]]) -> ImageListing:
        paths, labels, splits = (list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [])
        nulls = pa.nulls(len(paths), pa.string())
        return cls(root, layout, pa.table([pa.array(paths, pa.string()), pa.array(labels, pa.string()),
                                           pa.array(splits, pa.string()), nulls, nulls], schema=LISTING_SCHEMA))

    @property
    def count(self) -> int:
        """Images to featurize (rejected ones not included)."""
        return int(self.table.num_rows)

    @property
    def listed(self) -> int:
        """Every image file found, rejected ones included."""
        return self.count + len(self.rejected)

    @property
    def labels(self) -> list[str]:
        return sorted(label for label in pc.unique(self.table.column("label")).to_pylist() if label is not None)

    @property
    def rows(self) -> list[tuple[str, str | None, str | None]]:
        """(path, label, split) per image as Python tuples, for callers that need them one by one on a small
        input (evaluate's selection, tests); the run itself works on `table`."""
        columns = (self.table.column(name).to_pylist() for name in ("path", "label", "split"))
        return list(zip(*columns, strict=True))


def list_images(store: Store, uri: str) -> ImageListing:
    """List jpg/jpeg/png files below `uri`; ValueError for a missing or image-less folder."""
    found = store.list_table(uri, IMAGE_EXTENSIONS)
    if not found.num_rows:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {storage.redact(uri)}")
    safe, rejected = _safe_rows(found)
    files = found.filter(safe) if rejected else found  # no copy of the listing in the usual case
    if rejected:
        logger.warning("%d listed files rejected (e.g. %s: %s)", len(rejected), *rejected[0])
    if not files.num_rows:
        raise ValueError(f"no usable images under {storage.redact(uri)}: all {len(rejected)} rejected "
                         f"({rejected[0][1]})")
    relatives = files.column("relative")
    layout = detect_layout(_chunks(relatives))
    labels: list[pa.Array] = []
    splits: list[pa.Array] = []
    for chunk in _chunks(relatives):
        pairs = [label_and_split(relative, layout) for relative in chunk]
        labels.append(pa.array([label for label, _ in pairs], pa.string()))
        splits.append(pa.array([split for _, split in pairs], pa.string()))
    table = pa.table([files.column("uri"), pa.chunked_array(labels, pa.string()), pa.chunked_array(splits, pa.string()),
                      relatives, files.column("version")], schema=LISTING_SCHEMA)
    logger.info("listed %d images in %s layout under %s", table.num_rows, layout, storage.redact(uri))
    return ImageListing(uri, layout, table, rejected)


def _chunks(column: pa.ChunkedArray) -> Iterator[list[str]]:
    """A string column as Python lists of at most `storage.LISTING_CHUNK` values."""
    for start in range(0, len(column), storage.LISTING_CHUNK):
        yield column.slice(start, storage.LISTING_CHUNK).to_pylist()


def _safe_rows(found: pa.Table) -> tuple[pa.Array, tuple[tuple[str, str], ...]]:
    """(a mask of the listed files whose relative path is safe, (uri, reason) of the others)."""
    mask: list[bool] = []
    rejected: list[tuple[str, str]] = []
    for uris, relatives in zip(_chunks(found.column("uri")), _chunks(found.column("relative")), strict=True):
        for full, relative in zip(uris, relatives, strict=True):
            reason = storage.unsafe_reason(relative)
            mask.append(not reason)
            if reason:
                rejected.append((full, reason))
    return pa.array(mask, pa.bool_()), tuple(rejected)


def detect_layout(relatives: Iterable[list[str]]) -> str:
    """Fruits 360 when every image sits in <Split>/<Class>/, otherwise flat."""
    def in_split(relative: str) -> bool:
        parts = relative.split("/")
        return len(parts) >= 3 and parts[0].lower() in SPLIT_FOLDERS

    return "fruits360" if all(in_split(relative) for chunk in relatives for relative in chunk) else "flat"


def label_and_split(relative: str, layout: str) -> tuple[str | None, str | None]:
    parts = relative.split("/")
    if layout == "fruits360":
        return parts[1], parts[0]
    return (parts[0] if len(parts) >= 2 else None), None


def partition_count(images: int, cores: int, rows_per_partition: int = ROWS_PER_PARTITION) -> int:
    """At least TASKS_PER_CORE tasks per core for balance, more for big inputs; never above images."""
    wanted = max(cores * TASKS_PER_CORE, math.ceil(images / rows_per_partition))
    return max(1, min(images, wanted))


def to_dataframe(spark: SparkSession, listing: ImageListing, rows_per_partition: int = ROWS_PER_PARTITION) -> DataFrame:
    """Contiguous slices of the listing, one per partition (neighbouring files stay together)."""
    partitions = partition_count(listing.count, max(1, sparkapi.default_parallelism(spark)), rows_per_partition)
    return sparkapi.parallelize(spark, listing.table.select(SCHEMA.fieldNames()), SCHEMA, partitions)
