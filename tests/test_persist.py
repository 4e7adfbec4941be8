"""Models saved by the driver alone (ml.persist): no Spark job, complete on any cluster, refused when damaged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fruitpipe.ml import CentredPCA, CentredPCAModel, load_logistic_regression, persist, save_logistic_regression
from helpers import jobs_started_by
from test_pca import make_features


@pytest.fixture(scope="module")
def frame(spark):
    features = make_features(rows=120, dim=12, seed=3)
    labels = np.argmax(features[:, :3] - features[:, :3].mean(axis=0), axis=1)  # 3 classes from the data
    rows = [(i, row.tolist(), float(label)) for i, (row, label) in enumerate(zip(features, labels, strict=True))]
    cached = spark.createDataFrame(rows, "id long, features array<float>, label double").cache()
    yield cached
    cached.unpersist()  # later modules assert the session caches nothing


@pytest.fixture(scope="module")
def pca(frame) -> CentredPCAModel:
    return CentredPCA(k=4, outputCol="projected").fit(frame)


def fit_logistic_regression(frame, family: str):
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.functions import array_to_vector

    data = frame.withColumn("vector", array_to_vector("features"))
    if family == "binomial":
        data = data.withColumn("label", (data["label"] > 0).cast("double"))
    model = LogisticRegression(featuresCol="vector", family=family, regParam=0.01, maxIter=50).fit(data)
    return model, data


def probabilities(model, data) -> np.ndarray:
    from pyspark.ml.functions import vector_to_array

    rows = model.transform(data).select("id", vector_to_array("probability").alias("p")).orderBy("id").collect()
    return np.array([row.p for row in rows])


def test_models_are_saved_without_any_spark_job(spark, pca, frame, tmp_path: Path) -> None:
    """No task writes a part: nothing can land on an executor host's disk."""
    model, _ = fit_logistic_regression(frame, "multinomial")
    assert jobs_started_by(spark, lambda: pca.save(str(tmp_path / "pca"))) == []
    assert jobs_started_by(spark, lambda: save_logistic_regression(model, str(tmp_path / "lr"))) == []
    # the probe sees jobs when there are some: Spark's own writer runs them
    assert jobs_started_by(spark, lambda: pca.pca.save(str(tmp_path / "spark-pca")))
    assert jobs_started_by(spark, lambda: model.save(str(tmp_path / "spark-lr")))


def test_pca_round_trip_gives_the_same_projections(pca, frame, tmp_path: Path) -> None:
    pca.save(str(tmp_path / "pca"))
    loaded = CentredPCAModel.load(str(tmp_path / "pca"))
    assert (loaded.uid, loaded.getOutputCol(), loaded.components, loaded.spectrum) == (
        pca.uid, "projected", 4, pca.spectrum)
    ours = np.array([r.projected for r in loaded.transform(frame).orderBy("id").collect()])
    expected = np.array([r.projected for r in pca.transform(frame).orderBy("id").collect()])
    np.testing.assert_array_equal(ours, expected)
    centred = make_features(rows=120, dim=12, seed=3).astype(np.float64)
    centred -= centred.mean(axis=0)  # independent: numpy centring and projection on the saved axes
    np.testing.assert_allclose(ours, centred @ pca.pca.pc.toArray(), atol=1e-4)


@pytest.mark.parametrize("family", ["multinomial", "binomial"])
def test_logistic_regression_round_trip_gives_the_same_probabilities(spark, frame, family, tmp_path: Path) -> None:
    model, data = fit_logistic_regression(frame, family)
    save_logistic_regression(model, str(tmp_path / "lr"))
    loaded = load_logistic_regression(str(tmp_path / "lr"))
    assert loaded.uid == model.uid and loaded.numClasses == model.numClasses
    assert loaded.getFeaturesCol() == "vector" and loaded.getOrDefault("family") == family
    expected = probabilities(model, data)
    assert expected.shape == (120, 3 if family == "multinomial" else 2)
    np.testing.assert_allclose(probabilities(loaded, data), expected, atol=1e-12)


def test_list_params_are_kept_and_unsaveable_ones_refused(spark, frame, tmp_path: Path) -> None:
    """Per-class thresholds change predictions, so they must survive the round trip."""
    from pyspark.ml.linalg import DenseMatrix

    def predictions(model, data) -> list[float]:
        return [row.prediction for row in model.transform(data).orderBy("id").collect()]

    model, data = fit_logistic_regression(frame, "multinomial")
    plain = predictions(model, data)
    model.setThresholds([0.2, 0.5, 0.9])
    assert predictions(model, data) != plain  # the thresholds matter on this data
    save_logistic_regression(model, str(tmp_path / "lr"))
    loaded = load_logistic_regression(str(tmp_path / "lr"))
    assert loaded.getThresholds() == [0.2, 0.5, 0.9]
    assert predictions(loaded, data) == predictions(model, data)

    model._set(lowerBoundsOnCoefficients=DenseMatrix(3, 12, [-1.0] * 36))  # a value JSON cannot hold
    with pytest.raises(ValueError, match="lowerBoundsOnCoefficients"):
        save_logistic_regression(model, str(tmp_path / "bounded"))


def test_existing_folder_is_kept_unless_overwrite(pca, frame, tmp_path: Path) -> None:
    target = tmp_path / "pca"
    pca.save(str(target))
    smaller = CentredPCA(k=2).fit(frame)
    with pytest.raises(ValueError, match="already exists"):
        smaller.save(str(target))
    assert CentredPCAModel.load(str(target)).components == 4
    smaller.write().overwrite().save(str(target))
    assert CentredPCAModel.load(str(target)).components == 2


def test_damaged_incomplete_and_foreign_folders_are_refused(pca, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    pca.save(str(damaged))
    arrays = damaged / persist.ARRAYS
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the arrays
    arrays.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        CentredPCAModel.load(str(damaged))

    incomplete = tmp_path / "incomplete"
    pca.save(str(incomplete))
    (incomplete / "metadata" / "part-00000").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        CentredPCAModel.load(str(incomplete))

    with pytest.raises(ValueError, match=r"not a fruitpipe-saved pyspark\.ml\.classification\.LogisticRegressionModel"):
        load_logistic_regression(str(damaged))
    spark_saved = tmp_path / "spark-saved"
    pca.pca.save(str(spark_saved))
    with pytest.raises(ValueError, match="saved by Spark ML"):
        CentredPCAModel.load(str(spark_saved))


def test_metadata_is_sparks_default_params_line(pca, spark, tmp_path: Path) -> None:
    """Spark's own reader finds the class, uid and params: a Pipeline holding the model loads."""
    from pyspark.ml.util import DefaultParamsReader

    pca.save(str(tmp_path / "pca"))
    metadata = DefaultParamsReader.loadMetadata(str(tmp_path / "pca"), spark)
    assert metadata["class"] == "fruitpipe.ml.pca.CentredPCAModel" and metadata["uid"] == pca.uid
    assert metadata["paramMap"]["k"] == 4 and metadata["paramMap"]["outputCol"] == "projected"
    stored = json.loads((tmp_path / "pca" / "metadata" / "part-00000").read_text())
    assert stored["fruitpipe"]["arrays"]["shapes"] == {"mean": [12], "std": [12], "components": [12, 4],
                                                        "explained_variance": [4]}
