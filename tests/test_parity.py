"""Numerical parity: ONNX Runtime vs the torch reference, the Spark path vs a single-process call,
and the model session being created once per Python worker (not per batch)."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fruitpipe.batch import sources
from fruitpipe.image import embed as embed_mod
from fruitpipe.image import models
from fruitpipe.ml import featurizer as featurizer_mod
from fruitpipe.ml.featurizer import ImageFeaturizer
from fruitpipe.storage import Store

TOL = 1e-4


@pytest.fixture(scope="module")
def spec() -> models.ModelSpec:
    return models.resolve("efficientnet-lite0")


@pytest.fixture(scope="module")
def onnx_path(spec: models.ModelSpec) -> str:
    return str(models.onnx_file(spec))


@pytest.fixture(scope="module")
def reference(spec: models.ModelSpec):
    """The torch module, called directly (no fruitpipe preprocessing involved)."""
    module = models.torch_module(spec)

    def call(batch_nchw: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(batch_nchw, dtype=np.float32))).numpy()

    return call


def reference_pixels(path: Path | str, size: int) -> np.ndarray:
    """Independent decode: PIL open -> RGB -> bilinear resize -> uint8 HWC."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def reference_input(pixels: np.ndarray, pre: models.Preprocessing) -> np.ndarray:
    """uint8 NHWC -> (x/255 - mean)/std in float64, NCHW float32 (computed without fruitpipe)."""
    x = pixels.astype(np.float64) / 255.0
    x = (x - np.array(pre.mean, dtype=np.float64)) / np.array(pre.std, dtype=np.float64)
    return x.transpose(0, 3, 1, 2).astype(np.float32)


