"""The two-sample statistics drift is decided on: numpy and scipy only, no Spark (driver-side, on samples
and counts that Spark aggregated).

Every p-value here is a proper one for its test and never exactly 0: the permutation p-value is
(1 + #{permuted >= observed}) / (1 + B) and the analytic ones are floored at the smallest positive double,
so a report never claims certainty and Benjamini-Hochberg never divides by a zero rank.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

TINY = float(np.finfo(np.float64).tiny)
PERMUTATION_CHUNK = 128  # permutations per matrix product: memory (2n x chunk floats) stays small


def _floored(p: float) -> float:
    return min(1.0, max(TINY, float(p)))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """||x_i - y_j||^2 for every pair, float64, clipped at 0 (rounding)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    d = (x * x).sum(axis=1)[:, None] + (y * y).sum(axis=1)[None, :] - 2.0 * x @ y.T
    clipped: np.ndarray = np.clip(d, 0.0, None)
    return clipped


def median_bandwidth(reference: np.ndarray) -> float:
    """The median heuristic: sigma^2 = median of the pairwise squared distances within the reference
    (distinct pairs). Taken from the reference only, so the kernel does not move with the current data."""
    d = squared_distances(reference, reference)
    upper = d[np.triu_indices(len(reference), k=1)]
    positive = upper[upper > 0]
    if not len(positive):
        raise ValueError("the reference sample has no two distinct vectors; the kernel bandwidth is undefined")
    return float(np.median(positive))


def rbf_kernel(x: np.ndarray, y: np.ndarray, sigma2: float) -> np.ndarray:
    """exp(-||x - y||^2 / (2 sigma^2))."""
    return np.exp(-squared_distances(x, y) / (2.0 * sigma2))


def mmd2_from_kernel(kernel: np.ndarray, first: np.ndarray) -> float:
    """Unbiased MMD^2 of the rows marked `first` against the others, from their pooled kernel matrix."""
    a = np.asarray(first, dtype=bool)
    m, n = int(a.sum()), int((~a).sum())
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 vectors per side, got {m} and {n}")
    kxx, kyy, kxy = kernel[np.ix_(a, a)], kernel[np.ix_(~a, ~a)], kernel[np.ix_(a, ~a)]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def _mmd2_of_assignments(kernel: np.ndarray, assignments: np.ndarray, m: int) -> np.ndarray:
    """Unbiased MMD^2 for many assignments at once (columns of 0/1 indicators of the first side).

    With a the indicator, a'Ka - tr is the first side's off-diagonal sum, and the other two blocks follow
    from K1 and 1'K1: one matrix product per chunk of assignments instead of a loop over pairs."""
    total_n = kernel.shape[0]
    n = total_n - m
    diagonal = np.diag(kernel)
    row_sums = kernel.sum(axis=1)
    total = float(row_sums.sum())
    ka = kernel @ assignments
    aka = (assignments * ka).sum(axis=0)
    a_row = row_sums @ assignments  # a'K1
    bkb = total - 2.0 * a_row + aka
    akb = a_row - aka
    trace_a = diagonal @ assignments
    trace_b = diagonal.sum() - trace_a
    result: np.ndarray = (aka - trace_a) / (m * (m - 1)) + (bkb - trace_b) / (n * (n - 1)) - 2.0 * akb / (m * n)
    return result


@dataclass(frozen=True)
class PermutationResult:
    statistic: float
    p_value: float
    permutations: int


def mmd_permutation_test(reference: np.ndarray, current: np.ndarray, sigma2: float, permutations: int,
                         rng: np.random.Generator) -> PermutationResult:
    """Unbiased MMD^2 (RBF kernel, bandwidth sigma2) and its permutation p-value (1 + #>=) / (1 + B)."""
    pooled = np.concatenate([reference, current])
    kernel = rbf_kernel(pooled, pooled, sigma2)
    m = len(reference)
    first = np.zeros(len(pooled), dtype=bool)
    first[:m] = True
    observed = mmd2_from_kernel(kernel, first)
    exceed = 0
    done = 0
    while done < permutations:
        chunk = min(PERMUTATION_CHUNK, permutations - done)
        assignments = np.zeros((len(pooled), chunk))
        for column in range(chunk):
            assignments[rng.permutation(len(pooled))[:m], column] = 1.0
        exceed += int((_mmd2_of_assignments(kernel, assignments, m) >= observed - 1e-12).sum())
        done += chunk
    return PermutationResult(observed, (1 + exceed) / (1 + permutations), permutations)


