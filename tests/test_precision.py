"""--precision: the choice (auto, refusals), bf16 features against fp32 (cosine), the Spark path in
bf16 against a direct single-process bf16 call, model-call slicing, and the recorded precision."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fruitpipe import runtime
from fruitpipe.batch import sources
from fruitpipe.config import DecodeLimits, RunConfig
from fruitpipe.image import models
from fruitpipe.image.decode import decode_for_model
from fruitpipe.image.embed import embed
from fruitpipe.ml.featurizer import ImageFeaturizer
from fruitpipe.runtime import Runtime
from fruitpipe.storage import Store

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16"})
AVX2 = frozenset({"avx2", "fma"})
needs_bf16 = pytest.mark.skipif(runtime.supports("bf16") is not None,
                                reason=f"this machine cannot run bf16: {runtime.supports('bf16')}")


@pytest.fixture(scope="module")
def spec() -> models.ModelSpec:
    return models.resolve("efficientnet-lite0")


@pytest.fixture(scope="module")
def test_pixels(spec: models.ModelSpec, sample_dir: Path) -> np.ndarray:
    """Every bundled Test image (none of them chose anything: the bar is the issue's, fixed beforehand)."""
    pre = spec.preprocessing
    files = sorted((sample_dir / "Test").rglob("*.jpg"))
    return np.stack([decode_for_model(f.read_bytes(), DecodeLimits(), pre.input_size, pre.resize)[0] for f in files])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(axis=1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "engine_installed", lambda engine: True)
    assert runtime.resolve("auto", flags=AMX).precision == "bf16"
    assert runtime.resolve("auto", flags=AMX).engine == runtime.OPENVINO
    assert runtime.resolve("auto", flags=AVX2) == Runtime("fp32", runtime.ONNXRUNTIME, runtime.INFER_BATCH["fp32"])


def test_bf16_refused_in_one_line_without_cpu_support() -> None:
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX") as error:
        runtime.resolve("bf16", flags=AVX2)
    assert "\n" not in str(error.value)


def test_bf16_refused_without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "engine_installed", lambda engine: engine != runtime.OPENVINO)
    with pytest.raises(ValueError, match="pip install openvino"):
        runtime.resolve("bf16", flags=AMX)


def test_unknown_precision_is_refused_by_config_and_resolve() -> None:
    with pytest.raises(ValueError, match="--precision must be one of"):
        RunConfig(input="in", output="out", precision="fp16")
    with pytest.raises(ValueError, match="--precision must be one of"):
        runtime.resolve("int4")


def test_recorded_precision_defaults_to_fp32_and_refuses_what_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Runtime.recorded(None, "run r").precision == "fp32"  # outputs from before precisions
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AVX2)
    with pytest.raises(ValueError, match="made with bf16 features and must be used with them"):
        Runtime.recorded("bf16", "bundle b")
    with pytest.raises(ValueError, match="does not know"):
        Runtime.recorded("int3", "bundle b")


def test_model_calls_in_slices_equal_one_call(spec: models.ModelSpec, test_pixels: np.ndarray) -> None:
    onnx = str(models.onnx_file(spec))
    pixels = test_pixels[:10]
    whole = embed(pixels, spec.preprocessing, onnx, 2, Runtime("fp32", runtime.ONNXRUNTIME, 10))
    sliced = embed(pixels, spec.preprocessing, onnx, 2, Runtime("fp32", runtime.ONNXRUNTIME, 3))
    assert sliced.shape == (10, spec.feature_dim)
    assert np.abs(whole - sliced).max() <= 1e-4
    assert np.abs(whole[0] - whole[1]).max() > 1e-2  # distinct rows: a mix-up would be caught


@needs_bf16
def test_bf16_features_close_to_fp32(spec: models.ModelSpec, test_pixels: np.ndarray) -> None:
    """The issue's bar on every bundled Test image: cosine to fp32 >= 0.99 mean, >= 0.95 min."""
    onnx = str(models.onnx_file(spec))
    fp32 = embed(test_pixels, spec.preprocessing, onnx, 2, Runtime.for_precision("fp32"))
    bf16 = embed(test_pixels, spec.preprocessing, onnx, 2, Runtime.for_precision("bf16"))
    similarity = cosines(fp32, bf16)
    assert similarity.mean() >= 0.99 and similarity.min() >= 0.95, (similarity.mean(), similarity.min())
    assert np.abs(fp32 - bf16).max() > 1e-4  # really another precision, not fp32 under another name


@needs_bf16
def test_spark_path_in_bf16_equals_direct_bf16_call(spark, small_sample: Path, spec: models.ModelSpec) -> None:
    pre = spec.preprocessing
    listing = sources.list_images(Store(), str(small_sample))
    featurizer = ImageFeaturizer(precision="bf16", batchSize=8)
    assert featurizer.runtime() == Runtime.for_precision("bf16")
    rows = featurizer.transform(sources.to_dataframe(spark, listing)).select("path", "features").collect()
    paths = [row.path for row in rows]
    got = np.array([row.features for row in rows], dtype=np.float32)
    pixels = np.stack([decode_for_model(Path(p).read_bytes(), DecodeLimits(), pre.input_size, pre.resize)[0]
                       for p in paths])
    onnx = str(models.onnx_file(spec))
    direct = embed(pixels, pre, onnx, 1, Runtime.for_precision("bf16"))
    assert cosines(got, direct).min() >= 0.9999
    fp32 = embed(pixels, pre, onnx, 1, Runtime.for_precision("fp32"))
    assert np.abs(got - fp32).max() > 1e-4  # the executors really ran bf16
