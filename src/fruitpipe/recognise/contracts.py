"""`fruitpipe train`'s contracts: MODEL_DIR/manifest.json (`TrainManifest`) and bundle/bundle.json
(`BundleDescription`).

Written with `to_json` and read with `from_json` here only, as the run's manifest is (batch.manifest:
same `schema_version` rule, same typed reader). The bundle's reader must stay free of Spark: this
module imports no pyspark.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fruitpipe.batch.manifest import SCHEMA_VERSION, Fields, ModelEntry, Timings, parse
from fruitpipe.config import MAX_TTA, DecodeLimits

TRAIN_KIND = "fruitpipe-train"
BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION = "fruitpipe-bundle", 1  # the format's own marker, kept beside schema_version


@dataclass(frozen=True)
class SourceRun:
    """Fingerprints of the run output trained on: its run_id and manifest.json's sha256."""

    run_id: str
    manifest_sha256: str
    run_output: str
    input: str | None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "manifest_sha256": self.manifest_sha256, "run_output": self.run_output,
                "input": self.input}

    @classmethod
    def from_json(cls, fields: Fields) -> SourceRun:
        return cls(fields.text("run_id"), fields.text("manifest_sha256"), fields.text("run_output"),
                   fields.optional_text("input"))


@dataclass(frozen=True)
class Classifier:
    """The chosen logistic regression's settings (Spark's parameter names in JSON); the train manifest
    adds where the Spark model is and how to feed it, the bundle leaves those out (None)."""

    type: str
    name: str
    reg_param: float
    elastic_net_param: float
    standardization: bool
    spark_model: str | None = None
    load_with: str | None = None
    features_col: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"type": self.type, "name": self.name, "regParam": self.reg_param,
                                    "elasticNetParam": self.elastic_net_param, "standardization": self.standardization}
        extra = {"spark_model": self.spark_model, "load_with": self.load_with, "features_col": self.features_col,
                 "note": self.note}
        return {**document, **{key: value for key, value in extra.items() if value is not None}}

    @classmethod
    def from_json(cls, fields: Fields) -> Classifier:
        return cls(fields.text("type"), fields.text("name"), fields.number("regParam"),
                   fields.number("elasticNetParam"), fields.flag("standardization"),
                   fields.optional_text("spark_model"), fields.optional_text("load_with"),
                   fields.optional_text("features_col"), fields.optional_text("note"))


@dataclass(frozen=True)
class Scores:
    """A candidate's validation scores (the selection's keys, in order)."""

    accuracy: float
    macro_f1: float
    log_loss: float

    def to_json(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "log_loss": self.log_loss}

    @classmethod
    def from_json(cls, fields: Fields) -> Scores:
        return cls(fields.number("accuracy"), fields.number("macro_f1"), fields.number("log_loss"))


@dataclass(frozen=True)
class Selection:
    """How the classifier was chosen: the rule, the validation part, every candidate's scores."""

    metric: str
    validation_fraction: float
    seed: int
    candidates: Mapping[str, Scores]
    chosen: str

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "validation_fraction": self.validation_fraction, "seed": self.seed,
                "candidates": {name: scores.to_json() for name, scores in self.candidates.items()},
                "chosen": self.chosen}

    @classmethod
    def from_json(cls, fields: Fields) -> Selection:
        candidates = fields.child("candidates")
        return cls(fields.text("metric"), fields.number("validation_fraction"), fields.integer("seed"),
                   {name: Scores.from_json(candidates.child(name)) for name in candidates.value},
                   fields.text("chosen"))


@dataclass(frozen=True)
class TrainCounts:
    """Images per part: Training (validation included), its validation part, Test."""

    training: int
    validation: int
    test: int

    def to_json(self) -> dict[str, int]:
        return {"training": self.training, "validation": self.validation, "test": self.test}

    @classmethod
    def from_json(cls, fields: Fields) -> TrainCounts:
        return cls(fields.integer("training"), fields.integer("validation"), fields.integer("test"))


