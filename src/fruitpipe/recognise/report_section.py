"""The trained model's part of a run's report (`fruitpipe report RUN --model MODEL_DIR`).

Read from what `fruitpipe train` wrote: MODEL_DIR/manifest.json (`TrainManifest`: headline Test
metrics, the selection, the calibration) and its confusion-matrix PNG. Only small files are read.
"""
from __future__ import annotations

from fruitpipe import storage
from fruitpipe.batch import report, sinks
from fruitpipe.batch.manifest import RunManifest
from fruitpipe.recognise.contracts import TrainManifest
from fruitpipe.recognise.train import CONFUSION
from fruitpipe.storage import Store

TITLE = "Trained model"


def read_train_manifest(store: Store, model_dir: str) -> TrainManifest:
    """MODEL_DIR/manifest.json; a folder without one is refused in one line."""
    try:
        raw = store.read_bytes(storage.join(model_dir, sinks.MANIFEST))
    except FileNotFoundError:
        raise ValueError(f"{storage.redact(model_dir)} is not a fruitpipe train output (no {sinks.MANIFEST})") \
            from None
    return TrainManifest.loads(raw, f"{sinks.MANIFEST} of {storage.redact(model_dir)}")


def model_section(store: Store, model_dir: str, run: RunManifest) -> report.Section:
    """Metrics, the choice, the calibration and the confusion matrix of the model in `model_dir`; a model
    trained on another run is shown with that said first."""
    trained = read_train_manifest(store, model_dir)
    parts = []
    if trained.source.run_id != run.run_id:
        parts.append(report.paragraph(f"Note: this model was trained on run {trained.source.run_id}, not on this "
                                      f"run ({run.run_id}).", note=True))
    parts.append(report.table("Test metrics", ("what", "value"), [
        ("model folder", storage.redact(model_dir)), ("classifier", trained.classifier.name),
        ("classes", len(trained.classes)), ("Training photos (validation included)", trained.counts.training),
        ("validation photos", trained.counts.validation), ("Test photos", trained.counts.test),
        ("Test accuracy", round(trained.metrics.accuracy, 4)), ("Test macro-F1", round(trained.metrics.macro_f1, 4)),
    ]))
    if trained.selection.candidates:
        parts.append(report.table(f"Candidates on validation ({trained.selection.metric}); chosen: "
                                  f"{trained.selection.chosen}", ("candidate", "accuracy", "macro-F1", "log-loss"),
                                  [(name, round(s.accuracy, 4), round(s.macro_f1, 4), round(s.log_loss, 4))
                                   for name, s in trained.selection.candidates.items()]))
    parts.append(_calibration(trained))
    confusion = storage.join(model_dir, CONFUSION)
    if store.exists(confusion):
        parts.append(report.image(store.read_bytes(confusion),
                                  f"Confusion matrix on Test of {len(trained.classes)} classes: true class in rows, "
                                  f"predicted class in columns; accuracy {trained.metrics.accuracy:.1%}."))
    return report.Section(TITLE, "".join(parts))


def _calibration(trained: TrainManifest) -> str:
    calibration = trained.calibration
    if calibration is None:
        return report.paragraph("Calibration: none recorded (no validation photos, or a model trained before "
                                "calibration existed): probabilities are uncalibrated, no \"not sure\" threshold.",
                                note=True)
    return report.table("Calibration (chosen on the validation part of Training)", ("what", "value"), [
        ("temperature", round(calibration.temperature, 4)), ("\"not sure\" threshold", round(calibration.threshold, 4)),
        ("target precision", calibration.target_precision), ("validation rows", calibration.validation_rows),
        ("ECE before scaling", round(calibration.ece_before, 4)),
        ("ECE after scaling", round(calibration.ece_after, 4)),
        ("precision at the threshold", round(calibration.precision_at_threshold, 4)),
        ("coverage at the threshold", round(calibration.coverage_at_threshold, 4)),
        ("target reached", "yes" if calibration.target_reached else "no"),
    ])
