"""The run's contracts with its readers: `manifest.json` (`RunManifest`) and `_SUCCESS` (`SuccessMarker`).

Frozen dataclasses written with `to_json` and read back with `from_json`, here and nowhere else, so
`fruitpipe train`, the CLI summary and the benchmark read attributes, not keys. JSON key names are
the documented output contract and stay as they are; `schema_version` says which shape a file has:
absent means 1 (written before versions existed; same keys), and a version newer than this fruitpipe
knows is refused in one line rather than half-read. `Fields` is the typed JSON reader the other
contracts (train manifest, `bundle.json`) use too. Stdlib only (plus the model registry's types).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from fruitpipe.image.models import ModelSpec, Preprocessing, package_version
from fruitpipe.runtime import Runtime

SCHEMA_VERSION = 2  # 2: schema_version recorded (1: the same keys without it)


class Fields:
    """One JSON object of a contract, read with its types checked: any problem is one ValueError that
    names the file (`where`) and the key."""

    def __init__(self, value: object, where: str, path: str = "") -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {path or 'the document'} is not a JSON object")
        self.value: dict[str, Any] = value
        self.where = where
        self.path = path

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _wrong(self, key: str, expected: str, value: object) -> NoReturn:
        raise ValueError(f"{self.where}: {self.key_path(key)} should be {expected}, got {type(value).__name__}")

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def get(self, key: str) -> object:
        if key not in self.value:
            raise ValueError(f"{self.where}: {self.key_path(key)} is missing")
        return self.value[key]

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
        return value

    def integer(self, key: str) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            self._wrong(key, "an integer", value)
        return value

    def number(self, key: str) -> float:
        value = self.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self._wrong(key, "a number", value)
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self._wrong(key, "true or false", value)
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def optional_integer(self, key: str) -> int | None:
        return self.integer(key) if self.has(key) else None

    def optional_number(self, key: str) -> float | None:
        return self.number(key) if self.has(key) else None

    def child(self, key: str) -> Fields:
        return Fields(self.get(key), self.where, self.key_path(key))

    def optional_child(self, key: str) -> Fields | None:
        return self.child(key) if self.has(key) else None

    def _items(self, key: str) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list):
            self._wrong(key, "a list", value)
        return value

    def children(self, key: str) -> tuple[Fields, ...]:
        return tuple(Fields(item, self.where, f"{self.key_path(key)}[{index}]")
                     for index, item in enumerate(self._items(key)))

    def texts(self, key: str) -> tuple[str, ...]:
        items = self._items(key)
        if not all(isinstance(item, str) for item in items):
            self._wrong(key, "a list of strings", items)
        return tuple(items)

    def numbers(self, key: str) -> tuple[float, ...]:
        items = self._items(key)
        if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in items):
            self._wrong(key, "a list of numbers", items)
        return tuple(float(item) for item in items)

    def all_texts(self) -> dict[str, str]:
        """This whole object as name -> string."""
        return {key: self.text(key) for key in self.value}

    def all_numbers(self) -> dict[str, float]:
        """This whole object as name -> number."""
        return {key: self.number(key) for key in self.value}

    def all_integers(self) -> dict[str, int]:
        """This whole object as name -> integer."""
        return {key: self.integer(key) for key in self.value}

    def schema_version(self, newest: int) -> int:
        """The document's schema version (1 when absent); one newer than `newest` is refused in one line."""
        version = self.optional_integer("schema_version") or 1
        if version > newest:
            raise ValueError(f"{self.where} has schema_version {version}; this fruitpipe reads up to {newest}: "
                             "upgrade fruitpipe")
        if version < 1:
            raise ValueError(f"{self.where}: schema_version {version} is not a version")
        return version


def parse(raw: bytes | str, where: str) -> Fields:
    """A contract file's bytes -> its top-level object; bad JSON is one ValueError naming the file."""
    try:
        value = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    return Fields(value, where)


def _without_none(document: dict[str, Any], *optional: str) -> dict[str, Any]:
    """Optional keys are left out when unset, as writers before them did."""
    return {key: value for key, value in document.items() if key not in optional or value is not None}


