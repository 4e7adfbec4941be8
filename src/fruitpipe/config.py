"""Frozen settings of a run. Validation raises ValueError with a message meant for the user.

Stdlib only: this module is imported everywhere, including in Spark's Python workers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from fruitpipe.runtime import DEFAULT_PRECISION, PRECISION_CHOICES

DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_VARIANCE = 0.95
DEFAULT_MASTER = "local[*]"
MAX_AUGMENT = 32  # augmented views per Training image: featurizing costs grow with 1 + N
BUNDLED_OUTLIERS = "bundled"  # `train --outliers`: fruitpipe's own outlier photos (data/outliers)
MAX_AUGMENT_STRENGTH = 2.0  # --augment-strength scales each family's own strength: (0, 2]
MAX_TTA = 16  # test-time views per photo: inference costs grow with N
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class DecodeLimits:
    """Guards applied to every input before it is decoded (oversized files, decompression bombs)."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("decode limits must be positive")


@dataclass(frozen=True)
class PcaSettings:
    """Either a fixed number of components `k`, or the smallest k reaching `variance`."""

    k: int | None = None
    variance: float | None = None

    def __post_init__(self) -> None:
        if self.k is not None and self.variance is not None:
            raise ValueError("give either --k or --variance, not both")
        if self.k is not None and self.k < 1:
            raise ValueError(f"--k must be a positive integer, got {self.k}")
        if self.variance is not None and not 0.0 < self.variance <= 1.0:
            raise ValueError(f"--variance must be in (0, 1], got {self.variance}")

    @property
    def variance_target(self) -> float | None:
        """The variance target in force: the given one, the default when no k is fixed."""
        if self.k is not None:
            return None
        return DEFAULT_VARIANCE if self.variance is None else self.variance


@dataclass(frozen=True)
class ExecutorSettings:
    """How executors batch their work; tuned in the benchmark, rarely set by users."""

    batch_size: int = 64  # images read and decoded ahead per chunk
    read_threads: int = 16  # concurrent GETs per task: hides per-object latency on object stores
    infer_batch: int | None = None  # images per model call; None: the engine's measured best (runtime.INFER_BATCH)
    rows_per_partition: int = 256  # listing rows per Spark partition (sources.partition_count), a benchmark lever

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.rows_per_partition < 1:
            raise ValueError(f"rows per partition must be >= 1, got {self.rows_per_partition}")
        if self.infer_batch is not None and self.infer_batch < 1:
            raise ValueError(f"inference batch must be >= 1, got {self.infer_batch}")
        if self.read_threads < 1:
            raise ValueError(f"read threads must be >= 1, got {self.read_threads}")


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store. Never credentials: those come from the AWS chain."""

    endpoint_url: str | None = None  # default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS
    region: str | None = None  # default: AWS_REGION / AWS_DEFAULT_REGION / profile
    addressing_style: str | None = None  # "path" | "virtual" | "auto"; default: path for custom endpoints
    read_attempts: int = 4  # whole-object GET attempts (body cut mid-way, throttling, 5xx), each up to 3 requests

    def __post_init__(self) -> None:
        if self.addressing_style not in (None, "path", "virtual", "auto"):
            raise ValueError(f"addressing style must be path, virtual or auto, got {self.addressing_style!r}")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {self.endpoint_url!r}")
        if self.read_attempts < 1:
            raise ValueError("read attempts must be >= 1")

    def to_wire(self) -> str:
        """Every field as compact JSON: the one string form the options travel in to executors (the
        featurizer's ML Param, the committer's Data Source option), so a new field reaches them all."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_wire(cls, text: str) -> S3Options:
        """The options `to_wire` wrote (fields it left out keep their defaults); ValueError otherwise."""
        try:
            values = json.loads(text)
        except ValueError:
            raise ValueError(f"S3 options must be the JSON written by S3Options.to_wire, got {text!r}") from None
        if not isinstance(values, dict):
            raise ValueError(f"S3 options must be a JSON object, got {text!r}")
        known = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown S3 options: {', '.join(unknown)}")
        for name, value in values.items():
            default = known[name]
            wanted = int if isinstance(default, int) else str  # the None defaults hold strings
            if not (value is None and default is None) and (type(value) is not wanted):
                raise ValueError(f"S3 option {name} must be {wanted.__name__}, got {value!r}")
        return cls(**values)