def auc_p_value(auc: float, positives: int, negatives: int) -> float:
    """One-sided p-value of a held-out AUC above 0.5 under "the classifier cannot tell the sides apart":
    the Mann-Whitney U null (AUC = U / (n1 n0)), normal approximation with its exact variance."""
    if positives < 1 or negatives < 1:
        raise ValueError(f"an AUC needs both sides in the held-out part, got {positives} and {negatives}")
    sd = np.sqrt((positives + negatives + 1) / (12.0 * positives * negatives))
    return _floored(stats.norm.sf((auc - 0.5) / sd))


def binomial_excess_p_value(exceed: int, total: int, rate: float) -> float:
    """P(X >= exceed) for X ~ Binomial(total, rate): more rows beyond a reference quantile than its rate."""
    if total < 1:
        raise ValueError("no rows to test")
    return _floored(stats.binom.sf(exceed - 1, total, rate))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (scipy's)."""
    result = stats.ks_2samp(reference, current)
    return float(result.statistic), _floored(float(result.pvalue))


def ks_from_histograms(reference: Sequence[int], current: Sequence[int]) -> tuple[float, float]:
    """KS statistic and (asymptotic) p-value from counts in the same fine bins: the largest gap between
    the two empirical CDFs at the bin edges. Spark aggregates the counts, so no row reaches the driver."""
    r, c = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    n, m = r.sum(), c.sum()
    if n < 1 or m < 1:
        raise ValueError("a KS test needs rows on both sides")
    statistic = float(np.abs(np.cumsum(r) / n - np.cumsum(c) / m).max())
    effective = n * m / (n + m)
    return statistic, _floored(stats.kstwobign.sf(np.sqrt(effective) * statistic))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index over `bins` quantile bins of the reference (empty bins get 0.5 count)."""
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) + 0.5
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) + 0.5
    r, c = r / r.sum(), c / c.sum()
    return float(((c - r) * np.log(c / r)).sum())


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """BH-adjusted p-values (q-values), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    if not len(p):
        return p
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    result = np.empty_like(p)
    result[order] = np.clip(adjusted, 0.0, 1.0)
    return result


@dataclass(frozen=True)
class MixChange:
    chi2: float
    p_value: float
    jensen_shannon: float  # distance (sqrt of the divergence, base 2): 0 same mix, 1 disjoint


def class_mix_change(reference: Sequence[int], current: Sequence[int]) -> MixChange:
    """Chi-square test of the 2 x C contingency table (classes empty on both sides dropped) and the
    Jensen-Shannon distance between the two class mixes."""
    table = np.array([reference, current], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return MixChange(0.0, 1.0, 0.0 if table.shape[1] < 2 else 1.0)
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    r, c = table[0] / table[0].sum(), table[1] / table[1].sum()
    middle = (r + c) / 2
    divergence = 0.5 * (_kl(r, middle) + _kl(c, middle))
    return MixChange(float(chi2), _floored(float(p)), float(np.sqrt(max(0.0, divergence))))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float((p[mask] * np.log2(p[mask] / q[mask])).sum())


def upper_quantile(values: Sequence[float], level: float = 0.99) -> float:
    """The `level` quantile of calibration statistics; with few values (fewer than 1 / (1 - level)) the
    empirical quantile is the maximum, which understates the tail, so the normal bound mean + z sd is
    taken when it is larger."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        raise ValueError("no calibration statistics")
    empirical = float(np.quantile(v, level))
    if len(v) >= 1.0 / (1.0 - level) or len(v) < 2:
        return empirical
    return max(empirical, float(v.mean() + stats.norm.ppf(level) * v.std(ddof=1)))