@dataclass(frozen=True)
class ModelEntry:
    """The CNN and the runtime that ran it, as the run records it; `fruitpipe train` and `bundle.json`
    copy it (same keys). None: a field this record does not carry (the bundle has no `runtime`) or
    written before it existed (precision: fp32 then)."""

    name: str
    arch: str
    weights_sha256: str
    input_size: int
    runtime: str | None
    precision: str | None
    infer_batch: int | None
    preprocessing: Preprocessing
    onnx_input: str | None
    feature_dim: int
    onnx_sha256: str | None = None  # the run's only: the graph its executors ran

    @classmethod
    def of(cls, spec: ModelSpec, runtime: Runtime, onnx_sha256: str | None = None) -> ModelEntry:
        return cls(name=spec.name, arch=spec.arch, weights_sha256=spec.weights_sha256,
                   input_size=spec.preprocessing.input_size,
                   runtime=f"{runtime.engine} {package_version(runtime.engine)}", precision=runtime.precision,
                   infer_batch=runtime.infer_batch, preprocessing=spec.preprocessing,
                   onnx_input="float32, normalised by the caller" if spec.kind == "onnx"
                   else "uint8 NHWC, normalisation inside the graph",
                   feature_dim=spec.feature_dim, onnx_sha256=onnx_sha256)

    def recorded_runtime(self, what: str) -> Runtime:
        """The runtime these features were made with, refused if this machine cannot run it."""
        return Runtime.recorded(self.precision, what)

    def to_json(self) -> dict[str, Any]:
        return _without_none({
            "name": self.name, "arch": self.arch, "weights_sha256": self.weights_sha256,
            "input_size": self.input_size, "runtime": self.runtime, "precision": self.precision,
            "infer_batch": self.infer_batch, "preprocessing": self.preprocessing.to_json(),
            "onnx_input": self.onnx_input, "feature_dim": self.feature_dim, "onnx_sha256": self.onnx_sha256,
        }, "runtime", "precision", "infer_batch", "onnx_input", "onnx_sha256")

    @classmethod
    def from_json(cls, fields: Fields) -> ModelEntry:
        return cls(name=fields.text("name"), arch=fields.text("arch"), weights_sha256=fields.text("weights_sha256"),
                   input_size=fields.integer("input_size"), runtime=fields.optional_text("runtime"),
                   precision=fields.optional_text("precision"), infer_batch=fields.optional_integer("infer_batch"),
                   preprocessing=Preprocessing.from_json(fields.get("preprocessing"),
                                                         f"{fields.where}: {fields.key_path('preprocessing')}"),
                   onnx_input=fields.optional_text("onnx_input"), feature_dim=fields.integer("feature_dim"),
                   onnx_sha256=fields.optional_text("onnx_sha256"))


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds of each stage, in the order they ran (names are the writer's), and in all."""

    stages: Mapping[str, float]
    total: float

    def to_json(self) -> dict[str, float]:
        return {**self.stages, "total": self.total}

    @classmethod
    def from_json(cls, fields: Fields) -> Timings:
        stages = fields.all_numbers()
        total = fields.number("total")
        del stages["total"]
        return cls(stages, total)


@dataclass(frozen=True)
class RunCounts:
    """Images listed, featurized and rejected (one `errors/` row each): photos, never views. `views`:
    the augmented rows written besides them (`view` > 0; None in manifests from before `--augment`).
    `featurized`: images read and run through decode and the model in this pass; `reused`: images whose
    results the output's journal already had (a touched file with the same bytes too); `removed`: images
    of the journal no longer listed (None in manifests from before the journal). listed = ok + rejected."""

    listed: int
    ok: int
    rejected: int
    views: int | None = None
    featurized: int | None = None
    reused: int | None = None
    removed: int | None = None

    def to_json(self) -> dict[str, int]:
        counts = {"listed": self.listed, "ok": self.ok, "rejected": self.rejected}
        optional = {"views": self.views, "featurized": self.featurized, "reused": self.reused,
                    "removed": self.removed}
        return {**counts, **{name: value for name, value in optional.items() if value is not None}}

    @classmethod
    def from_json(cls, fields: Fields) -> RunCounts:
        return cls(fields.integer("listed"), fields.integer("ok"), fields.integer("rejected"),
                   fields.optional_integer("views"), fields.optional_integer("featurized"),
                   fields.optional_integer("reused"), fields.optional_integer("removed"))


@dataclass(frozen=True)
class PcaSummary:
    """The fitted PCA: k, the variance target in force (None when k was given), the variance kept and
    the full spectrum (the scree plot's). `fitted_rows`: the photos it was fitted on, and `refitted`:
    whether this run fitted it (False: `watch` kept the previous run's, frozen); None in older manifests."""

    k: int
    variance_target: float | None
    variance_kept: float
    explained_variance_ratio: tuple[float, ...]
    fitted_rows: int | None = None
    refitted: bool | None = None

    def to_json(self) -> dict[str, Any]:
        fitted = {} if self.fitted_rows is None else {"fitted_rows": self.fitted_rows, "refitted": self.refitted}
        return {"k": self.k, "variance_target": self.variance_target, "variance_kept": self.variance_kept,
                "explained_variance_ratio": list(self.explained_variance_ratio), **fitted}

    @classmethod
    def from_json(cls, fields: Fields) -> PcaSummary:
        return cls(fields.integer("k"), fields.optional_number("variance_target"), fields.number("variance_kept"),
                   fields.numbers("explained_variance_ratio"), fields.optional_integer("fitted_rows"),
                   fields.flag("refitted") if fields.has("refitted") else None)


@dataclass(frozen=True)
class Executor:
    """One executor the application had (alive or lost) and the tasks it ran."""

    id: str
    host: str
    active: bool
    completed_tasks: int
    failed_tasks: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "active": self.active, "completed_tasks": self.completed_tasks,
                "failed_tasks": self.failed_tasks}

    @classmethod
    def from_json(cls, fields: Fields) -> Executor:
        return cls(fields.text("id"), fields.text("host"), fields.flag("active"), fields.integer("completed_tasks"),
                   fields.integer("failed_tasks"))


