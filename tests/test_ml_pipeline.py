"""ImageFeaturizer + CentredPCA as a pyspark.ml Pipeline: fit, save, load, transform again."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel

from fruitpipe.batch import sources
from fruitpipe.ml.featurizer import ImageFeaturizer
from fruitpipe.ml.pca import CentredPCA, CentredPCAModel
from fruitpipe.storage import Store


@pytest.fixture(scope="module")
def images(spark, small_sample):
    return sources.to_dataframe(spark, sources.list_images(Store(), str(small_sample)))


def collected(frame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rows = frame.select("path", "features", "pca").collect()
    result = {r.path: (np.array(r.features, dtype=np.float32), np.array(r.pca, dtype=np.float32)) for r in rows}
    assert len(result) == len(rows)  # each path once
    return result


def test_fitted_pipeline_round_trip(images, tmp_path) -> None:
    pipeline = Pipeline(stages=[ImageFeaturizer(batchSize=8), CentredPCA(k=3)])
    model = pipeline.fit(images)
    first_frame = model.transform(images)
    first = collected(first_frame)
    assert len(first) == 32
    assert all(f.shape == (1280,) and p.shape == (3,) for f, p in first.values())

    path = str(tmp_path / "pipeline-model")
    model.save(path)
    loaded = PipelineModel.load(path)
    assert [type(s) for s in loaded.stages] == [ImageFeaturizer, CentredPCAModel]
    assert loaded.stages[0].getOrDefault("batchSize") == 8
    assert loaded.stages[1].components == 3
    assert loaded.stages[1].spectrum == model.stages[1].spectrum

    second_frame = loaded.transform(images)
    assert second_frame.columns == first_frame.columns
    assert second_frame.columns[-1] == "pca" and "features" in second_frame.columns
    second = collected(second_frame)
    assert second.keys() == first.keys()
    for key, (features, projected) in first.items():
        np.testing.assert_allclose(second[key][0], features, rtol=0, atol=1e-6)
        np.testing.assert_allclose(second[key][1], projected, rtol=0, atol=1e-6)

    # the PCA stage really is centred PCA of the featurizer output (independent numpy check)
    matrix = np.stack([first[k][0] for k in sorted(first)]).astype(np.float64)
    pcs = np.stack([first[k][1] for k in sorted(first)]).astype(np.float64)
    centred = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:3].T
    signs = np.where(np.sum(expected * pcs, axis=0) < 0, -1.0, 1.0)
    np.testing.assert_allclose(pcs, expected * signs, rtol=0, atol=1e-3 * np.abs(expected).max())


def test_unfitted_pipeline_round_trip(tmp_path) -> None:
    pipeline = Pipeline(stages=[
        ImageFeaturizer(modelName="efficientnet-lite0", batchSize=5, inputCol="uri", outputCol="vec"),
        CentredPCA(k=3, inputCol="vec", outputCol="reduced"),
    ])
    path = str(tmp_path / "pipeline")
    pipeline.save(path)
    loaded = Pipeline.load(path)
    featurizer, pca = loaded.getStages()
    assert isinstance(featurizer, ImageFeaturizer) and isinstance(pca, CentredPCA)
    assert featurizer.getOrDefault("modelName") == "efficientnet-lite0"
    assert featurizer.getOrDefault("batchSize") == 5
    assert (featurizer.getInputCol(), featurizer.getOutputCol()) == ("uri", "vec")
    assert pca.isSet("k") and pca.getOrDefault("k") == 3
    assert (pca.getInputCol(), pca.getOutputCol()) == ("vec", "reduced")
    assert [s.uid for s in loaded.getStages()] == [s.uid for s in pipeline.getStages()]