@dataclass(frozen=True)
class Metrics:
    """The headline Test metrics (metrics.json has the per-class detail)."""

    accuracy: float
    macro_f1: float

    def to_json(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1}

    @classmethod
    def from_json(cls, fields: Fields) -> Metrics:
        return cls(fields.number("accuracy"), fields.number("macro_f1"))


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling and the "not sure" threshold, both chosen on the validation part of Training
    (recognise/calibration.py has the rules): probabilities are softmax(margins / temperature); a photo
    whose highest probability is below `threshold` is unknown. ECE is measured on validation before
    (T = 1) and after scaling; precision and coverage are the validation rows' at the threshold."""

    temperature: float
    threshold: float
    target_precision: float
    validation_rows: int
    ece_before: float
    ece_after: float
    precision_at_threshold: float
    coverage_at_threshold: float
    target_reached: bool

    def __post_init__(self) -> None:
        if not self.temperature > 0 or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"calibration needs temperature > 0 and a threshold in [0, 1], got "
                             f"{self.temperature} and {self.threshold}")

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "threshold": self.threshold,
                "target_precision": self.target_precision, "validation_rows": self.validation_rows,
                "ece_before": self.ece_before, "ece_after": self.ece_after,
                "precision_at_threshold": self.precision_at_threshold,
                "coverage_at_threshold": self.coverage_at_threshold, "target_reached": self.target_reached}

    @classmethod
    def from_json(cls, fields: Fields) -> Calibration:
        return cls(fields.number("temperature"), fields.number("threshold"), fields.number("target_precision"),
                   fields.integer("validation_rows"), fields.number("ece_before"), fields.number("ece_after"),
                   fields.number("precision_at_threshold"), fields.number("coverage_at_threshold"),
                   fields.flag("target_reached"))

    @classmethod
    def optional(cls, fields: Fields) -> Calibration | None:
        """The `calibration` object of a manifest or bundle.json; None in files written before it existed."""
        child = fields.optional_child("calibration")
        return cls.from_json(child) if child else None


@dataclass(frozen=True)
class Novelty:
    """The "unlike anything trained on" gate (recognise/novelty.py has the rules): a photo whose novelty
    (1 - its highest cosine similarity to a centroid) is above `threshold` is unknown. The threshold is the
    `quantile` of the validation rows' novelty against the fit part's centroids; `validation_flagged` is the
    share of validation rows above it (`validation_photos_flagged` of its photos, view 0), `centroid_rows`
    the Training rows the bundle's `centroids` (arrays.npz rows: one per class for its photos, then one per
    class for its augmented views when it has any) are the means of. Files written before the last two
    fields existed hold one centroid per class (photos and views mixed)."""

    threshold: float
    quantile: float
    validation_rows: int
    validation_flagged: float
    centroid_rows: int
    centroids: int | None = None  # None: one per class (files written before centroids per kind)
    validation_photos_flagged: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 2.0 or not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"novelty needs a threshold in [0, 2] and a quantile in (0, 1], got "
                             f"{self.threshold} and {self.quantile}")

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "quantile": self.quantile, "validation_rows": self.validation_rows,
                "validation_flagged": self.validation_flagged, "centroid_rows": self.centroid_rows,
                **({"centroids": self.centroids} if self.centroids is not None else {}),
                **({"validation_photos_flagged": self.validation_photos_flagged}
                   if self.validation_photos_flagged is not None else {}),
                "score": "1 - max cosine similarity to a centroid (per class, of its photos and of its views), "
                         "in the classifier's input space"}

    @classmethod
    def from_json(cls, fields: Fields) -> Novelty:
        return cls(fields.number("threshold"), fields.number("quantile"), fields.integer("validation_rows"),
                   fields.number("validation_flagged"), fields.integer("centroid_rows"),
                   fields.optional_integer("centroids"), fields.optional_number("validation_photos_flagged"))

    @classmethod
    def optional(cls, fields: Fields) -> Novelty | None:
        """The `novelty` object of a manifest or bundle.json; None in files written before it existed."""
        child = fields.optional_child("novelty")
        return cls.from_json(child) if child else None