@dataclass(frozen=True)
class SparkSummary:
    """Where the run ran: master, application, executors, parallelism and the listing's partitions."""

    master: str | None  # as the session reports it (pyspark types it optional)
    application_id: str | None
    executors: tuple[Executor, ...] | None  # None (null): Spark Connect does not expose the executor list
    default_parallelism: int
    partitions: int

    def to_json(self) -> dict[str, Any]:
        return _without_none({"master": self.master, "application_id": self.application_id,
                              "executors": None if self.executors is None else [e.to_json() for e in self.executors],
                              "default_parallelism": self.default_parallelism, "partitions": self.partitions},
                             "application_id")

    @classmethod
    def from_json(cls, fields: Fields) -> SparkSummary:
        return cls(fields.optional_text("master"), fields.optional_text("application_id"),
                   tuple(Executor.from_json(item) for item in fields.children("executors"))
                   if fields.has("executors") else None,
                   fields.integer("default_parallelism"), fields.integer("partitions"))


@dataclass(frozen=True)
class ClassCount:
    """One class in one split: photos featurized and rejected (views not counted). `label` / `split`
    None: a flat layout's loose file / a flat layout (no split)."""

    label: str | None
    split: str | None
    ok: int
    rejected: int

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "split": self.split, "ok": self.ok, "rejected": self.rejected}

    @classmethod
    def from_json(cls, fields: Fields) -> ClassCount:
        return cls(fields.optional_text("label"), fields.optional_text("split"), fields.integer("ok"),
                   fields.integer("rejected"))


