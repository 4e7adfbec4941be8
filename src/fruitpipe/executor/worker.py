"""The Python-worker side of featurization: Arrow batches of paths in, features out.

Per partition: a bounded thread pool reads and decodes the next chunk of images while ONNX
Runtime embeds the current one; the model session is created once per worker process.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from fruitpipe.config import DecodeLimits, ExecutorSettings
from fruitpipe.image.decode import DecodeError, decode_for_model
from fruitpipe.image.embed import embed
from fruitpipe.image.models import Preprocessing
from fruitpipe.runtime import Runtime
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

ERROR_STAGE, ERROR_REASON = "error_stage", "error_reason"
FIRST_CHUNK = 8  # images in a task's first chunk (the time to the first featurized batch), then batch_size
BATCH_LOG_ENV = "FRUITPIPE_BATCH_LOG"  # file to append one JSON line per featurized batch to (the benchmark's probe)


def output_fields(features_col: str) -> list[pa.Field]:
    """Columns featurization appends to its input (the Spark schema is derived from these)."""
    return [
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field(features_col, pa.list_(pa.float32())),
        pa.field(ERROR_STAGE, pa.string()),
        pa.field(ERROR_REASON, pa.string()),
    ]


@dataclass(frozen=True)
class FeaturizeTask:
    """What a worker needs; small and picklable, built on the driver."""

    model_file: str  # absolute path, or the name sparkapi.ship_file returned (addFile / Connect file artifact)
    preprocessing: Preprocessing
    runtime: Runtime
    feature_dim: int
    limits: DecodeLimits
    path_col: str
    output_col: str
    batch_size: int = ExecutorSettings.batch_size  # images read ahead per chunk; model calls: runtime.infer_batch
    read_threads: int = ExecutorSettings.read_threads
    threads: int = 1  # intra-op threads of the model (spark.task.cpus)
    store: Store = field(default_factory=Store)  # where the images are read from (pickled with the task)


@dataclass
class Loaded:
    """One input after reading and decoding: pixels, or the stage and reason it failed."""

    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    stage: str | None = None
    reason: str | None = None


def load_image(uri: str, task: FeaturizeTask) -> Loaded:
    """Read and decode one image; never raises (failures become a stage and a reason)."""
    try:
        data = task.store.read_bytes(uri, limit=task.limits.max_bytes)
    except Exception as exc:
        return Loaded(stage="read", reason=f"{type(exc).__name__}: {exc}")
    try:
        pixels, (width, height) = decode_for_model(data, task.limits, task.preprocessing.input_size,
                                              task.preprocessing.resize)
    except DecodeError as exc:
        return Loaded(stage="decode", reason=str(exc))
    return Loaded(pixels=pixels, width=width, height=height)


def model_path(model_file: str) -> str:
    if os.path.isabs(model_file):
        return model_file
    from pyspark import SparkFiles

    return SparkFiles.get(model_file)


def featurize_partition(task: FeaturizeTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: every input row comes out once, with features or with an error."""
    onnx_path = model_path(task.model_file)
    log = BatchLog.from_environment()
    with ThreadPoolExecutor(max_workers=task.read_threads) as pool:
        pending: tuple[pa.RecordBatch, list[Future[Loaded]]] | None = None
        for chunk in _chunks(batches, task.batch_size):
            submitted = (chunk, [pool.submit(load_image, uri, task) for uri in chunk.column(task.path_col).to_pylist()])
            if pending is not None:
                yield log.record(_finish(task, onnx_path, *pending))
            pending = submitted
        if pending is not None:
            yield log.record(_finish(task, onnx_path, *pending))


class BatchLog:
    """When $FRUITPIPE_BATCH_LOG names a file, one JSON line per batch: wall time, pid, rows.

    The benchmark reads it for the time to the first featurized batch; otherwise it costs nothing."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    @classmethod
    def from_environment(cls) -> BatchLog:
        return cls(os.environ.get(BATCH_LOG_ENV) or None)

    def record(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.path:
            line = json.dumps({"time": time.time(), "pid": os.getpid(), "rows": batch.num_rows})
            with open(self.path, "a", encoding="utf-8") as handle:  # one short append: whole lines
                handle.write(line + "\n")
        return batch


def _chunks(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Slices of `size` rows, the first one at most FIRST_CHUNK: a task's first features leave sooner."""
    step = min(size, FIRST_CHUNK)
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            yield batch.slice(start, step)
            start, step = start + step, size


def _finish(task: FeaturizeTask, onnx_path: str, chunk: pa.RecordBatch,
            futures: list[Future[Loaded]]) -> pa.RecordBatch:
    loaded = [future.result() for future in futures]
    good = [i for i, item in enumerate(loaded) if item.pixels is not None]
    pixels = [item.pixels for item in loaded if item.pixels is not None]
    features = np.zeros((0, task.feature_dim), dtype=np.float32)
    if good:
        started = time.perf_counter()
        try:
            features = embed(np.stack(pixels), task.preprocessing, onnx_path, task.threads, task.runtime)
            _check_dim(features, task.feature_dim)
        except Exception as exc:  # a model failure rejects this chunk's images, with the reason
            for i in good:
                loaded[i] = Loaded(stage="embed", reason=f"{type(exc).__name__}: {exc}")
            good, features = [], np.zeros((0, task.feature_dim), dtype=np.float32)
        logger.debug("embedded %d images in %.3fs", len(good), time.perf_counter() - started)
    return _to_batch(chunk, loaded, good, features, task)


def _check_dim(features: np.ndarray, expected: int) -> None:
    if features.shape[1] != expected:
        raise ValueError(f"model returned {features.shape[1]} features, spec declares {expected}")


def _to_batch(chunk: pa.RecordBatch, loaded: list[Loaded], good: list[int], features: np.ndarray,
              task: FeaturizeTask) -> pa.RecordBatch:
    has_features = np.zeros(len(loaded), dtype=bool)
    has_features[good] = True
    lengths = np.where(has_features, task.feature_dim, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    vectors = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(features.reshape(-1), type=pa.float32()), mask=pa.array(~has_features)
    )
    columns = [*chunk.columns,
               pa.array([item.width for item in loaded], type=pa.int32()),
               pa.array([item.height for item in loaded], type=pa.int32()),
               vectors,
               pa.array([item.stage for item in loaded], type=pa.string()),
               pa.array([item.reason for item in loaded], type=pa.string())]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema([*chunk.schema, *output_fields(task.output_col)]))
