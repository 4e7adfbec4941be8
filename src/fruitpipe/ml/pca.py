"""CentredPCA: Spark MLlib PCA on mean-centred vectors, with k fixed or chosen by variance.

Spark's PCAModel projects raw vectors (it does not subtract the mean). The fitted model is its numpy
arrays (`PcaArrays`: mean, std, components, spectrum), always whole; its transform is `Projection`
(numpy in the Python workers). The same model as Spark ML stages (a StandardScalerModel withMean,
withStd=False, then a PCAModel) is built from those arrays only when a caller asks for it, on a classic
session: Spark Connect has no JVM to build them in. Fitting is ONE Spark job
(per-partition X^T X and column sums in numpy, added on the driver) and one driver-side
eigendecomposition that yields the full explained-variance spectrum and any k at once. Input and output are array<float>
columns, the form fruitpipe stores; conversion to ML vectors stays inside. The fitted model is saved
by the driver alone (`ml.persist`: mean, components, spectrum), so it is complete on any cluster and
on s3://; loading reads the arrays back.
"""
from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable, MLReadable, MLReader, MLWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

from fruitpipe import sparkapi
from fruitpipe.config import DEFAULT_VARIANCE
from fruitpipe.ml import persist
from fruitpipe.ml.columns import HasColumns
from fruitpipe.storage import Store

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


GRAM_SCHEMA = "rows long, sums binary, gram binary"
MAX_PARTIALS = 16  # partial Gramians sent to the driver, at most (d x d float64 each: 13 MB at d=1280)
GRAM_ROWS = 1024  # rows converted to float64 at a time: the worker's memory stays flat whatever the data size


def _gram_partition(column: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: row count, column sums and X^T X of this partition's vectors, in float64 (BLAS)."""
    rows, sums, gram = 0, None, None
    for batch in batches:
        values = batch.column(column)
        if values.null_count:
            raise ValueError(f"column {column} has null vectors; drop rejected rows before fitting PCA")
        for start in range(0, len(values), GRAM_ROWS):
            part = values.slice(start, GRAM_ROWS)
            dim = len(part[0])
            x = part.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, dim)
            if gram is None:
                sums, gram = np.zeros(dim), np.zeros((dim, dim))
            rows += len(x)
            sums += x.sum(axis=0)
            gram += x.T @ x
    if sums is not None and gram is not None:
        yield pa.RecordBatch.from_pydict({"rows": [rows], "sums": [sums.tobytes()], "gram": [gram.tobytes()]})


