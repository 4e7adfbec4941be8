"""Spark's LogisticRegressionModel saved and loaded by the driver (`ml.persist`), for `fruitpipe train`.

Spark's own writer would save the coefficients from an executor task (see `ml.persist`); here the
driver writes them and loading rebuilds a genuine LogisticRegressionModel (JVM transform) from them.
"""
from __future__ import annotations

from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.common import _py2java
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import SparkSession

from fruitpipe.ml import persist
from fruitpipe.storage import Store

CLASS_NAME = "pyspark.ml.classification.LogisticRegressionModel"


def save_logistic_regression(model: LogisticRegressionModel, uri: str, overwrite: bool = False, *,
                             store: Store = Store()) -> None:
    """Coefficients, intercepts, class count and family from the driver (local or s3://).

    Spark's own `LogisticRegressionModel.load` cannot read the folder: use `load_logistic_regression`."""
    family = model.getOrDefault("family")
    multinomial = family == "multinomial" or (family == "auto" and model.numClasses > 2)  # Spark's rule
    arrays = {"coefficients": model.coefficientMatrix.toArray(), "intercepts": model.interceptVector.toArray()}
    persist.save(store, model, uri, arrays, extra={"num_classes": model.numClasses, "multinomial": multinomial},
                 class_name=CLASS_NAME, overwrite=overwrite)


def load_logistic_regression(uri: str, *, store: Store = Store()) -> LogisticRegressionModel:
    """A model saved by `save_logistic_regression` (local or s3://), in the active SparkSession."""
    metadata, arrays = persist.load(store, uri, CLASS_NAME)
    coefficients, intercepts = arrays["coefficients"], arrays["intercepts"]
    sc = SparkSession.active().sparkContext
    # row major, as Spark's binomial models require (one row; one per class when multinomial)
    matrix = DenseMatrix(*coefficients.shape, coefficients.flatten(order="C").tolist(), isTransposed=True)
    saved = metadata["fruitpipe"]
    java_model = sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
        metadata["uid"], _py2java(sc, matrix), _py2java(sc, DenseVector(intercepts)), int(saved["num_classes"]),
        bool(saved["multinomial"]))
    model = LogisticRegressionModel(java_model)
    persist.apply_params(model, metadata)
    return model