@dataclass(frozen=True)
class Outliers:
    """Outlier exposure (recognise/outliers.py): photos of things that are not fruit, trained as one more
    class after the fruit classes (its index is len(classes); arrays.npz's coefficients have one more row).
    A photo whose calibrated probability of that class is at least its highest fruit probability is unknown
    ("not a fruit"). `source` is where the photos came from ("bundled": fruitpipe's data/outliers),
    `photos` how many were trained on (`unreadable` were not), and on the validation part (fit-part model):
    `validation_photos` held-out outlier photos, the share of them `validation_rejected`, and the share of
    validation fruit rows wrongly rejected, `validation_fruit_rejected`."""

    source: str
    photos: int
    unreadable: int
    validation_photos: int
    validation_rejected: float
    validation_fruit_rejected: float

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "photos": self.photos, "unreadable": self.unreadable,
                "validation_photos": self.validation_photos, "validation_rejected": self.validation_rejected,
                "validation_fruit_rejected": self.validation_fruit_rejected,
                "rule": "unknown when P(not fruit) >= the highest fruit probability"}

    @classmethod
    def from_json(cls, fields: Fields) -> Outliers:
        return cls(fields.text("source"), fields.integer("photos"), fields.integer("unreadable"),
                   fields.integer("validation_photos"), fields.number("validation_rejected"),
                   fields.number("validation_fruit_rejected"))

    @classmethod
    def optional(cls, fields: Fields) -> Outliers | None:
        """The `outliers` object of a manifest or bundle.json; None when trained without (or before them)."""
        child = fields.optional_child("outliers")
        return cls.from_json(child) if child else None


@dataclass(frozen=True)
class TrainManifest:
    """MODEL_DIR/manifest.json: the source run, the model, the choice, counts, metrics and timings.

    `schema_version` is the version the value was read from (what `to_json` writes back)."""

    created: str
    source: SourceRun
    model: ModelEntry
    classifier: Classifier
    selection: Selection
    classes: tuple[str, ...]
    counts: TrainCounts
    metrics: Metrics
    timings_s: Timings
    schema_version: int = SCHEMA_VERSION
    calibration: Calibration | None = None  # absent in manifests written before calibration existed
    novelty: Novelty | None = None  # absent in manifests written before the gate existed
    outliers: Outliers | None = None  # absent: trained without outlier photos (or before they existed)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"schema_version": self.schema_version, "kind": TRAIN_KIND, "created": self.created,
                                    "source": self.source.to_json(), "model": self.model.to_json(),
                                    "classifier": self.classifier.to_json(), "selection": self.selection.to_json(),
                                    "classes": list(self.classes), "counts": self.counts.to_json(),
                                    "metrics": self.metrics.to_json(), "timings_s": self.timings_s.to_json()}
        optional = {"calibration": self.calibration, "novelty": self.novelty, "outliers": self.outliers}
        return {**document, **{key: value.to_json() for key, value in optional.items() if value is not None}}

    @classmethod
    def from_json(cls, fields: Fields) -> TrainManifest:
        version = fields.schema_version(SCHEMA_VERSION)
        if fields.text("kind") != TRAIN_KIND:
            raise ValueError(f"{fields.where} is not a {TRAIN_KIND} manifest (kind {fields.text('kind')!r})")
        return cls(created=fields.text("created"), source=SourceRun.from_json(fields.child("source")),
                   model=ModelEntry.from_json(fields.child("model")),
                   classifier=Classifier.from_json(fields.child("classifier")),
                   selection=Selection.from_json(fields.child("selection")), classes=fields.texts("classes"),
                   counts=TrainCounts.from_json(fields.child("counts")),
                   metrics=Metrics.from_json(fields.child("metrics")),
                   timings_s=Timings.from_json(fields.child("timings_s")), schema_version=version,
                   calibration=Calibration.optional(fields), novelty=Novelty.optional(fields),
                   outliers=Outliers.optional(fields))

    @classmethod
    def loads(cls, raw: bytes | str, where: str) -> TrainManifest:
        return cls.from_json(parse(raw, where))


