"""`fruitpipe evaluate`'s numbers: (true class index, probabilities) arrays -> metrics, and metrics.json.

One pure numpy function (`compute`) serves both ways of getting probabilities (the bundle in process,
Spark for large sets), so the two can only differ in the probabilities themselves. No pyspark here.

Definitions (also in the README):
- top-1 / top-3 accuracy: the true class is the most probable / among the three most probable (ties
  broken by class order, as `Bundle.top` does).
- precision, recall, F1 per class with 0 where undefined (sklearn's zero_division=0); macro-F1 averages
  F1 over the classes present in the truth or the predictions (as `fruitpipe train` and sklearn do).
- expected calibration error: ECE_BINS equal-width bins of the max probability, [i/15, (i+1)/15) with the
  last bin closed at 1; ECE = sum over bins of (bin count / n) * |accuracy - mean confidence|.
- log-loss: the mean negative natural log of the probability given to the true class, probabilities
  clipped to [LOG_LOSS_EPS, 1] first (sklearn's 1e-15 clip, so one confident mistake costs at most ~34.5).
  A proper scoring rule: unlike accuracy it keeps ranking models once all are right, by how much
  probability they put on the right class, which is why the recognition harness chooses recipes on it.
- "not sure" threshold t: a photo is answered when its max probability >= t; coverage = share answered,
  accuracy = top-1 accuracy on the answered ones (None when none is answered).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
ECE_BINS = 15
TOP_K = 3
LOG_LOSS_EPS = 1e-15
CURVE_THRESHOLDS = tuple(round(step / 100, 2) for step in range(101))  # 0.00, 0.01, ..., 1.00


@dataclass(frozen=True)
class ClassScores:
    name: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, Any]:
        return {"class": self.name, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support}


@dataclass(frozen=True)
class ReliabilityBin:
    """One calibration bin: photos whose max probability lies in [lower, upper)."""

    lower: float
    upper: float
    count: int
    confidence: float | None  # mean max probability; None for an empty bin
    accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "count": self.count, "confidence": self.confidence,
                "accuracy": self.accuracy}


@dataclass(frozen=True)
class CoveragePoint:
    """What a "not sure" threshold does: the share answered and the accuracy on those."""

    threshold: float
    coverage: float
    accuracy: float | None  # None: nothing answered
    answered: int
    unlike_training: int | None = None  # rows the novelty gate made unknown (None: no gate)
    not_fruit: int | None = None  # rows "not a fruit" won (None: a model trained without outlier photos)

    def to_json(self) -> dict[str, Any]:
        document = {"threshold": self.threshold, "coverage": self.coverage, "accuracy": self.accuracy,
                    "answered": self.answered}
        optional = {"unlike_training": self.unlike_training, "not_fruit": self.not_fruit}
        return {**document, **{key: value for key, value in optional.items() if value is not None}}


@dataclass(frozen=True)
class EvaluationMetrics:
    """Every metric of one evaluation, computed from (truth, probabilities) by `compute`."""

    count: int
    accuracy: float
    top3_accuracy: float
    macro_f1: float
    ece: float
    per_class: tuple[ClassScores, ...]
    confusion: tuple[tuple[int, ...], ...]  # [true][predicted], in the model's class order
    reliability: tuple[ReliabilityBin, ...]
    coverage_curve: tuple[CoveragePoint, ...]
    at_threshold: CoveragePoint | None = None  # the threshold in force (--threshold or the bundle's), if any
    log_loss: float | None = None  # optional: metrics.json written before it has none

    @property
    def classes(self) -> list[str]:
        return [row.name for row in self.per_class]

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count, "accuracy": self.accuracy, "top3_accuracy": self.top3_accuracy,
            "macro_f1": self.macro_f1, "log_loss": self.log_loss,
            "ece": self.ece, "ece_bins": ECE_BINS, "ece_binning": "equal-width bins of the max probability",
            "at_threshold": self.at_threshold.to_json() if self.at_threshold else None,
            "per_class": [row.to_json() for row in self.per_class],
            "confusion_matrix": {"classes": self.classes, "counts": [list(row) for row in self.confusion]},
            "reliability": [row.to_json() for row in self.reliability],
            "coverage_curve": [row.to_json() for row in self.coverage_curve],
        }


@dataclass(frozen=True)
class UnknownFolder:
    """A labelled folder whose name matches none of the model's classes: reported, not scored."""

    name: str
    photos: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "photos": self.photos}


@dataclass(frozen=True)
class Unreadable:
    """A photo that could not be read or decoded, with the reason: reported, not scored."""

    photo: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"photo": self.photo, "reason": self.reason}


