"""The Python-worker side of featurization: Arrow batches of paths in, features out.

Per partition: a bounded thread pool reads and decodes the next chunk of images while ONNX
Runtime embeds the current one; the model session is created once per worker process.
With `augment` N, each image chosen by the task's augment column comes out N + 1 times, `view`
0 (the photo) to N (training-side shifts of the decoded image, deterministic per path and view, made
in the read threads); a rejected image comes out once, with its reason.
"""
from __future__ import annotations

import hashlib
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
from fruitpipe.image.embed import embed, holds
from fruitpipe.image.models import Preprocessing
from fruitpipe.image.shifts import DEFAULT_VIEWS, augmented_view
from fruitpipe.runtime import Runtime
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

ERROR_STAGE, ERROR_REASON = "error_stage", "error_reason"
# with `identify` (the run's journal): the bytes' sha256, and the version whose results stand for this one
# when the bytes are the same as that earlier version's (a touched file: no decode, no model call)
SHA256, SAME_AS = "sha256", "same_as"
PRIOR_SHA256, PRIOR_VERSION = "prior_sha256", "prior_version"  # optional input columns with `identify`
VIEW = "view"  # 0: the photo itself; 1..N: its augmented views
FIRST_CHUNK = 8  # images in a task's first chunk (the time to the first featurized batch), then batch_size
BATCH_LOG_ENV = "FRUITPIPE_BATCH_LOG"  # file to append one JSON line per featurized batch to (the benchmark's probe)


