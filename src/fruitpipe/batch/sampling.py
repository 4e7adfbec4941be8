"""The report's sample, drawn in Spark at the end of a run: a few photos per class with their first two
PCA coordinates, so the report's scatter and thumbnails need no pass over the features afterwards.

Bounded (at most `per_class` rows per class reach the driver) and deterministic (chosen by a hash of
the path, ties broken by the path): the same input gives the same sample on every run and cluster.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from fruitpipe.batch.manifest import ClassCount, ReportSample, SamplePoint
from fruitpipe.executor.worker import ERROR_STAGE, VIEW
from fruitpipe.ml import CentredPCAModel

SAMPLE_PER_CLASS = 40  # scatter points per class; the thumbnails are the first few of them
RANK = "__rank"


def outcomes(featurized: DataFrame) -> tuple[tuple[ClassCount, ...], int]:
    """Photos featurized and rejected per (label, split), sorted by split then label, and the augmented
    views in all: one aggregation on the featurized rows (classes x splits rows reach the driver)."""
    photo = F.col(VIEW) == 0
    rows = featurized.groupBy("label", "split").agg(
        F.count(F.when(F.col(ERROR_STAGE).isNull() & photo, 1)).alias("ok"),
        F.count(F.when(F.col(ERROR_STAGE).isNotNull(), 1)).alias("rejected"),
        F.count(F.when(~photo, 1)).alias("views"),
    ).collect()
    counts = [ClassCount(row["label"], row["split"], int(row["ok"]), int(row["rejected"])) for row in rows]
    ordered = tuple(sorted(counts, key=lambda count: (count.split or "", count.label or "")))
    return ordered, sum(int(row["views"]) for row in rows)


def stratified_sample(photos: DataFrame, pca: CentredPCAModel, per_class: int = SAMPLE_PER_CLASS) -> ReportSample:
    """Up to `per_class` of `photos` (featurized rows, view 0) per label, projected with `pca`.

    The ranking runs on (path, label) only; the chosen paths are joined back (broadcast) so only the
    sample's feature vectors are projected."""
    order = Window.partitionBy("label").orderBy(F.xxhash64("path"), "path")
    chosen = (photos.select("path", "label").withColumn(RANK, F.row_number().over(order))
              .where(F.col(RANK) <= per_class).select("path", RANK))
    projected = pca.transform(photos.join(F.broadcast(chosen), "path").select("path", "label", "split", RANK,
                                                                              pca.getInputCol()))
    rows = projected.select("path", "label", "split", RANK, F.get(pca.getOutputCol(), 0).alias("pc1"),
                            F.get(pca.getOutputCol(), 1).alias("pc2")).collect()
    rows.sort(key=lambda row: (row["label"] or "", row[RANK]))
    return ReportSample(per_class, tuple(SamplePoint(row["path"], row["label"], row["split"], float(row["pc1"]),
                                                     float(row["pc2"] or 0.0)) for row in rows))