@dataclass(frozen=True)
class BundlePca:
    """The projection's size and the variance it keeps (the arrays themselves are in arrays.npz)."""

    k: int
    variance_kept: float

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "variance_kept": self.variance_kept}

    @classmethod
    def from_json(cls, fields: Fields) -> BundlePca:
        return cls(fields.integer("k"), fields.number("variance_kept"))


@dataclass(frozen=True)
class BundleDescription:
    """bundle.json: what the bundle's files are and where they came from. `files` (file -> sha256) is
    filled in by `bundle.write` once the files exist; `pca`, `metrics`, `calibration`, `tta`, `novelty` and
    `outliers` may be absent (None).

    `schema_version` is the version the value was read from (what `to_json` writes back)."""

    created: str
    model: ModelEntry  # no runtime: the bundle picks its engine from `precision`
    limits: DecodeLimits
    pca: BundlePca | None
    classifier: Classifier
    source: SourceRun
    metrics: Metrics | None
    classes: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    calibration: Calibration | None = None  # absent (old bundles): T = 1 and nothing is ever unknown
    tta: int | None = None  # test-time views averaged per photo (`fruitpipe train --tta`); absent: 1
    novelty: Novelty | None = None  # absent (old bundles, no validation part): no novelty gate
    outliers: Outliers | None = None  # absent: no "not a fruit" class (coefficients have one row per class)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "schema_version": self.schema_version,
            "created": self.created, "model": self.model.to_json(),
            "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels},
            "pca": self.pca.to_json() if self.pca else None, "classifier": self.classifier.to_json(),
            "source": self.source.to_json(), "metrics": self.metrics.to_json() if self.metrics else None,
            "classes": list(self.classes), "files": dict(self.files),
            "calibration": self.calibration.to_json() if self.calibration else None, "tta": self.tta,
            "novelty": self.novelty.to_json() if self.novelty else None,
            "outliers": self.outliers.to_json() if self.outliers else None}
        return {key: value for key, value in document.items() if value is not None}

    @classmethod
    def from_json(cls, fields: Fields) -> BundleDescription:
        if fields.value.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{fields.where} is not a fruitpipe bundle description")
        if fields.value.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise ValueError(f"{fields.where}: format version {fields.value.get('format_version')} is not supported "
                             f"(this fruitpipe reads version {BUNDLE_FORMAT_VERSION})")
        version = fields.schema_version(SCHEMA_VERSION)
        limits, pca, metrics = fields.child("limits"), fields.optional_child("pca"), fields.optional_child("metrics")
        return cls(created=fields.text("created"), model=ModelEntry.from_json(fields.child("model")),
                   limits=DecodeLimits(max_bytes=limits.integer("max_bytes"), max_pixels=limits.integer("max_pixels")),
                   pca=BundlePca.from_json(pca) if pca else None,
                   classifier=Classifier.from_json(fields.child("classifier")),
                   source=SourceRun.from_json(fields.child("source")),
                   metrics=Metrics.from_json(metrics) if metrics else None, classes=fields.texts("classes"),
                   files=fields.child("files").all_texts(), schema_version=version,
                   calibration=Calibration.optional(fields), tta=_tta(fields), novelty=Novelty.optional(fields),
                   outliers=Outliers.optional(fields))

    @classmethod
    def loads(cls, raw: bytes | str, where: str) -> BundleDescription:
        return cls.from_json(parse(raw, where))


def _tta(fields: Fields) -> int | None:
    tta = fields.optional_integer("tta")
    if tta is not None and not 1 <= tta <= MAX_TTA:
        raise ValueError(f"{fields.where}: tta must be from 1 to {MAX_TTA}, got {tta}")
    return tta