@dataclass(frozen=True)
class RunCost:
    """What the run cost in CPU and, at an assumed price, in money (batch/cost.py computes it).

    `task_cpu_s`: Spark's executorCpuTime of the run's stages (JVM task threads); `python_worker_cpu_s`:
    the featurize Python workers' process CPU (where the inference runs; Spark's metrics miss it);
    `driver_cpu_s`: the driver's Python process. None: not measurable here (Spark Connect), said in
    `notes`. `vcpu_s` is their sum (None when a part is None); `reserved_vcpu_s` is wall time x the
    cores Spark planned with, what a cluster of that size bills whether busy or not."""

    task_cpu_s: float | None
    python_worker_cpu_s: float | None
    driver_cpu_s: float
    vcpu_s: float | None
    vcpu_s_per_1000_images: float | None
    reserved_vcpu_s: float
    price_per_vcpu_hour: float
    price_assumption: str
    estimated_cost: float | None
    reserved_cost: float
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"task_cpu_s": self.task_cpu_s, "python_worker_cpu_s": self.python_worker_cpu_s,
                "driver_cpu_s": self.driver_cpu_s, "vcpu_s": self.vcpu_s,
                "vcpu_s_per_1000_images": self.vcpu_s_per_1000_images, "reserved_vcpu_s": self.reserved_vcpu_s,
                "price_per_vcpu_hour": self.price_per_vcpu_hour, "price_assumption": self.price_assumption,
                "estimated_cost": self.estimated_cost, "reserved_cost": self.reserved_cost,
                "notes": list(self.notes)}

    @classmethod
    def from_json(cls, fields: Fields) -> RunCost:
        return cls(fields.optional_number("task_cpu_s"), fields.optional_number("python_worker_cpu_s"),
                   fields.number("driver_cpu_s"), fields.optional_number("vcpu_s"),
                   fields.optional_number("vcpu_s_per_1000_images"), fields.number("reserved_vcpu_s"),
                   fields.number("price_per_vcpu_hour"), fields.text("price_assumption"),
                   fields.optional_number("estimated_cost"), fields.number("reserved_cost"), fields.texts("notes"))


REWRITTEN, APPENDED = "rewritten", "appended"  # RunManifest.publication
UNCHANGED = "unchanged"  # what `run --resume` returns for an up-to-date output (never written to a manifest)


@dataclass(frozen=True)
class RunManifest:
    """`manifest.json` of a run: what went in, which model and settings, what came out, how fast.

    `schema_version` is the version the value was read from (what `to_json` writes back)."""

    run_id: str
    input: str
    output: str
    layout: str
    classes: tuple[str, ...]
    model: ModelEntry
    feature_dim: int
    pca: PcaSummary
    counts: RunCounts
    timings_s: Timings
    throughput_img_s: float | None
    featurize_img_s: float
    versions: Mapping[str, str]
    spark: SparkSummary
    schema_version: int = SCHEMA_VERSION
    augment: int | None = None  # augmented views per Training image (None: written before --augment)
    # with augment > 0: the families the views drew from and their strength factor (None: before they existed,
    # i.e. every training-side family at strength 1)
    augment_families: tuple[str, ...] | None = None
    augment_strength: float | None = None
    cost: RunCost | None = None  # None: written before cost was recorded
    class_counts: tuple[ClassCount, ...] | None = None  # per class and split; None: written before it
    # how this version was published: REWRITTEN (every output written) or APPENDED (a pass that only added
    # photos under a frozen PCA wrote new parts next to the earlier ones); None: written before it
    publication: str | None = None

    def to_json(self) -> dict[str, Any]:
        document = {
            "schema_version": self.schema_version, "run_id": self.run_id, "input": self.input,
            "output": self.output, "layout": self.layout, "classes": list(self.classes),
            "model": self.model.to_json(), "feature_dim": self.feature_dim, "pca": self.pca.to_json(),
            "counts": self.counts.to_json(), "timings_s": self.timings_s.to_json(),
            "throughput_img_s": self.throughput_img_s, "featurize_img_s": self.featurize_img_s,
            "versions": dict(self.versions), "spark": self.spark.to_json(),
        }
        families = None if self.augment_families is None else list(self.augment_families)
        optional = {"augment": self.augment, "augment_families": families, "augment_strength": self.augment_strength,
                    "cost": None if self.cost is None else self.cost.to_json(),
                    "class_counts": None if self.class_counts is None
                    else [count.to_json() for count in self.class_counts], "publication": self.publication}
        return {**document, **{key: value for key, value in optional.items() if value is not None}}

    @classmethod
    def from_json(cls, fields: Fields) -> RunManifest:
        version = fields.schema_version(SCHEMA_VERSION)
        return cls(
            run_id=fields.text("run_id"), input=fields.text("input"), output=fields.text("output"),
            layout=fields.text("layout"), classes=fields.texts("classes"),
            model=ModelEntry.from_json(fields.child("model")), feature_dim=fields.integer("feature_dim"),
            pca=PcaSummary.from_json(fields.child("pca")), counts=RunCounts.from_json(fields.child("counts")),
            timings_s=Timings.from_json(fields.child("timings_s")),
            throughput_img_s=fields.optional_number("throughput_img_s"),
            featurize_img_s=fields.number("featurize_img_s"), versions=fields.child("versions").all_texts(),
            spark=SparkSummary.from_json(fields.child("spark")), schema_version=version,
            augment=fields.optional_integer("augment"),
            augment_families=fields.texts("augment_families") if fields.has("augment_families") else None,
            augment_strength=fields.optional_number("augment_strength"),
            cost=RunCost.from_json(fields.child("cost")) if fields.has("cost") else None,
            class_counts=tuple(ClassCount.from_json(item) for item in fields.children("class_counts"))
            if fields.has("class_counts") else None, publication=fields.optional_text("publication"))

    @classmethod
    def loads(cls, raw: bytes | str, where: str) -> RunManifest:
        """A manifest.json's bytes -> the manifest; `where` names the file in every error."""
        return cls.from_json(parse(raw, where))


