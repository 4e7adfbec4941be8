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


# ---------------------------------------------------------------- Lite1 / Lite2 and the +logits variants

def test_builtins_cover_lite0_to_lite2_with_and_without_logits() -> None:
    expected_sizes = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
    assert set(models.BUILTIN) == {f"{arch}{suffix}" for arch in expected_sizes for suffix in ("", "+logits")}
    for name in models.BUILTIN:
        spec = models.resolve(name)
        arch = name.removesuffix("+logits")
        assert (spec.name, spec.arch, spec.kind) == (name, arch, "builtin")
        assert spec.preprocessing.input_size == expected_sizes[arch]
        assert spec.weights_sha256 == sha256_of(spec.weights_path) == models.LITE_SHA256[arch]
        assert spec.feature_dim == (2280 if name.endswith("+logits") else 1280)


def test_registry_listing_names_every_builtin() -> None:
    listed = {row["name"]: row for row in models.describe_registry()}
    for name in models.BUILTIN:
        assert listed[name]["feature_dim"] == ("2280" if name.endswith("+logits") else "1280")


def test_weights_with_another_hash_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.LITE_SHA256, "efficientnet-lite1", "0" * 64)
    with pytest.raises(ValueError, match="expected 0000"):
        models.resolve("efficientnet-lite1")


def test_variants_never_share_an_onnx_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRUITPIPE_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "export_onnx", lambda spec, target: None)
    files = {models.onnx_file(models.resolve(name)) for name in models.BUILTIN}
    assert len(files) == len(models.BUILTIN)


def reference_lite(arch: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent of fruitpipe's wrapper: one call of the package's own forward; the pooled features are
    what its classifier `_fc` receives (dropout is an identity in eval), the log-softmax is taken in numpy."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(arch)
    net.load_state_dict(torch.load(models.resolve(arch).weights_path, map_location="cpu", weights_only=True))
    net.eval()
    seen: list[np.ndarray] = []
    net._fc.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].numpy()))
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy().astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return seen[0], shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("arch", ["efficientnet-lite0", "efficientnet-lite2"])  # lite1: same table row code
def test_logits_variant_onnx_is_pooled_features_then_imagenet_log_softmax(arch: str) -> None:
    plain, variant = models.resolve(arch), models.resolve(f"{arch}+logits")
    size = plain.preprocessing.input_size
    batch = np.random.default_rng(11).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    batch[0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :, None]  # one smooth image, not only noise
    pooled, log_probs = reference_lite(arch, normalise(batch, plain.preprocessing))
    ours = embed(batch, variant.preprocessing, str(models.onnx_file(variant)), 1)
    features = embed(batch, plain.preprocessing, str(models.onnx_file(plain)), 1)
    assert ours.shape == (2, 2280) and features.shape == (2, 1280)
    assert np.abs(features - pooled).max() <= 1e-4  # the plain export matches torch too
    assert np.abs(ours[:, :1280] - pooled).max() <= 1e-4
    assert np.abs(ours[:, 1280:] - log_probs).max() <= 1e-4
    assert np.abs(ours[:, :1280] - features).max() <= 1e-5
    assert np.allclose(np.exp(ours[:, 1280:]).sum(axis=1), 1.0, atol=1e-4)
    assert np.abs(pooled).max() > 0.1 and log_probs.max() > -5  # not a trivially flat output
