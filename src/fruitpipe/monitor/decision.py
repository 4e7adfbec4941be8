"""The drift verdict: fixed rules over the verdict tests, written down before any detection figure was
looked at (docs/drift.md), so a shifted set cannot have tuned them.

A verdict test flags drift only when all three hold:
1. significance: its p-value is below alpha / (number of verdict tests) (Bonferroni);
2. effect beyond the reference's own variation: its statistic is above the 99th percentile of the same
   statistic between disjoint halves of the reference (grouped blocks of consecutive frames per class,
   the half playing "current" sized like the current run);
3. an absolute floor (held-out AUC >= 0.55; >= 3% of current rows beyond the novelty threshold).
Large samples make every p-value small; 2 and 3 keep a statistically real but tiny difference from
raising an alarm. Status: `drift` when a verdict test flags; `warning` when none flags but one is
significant, or prediction drift is visible (the model's class mix or confidence moved: not calibrated
against the reference, so it warns and never decides); `no_drift` otherwise.
"""
from __future__ import annotations

from collections.abc import Sequence

from fruitpipe.monitor import statistics
from fruitpipe.monitor.contracts import PredictionDrift, TestResult

AUC_FLOOR = 0.55
NOVELTY_FLOOR = 0.03  # share of current rows beyond the reference's out-of-sample 99th percentile residual
MMD_FLOOR = 0.0
VERDICT_TESTS = 3  # mmd, classifier, reconstruction
MIX_JS_WARNING = 0.1  # Jensen-Shannon distance of the predicted class mixes
CONFIDENCE_KS_WARNING = 0.1


def judge(name: str, statistic: float, p_value: float, alpha: float, calibration: Sequence[float], floor: float,
          counts: tuple[int, int], description: str) -> TestResult:
    """One verdict test's conclusion under the three conditions above."""
    level = alpha / VERDICT_TESTS
    q99 = statistics.upper_quantile(calibration, 0.99)
    significant = p_value < level
    flagged = significant and statistic > q99 and statistic >= floor
    return TestResult(name=name, statistic=statistic, p_value=p_value, level=level, calibration_q99=q99,
                      floor=floor, significant=significant, flagged=flagged, n_reference=counts[0],
                      n_current=counts[1], calibration=tuple(calibration), description=description)


def _sentence(test: TestResult) -> str:
    where = (f"{test.description} = {test.statistic:.4g} (p = {test.p_value:.2g}, level {test.level:.2g}; "
             f"reference halves' 99th percentile {test.calibration_q99:.4g}; floor {test.floor:g})")
    if test.flagged:
        return f"drift: {where}"
    if test.significant:
        why = "below the reference halves' 99th percentile" if test.statistic <= test.calibration_q99 \
            else "below the floor"
        return f"significant but small: {where}: {why}"
    return f"no evidence: {where}"


def prediction_signals(prediction: PredictionDrift | None, alpha: float) -> list[str]:
    """What the model's predictions say, as warnings (none when nothing moved or no model was given)."""
    if prediction is None:
        return []
    signals = []
    if prediction.p_value < alpha and prediction.jensen_shannon >= MIX_JS_WARNING:
        signals.append(f"predicted class mix changed: Jensen-Shannon {prediction.jensen_shannon:.3f}, "
                       f"chi-square p = {prediction.p_value:.2g}")
    if prediction.appeared:
        signals.append("predicted only on the current side: " + ", ".join(prediction.appeared))
    if prediction.vanished:
        signals.append("no longer predicted: " + ", ".join(prediction.vanished))
    if prediction.confidence_p_value < alpha and prediction.confidence_ks >= CONFIDENCE_KS_WARNING:
        signals.append(f"confidence moved: mean {prediction.reference_confidence:.3f} -> "
                       f"{prediction.current_confidence:.3f} (KS {prediction.confidence_ks:.3f}, "
                       f"p = {prediction.confidence_p_value:.2g})")
    return signals


def verdict(tests: Sequence[TestResult], prediction: PredictionDrift | None,
            alpha: float) -> tuple[str, tuple[str, ...]]:
    """(status, reasons): flagged tests first, then the rest, then the prediction signals."""
    ordered = sorted(tests, key=lambda t: (not t.flagged, not t.significant))
    reasons = [_sentence(test) for test in ordered]
    signals = prediction_signals(prediction, alpha)
    reasons += [f"prediction: {signal}" for signal in signals]
    if any(test.flagged for test in tests):
        return "drift", tuple(reasons)
    if any(test.significant for test in tests) or signals:
        return "warning", tuple(reasons)
    return "no_drift", tuple(reasons)
