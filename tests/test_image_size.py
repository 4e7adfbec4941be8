"""--image-size: the model at another square input size, exported once per size, equal to torch at that size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fruitpipe.batch import sources
from fruitpipe.config import RunConfig
from fruitpipe.image import models
from fruitpipe.image.embed import embed
from fruitpipe.ml.featurizer import ImageFeaturizer
from fruitpipe.storage import Store
from test_parity import reference_input, reference_pixels

SIZE = 160


@pytest.fixture(scope="module")
def spec() -> models.ModelSpec:
    return models.with_input_size(models.resolve("efficientnet-lite0"), SIZE)


def torch_features(spec: models.ModelSpec, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return models.torch_module(spec)(torch.from_numpy(reference_input(pixels, spec.preprocessing))).numpy()


def test_spec_and_export_at_another_size(spec: models.ModelSpec) -> None:
    default = models.resolve("efficientnet-lite0")
    assert spec.preprocessing.input_size == SIZE and spec.preprocessing.mean == default.preprocessing.mean
    assert spec.feature_dim == 1280 and spec.weights_sha256 == default.weights_sha256
    assert models.with_input_size(default, None) is default and models.with_input_size(default, 224) is default
    path = models.onnx_file(spec)
    assert f"-{SIZE}px-" in path.name and path != models.onnx_file(default)
    pixels = np.random.default_rng(3).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    ours = embed(pixels, spec.preprocessing, str(path), 1)
    expected = torch_features(spec, pixels)
    assert ours.shape == (2, 1280) and np.abs(expected).max() > 0.1
    assert np.abs(ours - expected).max() <= 1e-4


def test_bad_sizes_are_value_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        models.with_input_size(models.resolve("efficientnet-lite0"), 16)
    with pytest.raises(ValueError, match="positive"):
        RunConfig(input="in", output="out", image_size=0)


def test_spark_path_at_another_size_matches_torch(spark, small_sample, spec: models.ModelSpec) -> None:
    images = sources.to_dataframe(spark, sources.list_images(Store(), str(small_sample)))
    rows = ImageFeaturizer(imageSize=SIZE, batchSize=8).transform(images).select("path", "features").collect()
    assert len(rows) == 32 and all(row.features is not None for row in rows)
    got = np.array([row.features for row in rows], dtype=np.float32)
    expected = torch_features(spec, np.stack([reference_pixels(row.path, SIZE) for row in rows]))
    assert np.abs(got - expected).max() <= 1e-4
