"""Listing at scale (issue 15): `sources.list_images` over a million S3 keys, its time and the driver's
peak memory (`python -m fruitpipe.benchmark.listing --keys 1000000`).

The bucket is an in-process stand-in for S3's `list_objects_v2` (prefix, delimiter, 1,000-key pages,
continuation tokens) whose keys are computed from their index, so the stand-in holds no key in memory
and the process's memory is the listing's own. (moto holds every key as a Python object and lists a
page in time linear in the bucket: a million keys there takes hours, measuring moto.) The layout is
Fruits 360: Training/ and Test/ x 131 class folders, so the fanned-out listing (one paginated chain per
class folder, 16 threads) runs as on S3. Memory is sampled in a thread (RSS, every 50 ms), after a small
listing has loaded what any listing needs (imports, threads); the baseline
in the same run is the same listing turned into the Python tuples (path, label, split, key, version)
the driver held before the listing became Arrow.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from fruitpipe.batch import sources
from fruitpipe.benchmark.memory import MB
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

SPLITS = ("Test", "Training")  # sorted, as S3 lists them
CLASSES = 131
PAGE = 1000
PREFIX = "fruits/"


@dataclass(frozen=True)
class Keys:
    """`count` keys `fruits/<Split>/<Class>/r_<n>_100.jpg`, spread evenly over splits x classes, in S3's
    (lexicographic) order, each computed from its index."""

    count: int

    @property
    def folders(self) -> list[str]:
        return [f"{PREFIX}{split}/Class {index:03d}/" for split in SPLITS for index in range(CLASSES)]

    def per_folder(self, folder: int) -> int:
        folders = len(SPLITS) * CLASSES
        return self.count // folders + (1 if folder < self.count % folders else 0)

    def key(self, folder: int, number: int) -> str:
        return f"{self.folders[folder]}r_{number:07d}_100.jpg"

    def entries(self, prefix: str, delimiter: str | None) -> Iterator[tuple[bool, str]]:
        """(is a common prefix, name) below `prefix` in order, as a delimiter listing groups them."""
        last = None
        for index, folder in enumerate(self.folders):
            if folder.startswith(prefix):
                rest = folder[len(prefix):]
                if delimiter and rest:  # the folder lies below: its keys group into a common prefix
                    common = prefix + rest.split(delimiter, 1)[0] + delimiter
                    if common != last:
                        last = common
                        yield True, common
                    continue
                yield from ((False, self.key(index, number)) for number in range(self.per_folder(index)))
            elif prefix.startswith(folder):
                yield from ((False, key) for key in (self.key(index, n) for n in range(self.per_folder(index)))
                            if key.startswith(prefix))


class StubS3:
    """`list_objects_v2` and its paginator over `Keys`, as boto3 returns them (dicts, 1,000 a page)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.pages = 0
        self.listings: dict[tuple[str, str | None], list[tuple[bool, str]]] = {}
        self.lock = threading.Lock()

    def list_objects_v2(self, Bucket: str, Prefix: str = "", Delimiter: str | None = None,  # noqa: N803
                        ContinuationToken: str | None = None, **_: Any) -> dict[str, Any]:  # noqa: N803
        start = int(ContinuationToken or 0)
        request = (Prefix, Delimiter)
        with self.lock:
            entries = self.listings.get(request)
        if entries is None:  # a listing's entries, made once and dropped after its last page (~4k keys a folder)
            entries = list(itertools.islice(self.keys.entries(Prefix, Delimiter), 0, None if Delimiter or
                                            Prefix != PREFIX else PAGE + 1))
        page_entries = entries[start:start + PAGE]
        truncated = start + PAGE < len(entries)
        with self.lock:
            self.pages += 1
            if truncated:
                self.listings[request] = entries
            else:
                self.listings.pop(request, None)
        contents = [{"Key": name, "Size": 5000 + len(name), "ETag": f'"{zlib.crc32(name.encode()):08x}"'}
                    for is_prefix, name in page_entries if not is_prefix]
        page: dict[str, Any] = {"Contents": contents,
                                "CommonPrefixes": [{"Prefix": name} for is_prefix, name in page_entries if is_prefix]}
        if truncated:
            page |= {"IsTruncated": True, "NextContinuationToken": str(start + PAGE)}
        return page

    def get_paginator(self, name: str) -> StubPaginator:
        return StubPaginator(self)


@dataclass(frozen=True)
class StubPaginator:
    client: StubS3

    def paginate(self, **request: Any) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self.client.list_objects_v2(**request, **({"ContinuationToken": token} if token else {}))
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]


@dataclass(frozen=True)
class StubStore(Store):
    """A Store whose S3 client is the stand-in."""

    stub: StubS3 | None = None

    def client(self) -> Any:
        return self.stub


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss / MB)


def measure(count: int) -> dict[str, Any]:
    from fruitpipe.benchmark.memory import PeakRss

    sources.list_images(StubStore(stub=StubS3(Keys(5000))), f"s3://bench/{PREFIX}")  # imports, threads, caches
    stub = StubS3(Keys(count))
    store = StubStore(stub=stub)
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    with PeakRss(os.getpid(), interval_s=0.05) as peak:
        listing = sources.list_images(store, f"s3://bench/{PREFIX}")
    seconds = time.perf_counter() - started
    listing_peak = peak.result()["total"]
    held = rss_mb()
    table_mb = listing.table.nbytes / MB
    gc.collect()
    python_before = rss_mb()
    rows = list(zip(*(listing.table.column(name).to_pylist() for name in sources.LISTING_SCHEMA.names), strict=True))
    python_mb = rss_mb() - python_before
    result = {
        "keys": count, "listed": listing.count, "pages": stub.pages, "seconds": round(seconds, 2),
        "rss_before_mb": round(before, 1), "peak_rss_mb": round(listing_peak, 1),
        "peak_added_mb": round(listing_peak - before, 1), "held_after_mb": round(held - before, 1),
        "arrow_table_mb": round(table_mb, 1), "arrow_bytes_per_key": round(table_mb * MB / max(1, count), 1),
        "peak_added_bytes_per_key": round((listing_peak - before) * MB / max(1, count), 1),
        "baseline_python_tuples_mb": round(python_mb, 1),
        "baseline_python_bytes_per_key": round(python_mb * MB / max(1, count), 1),
        "python_over_arrow": round(python_mb / table_mb, 2) if table_mb else None,
    }
    del rows
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fruitpipe.benchmark.listing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = measure(args.keys)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