def sample_files(sample_dir: Path, count: int) -> list[Path]:
    """A spread of real sample images, several classes and both splits."""
    files = sorted(sample_dir.rglob("*.jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


# ---------------------------------------------------------------- ONNX Runtime vs torch

def test_spec_matches_model_contract(spec: models.ModelSpec) -> None:
    pre = spec.preprocessing
    assert (pre.input_size, pre.resize, pre.layout) == (224, "bilinear", "NCHW")
    np.testing.assert_allclose(pre.mean, [127 / 255] * 3)
    np.testing.assert_allclose(pre.std, [128 / 255] * 3)
    assert spec.feature_dim == 1280


def test_onnx_matches_torch_on_random_pixels(spec, onnx_path, reference) -> None:
    pre = spec.preprocessing
    rng = np.random.default_rng(1234)
    pixels = rng.integers(0, 256, size=(3, pre.input_size, pre.input_size, 3), dtype=np.uint8)
    ours = embed_mod.embed(pixels, pre, onnx_path, threads=2)
    expected = reference(reference_input(pixels, pre))
    assert ours.shape == (3, spec.feature_dim) and ours.dtype == np.float32
    assert np.abs(expected).max() > 0.1  # non-trivial features
    assert np.abs(ours - expected).max() <= TOL
    # rows are distinct images: a row mix-up would be caught
    assert np.abs(expected[0] - expected[1]).max() > 100 * TOL


def test_onnx_matches_torch_on_sample_images(spec, onnx_path, reference, sample_dir) -> None:
    pre = spec.preprocessing
    files = sample_files(sample_dir, 6)
    pixels = np.stack([reference_pixels(f, pre.input_size) for f in files])
    ours = embed_mod.embed(pixels, pre, onnx_path, threads=2)
    expected = reference(reference_input(pixels, pre))
    assert ours.shape == (len(files), spec.feature_dim)
    assert np.abs(ours - expected).max() <= TOL


# ---------------------------------------------------------------- Spark path vs single process

def test_spark_featurizer_matches_direct_torch_call(spark, small_sample, spec, reference) -> None:
    pre = spec.preprocessing
    listing = sources.list_images(Store(), str(small_sample))
    df = sources.to_dataframe(spark, listing)
    out = ImageFeaturizer(batchSize=5).transform(df)
    rows = out.select("path", "width", "height", "features", "error_stage", "error_reason").collect()

    paths = [r.path for r in rows]
    listed = [path for path, _, _ in listing.rows]
    assert len(listed) == 32
    assert sorted(paths) == sorted(listed) and len(set(paths)) == len(paths)
    assert all(r.error_stage is None and r.error_reason is None for r in rows)
    assert all((r.width, r.height) == (100, 100) for r in rows)

    got = np.array([r.features for r in rows], dtype=np.float32)
    assert got.shape == (len(rows), spec.feature_dim)
    expected = reference(reference_input(np.stack([reference_pixels(p, pre.input_size) for p in paths]), pre))
    assert np.abs(got - expected).max() <= TOL


# ---------------------------------------------------------------- one session per worker process

def test_engine_for_is_cached_in_process(onnx_path) -> None:
    runtime = embed_mod.FP32
    first = embed_mod.engine_for(onnx_path, runtime, 2)
    assert embed_mod.engine_for(onnx_path, runtime, 2) is first
    assert embed_mod._ENGINES[(onnx_path, runtime, 2)] is first
    assert embed_mod.engine_for(onnx_path, runtime, 1) is not first  # the key includes the thread count


def _counting_featurize(original, log_path: str, token: str):
    """A featurize_partition wrapper that, inside the worker, counts InferenceSession constructions
    (from a clean cache) and logs one record per produced batch."""

    def wrapper(task, batches):
        import os as _os

        import onnxruntime as ort

        from fruitpipe.image import embed as worker_embed

        if getattr(ort, "_fruitpipe_test_token", None) != token:
            base = getattr(ort, "_fruitpipe_test_base", ort.InferenceSession)

            class CountingSession(base):  # type: ignore[misc, valid-type]
                def __init__(self, *args, **kwargs):
                    ort._fruitpipe_test_created += 1
                    super().__init__(*args, **kwargs)

            ort._fruitpipe_test_base = base
            ort._fruitpipe_test_created = 0
            ort._fruitpipe_test_token = token
            ort.InferenceSession = CountingSession
            worker_embed._ENGINES.clear()  # sessions from earlier jobs in a reused worker
        for batch in original(task, batches):
            record = {"pid": _os.getpid(), "created": ort._fruitpipe_test_created,
                      "cached": len(worker_embed._ENGINES), "rows": batch.num_rows}
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            yield batch

    return wrapper


def test_model_loaded_once_per_worker_not_per_batch(spark, small_sample, tmp_path, monkeypatch) -> None:
    log = tmp_path / "sessions.jsonl"
    wrapper = _counting_featurize(featurizer_mod.featurize_partition, str(log), uuid.uuid4().hex)
    monkeypatch.setattr(featurizer_mod, "featurize_partition", wrapper)

    df = sources.to_dataframe(spark, sources.list_images(Store(), str(small_sample)))
    rows = ImageFeaturizer(batchSize=2).transform(df).select("path", "features").collect()
    assert len(rows) == 32 and all(r.features is not None and len(r.features) == 1280 for r in rows)

    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert sum(r["rows"] for r in records) == 32
    assert len(records) == 16  # 32 images in chunks of 2
    pids = {r["pid"] for r in records}
    assert os.getpid() not in pids  # the work really ran in Python workers
    # at most one worker per task; which idle worker a task gets is Spark's choice (a pipeline that chained
    # two Python stages earlier in the session leaves two idle workers per slot)
    assert len(pids) <= df.rdd.getNumPartitions()
    assert len(records) >= 4 * len(pids)  # many batches per worker process
    # every worker created exactly one session, however many batches it embedded
    for pid in pids:
        mine = [r for r in records if r["pid"] == pid]
        assert [r["created"] for r in mine] == [1] * len(mine), (pid, mine)
        assert all(r["cached"] == 1 for r in mine)



def test_executors_run_onnx_runtime_and_never_import_torch(spark, small_sample: Path) -> None:
    def worker_modules(batches):  # defined here so cloudpickle ships it by value
        import sys

        import pyarrow as pa

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"pid": os.getpid(), "has_torch": "torch" in sys.modules,
                                           "has_ort": "onnxruntime" in sys.modules}])

    images = sources.to_dataframe(spark, sources.list_images(Store(), str(small_sample)))
    stages = [row.error_stage for row in ImageFeaturizer().transform(images).select("error_stage").collect()]
    assert stages and not any(stages)
    reports = images.mapInArrow(worker_modules, "pid long, has_torch boolean, has_ort boolean").collect()
    assert any(row.has_ort for row in reports), "the reporting workers should be the ones that featurized"
    assert not any(row.has_torch for row in reports), reports
