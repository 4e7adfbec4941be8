"""ImageFeaturizer: a pyspark.ml Transformer from image paths to CNN features.

The driver resolves the model and ships its ONNX file (`sparkapi.ship_file`: addFile, or a Spark Connect
file artifact); executors
read, decode and embed (fruitpipe.executor). Rows that fail keep their place with a null
feature vector and an error stage and reason, so nothing is silently dropped.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_type
from pyspark.sql.types import StructField, StructType

from fruitpipe import sparkapi
from fruitpipe.config import (
    DEFAULT_MODEL,
    DecodeLimits,
    ExecutorSettings,
    S3Options,
    check_augment,
    check_augment_strength,
)
from fruitpipe.executor.journal import SUMMARY_SCHEMA, JournalTask, journal_partition
from fruitpipe.executor.metering import Meter, cpu_metered
from fruitpipe.executor.worker import WARM_FIELDS, FeaturizeTask, featurize_partition, output_fields, warm_partition
from fruitpipe.image import models, shifts
from fruitpipe.ml.columns import HasColumns
from fruitpipe.runtime import DEFAULT_PRECISION, Runtime, resolve
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)


class ImageFeaturizer(Transformer, HasColumns, DefaultParamsReadable["ImageFeaturizer"], DefaultParamsWritable):
    """Adds view, width, height, features (array<float>), error_stage and error_reason columns; with
    `augment` N, each chosen image's row comes out N + 1 times (view 0 the image, 1..N its views)."""

    modelName = Param(Params._dummy(), "modelName", "registry name of the model", TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "images per model call", TypeConverters.toInt)
    readThreads = Param(Params._dummy(), "readThreads", "concurrent reads per task", TypeConverters.toInt)
    maxBytes = Param(Params._dummy(), "maxBytes", "largest accepted file in bytes", TypeConverters.toInt)
    maxPixels = Param(Params._dummy(), "maxPixels", "largest accepted image in pixels", TypeConverters.toInt)
    imageSize = Param(Params._dummy(), "imageSize", "square input side in pixels (0 = the model's own)",
                      TypeConverters.toInt)
    precision = Param(Params._dummy(), "precision", "fp32, bf16 or auto (see fruitpipe.runtime)",
                      TypeConverters.toString)
    inferBatch = Param(Params._dummy(), "inferBatch", "images per model call (0 = the engine's measured best)",
                       TypeConverters.toInt)
    augment = Param(Params._dummy(), "augment", "augmented views per image besides the image itself (0-32; "
                    "training-side shifts, deterministic per path and view; rows carry `view`)", TypeConverters.toInt)
    augmentCol = Param(Params._dummy(), "augmentCol", "boolean column choosing the images to augment "
                       "('' = every image)", TypeConverters.toString)
    augmentFamilies = Param(Params._dummy(), "augmentFamilies", "comma-separated training-side shift families the "
                            "views draw from ('' = all of them)", TypeConverters.toString)
    augmentStrength = Param(Params._dummy(), "augmentStrength", "scales each family's strength in the views "
                            "(0 < s <= 2)", TypeConverters.toFloat)
    s3Options = Param(Params._dummy(), "s3Options", "S3 options as S3Options.to_wire() writes them",
                      TypeConverters.toString)
    # Read only: featurizers saved before s3Options held these three (and no read_attempts); declared so
    # that they still load, and used only when such a featurizer has no s3Options set.
    s3EndpointUrl = Param(Params._dummy(), "s3EndpointUrl", "legacy: S3-compatible endpoint ('' = AWS chain default)",
                          TypeConverters.toString)
    s3Region = Param(Params._dummy(), "s3Region", "legacy: S3 region ('' = AWS chain default)",
                     TypeConverters.toString)
    s3AddressingStyle = Param(Params._dummy(), "s3AddressingStyle", "legacy: path, virtual or auto ('' = default)",
                              TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol: str = "path", outputCol: str = "features", modelName: str = DEFAULT_MODEL,
                 batchSize: int = ExecutorSettings.batch_size, readThreads: int = ExecutorSettings.read_threads,
                 maxBytes: int = DecodeLimits.max_bytes, maxPixels: int = DecodeLimits.max_pixels,
                 imageSize: int = 0, precision: str = DEFAULT_PRECISION, inferBatch: int = 0,
                 s3Options: str = S3Options().to_wire(), augment: int = 0, augmentCol: str = "",
                 augmentFamilies: str = "", augmentStrength: float = 1.0) -> None:
        super().__init__()
        self._setDefault(inputCol="path", outputCol="features", modelName=DEFAULT_MODEL,
                         batchSize=ExecutorSettings.batch_size, readThreads=ExecutorSettings.read_threads,
                         maxBytes=DecodeLimits.max_bytes, maxPixels=DecodeLimits.max_pixels,
                         imageSize=0, precision=DEFAULT_PRECISION, inferBatch=0,
                         s3Options=S3Options().to_wire(), augment=0, augmentCol="", augmentFamilies="",
                         augmentStrength=1.0)
        self._set(**self._input_kwargs)  # type: ignore[attr-defined]  # set by pyspark's @keyword_only

    def setModelName(self, value: str) -> ImageFeaturizer:
        return self._set(modelName=value)

    def meter_cpu(self, meter: Meter | None) -> ImageFeaturizer:
        """Add the Python workers' CPU seconds of every later transform to `meter` (a Spark accumulator,
        `sparkapi.cpu_meter`; None: not measured). Not a Param: a run's meter is not saved with the stage."""
        self._cpu_meter = meter
        return self

    def s3_options(self) -> S3Options:
        """From s3Options; from the legacy params only for a featurizer saved with them and without it."""
        legacy = [self.getOrDefault(param) if self.isDefined(param) else ""
                  for param in (self.s3EndpointUrl, self.s3Region, self.s3AddressingStyle)]
        if self.isSet(self.s3Options) or not any(legacy):
            return S3Options.from_wire(self.getOrDefault(self.s3Options))
        endpoint_url, region, addressing_style = (value or None for value in legacy)
        return S3Options(endpoint_url=endpoint_url, region=region, addressing_style=addressing_style)

    def spec(self) -> models.ModelSpec:
        """The resolved model spec (raises ValueError for an unknown model)."""
        return models.with_input_size(models.resolve(self.getOrDefault(self.modelName)),
                                      self.getOrDefault(self.imageSize) or None)

    def runtime(self) -> Runtime:
        """The resolved precision and engine (raises ValueError when this machine cannot run it)."""
        return resolve(self.getOrDefault(self.precision), self.getOrDefault(self.inferBatch) or None)

    def views(self) -> int:
        """The augment Param, checked (ValueError outside 0..MAX_AUGMENT)."""
        return check_augment(self.getOrDefault(self.augment))

    def view_families(self) -> tuple[str, ...]:
        """The augmentFamilies Param as family names in the order views apply them (ValueError for an unknown
        or evaluation-side one)."""
        names = [name.strip() for name in self.getOrDefault(self.augmentFamilies).split(",") if name.strip()]
        return shifts.view_families(names)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        task = self._task(dataset, identify=False)
        added = [StructField(f.name, from_arrow_type(f.type), True) for f in output_fields(task.output_col)]
        schema = StructType(dataset.schema.fields + added)
        return dataset.mapInArrow(self._metered(functools.partial(featurize_partition, task)), schema)

    def journal(self, dataset: DataFrame, journal: JournalTask) -> DataFrame:
        """Featurize `dataset` (path, label, split, key, version, prior_sha256, prior_version) into the
        journal's segments, one per batch (`fruitpipe.executor.journal`); returns one (key, outcome) row
        per image: the features stay in the segments, nothing heavy crosses back to the JVM."""
        task = self._task(dataset, identify=True)
        body = functools.partial(journal_partition, task, journal)
        schema = StructType([StructField(f.name, from_arrow_type(f.type), True) for f in SUMMARY_SCHEMA])
        return dataset.mapInArrow(self._metered(body), schema)

    def warm(self, spark: SparkSession, tasks: int) -> list[tuple[int, bool]]:
        """A job of `tasks` tiny tasks that load this featurizer's model in the Python workers that run them
        and run it once: (worker pid, whether it already had the model) per task. Spark ends Python workers
        idle for a minute; a job now and then keeps them, and their loaded model, for the next transform."""
        dataset = spark.range(tasks, numPartitions=tasks)
        body = functools.partial(warm_partition, self._task(dataset, identify=False))
        schema = StructType([StructField(f.name, from_arrow_type(f.type), f.nullable) for f in WARM_FIELDS])
        return [(int(row["pid"]), bool(row["had_model"])) for row in dataset.mapInArrow(body, schema).collect()]

    def _metered(self, body: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
                 ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
        meter: Meter | None = getattr(self, "_cpu_meter", None)  # absent on a loaded or fresh stage
        return body if meter is None else functools.partial(cpu_metered, meter, body)

    def _task(self, dataset: DataFrame, identify: bool) -> FeaturizeTask:
        augment = self.views()
        spec = self.spec()
        onnx_path = models.onnx_file(spec)
        spark = dataset.sparkSession
        settings = ExecutorSettings(self.getOrDefault(self.batchSize), self.getOrDefault(self.readThreads))
        return FeaturizeTask(
            model_file=sparkapi.ship_file(spark, str(onnx_path)),
            preprocessing=spec.preprocessing,
            runtime=self.runtime(),
            feature_dim=spec.feature_dim,
            limits=DecodeLimits(self.getOrDefault(self.maxBytes), self.getOrDefault(self.maxPixels)),
            path_col=self.getInputCol(),
            output_col=self.getOutputCol(),
            batch_size=settings.batch_size,
            read_threads=settings.read_threads,
            threads=int(spark.conf.get("spark.task.cpus", "1") or 1),
            store=Store(self.s3_options()),
            augment=augment,
            augment_col=self.getOrDefault(self.augmentCol) or None,
            augment_families=self.view_families(),
            augment_strength=check_augment_strength(self.getOrDefault(self.augmentStrength)),
            identify=identify,
        )
