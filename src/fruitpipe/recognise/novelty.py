"""The "unlike anything trained on" gate: a photo far from every class's training rows is unknown.

A classifier trained only on fruit spreads its probability over fruit classes whatever it is shown, so a
cat or a street can come out confident. The calibrated confidence cannot see that; the features can: a
photo of a street lies far from every class's rows in the space the classifier reads. Pure numpy, no Spark
(`fruitpipe train` aggregates the sums in Spark; the bundle applies the result).

- Space: the classifier's own input (the `pca` column, the bundle's float32-rounded projection).
- Centroids: per class and kind of row (photos; augmented views, when the run has them), the mean of the
  L2-normalised rows, normalised. One centroid per class mixing both was dominated by the views (eight
  per photo, with a common offset from the photos' mean the PCA is centred on), so photos sat far from
  it: on the eight-view recipe's validation part 7.6% of the photos were above a threshold that flagged
  0.1% of the views (and 0.6% of the bundled outlier photos). With a centroid per kind: 0.7% of the
  photos, 0.95% of the views, 8.7% of the outlier photos (docs/recognition.md).
- Novelty of a row: 1 - its highest cosine similarity to any centroid (0: on a centroid, 2: opposite).
- Threshold: the NOVELTY_QUANTILE quantile of the validation rows' novelty against centroids of the fit
  part only, so the held-out rows stand for unseen in-domain photos: about 1% of in-domain validation rows
  (photos and their training-side views) is flagged. Fixed before any non-fruit photo was scored; no
  non-fruit photo, Test or suite image takes part in it. The bundle keeps the centroids of all of Training
  (as its classifier is refitted there) with that threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOVELTY_QUANTILE = 0.99


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float64); an all-zero row stays zero."""
    values = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    unit: np.ndarray = values / np.where(norms > 0, norms, 1.0)
    return unit


def class_sums(rows: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums of the unit rows per class (n_classes, k), rows per class): what one task contributes."""
    unit = unit_rows(rows)
    sums = np.zeros((n_classes, unit.shape[1]))
    np.add.at(sums, np.asarray(labels, dtype=np.int64), unit)
    return sums, np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def centroids(sums: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Per-group sums of unit rows -> unit centroids; with `counts`, groups without rows are left out (a
    zero centroid would cap every novelty at 1)."""
    kept = sums if counts is None else np.asarray(sums)[np.asarray(counts) > 0]
    return unit_rows(kept)


def group_of(labels: np.ndarray, views: np.ndarray, n_classes: int) -> np.ndarray:
    """The centroid group of each row: its class for a photo (view 0), n_classes + its class for a view."""
    return np.asarray(labels, dtype=np.int64) + n_classes * (np.asarray(views) > 0)


def novelty(rows: np.ndarray, class_centroids: np.ndarray) -> np.ndarray:
    """1 - the highest cosine similarity of each row to any class centroid."""
    similarity = unit_rows(rows) @ np.asarray(class_centroids, dtype=np.float64).T
    scores: np.ndarray = 1.0 - similarity.max(axis=1)
    return scores


@dataclass(frozen=True)
class NoveltyChoice:
    threshold: float
    flagged: float  # share of the validation rows above it


def choose_threshold(validation_novelty: np.ndarray, quantile: float = NOVELTY_QUANTILE) -> NoveltyChoice:
    """The `quantile` of the validation rows' novelty (an actual row's value: the 'higher' method)."""
    scores = np.asarray(validation_novelty, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no validation rows to choose the novelty threshold on")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"the novelty quantile must be in (0, 1], got {quantile}")
    threshold = float(np.quantile(scores, quantile, method="higher"))
    return NoveltyChoice(threshold, float(np.mean(scores > threshold)))
