"""`drift.json`, the contract of `fruitpipe drift`: a frozen `DriftReport`, written with `to_json` and read
back with `from_json` (through batch/manifest.py's typed `Fields` reader), here and nowhere else.

The report (and the notebook / run report that show it) reads attributes, not keys. `schema_version`
follows the rule of the other contracts: absent = 1, newer than this fruitpipe knows = refused in one line.
No pyspark here: the report is readable anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fruitpipe.batch.manifest import Fields, parse

SCHEMA_VERSION = 1
STATUSES = ("no_drift", "warning", "drift", "incomparable")


@dataclass(frozen=True)
class RunSide:
    """One of the two runs compared: where it is, which run, how many rows took part."""

    output: str  # redacted URI
    run_id: str
    rows: int
    manifest_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "run_id": self.run_id, "rows": self.rows,
                "manifest_sha256": self.manifest_sha256}

    @classmethod
    def from_json(cls, fields: Fields) -> RunSide:
        return cls(fields.text("output"), fields.text("run_id"), fields.integer("rows"),
                   fields.text("manifest_sha256"))


@dataclass(frozen=True)
class Space:
    """The comparison space: the reference run's PCA (k components) of this CNN's features."""

    model: str
    weights_sha256: str
    input_size: int
    feature_dim: int
    k: int
    variance_kept: float

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "weights_sha256": self.weights_sha256, "input_size": self.input_size,
                "feature_dim": self.feature_dim, "k": self.k, "variance_kept": self.variance_kept}

    @classmethod
    def from_json(cls, fields: Fields) -> Space:
        return cls(fields.text("model"), fields.text("weights_sha256"), fields.integer("input_size"),
                   fields.integer("feature_dim"), fields.integer("k"), fields.number("variance_kept"))


@dataclass(frozen=True)
class Settings:
    """What the decision used: alpha, per-side sample, seed, permutations, calibration splits, floors."""

    alpha: float
    sample: int
    seed: int
    permutations: int
    calibration_splits: int
    classifier_calibration_splits: int
    block: int
    auc_floor: float
    novelty_floor: float

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "sample": self.sample, "seed": self.seed, "permutations": self.permutations,
                "calibration_splits": self.calibration_splits,
                "classifier_calibration_splits": self.classifier_calibration_splits, "block": self.block,
                "auc_floor": self.auc_floor, "novelty_floor": self.novelty_floor}

    @classmethod
    def from_json(cls, fields: Fields) -> Settings:
        return cls(fields.number("alpha"), fields.integer("sample"), fields.integer("seed"),
                   fields.integer("permutations"), fields.integer("calibration_splits"),
                   fields.integer("classifier_calibration_splits"), fields.integer("block"),
                   fields.number("auc_floor"), fields.number("novelty_floor"))


@dataclass(frozen=True)
class TestResult:
    """One verdict test: its statistic, p-value, the level it is held to (alpha / number of verdict
    tests), the 99th percentile of the same statistic between disjoint halves of the reference
    (`calibration_q99`, from `calibration`), its absolute floor, and what it concluded."""

    __test__ = False  # not a pytest class

    name: str
    statistic: float
    p_value: float
    level: float
    calibration_q99: float
    floor: float
    significant: bool
    flagged: bool
    n_reference: int
    n_current: int
    calibration: tuple[float, ...]
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "statistic": self.statistic, "p_value": self.p_value, "level": self.level,
                "calibration_q99": self.calibration_q99, "floor": self.floor, "significant": self.significant,
                "flagged": self.flagged, "n_reference": self.n_reference, "n_current": self.n_current,
                "calibration": list(self.calibration), "description": self.description}

    @classmethod
    def from_json(cls, fields: Fields) -> TestResult:
        return cls(fields.text("name"), fields.number("statistic"), fields.number("p_value"), fields.number("level"),
                   fields.number("calibration_q99"), fields.number("floor"), fields.flag("significant"),
                   fields.flag("flagged"), fields.integer("n_reference"), fields.integer("n_current"),
                   fields.numbers("calibration"), fields.text("description"))


@dataclass(frozen=True)
class ComponentShift:
    """Diagnostic: one reference component's KS test (BH-adjusted q-value) and PSI between the samples."""

    component: int  # 1-based
    ks: float
    p_value: float
    q_value: float
    psi: float

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "ks": self.ks, "p_value": self.p_value, "q_value": self.q_value,
                "psi": self.psi}

    @classmethod
    def from_json(cls, fields: Fields) -> ComponentShift:
        return cls(fields.integer("component"), fields.number("ks"), fields.number("p_value"),
                   fields.number("q_value"), fields.number("psi"))


