"""The reference against itself, on the driver's reference sample (numpy only): disjoint halves made of
whole blocks of consecutive frames per class, the half playing "current" sized like the current sample.

Fruits 360 photos of one class folder are frames of one rotating fruit, so frame n and n+1 are near
duplicates. A row-level random split would put twins on both sides and make the reference look far more
self-similar than a new batch of photos of the same fruit ever is: the calibration would then be too
tight and every fresh batch would "drift". Blocks of `block` consecutive file indices per class stay
together; photos without a number in their name are their own block. The split is stratified by class:
unequal class shares between the halves would be a difference no batch of the same data has.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fruitpipe.monitor import statistics


@dataclass(frozen=True)
class ReferenceSample:
    """The reference rows the driver holds: group (class + frame block) ids, the projection on the
    reference's k components, the raw features (for the novelty calibration)."""

    groups: np.ndarray  # (n,) int
    classes: np.ndarray  # (n,) str: the label ("" for a flat folder's top level)
    projected: np.ndarray  # (n, k)
    features: np.ndarray  # (n, d)


def split(sample: ReferenceSample, current_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) row indices, stratified by class: each class's blocks in random order, every other one to B
    (which parity is drawn per class, so neither half is favoured), then B trimmed to `current_size` rows
    at random; A is every row of the other blocks. Halves keep each class's share within one block."""
    in_b = np.zeros(len(sample.groups), dtype=bool)
    for name in np.unique(sample.classes):
        rows = sample.classes == name
        blocks = rng.permutation(np.unique(sample.groups[rows]))
        in_b |= rows & np.isin(sample.groups, blocks[int(rng.integers(2))::2])
    b = np.flatnonzero(in_b)
    if len(b) > current_size:
        b = np.sort(rng.choice(b, current_size, replace=False))
    return np.flatnonzero(~in_b), b


def mmd_calibration(sample: ReferenceSample, current_size: int, sigma2: float, splits: int,
                    rng: np.random.Generator) -> list[float]:
    """Unbiased MMD^2 between the two halves of each split (the kernel of the whole sample computed once)."""
    kernel = statistics.rbf_kernel(sample.projected, sample.projected, sigma2)
    values = []
    for _ in range(splits):
        a, b = split(sample, current_size, rng)
        rows = np.concatenate([a, b])
        first = np.zeros(len(rows), dtype=bool)
        first[: len(a)] = True
        values.append(statistics.mmd2_from_kernel(kernel[np.ix_(rows, rows)], first))
    return values


def _residuals(features: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    centred = features - mean
    projected = centred @ components
    squared = (centred * centred).sum(axis=1) - (projected * projected).sum(axis=1)
    norms: np.ndarray = np.sqrt(np.clip(squared, 0.0, None))
    return norms


def _principal(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top-k axes of a half (through its n x n Gram matrix: n is the sample size, d may be larger)."""
    mean = features.mean(axis=0)
    centred = features - mean
    values, vectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(values)[::-1][:k]
    keep = values[order] > 1e-12 * max(float(values.max()), 1e-300)
    axes = centred.T @ vectors[:, order[keep]] / np.sqrt(values[order[keep]])
    return mean, axes


@dataclass(frozen=True)
class NoveltyCalibration:
    """How much larger a fresh photo's residual is than the fitted rows' own: `ratio` = median over
    splits of q99(residuals of half B in half A's PCA) / q99(half A's residuals), and the share of half
    B beyond ratio x q99(A) in each split (the statistic's own self-split values)."""

    ratio: float
    shares: tuple[float, ...]


def novelty_calibration(sample: ReferenceSample, current_size: int, k: int, splits: int,
                        rng: np.random.Generator) -> NoveltyCalibration:
    """The reference's PCA was fitted on its own rows, so their residuals are smaller than any new photo's
    (in-sample); a PCA refitted on half A, for calibration only (the comparison space stays the
    reference's), measures that optimism on half B. Conservative: half A has fewer rows than the reference."""
    ratios, pairs = [], []
    for _ in range(splits):
        a, b = split(sample, current_size, rng)
        mean, axes = _principal(sample.features[a], min(k, len(a) - 1))
        q99 = float(np.quantile(_residuals(sample.features[a], mean, axes), 0.99))
        held_out = _residuals(sample.features[b], mean, axes)
        ratios.append(float(np.quantile(held_out, 0.99)) / q99 if q99 > 0 else 1.0)
        pairs.append((q99, held_out))
    ratio = float(np.median(ratios))
    shares = tuple(float((held_out > ratio * q99).mean()) for q99, held_out in pairs)
    return NoveltyCalibration(ratio, shares)