def moments(dataset: DataFrame, column: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, mean, sample covariance) of an array<float> column in ONE pass over the data.

    The data is coalesced to one partition per core (at most MAX_PARTIALS), each task computes its
    X^T X and column sums with numpy (BLAS), and the driver adds the few partials it receives (Arrow).
    Replaces MLlib's mean pass + Pearson correlation (four jobs, 13.4 s at 10k images on 2 cores; this
    pass: 2.3 s, docs/performance.md). Float64 throughout, so the uncentred Gramian loses nothing
    that the sklearn parity tests (<= 1e-4) would see."""
    data = dataset.select(column).coalesce(min(MAX_PARTIALS, sparkapi.default_parallelism(dataset.sparkSession)))
    partials = data.mapInArrow(functools.partial(_gram_partition, column), GRAM_SCHEMA).toArrow().to_pylist()
    n = sum(int(row["rows"]) for row in partials)
    if n < 2:
        raise ValueError(f"PCA needs at least 2 vectors, got {n}")
    sums: np.ndarray = functools.reduce(np.add, (np.frombuffer(row["sums"], dtype=np.float64) for row in partials))
    dim = len(sums)
    gram: np.ndarray = functools.reduce(
        np.add, (np.frombuffer(row["gram"], dtype=np.float64).reshape(dim, dim) for row in partials))
    mean = sums / n
    covariance = (gram - n * np.outer(mean, mean)) / (n - 1)
    return n, mean, (covariance + covariance.T) / 2


def _scaler_model(spark: SparkSession, mean: np.ndarray, std: np.ndarray) -> StandardScalerModel:
    """The centring step as a genuine Spark StandardScalerModel (withMean, withStd=False)."""
    java_model = sparkapi.java_model(spark, "org.apache.spark.ml.feature.StandardScalerModel",
                                     f"StandardScaler_{uuid.uuid4().hex[:12]}", DenseVector(std), DenseVector(mean))
    model = StandardScalerModel(java_model)
    model._set(withMean=True, withStd=False, inputCol=_VECTOR, outputCol=_CENTRED)
    return model


def _pca_model(spark: SparkSession, components: np.ndarray, ratios: list[float]) -> PCAModel:
    """A genuine Spark ML PCAModel (JVM transform, save/load) built from the given axes."""
    rows, k = components.shape
    matrix = DenseMatrix(rows, k, components.flatten(order="F").tolist())
    java_model = sparkapi.java_model(spark, "org.apache.spark.ml.feature.PCAModel", f"PCA_{uuid.uuid4().hex[:12]}",
                                     matrix, DenseVector(ratios))
    model = PCAModel(java_model)
    model._set(k=k, inputCol=_CENTRED, outputCol=_PROJECTED)
    return model


class _PcaParams(HasColumns):
    k = Param(Params._dummy(), "k", "number of components (unset: chosen by varianceTarget)",
              TypeConverters.toInt)
    varianceTarget = Param(Params._dummy(), "varianceTarget",
                           "smallest k reaching this share of variance, when k is not set", TypeConverters.toFloat)

    def setK(self, value: int) -> Any:
        return self._set(k=value)

    def setVarianceTarget(self, value: float) -> Any:
        return self._set(varianceTarget=value)


class CentredPCA(Estimator["CentredPCAModel"], _PcaParams, DefaultParamsReadable["CentredPCA"], DefaultParamsWritable):
    """Fits the mean, the full explained-variance spectrum, and the k-component projection."""

    @keyword_only
    def __init__(self, *, inputCol: str = "features", outputCol: str = "pca", k: int | None = None,
                 varianceTarget: float | None = DEFAULT_VARIANCE) -> None:
        """k wins over varianceTarget; None for either means "not given" (the CLI passes its settings as is)."""
        super().__init__()
        self._setDefault(inputCol="features", outputCol="pca", varianceTarget=DEFAULT_VARIANCE)
        given = self._input_kwargs  # type: ignore[attr-defined]  # set by pyspark's @keyword_only
        kwargs = {key: value for key, value in given.items() if value is not None}
        self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> CentredPCAModel:
        _, mean, covariance = moments(dataset, self.getInputCol())
        std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        eigenvalues, components = principal_axes(covariance)
        total = float(eigenvalues.sum())
        if total <= 0.0:
            raise ValueError("the features have no variance (all images gave the same vector); PCA is undefined")
        ratios = [float(v) for v in eigenvalues / total]
        k = self._choose_k(ratios)
        logger.info("PCA: k=%d keeps %.4f of the variance", k, sum(ratios[:k]))
        return self._copyValues(CentredPCAModel(PcaArrays.of(mean, std, components[:, :k], ratios)))

    def _choose_k(self, ratios: list[float]) -> int:
        if self.isSet(self.k):
            k = self.getOrDefault(self.k)
            if not 1 <= k <= len(ratios):
                raise ValueError(f"k={k} is outside 1..{len(ratios)} (the feature dimension)")
            return k
        return smallest_k(ratios, self.getOrDefault(self.varianceTarget))


@dataclass(frozen=True)
class Projection:
    """mapInArrow body: appends (x - mean) @ components as float32 (null where x is null)."""

    input_col: str
    output_col: str
    mean: np.ndarray
    components: np.ndarray

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield self.apply(batch)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        k = self.components.shape[1]
        values = batch.column(self.input_col)
        valid = ~np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        x = values.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        x = x.astype(np.float64).reshape(-1, len(self.mean))
        projected = ((x - self.mean) @ self.components).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(np.where(valid, k, 0))]).astype(np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(projected.reshape(-1), type=pa.float32()),
                                          mask=pa.array(~valid))
        return pa.RecordBatch.from_arrays([*batch.columns, column], names=[*batch.schema.names, self.output_col])


def _frozen(values: Any, dims: int) -> np.ndarray:
    """A read-only float64 copy: a PcaArrays value cannot change under the model that holds it."""
    array = np.array(values, dtype=np.float64)
    if array.ndim != dims:
        raise ValueError(f"expected a {dims}-d array, got shape {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class PcaArrays:
    """What a fitted centred PCA is: column means and standard deviations (d), the kept axes (d x k, unit
    columns) and the full explained-variance-ratio spectrum (d values, descending).

    The one description every consumer reads (the projection, `ml.persist`, train's bundle), so none of
    them reaches into Spark models, which exist only on a classic session."""

    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray
    spectrum: tuple[float, ...]

    @classmethod
    def of(cls, mean: Any, std: Any, components: Any, spectrum: Any) -> PcaArrays:
        """Checked, read-only float64 copies (shapes must agree: d, d, d x k with 1 <= k <= len(spectrum))."""
        arrays = cls(_frozen(mean, 1), _frozen(std, 1), _frozen(components, 2), tuple(float(v) for v in spectrum))
        dim, k = arrays.components.shape
        if arrays.mean.shape != (dim,) or arrays.std.shape != (dim,) or not 1 <= k <= len(arrays.spectrum):
            raise ValueError(f"inconsistent PCA arrays: mean {arrays.mean.shape}, std {arrays.std.shape}, "
                             f"components {arrays.components.shape}, spectrum of {len(arrays.spectrum)}")
        return arrays

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    @property
    def variance_kept(self) -> float:
        """Share of the variance the k kept components explain."""
        return float(sum(self.spectrum[: self.k]))

    @property
    def explained_variance(self) -> np.ndarray:
        """Ratios of the kept components (Spark's PCAModel.explainedVariance)."""
        return np.asarray(self.spectrum[: self.k], dtype=np.float64)

    def saved(self) -> dict[str, np.ndarray]:
        """The arrays `ml.persist` writes (names and shapes are the on-disk format: arrays.npz)."""
        return {"mean": self.mean, "std": self.std, "components": self.components,
                "explained_variance": self.explained_variance}


class CentredPCAModel(Model, _PcaParams, MLReadable["CentredPCAModel"], MLWritable):
    """Centre with the fitted mean, project on the top k components; array<float> out."""

    def __init__(self, arrays: PcaArrays) -> None:
        super().__init__()
        self._arrays = arrays

    def arrays(self) -> PcaArrays:
        """The fitted model's arrays (read-only)."""
        return self._arrays

    @property
    def spectrum(self) -> list[float]:
        return list(self._arrays.spectrum)

    @property
    def scaler(self) -> StandardScalerModel:
        """The centring step as a Spark StandardScalerModel, built on first use (classic sessions only)."""
        if self._spark_models is None:
            self._spark_models = _spark_models(self._arrays)
        return self._spark_models[0]

    @property
    def pca(self) -> PCAModel:
        """The projection as a Spark PCAModel on the centred vectors, built on first use (classic sessions only)."""
        if self._spark_models is None:
            self._spark_models = _spark_models(self._arrays)
        return self._spark_models[1]

    _spark_models: tuple[StandardScalerModel, PCAModel] | None = None

    def projection(self) -> Projection:
        """The projection as a picklable Arrow batch function (transform, and the fused features write)."""
        return Projection(self.getInputCol(), self.getOutputCol(), self._arrays.mean, self._arrays.components)

    @property
    def components(self) -> int:
        return self._arrays.k

    @property
    def variance_kept(self) -> float:
        return self._arrays.variance_kept

    def _transform(self, dataset: DataFrame) -> DataFrame:
        """(x - mean) @ components with numpy in the Python workers.

        The same arithmetic as `self.scaler` then `self.pca` (the JVM path through ML vectors, kept for
        Spark ML users on classic sessions), without their per-row vector conversions (that path alone
        took 3.2 s at 10k images, docs/performance.md), and on Spark Connect too."""
        if self.getOutputCol() in dataset.columns:
            raise ValueError(f"column {self.getOutputCol()} already exists")
        projection = self.projection()
        schema = StructType([*dataset.schema.fields,
                             StructField(self.getOutputCol(), ArrayType(FloatType(), False), True)])
        return dataset.mapInArrow(projection, schema)

    def write(self) -> persist.DriverWriter:
        return persist.DriverWriter(self._save)

    @classmethod
    def read(cls) -> _CentredPCAModelReader:
        return _CentredPCAModelReader(cls)

    def _save(self, store: Store, path: str, overwrite: bool) -> None:
        persist.save(store, self, path, self._arrays.saved(), extra={"spectrum": self.spectrum}, overwrite=overwrite)


def _spark_models(arrays: PcaArrays) -> tuple[StandardScalerModel, PCAModel]:
    spark = SparkSession.active()
    return (_scaler_model(spark, arrays.mean, arrays.std),
            _pca_model(spark, arrays.components, arrays.explained_variance.tolist()))


class _CentredPCAModelReader(MLReader[CentredPCAModel], persist.UsesStore):
    def __init__(self, cls: type[CentredPCAModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        metadata, arrays = persist.load(self.store, path, f"{self.cls.__module__}.{self.cls.__name__}")
        model = self.cls(PcaArrays.of(arrays["mean"], arrays["std"], arrays["components"],
                                      metadata["fruitpipe"]["spectrum"]))
        persist.apply_params(model, metadata)
        return model
