"""Spark's LogisticRegressionModel saved and loaded by the driver (`ml.persist`), for `fruitpipe train`.

Spark's own writer would save the coefficients from an executor task (see `ml.persist`); here the
driver writes them and loading rebuilds a genuine LogisticRegressionModel (JVM transform) from them.
"""
from __future__ import annotations

from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import SparkSession

from fruitpipe import sparkapi
from fruitpipe.ml import persist
from fruitpipe.storage import Store

CLASS_NAME = "pyspark.ml.classification.LogisticRegressionModel"


def save_logistic_regression(model: LogisticRegressionModel, uri: str, overwrite: bool = False, *,
                             store: Store | None = None) -> None:
    """Coefficients, intercepts, class count and family from the driver (local or s3://; `store`
    None: `Store()`, the default AWS chain).

    Spark's own `LogisticRegressionModel.load` cannot read the folder: use `load_logistic_regression`."""
    family = model.getOrDefault("family")
    multinomial = family == "multinomial" or (family == "auto" and model.numClasses > 2)  # Spark's rule
    arrays = {"coefficients": model.coefficientMatrix.toArray(), "intercepts": model.interceptVector.toArray()}
    extra = {"num_classes": model.numClasses, "multinomial": multinomial}
    persist.save(store or Store(), model, uri, arrays, extra=extra, class_name=CLASS_NAME, overwrite=overwrite)


def load_logistic_regression(uri: str, *, store: Store | None = None) -> LogisticRegressionModel:
    """A model saved by `save_logistic_regression` (local or s3://), in the active SparkSession."""
    metadata, arrays = persist.load(store or Store(), uri, CLASS_NAME)
    coefficients, intercepts = arrays["coefficients"], arrays["intercepts"]
    # row major, as Spark's binomial models require (one row; one per class when multinomial)
    rows, columns = coefficients.shape
    matrix = DenseMatrix(rows, columns, coefficients.flatten(order="C").tolist(), isTransposed=True)
    saved = metadata["fruitpipe"]
    java_model = sparkapi.java_model(
        SparkSession.active(), "org.apache.spark.ml.classification.LogisticRegressionModel", metadata["uid"], matrix,
        DenseVector(intercepts), int(saved["num_classes"]), bool(saved["multinomial"]))
    model = LogisticRegressionModel(java_model)
    persist.apply_params(model, metadata)
    return model