# AWS on-demand m5.xlarge, us-east-1, Linux: USD 0.192 per hour for 4 vCPUs (batch.cost states it).
DEFAULT_PRICE_PER_VCPU_HOUR = 0.048


@dataclass(frozen=True)
class RunConfig:
    """Everything `fruitpipe run` needs; built by the CLI or by library users."""

    input: str
    output: str
    model: str = DEFAULT_MODEL
    pca: PcaSettings = field(default_factory=PcaSettings)
    master: str = DEFAULT_MASTER
    overwrite: bool = False
    csv: bool = False
    spark_conf: tuple[tuple[str, str], ...] = ()
    s3: S3Options = field(default_factory=S3Options)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    image_size: int | None = None  # square model input side; None = the model's own (speed vs accuracy)
    precision: str = DEFAULT_PRECISION  # fp32 | bf16 | auto (fruitpipe.runtime)
    remote: str | None = None  # Spark Connect server sc://HOST:PORT; None: a classic session on `master`
    augment: int = 0  # augmented views of every Training image besides the image (fruitpipe.image.shifts)
    augment_families: tuple[str, ...] = ()  # the training-side families views draw from; (): the default mix
    augment_strength: float = 1.0  # scales each family's strength in the views (0 < s <= 2)
    price_per_vcpu_hour: float = DEFAULT_PRICE_PER_VCPU_HOUR  # the cost estimate's assumed price (batch.cost)
    resume: bool = False  # continue an interrupted run in `output`, or bring a finished one up to date

    def __post_init__(self) -> None:
        check_remote(self.remote)
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the output and --overwrite replaces it: give one of them")
        if not self.price_per_vcpu_hour >= 0:
            raise ValueError(f"--price-per-vcpu-hour must be a number >= 0, got {self.price_per_vcpu_hour}")
        check_augment(self.augment)
        check_augment_strength(self.augment_strength)
        if (self.augment_families or self.augment_strength != 1.0) and not self.augment:
            raise ValueError("--augment-families and --augment-strength shape the views of --augment N: "
                             "give --augment too")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image-size must be a positive integer, got {self.image_size}")
        if not self.input:
            raise ValueError("an input location is required")
        if not self.output:
            raise ValueError("an output location is required (--output)")
        if not self.model:
            raise ValueError("a model name is required (--model)")
        if not self.master:
            raise ValueError("a Spark master is required (--master)")


DEFAULT_REFIT_GROWTH = 0.1  # `watch` refits PCA once the photos grew by 10% since its fit (unless told otherwise)


MIN_KEEP_WARM_S = 0.5
SPARK_IDLE_WORKER_S = 60.0  # PythonWorkerFactory's idle timeout: a fixed minute, no setting changes it
KEEP_WARM_RANGE = (f"0 (off) or from {MIN_KEEP_WARM_S:g} to under {SPARK_IDLE_WORKER_S:g} seconds "
                   "(Spark ends Python workers idle for a minute)")


def keep_warm_allowed(seconds: float) -> bool:
    return seconds == 0 or MIN_KEEP_WARM_S <= seconds < SPARK_IDLE_WORKER_S