@dataclass(frozen=True)
class SamplePoint:
    """One photo of the report's sample: where it is, its class and split, its first two PCA coordinates."""

    path: str
    label: str | None
    split: str | None
    pc1: float
    pc2: float

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "split": self.split, "pc1": self.pc1, "pc2": self.pc2}

    @classmethod
    def from_json(cls, fields: Fields) -> SamplePoint:
        return cls(fields.text("path"), fields.optional_text("label"), fields.optional_text("split"),
                   fields.number("pc1"), fields.number("pc2"))


@dataclass(frozen=True)
class ReportSample:
    """`report_sample.json`: a bounded, deterministic, class-stratified sample of the run's photos (at
    most `per_class` per class, chosen by a hash of the path), drawn in Spark when the run ends so that
    `fruitpipe report` reads a small file whatever the run's size. Points are in class, then rank order."""

    per_class: int
    points: tuple[SamplePoint, ...]
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "per_class": self.per_class,
                "points": [point.to_json() for point in self.points]}

    @classmethod
    def from_json(cls, fields: Fields) -> ReportSample:
        version = fields.schema_version(SCHEMA_VERSION)
        points = tuple(SamplePoint.from_json(item) for item in fields.children("points"))
        return cls(fields.integer("per_class"), points, schema_version=version)

    @classmethod
    def loads(cls, raw: bytes | str, where: str) -> ReportSample:
        return cls.from_json(parse(raw, where))


@dataclass(frozen=True)
class SuccessMarker:
    """`_SUCCESS`, written last: finding it means the rest of the output is complete. Lists every other
    file of the output and the writer's counts (a run's or `fruitpipe train`'s, by name)."""

    files: tuple[str, ...]
    counts: Mapping[str, int]
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "files": list(self.files), "counts": dict(self.counts)}

    @classmethod
    def from_json(cls, fields: Fields) -> SuccessMarker:
        version = fields.schema_version(SCHEMA_VERSION)
        return cls(fields.texts("files"), fields.child("counts").all_integers(), schema_version=version)

    @classmethod
    def loads(cls, raw: bytes | str, where: str) -> SuccessMarker:
        return cls.from_json(parse(raw, where))
