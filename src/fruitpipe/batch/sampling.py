"""The report's sample, drawn in Spark at the end of a run: a few photos per class with their first two
PCA coordinates, so the report's scatter and thumbnails need no pass over the features afterwards.

Bounded (about 2 x `per_class` rows per class reach the driver, whatever the run's size) and
deterministic (chosen by a hash of the path): the same input gives the same sample on every run.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
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


def added_counts(earlier: Sequence[ClassCount], added: Sequence[ClassCount]) -> tuple[ClassCount, ...]:
    """Per-class counts of two sets of photos together, in `outcomes`' order."""
    totals: dict[tuple[str | None, str | None], ClassCount] = {}
    for count in (*earlier, *added):
        key = (count.label, count.split)
        before = totals.get(key, ClassCount(count.label, count.split, 0, 0))
        totals[key] = ClassCount(count.label, count.split, before.ok + count.ok, before.rejected + count.rejected)
    return tuple(sorted(totals.values(), key=lambda count: (count.split or "", count.label or "")))


def stratified_sample(photos: DataFrame, pca: CentredPCAModel, counts: Sequence[ClassCount],
                      per_class: int = SAMPLE_PER_CLASS) -> ReportSample:
    """Up to `per_class` of `photos` (featurized rows, view 0) per label, projected with `pca`.

    One narrow pass, no shuffle: each photo gets a uniform draw from a hash of its path, and a class of
    n photos keeps those below OVERSAMPLE x per_class / n (`counts`, the run's per-class counts), about
    OVERSAMPLE x per_class rows; those few rows are projected in one task and the driver keeps each
    class's `per_class` lowest draws. The same input gives the same sample on every run and cluster."""
    return _lowest_draws(_candidates(photos, pca, counts, per_class), per_class)


def extended_sample(previous: ReportSample, added: DataFrame, pca: CentredPCAModel, counts: Sequence[ClassCount]
                    ) -> ReportSample:
    """The sample `stratified_sample` draws from the previous photos and `added` together (`counts`: the
    per-class counts of both), from the previous sample and the added photos only: a pass that appends
    photos under a frozen PCA reads no earlier row. The previous points are drawn again (the draw is a hash
    of the path) and kept where the new counts' fractions still take them."""
    points = previous.points
    earlier = added.sparkSession.createDataFrame(
        [(point.path, point.label, point.split, point.pc1, point.pc2) for point in points],
        "path string, label string, split string, pc1 double, pc2 double")
    drawn = earlier.withColumn(RANK, _draw()).where(F.col(RANK) < _fractions(counts, previous.per_class))
    rows = [(row["path"], row["label"], row["split"], row[RANK], row["pc1"], row["pc2"]) for row in drawn.collect()]
    return _lowest_draws(rows + _candidates(added, pca, counts, previous.per_class), previous.per_class)


Candidate = tuple[str, str | None, str | None, float, float, float | None]  # path, label, split, draw, pc1, pc2


def _draw() -> Column:
    return F.xxhash64("path").bitwiseAND(F.lit(HASH_MASK)) / F.lit(float(HASH_MASK + 1))


def _fractions(counts: Sequence[ClassCount], per_class: int) -> Column:
    """Each row's class's share to draw: OVERSAMPLE x per_class / the class's photos (at most 1)."""
    photos_per_label: dict[str, int] = {}
    for count in counts:
        key = count.label or ""
        photos_per_label[key] = photos_per_label.get(key, 0) + count.ok
    fractions = F.create_map(*(item for label, photos_ in photos_per_label.items()
                               for item in (F.lit(label), F.lit(min(1.0, OVERSAMPLE * per_class / max(photos_, 1))))))
    return fractions[F.coalesce(F.col("label"), F.lit(""))]


def _candidates(photos: DataFrame, pca: CentredPCAModel, counts: Sequence[ClassCount],
                per_class: int) -> list[Candidate]:
    """The photos under their class's fraction, projected in one task."""
    chosen = (photos.withColumn(RANK, _draw()).where(F.col(RANK) < _fractions(counts, per_class))
              .select("path", "label", "split", RANK, pca.getInputCol()).coalesce(1))
    rows = pca.transform(chosen).select("path", "label", "split", RANK, F.get(pca.getOutputCol(), 0).alias("pc1"),
                                        F.get(pca.getOutputCol(), 1).alias("pc2")).collect()
    return [(row["path"], row["label"], row["split"], row[RANK], row["pc1"], row["pc2"]) for row in rows]


def _lowest_draws(rows: list[Candidate], per_class: int) -> ReportSample:
    """Each class's `per_class` lowest draws, in class then draw order."""
    rows = sorted(rows, key=lambda row: (row[1] or "", row[3], row[0]))
    kept: list[SamplePoint] = []
    taken: dict[str | None, int] = {}
    for path, label, split, _, pc1, pc2 in rows:
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            kept.append(SamplePoint(path, label, split, float(pc1), float(pc2 or 0.0)))
    return ReportSample(per_class, tuple(kept))
