"""Model registry: built-in spec, onnx:PATH with sidecar, torch:ARCH:WEIGHTS, ONNX export cache."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fruitpipe.image import models
from fruitpipe.image.embed import embed, normalise
from fruitpipe.runtime import Runtime

DEFAULT = "efficientnet-lite0"


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def default_spec() -> models.ModelSpec:
    return models.resolve(DEFAULT)


@pytest.fixture(scope="module")
def default_onnx(default_spec: models.ModelSpec) -> Path:
    return models.onnx_file(default_spec)


@pytest.fixture(scope="module")
def random_batch() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)


def test_builtin_spec_fields(default_spec: models.ModelSpec) -> None:
    assert default_spec.name == DEFAULT and default_spec.kind == "builtin"
    assert default_spec.feature_dim == 1280
    assert default_spec.preprocessing.input_size == 224
    assert default_spec.preprocessing.layout == "NCHW"
    assert Path(default_spec.weights_path).is_file()
    assert default_spec.weights_sha256 == sha256_of(default_spec.weights_path)


def test_manifest_entry_carries_hash_and_preprocessing(default_spec: models.ModelSpec) -> None:
    from fruitpipe.batch.manifest import ModelEntry

    entry = ModelEntry.of(default_spec, Runtime.for_precision("fp32")).to_json()
    assert entry["weights_sha256"] == sha256_of(default_spec.weights_path)
    assert entry["preprocessing"]["input_size"] == 224 and entry["feature_dim"] == 1280
    assert entry["runtime"].startswith("onnxruntime ") and entry["precision"] == "fp32"
    bf16 = ModelEntry.of(default_spec, Runtime.for_precision("bf16")).to_json()
    assert bf16["runtime"].startswith("openvino ") and bf16["precision"] == "bf16"


@pytest.mark.parametrize("name", ["resnet-9000", "efficientnet-lite", "EfficientNet-Lite0", ""])
def test_unknown_model_lists_known_ones(name: str) -> None:
    with pytest.raises(ValueError) as caught:
        models.resolve(name)
    message = str(caught.value)
    assert repr(name) in message
    for known in (DEFAULT, "onnx:PATH", "torch:ARCH:WEIGHTS"):
        assert known in message


@pytest.mark.parametrize("name", ["torch:efficientnet-lite0", "torch::w.pt", "torch:efficientnet-lite0:"])
def test_malformed_torch_name(name: str) -> None:
    with pytest.raises(ValueError, match="torch:ARCH:WEIGHTS_PATH"):
        models.resolve(name)


def test_missing_files_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ONNX model not found"):
        models.resolve(f"onnx:{tmp_path / 'none.onnx'}")
    with pytest.raises(ValueError, match="weights file not found"):
        models.resolve(f"torch:efficientnet-lite0:{tmp_path / 'none.pt'}")


@pytest.fixture()
def user_onnx(tmp_path: Path, default_onnx: Path) -> Path:
    target = tmp_path / "my model.onnx"
    shutil.copy(default_onnx, target)
    return target


SIDECAR = {"input_size": 240, "resize": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
           "layout": "NCHW"}


def test_onnx_with_sidecar_resolves(user_onnx: Path) -> None:
    Path(f"{user_onnx}.json").write_text(json.dumps(SIDECAR), encoding="utf-8")
    spec = models.resolve(f"onnx:{user_onnx}")
    assert spec.kind == "onnx"
    assert spec.preprocessing == models.Preprocessing(240, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "NCHW")
    assert spec.feature_dim == 1280  # read from the graph's output shape
    assert spec.weights_sha256 == sha256_of(user_onnx)
    assert models.onnx_file(spec) == user_onnx  # user files are run as they are, never re-exported


def test_onnx_sidecar_feature_dim_wins(user_onnx: Path) -> None:
    Path(f"{user_onnx}.json").write_text(json.dumps({**SIDECAR, "feature_dim": 77}), encoding="utf-8")
    assert models.resolve(f"onnx:{user_onnx}").feature_dim == 77


def test_onnx_without_sidecar_names_it(user_onnx: Path) -> None:
    with pytest.raises(ValueError) as caught:
        models.resolve(f"onnx:{user_onnx}")
    assert f"{user_onnx}.json" in str(caught.value)
    assert "input_size" in str(caught.value)


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"resize": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}),          # no input_size
    json.dumps({**SIDECAR, "mean": 0.5}),                                            # mean not a list
    json.dumps({**SIDECAR, "mean": [0.5, 0.5]}),                                     # 2 values
    json.dumps({**SIDECAR, "resize": "cubic-spline"}),
    json.dumps({**SIDECAR, "input_size": "big"}),
    json.dumps({**SIDECAR, "colour": "rgb"}),                                        # unknown key
    "[]",
])
def test_bad_sidecar_is_value_error(user_onnx: Path, content: str) -> None:
    Path(f"{user_onnx}.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        models.resolve(f"onnx:{user_onnx}")


@pytest.mark.parametrize("content", ["null", "224", '"bilinear"'])
def test_sidecar_that_is_not_an_object_is_value_error(user_onnx: Path, content: str) -> None:
    Path(f"{user_onnx}.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="invalid preprocessing"):
        models.resolve(f"onnx:{user_onnx}")


def test_torch_weights_copy_resolves_and_exports_same_features(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_spec: models.ModelSpec, default_onnx: Path,
        random_batch: np.ndarray) -> None:
    weights = tmp_path / "lite0 copy.pth"
    shutil.copy(default_spec.weights_path, weights)
    spec = models.resolve(f"torch:efficientnet-lite0:{weights}")
    assert (spec.kind, spec.arch, spec.feature_dim) == ("torch", DEFAULT, 1280)
    assert spec.weights_path == str(weights) and spec.weights_sha256 == sha256_of(weights)
    assert spec.preprocessing == default_spec.preprocessing

    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path / "fresh-cache"))  # force a real second export
    exported = models.onnx_file(spec)
    assert exported.is_file() and exported.parent.parent == tmp_path / "fresh-cache"
    ours = embed(random_batch, spec.preprocessing, str(exported), 1)
    reference = embed(random_batch, default_spec.preprocessing, str(default_onnx), 1)
    assert ours.shape == (3, 1280)
    assert np.abs(ours - reference).max() <= 1e-5


def test_onnx_export_matches_torch(default_spec: models.ModelSpec, default_onnx: Path,
                                   random_batch: np.ndarray) -> None:
    import torch

    module = models.torch_module(default_spec)
    with torch.no_grad():
        expected = module(torch.from_numpy(normalise(random_batch, default_spec.preprocessing))).numpy()
    actual = embed(random_batch, default_spec.preprocessing, str(default_onnx), 1)
    assert np.abs(actual - expected).max() <= 1e-4
    assert np.abs(expected).max() > 0.1  # not a trivially zero output


def test_onnx_file_is_cached(monkeypatch: pytest.MonkeyPatch, default_spec: models.ModelSpec,
                             default_onnx: Path) -> None:
    before = default_onnx.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(models, "export_onnx", lambda spec, target: calls.append(target))
    assert models.onnx_file(default_spec) == default_onnx
    assert calls == []
    assert default_onnx.stat().st_mtime_ns == before
    assert default_spec.weights_sha256[:16] in default_onnx.name


def test_onnx_file_exports_when_cache_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               default_spec: models.ModelSpec) -> None:
    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "export_onnx", lambda spec, target: calls.append(target))
    target = models.onnx_file(default_spec)
    assert calls == [target] and target.parent == tmp_path / "onnx"
