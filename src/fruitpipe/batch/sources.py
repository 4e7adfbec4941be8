"""Images -> DataFrame of (path, label, split): listing on the driver, partitions sized for the cores.

Two layouts: Fruits 360 (`<Split>/<Class>/img.jpg`, Split in Training/Test/...) and flat
(`<Class>/img.jpg`, no split). Bytes are not read here: executors read them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ImageListing:
    """What the driver found: one (path, label, split) row per image, and the layout it saw."""

    root: str
    layout: str  # "fruits360" | "flat"
    rows: list[tuple[str, str | None, str | None]]
    rejected: tuple[tuple[str, str], ...] = ()  # (path, reason): listed but unsafe (storage.unsafe_reason)
    identities: tuple[tuple[str, str], ...] = ()  # (key, version) per row: the relative path (NFC) and its version

    @property
    def listed(self) -> int:
        """Every image file found, rejected ones included."""
        return len(self.rows) + len(self.rejected)

    @property
    def labels(self) -> list[str]:
        return sorted({label for _, label, _ in self.rows if label is not None})


def list_images(store: Store, uri: str) -> ImageListing:
    """List jpg/jpeg/png files below `uri`; ValueError for a missing or image-less folder."""
    found = store.list_versions(uri, IMAGE_EXTENSIONS)
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {storage.redact(uri)}")
    reasons = [storage.unsafe_reason(item.relative) for item in found]
    rejected = tuple((item.uri, reason) for item, reason in zip(found, reasons, strict=True) if reason)
    files = [item for item, reason in zip(found, reasons, strict=True) if not reason]
    if rejected:
        logger.warning("%d listed files rejected (e.g. %s: %s)", len(rejected), *rejected[0])
    if not files:
        raise ValueError(f"no usable images under {storage.redact(uri)}: all {len(rejected)} rejected "
                         f"({rejected[0][1]})")
    layout = detect_layout([item.relative for item in files])
    rows = [(item.uri, *label_and_split(item.relative, layout)) for item in files]
    identities = tuple((item.relative, item.version) for item in files)
    logger.info("listed %d images in %s layout under %s", len(rows), layout, storage.redact(uri))
    return ImageListing(uri, layout, rows, rejected, identities)


def detect_layout(relatives: list[str]) -> str:
    """Fruits 360 when every image sits in <Split>/<Class>/, otherwise flat."""
    def in_split(relative: str) -> bool:
        parts = relative.split("/")
        return len(parts) >= 3 and parts[0].lower() in SPLIT_FOLDERS

    return "fruits360" if all(in_split(relative) for relative in relatives) else "flat"


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
    partitions = partition_count(len(listing.rows), max(1, sparkapi.default_parallelism(spark)), rows_per_partition)
    return sparkapi.parallelize(spark, listing.rows, SCHEMA, partitions)