@dataclass(frozen=True)
class WatchSchedule:
    """When `fruitpipe watch` passes and refits: every `interval_s` seconds; PCA refitted every
    `refit_every` passes, or once the photos grew by `refit_growth` (a fraction) since the fit
    (default 0.1); `max_passes` ends the watch (None: until SIGTERM/Ctrl-C). While it waits, a tiny job every
    `keep_warm_s` seconds keeps the Python workers and their loaded model (Spark ends workers idle for a
    minute); 0 lets them go (with dynamic allocation, so that idle executors are released)."""

    interval_s: float = 60.0
    refit_every: int | None = None
    refit_growth: float | None = None
    max_passes: int | None = None
    keep_warm_s: float = 40.0

    def __post_init__(self) -> None:
        if not self.interval_s >= 0:
            raise ValueError(f"--interval must be a number of seconds >= 0, got {self.interval_s}")
        if self.refit_every is not None and self.refit_growth is not None:
            raise ValueError("--refit-every and --refit-growth are two schedules: give one of them")
        if self.refit_every is not None and self.refit_every < 1:
            raise ValueError(f"--refit-every must be a number of passes >= 1, got {self.refit_every}")
        if self.refit_growth is not None and not self.refit_growth > 0:
            raise ValueError(f"--refit-growth must be a fraction > 0 (0.1 = 10% more photos), got {self.refit_growth}")
        if self.max_passes is not None and self.max_passes < 1:
            raise ValueError(f"--max-passes must be >= 1, got {self.max_passes}")
        if not keep_warm_allowed(self.keep_warm_s):
            raise ValueError(f"--keep-warm must be {KEEP_WARM_RANGE}, got {self.keep_warm_s:g}")

    def refit_now(self, passes_since_fit: int) -> bool:
        """With --refit-every N: whether this pass, `passes_since_fit` publishing passes after the fit, refits."""
        return self.refit_every is not None and passes_since_fit >= self.refit_every

    def refit_at(self, fitted_rows: int) -> int | None:
        """With the growth schedule: the photos (ok) from which a pass refits a PCA fitted on `fitted_rows`."""
        if self.refit_every is not None:
            return None
        growth = DEFAULT_REFIT_GROWTH if self.refit_growth is None else self.refit_growth
        return math.ceil(fitted_rows * (1 + growth))


@dataclass(frozen=True)
class TrainConfig:
    """Everything `fruitpipe train` needs: a run output's features in, a model folder out."""

    features: str  # a fruitpipe run output (features/ + manifest.json)
    output: str  # MODEL_DIR
    overwrite: bool = False
    master: str = DEFAULT_MASTER
    spark_conf: tuple[tuple[str, str], ...] = ()
    s3: S3Options = field(default_factory=S3Options)
    validation_fraction: float = 0.2  # of Training, per class, to choose the classifier (Test is never used)
    seed: int = 0
    remote: str | None = None  # Spark Connect server sc://HOST:PORT; None: a classic session on `master`
    target_precision: float = 0.95  # the "not sure" threshold is chosen on validation for this precision
    tta: int = 1  # test-time views recorded in bundle.json (predict, serve and evaluate default to it)
    # photos that are not fruit, trained as a "not a fruit" class (outlier exposure): a folder or s3:// prefix,
    # BUNDLED_OUTLIERS (fruitpipe's own, data/outliers) or None (none: no such class)
    outliers: str | None = BUNDLED_OUTLIERS
    # one classifier configuration by name (recognise.train.CANDIDATES), e.g. chosen on shifted data by the
    # recognition benchmark; None: the one that does best on the validation part
    classifier: str | None = None

    def __post_init__(self) -> None:
        check_remote(self.remote)
        check_tta(self.tta)
        if self.outliers == "":
            raise ValueError("--outliers needs a folder, s3:// prefix, 'bundled' or 'none'")
        if not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"target precision must be in (0, 1], got {self.target_precision}")
        if not self.features:
            raise ValueError("a run output is required (--features)")
        if not self.output:
            raise ValueError("a model folder is required (--output)")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {self.validation_fraction}")


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything `fruitpipe evaluate` needs: a model folder, a labelled folder, where to write."""

    model: str  # MODEL_DIR (or MODEL_DIR/bundle)
    input: str  # labelled folder, Fruits 360 or flat layout, local or s3://
    output: str | None = None  # metrics.json, per_class.csv and the PNGs; None: console only
    split: str | None = None  # Fruits 360 split to evaluate; None: Test
    threshold: float | None = None  # "not sure" threshold to report coverage/accuracy at
    spark: bool = False  # force the Spark path (auto: s3:// input or more than SPARK_ABOVE photos)
    master: str = DEFAULT_MASTER
    spark_conf: tuple[tuple[str, str], ...] = ()
    s3: S3Options = field(default_factory=S3Options)
    remote: str | None = None
    tta: int | None = None  # test-time views per photo; None: the bundle's recorded tta
    novelty_threshold: float | None = None  # the novelty gate's cosine distance; None: the bundle's
    not_fruit: bool = True  # apply the "not a fruit" class of a model trained with outlier photos

    def __post_init__(self) -> None:
        check_remote(self.remote)
        if self.tta is not None:
            check_tta(self.tta)
        if not self.model:
            raise ValueError("a model folder is required (--model)")
        if not self.input:
            raise ValueError("a labelled folder is required (--input)")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")


def check_augment(augment: int) -> int:
    """Augmented views per image: an integer 0..MAX_AUGMENT."""
    if isinstance(augment, bool) or not isinstance(augment, int) or not 0 <= augment <= MAX_AUGMENT:
        raise ValueError(f"--augment must be an integer from 0 to {MAX_AUGMENT}, got {augment!r}")
    return augment


def check_augment_strength(strength: float) -> float:
    """The views' strength factor: a number in (0, MAX_AUGMENT_STRENGTH]."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= MAX_AUGMENT_STRENGTH:
        raise ValueError(f"--augment-strength must be a number in (0, {MAX_AUGMENT_STRENGTH:g}], got {strength!r}")
    return float(strength)


