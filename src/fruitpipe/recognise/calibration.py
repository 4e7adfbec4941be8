"""Calibration and "not sure": temperature scaling, expected calibration error, the unknown threshold.

Pure numpy, no Spark: `fruitpipe train` fits on the validation part's margins (collected to the
driver: n_validation x n_classes numbers), the bundle applies the result to every photo.

- Temperature T > 0: probabilities are softmax(margins / T). T is the minimiser of the validation
  negative log-likelihood (golden-section search on log T in [0.05, 20]; the NLL is convex in 1/T, so
  the search finds the one minimum inside the bounds). T = 1 is kept instead when the minimum is at
  the lower bound (a validation part without errors: its NLL falls for ever as T -> 0, which says
  nothing about how sure to be on other photos) or when T would make the validation ECE worse than
  T = 1: scaling must never make the recogniser less honest.
- ECE: 15 equal-width bins on the max probability, sum over bins of (rows in bin / rows) x
  |accuracy in bin - mean confidence in bin|.
- Threshold: a photo is unknown when its max calibrated probability is below it. Chosen on validation
  as the lowest validation confidence at which the answered rows (confidence >= threshold) reach the
  target precision (accuracy on the answered); the confidence value itself is used, the most cautious
  of the thresholds that answer the same validation rows. If no threshold reaches the target, the one
  with the highest precision among those answering at least MIN_COVERAGE of the rows (ties: more rows).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fruitpipe.recognise.contracts import Calibration

logger = logging.getLogger(__name__)

ECE_BINS = 15
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # T in [0.05, 20]
GOLDEN_STEPS = 80  # interval shrinks by 0.618 each step: 80 steps resolve log T to ~1e-16
MIN_COVERAGE = 0.1  # fallback rule: the threshold must still answer at least this share of validation rows
DEFAULT_TARGET_PRECISION = 0.95


def softmax(margins: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Rows of margins -> probabilities of softmax(margins / T), in float64, stable for large margins."""
    scaled = np.asarray(margins, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    probabilities: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return probabilities


def negative_log_likelihood(margins: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log softmax(margins / T)[true class], through log-sum-exp (no underflow to log 0)."""
    scaled = np.asarray(margins, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_normaliser = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_normaliser - scaled[np.arange(len(labels)), labels]))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width bins of the max probability (0 for no rows)."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    return ece_from_bins(np.bincount(index, minlength=bins), np.bincount(index, confidence, minlength=bins),
                         np.bincount(index, correct, minlength=bins))


def ece_from_bins(counts: np.ndarray, confidence_sums: np.ndarray, correct_sums: np.ndarray) -> float:
    """ECE from per-bin rows, summed confidences and correct answers (what a distributed aggregate yields)."""
    total = float(np.sum(counts))
    if total == 0:
        return 0.0
    return float(np.sum(np.abs(np.asarray(correct_sums) - np.asarray(confidence_sums))) / total)


def fit_temperature(margins: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the validation NLL of softmax(margins / T) (golden-section on log T)."""
    def loss(log_t: float) -> float:
        return negative_log_likelihood(margins, labels, math.exp(log_t))

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = LOG_T_BOUNDS
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(GOLDEN_STEPS):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    best = (low + high) / 2.0
    if best - LOG_T_BOUNDS[0] < 1e-6:
        logger.warning("the validation NLL keeps falling as T -> 0 (validation is perfectly separated, no errors to "
                       "learn confidence from): temperature kept at 1")
        return 1.0
    return math.exp(best) if loss(best) <= loss(0.0) else 1.0


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold and what it gives on the rows it was chosen on."""

    threshold: float
    precision: float  # accuracy of the answered rows
    coverage: float  # share of rows answered
    reached: bool  # the target precision was reached


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> ThresholdChoice:
    """The module docstring's rule, on each row's max probability and whether its top class was right."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the target precision must be in (0, 1], got {target}")
    if len(confidence) == 0:
        raise ValueError("no validation rows to choose a threshold on")
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    ordered = np.asarray(confidence, dtype=np.float64)[order]
    answered = np.arange(1, len(ordered) + 1)
    right = np.cumsum(np.asarray(correct, dtype=np.int64)[order])
    last_of_value = np.append(ordered[1:] != ordered[:-1], True)  # a threshold answers every row of its value
    answered, right, values = answered[last_of_value], right[last_of_value], ordered[last_of_value]
    reaching = np.flatnonzero(right >= target * answered - 1e-9)
    if reaching.size:
        best = int(reaching[-1])  # the lowest confidence that still reaches the target: the most rows answered
    else:
        allowed = np.flatnonzero(answered >= MIN_COVERAGE * len(ordered))
        precision = right[allowed] / answered[allowed]
        best = int(allowed[np.flatnonzero(precision == precision.max())[-1]])
    return ThresholdChoice(threshold=float(values[best]), precision=float(right[best] / answered[best]),
                           coverage=float(answered[best] / len(ordered)), reached=bool(reaching.size))


def calibrate(margins: np.ndarray, labels: np.ndarray, target_precision: float,
              outlier_index: int | None = None) -> Calibration:
    """Validation margins and true class indexes -> the temperature and threshold (module docstring's rules).

    With `outlier_index` (the "not a fruit" class of outlier photos, the last column): the temperature is
    fitted on every row and every class; the threshold on the rows a user would get an answer for (those
    whose most probable class is a fruit), by their highest fruit probability; an outlier photo answered
    as a fruit counts as a wrong answer."""
    before = softmax(margins)
    temperature = fit_temperature(margins, labels)
    after = softmax(margins, temperature)
    ece_before, ece_after = expected_calibration_error(before, labels), expected_calibration_error(after, labels)
    if ece_after > ece_before:
        logger.info("temperature %.4g would raise the validation ECE (%.4f -> %.4f): kept at 1", temperature,
                    ece_before, ece_after)
        temperature, after, ece_after = 1.0, before, ece_before
    answerable = np.ones(len(labels), dtype=bool) if outlier_index is None else after.argmax(axis=1) != outlier_index
    if not answerable.any():  # every validation row came out "not a fruit": choose on all of them
        answerable[:] = True
    fruit = after if outlier_index is None else np.delete(after, outlier_index, axis=1)
    choice = choose_threshold(fruit.max(axis=1)[answerable],
                              (fruit.argmax(axis=1) == labels)[answerable], target_precision)
    if not choice.reached:
        logger.warning("no threshold reaches precision %.3f on validation; using %.4f (precision %.3f on the "
                       "%.1f%% most confident rows, the best with at least %.0f%% answered)", target_precision,
                       choice.threshold, choice.precision, 100 * choice.coverage, 100 * MIN_COVERAGE)
    return Calibration(temperature=temperature, threshold=choice.threshold, target_precision=target_precision,
                       validation_rows=len(labels), ece_before=ece_before, ece_after=ece_after,
                       precision_at_threshold=choice.precision, coverage_at_threshold=choice.coverage,
                       target_reached=choice.reached)
