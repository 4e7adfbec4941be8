"""No NaN/Inf reaches PCA: a photo whose features (or one of its views') are not finite is rejected whole,
in errors/ with stage `embed` and the reason, and counted (listed = ok + rejected)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruitpipe.batch import pipeline
from fruitpipe.batch.manifest import RunManifest
from fruitpipe.config import PcaSettings, RunConfig

MEAN, STD = 0.5, 0.25


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """features = [sqrt(m + 1.9), exp(50 m)] per channel, m the normalised channel mean: NaN for a black
    image (m = -2), Inf for a white one (exp(100) overflows float32), finite for fruit photos."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["mean"], axis=1),
             helper.make_node("Constant", [], ["shift"], value=helper.make_tensor("s", TensorProto.FLOAT, [], [1.9])),
             helper.make_node("Constant", [], ["gain"], value=helper.make_tensor("g", TensorProto.FLOAT, [], [50.0])),
             helper.make_node("Add", ["mean", "shift"], ["shifted"]),
             helper.make_node("Sqrt", ["shifted"], ["root"]),
             helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
             helper.make_node("Exp", ["scaled"], ["grown"]),
             helper.make_node("Concat", ["root", "grown"], ["features"], axis=1)]
    graph = helper.make_graph(nodes, "non_finite", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                  ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "non_finite.onnx"
    onnx.save(model, str(path))
    Path(f"{path}.json").write_text(json.dumps({"input_size": 16, "resize": "bilinear", "mean": [MEAN] * 3,
                                                "std": [STD] * 3, "feature_dim": 6}))
    return f"onnx:{path}"


@pytest.fixture(scope="module")
def run(spark, sample_dir: Path, nan_model: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Training/Kiwi: 4 photos + a black and a white image; Test/Kiwi: 2 photos; --augment 1."""
    root = tmp_path_factory.mktemp("nonfinite")
    photos = sorted((sample_dir / "Training" / "Kiwi").glob("*.jpg"))
    for split, chosen in (("Training", photos[:4]), ("Test", photos[4:6])):
        (root / "in" / split / "Kiwi").mkdir(parents=True)
        for file in chosen:
            shutil.copy(file, root / "in" / split / "Kiwi" / file.name)
    for name, value in (("black", 0), ("white", 255)):
        Image.new("RGB", (100, 100), (value,) * 3).save(root / "in" / "Training" / "Kiwi" / f"{name}.jpg", quality=95)
    pipeline.run(RunConfig(input=str(root / "in"), output=str(root / "out"), model=nan_model,
                           pca=PcaSettings(k=2), augment=1))
    return root / "in", root / "out"


def test_non_finite_photos_are_rejected_with_stage_and_reason(run: tuple[Path, Path]) -> None:
    output = run[1]
    errors = pd.read_parquet(output / "errors")
    assert sorted(Path(p).name for p in errors.path) == ["black.jpg", "white.jpg"]
    assert set(errors.stage) == {"embed"}
    assert all("non-finite features" in reason for reason in errors.reason)


def test_only_finite_rows_reach_features_and_pca(run: tuple[Path, Path]) -> None:
    output = run[1]
    features = pd.read_parquet(output / "features")
    assert not features.path.str.endswith(("black.jpg", "white.jpg")).any()
    assert np.isfinite(np.stack(features.features)).all() and np.isfinite(np.stack(features.pca)).all()
    assert len(features) == 4 * 2 + 2  # Training photos with one view each, Test photos alone
    manifest = RunManifest.loads((output / "manifest.json").read_bytes(), "manifest")
    assert (manifest.counts.listed, manifest.counts.ok, manifest.counts.rejected) == (8, 6, 2)
    assert manifest.counts.listed == manifest.counts.ok + manifest.counts.rejected
    assert all(np.isfinite(manifest.pca.explained_variance_ratio))


def test_finite_features_equal_the_formula(run: tuple[Path, Path]) -> None:
    """The kept photos' features are what the graph computes, from the same decoded pixels."""
    from fruitpipe.config import DecodeLimits
    from fruitpipe.image.decode import decode_for_model

    output = run[1]
    features = pd.read_parquet(output / "features")
    photo = features[(features.view == 0)].iloc[0]
    square, _ = decode_for_model(Path(photo.path).read_bytes(), DecodeLimits(), 16, "bilinear")
    pixels = square.astype(np.float64) / 255.0
    mean = ((pixels - MEAN) / STD).mean(axis=(0, 1))
    expected = np.concatenate([np.sqrt(mean + 1.9), np.exp(50 * mean)])
    np.testing.assert_allclose(np.asarray(photo.features, dtype=np.float64), expected, rtol=1e-4)
