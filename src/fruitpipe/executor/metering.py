"""CPU seconds of a Python worker's `mapInArrow` body, added to a Spark accumulator.

Spark's task metrics (`executorCpuTime`) count the JVM task thread only; the work fruitpipe does in
Python workers (reading, decoding, ONNX inference) is invisible to them. The body's process CPU time
(every thread of the worker process: read threads and the inference engine's threads alike) from its
first to its last batch goes to the accumulator, which Spark merges on the driver for successful task
attempts only. Not counted: the worker's start (fork, pyspark's own imports and deserialisation before
the body runs) and failed attempts.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pyarrow as pa

Body = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


class Meter(Protocol):
    """What a worker needs of pyspark's Accumulator: `add` (so this module imports no pyspark)."""

    def add(self, term: Any) -> None: ...


def cpu_metered(meter: Meter, body: Body, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`body(batches)`, its process CPU seconds added to `meter` when it ends (or is closed early)."""
    started = time.process_time()
    try:
        yield from body(batches)
    finally:
        meter.add(time.process_time() - started)
