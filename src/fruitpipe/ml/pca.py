"""CentredPCA: Spark MLlib PCA on mean-centred vectors, with k fixed or chosen by variance.

Spark's PCAModel projects raw vectors (it does not subtract the mean), so the model here is a
StandardScaler (withMean, withStd=False) followed by a Spark PCAModel. Fitting takes two
distributed MLlib computations (StandardScaler's mean/std, then `Correlation.corr`, itself a few
jobs) and one driver-side eigendecomposition that yields the full explained-variance spectrum and any k at once. Input and output are array<float>
columns, the form fruitpipe stores; conversion to ML vectors stays inside. The fitted model is saved
by the driver alone (`ml.persist`: mean, components, spectrum), so it is complete on any cluster and
on s3://; loading rebuilds the two Spark models from those arrays.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.common import _py2java
from pyspark.ml.feature import PCAModel, StandardScaler, StandardScalerModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable, MLReadable, MLReader, MLWritable, MLWriter
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.stat import Correlation
from pyspark.sql import DataFrame, SparkSession

from fruitpipe.config import DEFAULT_VARIANCE
from fruitpipe.ml import persist
from fruitpipe.ml.columns import HasColumns

logger = logging.getLogger(__name__)
_VECTOR, _CENTRED, _PROJECTED = "__fp_vector", "__fp_centred", "__fp_projected"


def smallest_k(ratios: list[float], target: float) -> int:
    """Smallest k whose cumulative explained variance reaches `target` (tolerant to rounding)."""
    total = 0.0
    for index, ratio in enumerate(ratios, start=1):
        total += ratio
        if total >= target - 1e-9:
            return index
    return len(ratios)


def principal_axes(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and unit eigenvectors (columns) of a covariance matrix.

    Signs are fixed (largest-magnitude loading positive) so that runs are reproducible."""
    eigenvalues, vectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = np.clip(eigenvalues[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return eigenvalues, vectors * np.where(signs == 0, 1.0, signs)


def _covariance(vectors: DataFrame, std: np.ndarray) -> np.ndarray:
    """Sample covariance, computed distributed by MLlib (Pearson correlation rescaled by the stds).

    The d x d eigendecomposition then runs on the driver with LAPACK (numpy), as Spark's own
    PCA does on the driver, but without Spark's slow pure-JVM fallback when no native BLAS exists."""
    correlation = Correlation.corr(vectors, _VECTOR).head()[0].toArray()
    correlation = np.nan_to_num(correlation, nan=0.0)  # constant features: zero covariance
    return correlation * np.outer(std, std)


def _scaler_model(spark: SparkSession, mean: np.ndarray, std: np.ndarray) -> StandardScalerModel:
    """The centring step as a genuine Spark StandardScalerModel (withMean, withStd=False)."""
    sc = spark.sparkContext
    java_model = sc._jvm.org.apache.spark.ml.feature.StandardScalerModel(
        f"StandardScaler_{uuid.uuid4().hex[:12]}", _py2java(sc, DenseVector(std)), _py2java(sc, DenseVector(mean)))
    model = StandardScalerModel(java_model)
    model._set(withMean=True, withStd=False, inputCol=_VECTOR, outputCol=_CENTRED)
    return model


def _pca_model(spark: SparkSession, components: np.ndarray, ratios: list[float]) -> PCAModel:
    """A genuine Spark ML PCAModel (JVM transform, save/load) built from the given axes."""
    sc = spark.sparkContext
    rows, k = components.shape
    matrix = DenseMatrix(rows, k, components.flatten(order="F").tolist())
    java_model = sc._jvm.org.apache.spark.ml.feature.PCAModel(
        f"PCA_{uuid.uuid4().hex[:12]}",
        _py2java(sc, matrix), _py2java(sc, DenseVector(ratios)))
    model = PCAModel(java_model)
    model._set(k=k, inputCol=_CENTRED, outputCol=_PROJECTED)
    return model


class _PcaParams(HasColumns):
    k = Param(Params._dummy(), "k", "number of components (unset: chosen by varianceTarget)",
              TypeConverters.toInt)
    varianceTarget = Param(Params._dummy(), "varianceTarget",
                           "smallest k reaching this share of variance, when k is not set", TypeConverters.toFloat)

    def setK(self, value: int) -> Any:  # noqa: N802 - pyspark.ml naming
        return self._set(k=value)

    def setVarianceTarget(self, value: float) -> Any:  # noqa: N802
        return self._set(varianceTarget=value)


class CentredPCA(Estimator, _PcaParams, DefaultParamsReadable, DefaultParamsWritable):
    """Fits the mean, the full explained-variance spectrum, and the k-component projection."""

    @keyword_only
    def __init__(self, *, inputCol: str = "features", outputCol: str = "pca", k: int | None = None,
                 varianceTarget: float = DEFAULT_VARIANCE) -> None:
        super().__init__()
        self._setDefault(inputCol="features", outputCol="pca", varianceTarget=DEFAULT_VARIANCE)
        kwargs = {key: value for key, value in self._input_kwargs.items() if value is not None}
        self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> CentredPCAModel:
        vectors = dataset.select(array_to_vector(self.getInputCol()).alias(_VECTOR))
        scaler = StandardScaler(withMean=True, withStd=False, inputCol=_VECTOR, outputCol=_CENTRED).fit(vectors)
        eigenvalues, components = principal_axes(_covariance(vectors, scaler.std.toArray()))
        total = float(eigenvalues.sum())
        if total <= 0.0:
            raise ValueError("the features have no variance (all images gave the same vector); PCA is undefined")
        ratios = [float(v) for v in eigenvalues / total]
        k = self._choose_k(ratios)
        pca = _pca_model(dataset.sparkSession, components[:, :k], ratios[:k])
        logger.info("PCA: k=%d keeps %.4f of the variance", k, sum(ratios[:k]))
        return self._copyValues(CentredPCAModel(scaler=scaler, pca=pca, spectrum=ratios))

    def _choose_k(self, ratios: list[float]) -> int:
        if self.isSet(self.k):
            k = self.getOrDefault(self.k)
            if not 1 <= k <= len(ratios):
                raise ValueError(f"k={k} is outside 1..{len(ratios)} (the feature dimension)")
            return k
        return smallest_k(ratios, self.getOrDefault(self.varianceTarget))


class CentredPCAModel(Model, _PcaParams, MLReadable, MLWritable):
    """Centre with the fitted mean, project on the top k components; array<float> out."""

    def __init__(self, scaler: StandardScalerModel | None = None, pca: PCAModel | None = None,
                 spectrum: list[float] | None = None) -> None:
        super().__init__()
        self.scaler, self.pca = scaler, pca
        self.spectrum = list(spectrum or [])

    @property
    def components(self) -> int:
        return self.pca.getK()

    @property
    def variance_kept(self) -> float:
        return float(sum(self.spectrum[: self.components]))

    def _transform(self, dataset: DataFrame) -> DataFrame:
        with_vectors = dataset.withColumn(_VECTOR, array_to_vector(self.getInputCol()))
        projected = self.pca.transform(self.scaler.transform(with_vectors))
        return projected.withColumn(self.getOutputCol(), vector_to_array(_PROJECTED, dtype="float32")).drop(
            _VECTOR, _CENTRED, _PROJECTED
        )

    def write(self) -> MLWriter:
        return persist.DriverWriter(self._save)

    @classmethod
    def read(cls) -> MLReader:
        return _CentredPCAModelReader(cls)

    def _save(self, path: str, overwrite: bool) -> None:
        arrays = {"mean": self.scaler.mean.toArray(), "std": self.scaler.std.toArray(),
                  "components": self.pca.pc.toArray(), "explained_variance": self.pca.explainedVariance.toArray()}
        persist.save(self, path, arrays, extra={"spectrum": self.spectrum}, overwrite=overwrite)


class _CentredPCAModelReader(MLReader):
    def __init__(self, cls: type[CentredPCAModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        metadata, arrays = persist.load(path, f"{self.cls.__module__}.{self.cls.__name__}")
        spark = self.sparkSession
        model = self.cls(scaler=_scaler_model(spark, arrays["mean"], arrays["std"]),
                         pca=_pca_model(spark, arrays["components"], arrays["explained_variance"].tolist()),
                         spectrum=metadata["fruitpipe"]["spectrum"])
        persist.apply_params(model, metadata)
        return model
