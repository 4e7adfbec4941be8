"""Model folders written by the driver alone, through `storage`: `arrays.npz` + `metadata/part-00000`.

Spark ML's own writers save a model from executor tasks through Hadoop: on a cluster whose
executors run on other hosts those parts land on the executors' disks, and pip's pyspark has no
S3 connector. fruitpipe's models are a few small arrays, so the driver writes them itself, to any
URI a `Store` knows (local or s3://): the arrays first, then the metadata with their sha256. The
metadata is Spark's DefaultParams JSON line (class, uid, params) in Spark's place, so Spark's
Pipeline reader finds a `CentredPCAModel` stage in a pipeline saved with Spark's writer (the
pipeline's own metadata is then Spark-written). A folder without metadata is incomplete and one
whose arrays do not match is damaged: both are refused on load. Spark ML's `save(path)` / `load(path)`
take no store: they use `Store()` (the default AWS chain); `write().using(store)` and `read().using(store)`
name one.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from pyspark.ml.param import Params
from pyspark.ml.util import MLWriter

from fruitpipe import storage
from fruitpipe.storage import Store

FORMAT, FORMAT_VERSION = "fruitpipe-model", 1
METADATA, ARRAYS = ("metadata", "part-00000"), "arrays.npz"
_JSON_TYPES = (str, int, float, bool)
S = TypeVar("S", bound="UsesStore")


def save(store: Store, instance: Params, uri: str, arrays: dict[str, np.ndarray], extra: dict[str, Any] | None = None,
         class_name: str | None = None, overwrite: bool = False) -> None:
    """Write `instance` (uid, params) and its arrays from the driver; an existing folder is
    replaced only when `overwrite`."""
    from pyspark import __version__ as spark_version

    if store.exists(uri) and not store.is_empty_dir(uri):
        if not overwrite:
            raise ValueError(f"{uri} already exists; use write().overwrite().save(path) to replace it")
        store.remove_tree(uri)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{name: np.asarray(values) for name, values in arrays.items()})
    data = buffer.getvalue()
    store.write_bytes(storage.join(uri, ARRAYS), data)
    metadata = {
        "class": class_name or f"{type(instance).__module__}.{type(instance).__name__}",
        "timestamp": int(time.time() * 1000),
        "sparkVersion": spark_version,
        "uid": instance.uid,
        "paramMap": _json_values(instance._paramMap, strict=True),
        "defaultParamMap": _json_values(instance._defaultParamMap, strict=False),
        "fruitpipe": {"format": FORMAT, "format_version": FORMAT_VERSION, **(extra or {}),
                      "arrays": {"file": ARRAYS, "sha256": hashlib.sha256(data).hexdigest(),
                                 "shapes": {name: list(np.shape(values)) for name, values in arrays.items()}}},
    }
    store.write_bytes(storage.join(uri, *METADATA), (json.dumps(metadata) + "\n").encode("utf-8"))


def load(store: Store, uri: str, class_name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and arrays of a folder written by `save`, its class and checksum checked."""
    try:
        metadata = json.loads(store.read_bytes(storage.join(uri, *METADATA)))
    except FileNotFoundError:
        if store.list_tree(storage.join(uri, METADATA[0])):
            raise ValueError(f"{uri} holds a model saved by Spark ML's own writer, not a fruitpipe-saved "
                             f"{class_name} (written by an older fruitpipe: run it again)") from None
        raise FileNotFoundError(f"{uri} is not a saved {class_name} ({'/'.join(METADATA)} is missing: "
                                "an incomplete copy, or not a model folder)") from None
    own = metadata.get("fruitpipe") or {}
    if metadata.get("class") != class_name or own.get("format") != FORMAT:
        raise ValueError(f"{uri} holds a {metadata.get('class')!r} saved by "
                         f"{'fruitpipe' if own else 'Spark ML'}, not a fruitpipe-saved {class_name}")
    if own.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{uri} was written by a newer fruitpipe (model format {own['format_version']})")
    data = store.read_bytes(storage.join(uri, ARRAYS))
    if hashlib.sha256(data).hexdigest() != own["arrays"]["sha256"]:
        raise ValueError(f"{uri} is damaged: {ARRAYS} does not match the sha256 in its metadata")
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return metadata, {name: stored[name] for name in stored.files}


def apply_params(instance: Params, metadata: dict[str, Any]) -> None:
    """Give a rebuilt stage its saved uid and params (ones this Spark no longer has are skipped)."""
    instance._resetUid(metadata["uid"])
    for key, setter in (("defaultParamMap", instance._setDefault), ("paramMap", instance._set)):
        setter(**{name: value for name, value in metadata[key].items() if instance.hasParam(name)})


def _json_values(params: dict[Any, Any], strict: bool) -> dict[str, Any]:
    """Param values as JSON (names, numbers, flags and lists of them). A value set on the stage that
    JSON cannot hold (a matrix bound) is an error when `strict`; such defaults are left to the class."""
    values: dict[str, Any] = {}
    for param, value in params.items():
        if isinstance(value, (list, tuple)) and all(isinstance(item, _JSON_TYPES) for item in value):
            values[param.name] = list(value)
        elif isinstance(value, _JSON_TYPES):
            values[param.name] = value
        elif strict:
            raise ValueError(f"param {param.name} ({type(value).__name__}) cannot be saved by fruitpipe")
    return values


class UsesStore:
    """`.using(store)` on a model writer or reader: the store the folder is written to or read from.
    Spark ML's own entry points (`save(path)`, `load(path)`, a Pipeline's writer) cannot pass one, so
    `Store()`, the default AWS chain, stands in."""

    store: Store = Store()

    def using(self: S, store: Store) -> S:
        self.store = store
        return self


class DriverWriter(MLWriter, UsesStore):
    """`model.write()` for models saved by `save`: `.overwrite()` honoured, s3:// paths accepted."""

    def __init__(self, save_to: Callable[[Store, str, bool], None]) -> None:
        super().__init__()
        self.save_to = save_to

    def save(self, path: str) -> None:
        self.save_to(self.store, path, self.shouldOverwrite)

    def saveImpl(self, path: str) -> None:
        self.save_to(self.store, path, False)
