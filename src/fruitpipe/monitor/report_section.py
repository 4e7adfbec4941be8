"""The drift part of a run's report (`fruitpipe report RUN --drift DRIFT_DIR`): the verdict, its reasons,
the verdict tests against the reference's own variation, prediction drift with a model, and drift.png.
Only drift.json and drift.png are read."""
from __future__ import annotations

from fruitpipe import storage
from fruitpipe.batch import report
from fruitpipe.monitor.contracts import DriftReport, PredictionDrift
from fruitpipe.monitor.drift import DRIFT_JSON, load
from fruitpipe.storage import Store

TITLE = "Drift"
SHOWN_CLASSES = 12  # the largest changes of the predicted class mix


def drift_section(store: Store, drift_dir: str) -> report.Section:
    """What `fruitpipe drift` concluded, as written in `drift_dir`; a folder without drift.json is refused."""
    try:
        found, png = load(store, drift_dir)
    except FileNotFoundError:
        raise ValueError(f"{storage.redact(drift_dir)} has no {DRIFT_JSON}: pass the --output folder of "
                         "'fruitpipe drift'") from None
    parts = [report.paragraph(f"Verdict: {found.status.replace('_', ' ')} (reference run {found.reference.run_id}, "
                              f"{found.reference.rows} rows; current run {found.current.run_id}, "
                              f"{found.current.rows} rows; alpha {found.settings.alpha})."),
             *(report.paragraph(reason) for reason in found.reasons),
             _tests_table(found)]
    if found.prediction is not None:
        parts.append(_prediction_table(found.prediction))
    parts.append(report.image(png, f"Drift figure: reference and current rows on the first reference components "
                              f"and per-component shifts; verdict {found.status.replace('_', ' ')}."))
    return report.Section(TITLE, "".join(parts))


def _tests_table(found: DriftReport) -> str:
    return report.table(
        "Verdict tests: drift needs significance, an effect above the reference's own 99th percentile, and the floor",
        ("test", "statistic", "p-value", "level", "reference q99", "floor", "flagged"),
        [(t.name, f"{t.statistic:.4g}", f"{t.p_value:.3g}", f"{t.level:.3g}", f"{t.calibration_q99:.4g}",
          f"{t.floor:.3g}", "yes" if t.flagged else "no") for t in found.tests])


def _prediction_table(prediction: PredictionDrift) -> str:
    changed = sorted(prediction.classes, key=lambda share: -abs(share.delta))[:SHOWN_CLASSES]
    summary = report.paragraph(
        f"Predicted class mix: chi-square {prediction.chi2:.4g} (p {prediction.p_value:.3g}), Jensen-Shannon "
        f"{prediction.jensen_shannon:.4f}; confidence {prediction.reference_confidence:.3f} -> "
        f"{prediction.current_confidence:.3f} (KS {prediction.confidence_ks:.3f}, "
        f"p {prediction.confidence_p_value:.3g})."
        + (f" Appeared: {', '.join(prediction.appeared)}." if prediction.appeared else "")
        + (f" Vanished: {', '.join(prediction.vanished)}." if prediction.vanished else ""))
    return summary + report.table(f"Largest changes of the predicted class mix (model {prediction.model})",
                                  ("class", "reference share", "current share", "change"),
                                  [(s.name, f"{s.reference:.1%}", f"{s.current:.1%}", f"{s.delta:+.1%}")
                                   for s in changed])