def check_tta(tta: int) -> int:
    """Test-time views per photo: an integer 1..MAX_TTA (1: the photo alone)."""
    if isinstance(tta, bool) or not isinstance(tta, int) or not 1 <= tta <= MAX_TTA:
        raise ValueError(f"--tta must be an integer from 1 to {MAX_TTA}, got {tta!r}")
    return tta


def check_remote(remote: str | None) -> None:
    """A Spark Connect URL is sc://HOST:PORT (optionally /;name=value parameters)."""
    if remote is not None and (not remote.startswith("sc://") or len(remote) <= len("sc://")):
        raise ValueError(f"--remote expects a Spark Connect URL sc://HOST:PORT, got {remote.split(';', 1)[0]!r}")


def parse_spark_conf(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    """Turn `key=value` strings (from repeated --conf flags) into pairs, refusing malformed ones."""
    parsed = []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--conf expects KEY=VALUE, got {pair!r}")
        parsed.append((key.strip(), value))
    return tuple(parsed)


@dataclass(frozen=True)
class DriftConfig:
    """Everything `fruitpipe drift` needs: two complete run outputs, an optional model, where to write."""

    reference: str  # run output whose PCA space and own variation the comparison is made in
    current: str
    output: str  # drift.json + drift.png go here (local or s3://)
    model: str | None = None  # MODEL_DIR of 'fruitpipe train' (local): prediction drift
    alpha: float = 0.01
    sample: int = 1000  # rows per side for MMD and the diagnostics
    seed: int = 0
    permutations: int = 1000
    calibration_splits: int = 20  # reference self-splits for MMD and reconstruction (driver, on the sample)
    classifier_splits: int = 5  # reference self-splits for the classifier test (one Spark fit each)
    block: int = 4  # consecutive frames of one class kept on one side of every split
    master: str = DEFAULT_MASTER
    spark_conf: tuple[tuple[str, str], ...] = ()
    s3: S3Options = field(default_factory=S3Options)
    remote: str | None = None

    def __post_init__(self) -> None:
        check_remote(self.remote)
        if not self.reference or not self.current:
            raise ValueError("drift needs --reference RUN and --current RUN")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.sample < 20:
            raise ValueError(f"--sample must be at least 20 rows per side, got {self.sample}")
        if self.permutations < 100 or self.calibration_splits < 5 or self.classifier_splits < 2 or self.block < 1:
            raise ValueError("drift needs >= 100 permutations, >= 5 calibration splits, >= 2 classifier "
                             "splits and a block of >= 1 frame")