def output_fields(features_col: str, identify: bool = False) -> list[pa.Field]:
    """Columns featurization appends to its input (the Spark schema is derived from these)."""
    identity = [pa.field(SHA256, pa.string()), pa.field(SAME_AS, pa.string())] if identify else []
    return [*identity,
        pa.field(VIEW, pa.int32()),
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
    augment: int = 0  # augmented views per chosen image, besides the image itself
    augment_col: str | None = None  # boolean column choosing the images to augment; None: every image
    augment_families: tuple[str, ...] = DEFAULT_VIEWS  # the shift families views draw from (shifts.view_families)
    augment_strength: float = 1.0  # scales each family's strength in the views
    identify: bool = False  # hash the bytes read (sha256 column); skip images whose hash is their prior_sha256


@dataclass
class Loaded:
    """One input after reading and decoding: pixels, or the stage and reason it failed."""

    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    stage: str | None = None
    reason: str | None = None
    views: tuple[np.ndarray, ...] = ()  # augmented views 1..N of `pixels`
    sha256: str | None = None  # of the bytes read (with `identify`)
    same_as: str | None = None  # the earlier version with the same bytes: its results stand (nothing decoded)


def is_transient(stage: str | None, reason: str | None) -> bool:
    """A read that failed for a reason that may pass (network, throttling, permissions, a file gone
    since listing): not a verdict on the image, so a journal does not remember it. A file over the
    size limit is refused at reading too, and that is a verdict."""
    return stage == "read" and not (reason or "").startswith("ValueError")


def load_image(uri: str, task: FeaturizeTask, prior: tuple[str | None, str | None] = (None, None)) -> Loaded:
    """Read and decode one image; never raises (failures become a stage and a reason). With
    `task.identify`, the bytes are hashed, and bytes equal to `prior` (sha256, version) are not decoded."""
    try:
        data = task.store.read_bytes(uri, limit=task.limits.max_bytes)
    except Exception as exc:
        return Loaded(stage="read", reason=f"{type(exc).__name__}: {exc}")
    digest = hashlib.sha256(data).hexdigest() if task.identify else None
    if digest is not None and digest == prior[0]:
        return Loaded(sha256=digest, same_as=prior[1])
    try:
        pixels, (width, height) = decode_for_model(data, task.limits, task.preprocessing.input_size,
                                              task.preprocessing.resize)
    except DecodeError as exc:
        return Loaded(stage="decode", reason=str(exc), sha256=digest)
    return Loaded(pixels=pixels, width=width, height=height, sha256=digest)


def load_views(uri: str, task: FeaturizeTask, augment: bool,
               prior: tuple[str | None, str | None] = (None, None)) -> Loaded:
    """load_image, plus the image's augmented views when it is chosen (and was decoded)."""
    loaded = load_image(uri, task, prior)
    if augment and task.augment and loaded.pixels is not None:
        pixels = loaded.pixels
        loaded.views = tuple(augmented_view(pixels, uri, view, task.augment_families, task.augment_strength)
                             for view in range(1, task.augment + 1))
    return loaded


def _priors(chunk: pa.RecordBatch, task: FeaturizeTask) -> list[tuple[str | None, str | None]]:
    """(sha256, version) of each row's earlier version, when the task identifies and the input has them."""
    if not task.identify or PRIOR_SHA256 not in chunk.schema.names:
        return [(None, None)] * chunk.num_rows
    return list(zip(chunk.column(PRIOR_SHA256).to_pylist(), chunk.column(PRIOR_VERSION).to_pylist(), strict=True))


def _augment_flags(chunk: pa.RecordBatch, task: FeaturizeTask) -> list[bool]:
    if not task.augment:
        return [False] * chunk.num_rows
    if task.augment_col is None:
        return [True] * chunk.num_rows
    return [bool(flag) for flag in chunk.column(task.augment_col).to_pylist()]


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
            uris = chunk.column(task.path_col).to_pylist()
            submitted = (chunk, [pool.submit(load_views, uri, task, flag, prior) for uri, flag, prior
                                 in zip(uris, _augment_flags(chunk, task), _priors(chunk, task), strict=True)])
            if pending is not None:
                yield log.record(_finish(task, onnx_path, *pending))
            pending = submitted
        if pending is not None:
            yield log.record(_finish(task, onnx_path, *pending))


WARM_FIELDS = (pa.field("pid", pa.int64(), False), pa.field("had_model", pa.bool_(), False))


def warm_partition(task: FeaturizeTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body of a keep-warm task: the worker's model loaded (if it was not) and run once on a blank
    image, so the next featurize pays neither; one row: the worker's pid and whether it had the model."""
    for _ in batches:
        pass
    onnx_path = model_path(task.model_file)
    had_model = holds(onnx_path, task.runtime, task.threads)
    side = task.preprocessing.input_size
    embed(np.zeros((1, side, side, 3), np.uint8), task.preprocessing, onnx_path, task.threads, task.runtime)
    yield pa.RecordBatch.from_pylist([{"pid": os.getpid(), "had_model": had_model}], schema=pa.schema(WARM_FIELDS))


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
    photos = [future.result() for future in futures]
    rows, loaded, views, photo_of = _expand(chunk, photos)
    good = [i for i, item in enumerate(loaded) if item.pixels is not None]
    pixels = [item.pixels for item in loaded if item.pixels is not None]
    empty = np.zeros((0, task.feature_dim), dtype=np.float32)
    features = empty
    if good:
        started = time.perf_counter()
        try:
            features = embed(np.stack(pixels), task.preprocessing, onnx_path, task.threads, task.runtime)
            _check_dim(features, task.feature_dim)
        except Exception as exc:  # a model failure rejects this chunk's images (once each, no views), with the reason
            reason = f"{type(exc).__name__}: {exc}"
            rejected = [item if item.pixels is None else Loaded(stage="embed", reason=reason, sha256=item.sha256)
                        for item in photos]
            return _to_batch(chunk, rejected, [0] * len(photos), [], empty, task)
        logger.debug("embedded %d images in %.3fs", len(good), time.perf_counter() - started)
        finite = np.asarray(np.isfinite(features).all(axis=1), dtype=bool)
        if not finite.all():
            return _reject_non_finite(task, chunk, photos, [photo_of[i] for i in good], [views[i] for i in good],
                                      features, finite)
    return _to_batch(rows, loaded, views, good, features, task)


def _reject_non_finite(task: FeaturizeTask, chunk: pa.RecordBatch, photos: list[Loaded], photo_of_good: list[int],
                       view_of_good: list[int], features: np.ndarray, finite: np.ndarray) -> pa.RecordBatch:
    """A photo any of whose rows (itself or a view) came out with NaN/Inf is rejected whole (one error row,
    stage embed) and its other rows dropped: nothing non-finite reaches PCA, and `listed = ok + rejected`."""
    bad: dict[int, int] = {}
    for index in np.flatnonzero(~finite):
        bad.setdefault(photo_of_good[index], view_of_good[index])
    for photo, view in bad.items():
        where = "" if view == 0 else f" of augmented view {view}"
        photos[photo] = Loaded(stage="embed", reason=f"non-finite features (NaN or Inf){where} from the model",
                               sha256=photos[photo].sha256)
    logger.warning("rejected %d images whose features were not finite", len(bad))
    keep = np.array([photo not in bad for photo in photo_of_good], dtype=bool)
    rows, loaded, views, _ = _expand(chunk, photos)
    good = [i for i, item in enumerate(loaded) if item.pixels is not None]
    return _to_batch(rows, loaded, views, good, features[keep], task)


def _expand(chunk: pa.RecordBatch, loaded: list[Loaded]) -> tuple[pa.RecordBatch, list[Loaded], list[int], list[int]]:
    """One output row per photo and per view of it: (input rows repeated, one Loaded each, view indices,
    the photo each row comes from)."""
    if not any(item.views for item in loaded):
        return chunk, loaded, [0] * len(loaded), list(range(len(loaded)))
    rows, items, views = [], [], []
    for row, item in enumerate(loaded):
        for view, pixels in enumerate((item.pixels, *item.views)):
            rows.append(row)
            items.append(Loaded(pixels=pixels, width=item.width, height=item.height, stage=item.stage,
                                reason=item.reason, sha256=item.sha256))
            views.append(view)
    return chunk.take(pa.array(rows, type=pa.int32())), items, views, rows


def _check_dim(features: np.ndarray, expected: int) -> None:
    if features.shape[1] != expected:
        raise ValueError(f"model returned {features.shape[1]} features, spec declares {expected}")


def _to_batch(chunk: pa.RecordBatch, loaded: list[Loaded], views: list[int], good: list[int],
              features: np.ndarray, task: FeaturizeTask) -> pa.RecordBatch:
    has_features = np.zeros(len(loaded), dtype=bool)
    has_features[good] = True
    lengths = np.where(has_features, task.feature_dim, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    vectors = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(features.reshape(-1), type=pa.float32()), mask=pa.array(~has_features)
    )
    identity = [pa.array([item.sha256 for item in loaded], type=pa.string()),
                pa.array([item.same_as for item in loaded], type=pa.string())] if task.identify else []
    columns = [*chunk.columns, *identity,
               pa.array(views, type=pa.int32()),
               pa.array([item.width for item in loaded], type=pa.int32()),
               pa.array([item.height for item in loaded], type=pa.int32()),
               vectors,
               pa.array([item.stage for item in loaded], type=pa.string()),
               pa.array([item.reason for item in loaded], type=pa.string())]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema([*chunk.schema,
                                                                 *output_fields(task.output_col, task.identify)]))
