"""Outlier exposure: photos of things that are not fruit, trained as one more class, "not a fruit".

A classifier that has only seen fruit spreads a cat's probability over fruit; the novelty gate (cosine
distance to the class centroids) cannot see a cat that lands near some fruit's centroid, and augmented
views, which widen every class, let more of them through. Training a "not a fruit" class on photos of
other things teaches the classifier where those are (Hendrycks et al., "Deep Anomaly Detection with
Outlier Exposure", 2019). `fruitpipe train` featurizes the outlier photos through the run's own model
and PCA (the same Spark path), adds them as the class after the fruit classes, and the bundle answers
"unknown" ("not a fruit") when that class is at least as probable as the most probable fruit.

The bundled pictures (data/outliers, LICENSE.md there) are photos of hand tools, renewable-energy
installations and fishes, and emoji drawings of tools, vehicles, sports balls, stationery, clothes and fishes
in two of the sample's own styles (with photos only, the class learns "a photograph" rather than "no fruit":
the sample's fruit are all drawings). Animals, people, monuments, household objects and the other non-fruit
photos of the recognition benchmark are never trained on, so its unknown rate measures kinds of things the
class has not seen.
"""
from __future__ import annotations

from pathlib import Path

from fruitpipe.config import BUNDLED_OUTLIERS
from fruitpipe.image.sampledata import package_data_dir

OUTLIER_LABEL = "/not fruit"  # the outlier rows' label while training: a slash is never in a folder name


def bundled_outliers_dir() -> Path:
    """fruitpipe's own outlier photos (`data/outliers/`)."""
    return package_data_dir("outliers", "bundled outlier photos")


def source_uri(outliers: str) -> str:
    """`train --outliers` -> the folder or prefix to list (BUNDLED_OUTLIERS: the bundled photos)."""
    return str(bundled_outliers_dir()) if outliers == BUNDLED_OUTLIERS else outliers