@dataclass(frozen=True)
class EvaluationReport:
    """metrics.json of `fruitpipe evaluate`: what was evaluated, how, and the metrics."""

    created: str
    model: str
    input: str
    layout: str  # "fruits360" | "flat"
    split: str | None  # the Fruits 360 split evaluated; None for a flat folder
    engine: str  # "bundle" (in process) | "spark"
    folders: dict[str, str]  # folder name -> model class it was matched to
    unknown_folders: tuple[UnknownFolder, ...]
    unreadable: tuple[Unreadable, ...]
    metrics: EvaluationMetrics
    tta: int = 1  # views averaged per photo (1: the photo alone)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "created": self.created, "model": self.model, "input": self.input,
            "layout": self.layout, "split": self.split, "engine": self.engine, "tta": self.tta,
            "folders": dict(self.folders),
            "unknown_folders": [folder.to_json() for folder in self.unknown_folders],
            "unreadable": [photo.to_json() for photo in self.unreadable],
            **self.metrics.to_json(),
        }


def compute(truth: np.ndarray, probabilities: np.ndarray, classes: list[str],
            threshold: float | None = None, novel: np.ndarray | None = None,
            not_fruit: np.ndarray | None = None) -> EvaluationMetrics:
    """All metrics from true class indexes (n,) and class probabilities (n, len(classes)). `novel` (n,),
    with the bundle's novelty gate, and `not_fruit` (n,), with its outlier class: the rows they make unknown
    whatever their confidence; they count as not answered at `threshold` (the coverage curve is of the
    confidence threshold alone). Top-1 and the rest are over the fruit classes either way."""
    truth = np.asarray(truth, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (len(truth), len(classes)):
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected ({len(truth)}, {len(classes)})")
    if not len(truth):
        raise ValueError("nothing to evaluate: no photo could be scored")
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    predicted = ranked[:, 0]
    confusion = confusion_counts(truth, predicted, len(classes))
    precision, recall, f1, support = class_scores(confusion)
    present = (support > 0) | (confusion.sum(axis=0) > 0)
    confidence = probabilities.max(axis=1)
    correct = predicted == truth
    reliability = reliability_bins(confidence, correct)
    return EvaluationMetrics(
        count=len(truth),
        accuracy=float(correct.mean()),
        top3_accuracy=float((ranked[:, :TOP_K] == truth[:, None]).any(axis=1).mean()),
        macro_f1=float(f1[present].mean()),
        log_loss=mean_log_loss(truth, probabilities),
        ece=float(sum(row.count * abs(row.accuracy - row.confidence) for row in reliability
                      if row.accuracy is not None and row.confidence is not None) / len(truth)),
        per_class=tuple(ClassScores(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
                        for i, name in enumerate(classes)),
        confusion=tuple(tuple(int(value) for value in row) for row in confusion),
        reliability=reliability,
        coverage_curve=tuple(coverage_at(t, confidence, correct) for t in CURVE_THRESHOLDS),
        at_threshold=None if threshold is None else coverage_at(threshold, confidence, correct, novel, not_fruit),
    )


def mean_log_loss(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean -ln p(true class), p clipped at LOG_LOSS_EPS: a right answer given little probability still costs."""
    true_probability = np.clip(probabilities[np.arange(len(truth)), truth], LOG_LOSS_EPS, 1.0)
    return float(-np.log(true_probability).mean())


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


def class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class (precision, recall, F1, support) from a confusion matrix, 0 where undefined."""
    correct = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(correct),
                   where=precision + recall > 0)
    return precision, recall, f1, support


def reliability_bins(confidence: np.ndarray, correct: np.ndarray) -> tuple[ReliabilityBin, ...]:
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, ECE_BINS - 1)
    bins = []
    for i in range(ECE_BINS):
        members = index == i
        count = int(members.sum())
        bins.append(ReliabilityBin(float(edges[i]), float(edges[i + 1]), count,
                                   float(confidence[members].mean()) if count else None,
                                   float(correct[members].mean()) if count else None))
    return tuple(bins)


def coverage_at(threshold: float, confidence: np.ndarray, correct: np.ndarray,
                novel: np.ndarray | None = None, not_fruit: np.ndarray | None = None) -> CoveragePoint:
    answered = confidence >= threshold
    for rejected in (novel, not_fruit):
        if rejected is not None:
            answered = answered & ~np.asarray(rejected, dtype=bool)
    count = int(answered.sum())
    return CoveragePoint(threshold, count / len(confidence), float(correct[answered].mean()) if count else None, count,
                         None if novel is None else int(np.sum(novel)),
                         None if not_fruit is None else int(np.sum(not_fruit)))


def per_class_csv(rows: list[ClassScores]) -> bytes:
    """per_class.csv: class, precision, recall, f1, support (4 decimals), one row per class."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for row in rows:
        writer.writerow([row.name, f"{row.precision:.4f}", f"{row.recall:.4f}", f"{row.f1:.4f}", row.support])
    return table.getvalue().encode("utf-8")
