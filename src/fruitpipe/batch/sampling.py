"""The report's sample, drawn in Spark at the end of a run: a few photos per class with their first two
PCA coordinates, so the report's scatter and thumbnails need no pass over the features afterwards.

Bounded (about 2 x `per_class` rows per class reach the driver, whatever the run's size) and
deterministic (chosen by a hash of the path): the same input gives the same sample on every run.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruitpipe.batch.manifest import ClassCount, ReportSample, SamplePoint
from fruitpipe.executor.worker import ERROR_STAGE, VIEW
from fruitpipe.ml import CentredPCAModel

SAMPLE_PER_CLASS = 40  # scatter points per class; the thumbnails are the first few of them
RANK = "__draw"
OVERSAMPLE = 2.0  # rows drawn per class / rows kept: a class falls short of per_class only with tiny odds
HASH_MASK = (1 << 52) - 1  # the hash's low 52 bits: exact in a double, uniform in [0, 1) once divided


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


def stratified_sample(photos: DataFrame, pca: CentredPCAModel, counts: Sequence[ClassCount],
                      per_class: int = SAMPLE_PER_CLASS) -> ReportSample:
    """Up to `per_class` of `photos` (featurized rows, view 0) per label, projected with `pca`.

    One narrow pass, no shuffle: each photo gets a uniform draw from a hash of its path, and a class of
    n photos keeps those below OVERSAMPLE x per_class / n (`counts`, the run's per-class counts), about
    OVERSAMPLE x per_class rows; those few rows are projected in one task and the driver keeps each
    class's `per_class` lowest draws. The same input gives the same sample on every run and cluster."""
    photos_per_label: dict[str, int] = {}
    for count in counts:
        key = count.label or ""
        photos_per_label[key] = photos_per_label.get(key, 0) + count.ok
    fractions = F.create_map(*(item for label, photos_ in photos_per_label.items()
                               for item in (F.lit(label), F.lit(min(1.0, OVERSAMPLE * per_class / max(photos_, 1))))))
    draw = F.xxhash64("path").bitwiseAND(F.lit(HASH_MASK)) / F.lit(float(HASH_MASK + 1))
    chosen = (photos.withColumn(RANK, draw).where(F.col(RANK) < fractions[F.coalesce(F.col("label"), F.lit(""))])
              .select("path", "label", "split", RANK, pca.getInputCol()).coalesce(1))
    rows = pca.transform(chosen).select("path", "label", "split", RANK, F.get(pca.getOutputCol(), 0).alias("pc1"),
                                        F.get(pca.getOutputCol(), 1).alias("pc2")).collect()
    rows.sort(key=lambda row: (row["label"] or "", row[RANK], row["path"]))
    kept: list[SamplePoint] = []
    taken: dict[str | None, int] = {}
    for row in rows:
        if taken.get(row["label"], 0) < per_class:
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            kept.append(SamplePoint(row["path"], row["label"], row["split"], float(row["pc1"]),
                                    float(row["pc2"] or 0.0)))
    return ReportSample(per_class, tuple(kept))