@dataclass(frozen=True)
class ClassShare:
    """One class's share of the predictions on each side (`delta` = current - reference)."""

    name: str
    reference: float
    current: float
    delta: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reference": self.reference, "current": self.current, "delta": self.delta}

    @classmethod
    def from_json(cls, fields: Fields) -> ClassShare:
        return cls(fields.text("name"), fields.number("reference"), fields.number("current"), fields.number("delta"))


@dataclass(frozen=True)
class PredictionDrift:
    """With --model: the predicted class mix and the confidence (max calibrated probability) per side."""

    model: str
    chi2: float
    p_value: float
    jensen_shannon: float
    classes: tuple[ClassShare, ...]
    appeared: tuple[str, ...]  # predicted on the current side only
    vanished: tuple[str, ...]  # predicted on the reference side only
    confidence_ks: float
    confidence_p_value: float
    reference_confidence: float  # means
    current_confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "chi2": self.chi2, "p_value": self.p_value,
                "jensen_shannon": self.jensen_shannon, "classes": [c.to_json() for c in self.classes],
                "appeared": list(self.appeared), "vanished": list(self.vanished),
                "confidence_ks": self.confidence_ks, "confidence_p_value": self.confidence_p_value,
                "reference_confidence": self.reference_confidence, "current_confidence": self.current_confidence}

    @classmethod
    def from_json(cls, fields: Fields) -> PredictionDrift:
        return cls(fields.text("model"), fields.number("chi2"), fields.number("p_value"),
                   fields.number("jensen_shannon"),
                   tuple(ClassShare.from_json(item) for item in fields.children("classes")),
                   fields.texts("appeared"), fields.texts("vanished"), fields.number("confidence_ks"),
                   fields.number("confidence_p_value"), fields.number("reference_confidence"),
                   fields.number("current_confidence"))


@dataclass(frozen=True)
class DriftReport:
    """`drift.json`: the verdict (`status`, one of STATUSES), the reasons in words, the verdict tests,
    the diagnostics and, with a model, prediction drift."""

    created: str
    status: str
    reasons: tuple[str, ...]
    reference: RunSide
    current: RunSide
    space: Space
    settings: Settings
    tests: tuple[TestResult, ...]
    components: tuple[ComponentShift, ...]
    prediction: PredictionDrift | None
    notes: tuple[str, ...]
    seconds: float
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"drift status {self.status!r} is not one of {', '.join(STATUSES)}")

    def test(self, name: str) -> TestResult:
        """The verdict test of that name (mmd, classifier, reconstruction)."""
        for result in self.tests:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "created": self.created, "status": self.status,
                "reasons": list(self.reasons), "reference": self.reference.to_json(),
                "current": self.current.to_json(), "space": self.space.to_json(),
                "settings": self.settings.to_json(), "tests": [t.to_json() for t in self.tests],
                "components": [c.to_json() for c in self.components],
                "prediction": None if self.prediction is None else self.prediction.to_json(),
                "notes": list(self.notes), "seconds": self.seconds}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, fields: Fields) -> DriftReport:
        version = fields.schema_version(SCHEMA_VERSION)
        prediction = fields.optional_child("prediction")
        return cls(created=fields.text("created"), status=fields.text("status"), reasons=fields.texts("reasons"),
                   reference=RunSide.from_json(fields.child("reference")),
                   current=RunSide.from_json(fields.child("current")),
                   space=Space.from_json(fields.child("space")), settings=Settings.from_json(fields.child("settings")),
                   tests=tuple(TestResult.from_json(item) for item in fields.children("tests")),
                   components=tuple(ComponentShift.from_json(item) for item in fields.children("components")),
                   prediction=None if prediction is None else PredictionDrift.from_json(prediction),
                   notes=fields.texts("notes"), seconds=fields.number("seconds"), schema_version=version)

    @classmethod
    def loads(cls, raw: bytes | str, where: str) -> DriftReport:
        return cls.from_json(parse(raw, where))
