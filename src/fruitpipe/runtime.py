"""Which inference engine runs the CNN at which numeric precision, on this CPU.

`--precision` trades a little feature fidelity for speed: fp32 (ONNX Runtime, the reference) or
bf16 (OpenVINO on CPUs with AVX512-BF16 or AMX). `auto` picks bf16 where the CPU has it, else fp32.
int8 (ONNX Runtime static QDQ) was measured and is not offered: slower than fp32 and below the
feature-fidelity bar on the CPUs measured (docs/performance.md).
Stdlib only: the driver resolves the precision, executors and the bundle receive the `Runtime` value.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
PRECISION_CHOICES = (*PRECISIONS, "auto")
DEFAULT_PRECISION = "fp32"
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Images per model call, measured per engine with one intra-op thread per task (docs/performance.md):
# small batches keep activations in cache; 64 was 20-30% slower than 1 for ONNX Runtime fp32.
INFER_BATCH = {"fp32": 1, "bf16": 4}


@dataclass(frozen=True)
class Runtime:
    """The resolved choice: precision, engine and images per model call. Plain data, travels to executors."""

    precision: str
    engine: str
    infer_batch: int

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.engine not in (ONNXRUNTIME, OPENVINO):
            raise ValueError(f"unknown inference engine {self.engine!r}")
        if self.infer_batch < 1:
            raise ValueError(f"inference batch must be >= 1, got {self.infer_batch}")

    @classmethod
    def for_precision(cls, precision: str, infer_batch: int | None = None) -> Runtime:
        engine = OPENVINO if precision == "bf16" else ONNXRUNTIME
        return cls(precision, engine, infer_batch or INFER_BATCH.get(precision, 1))

    @classmethod
    def recorded(cls, recorded_precision: str | None, what: str) -> Runtime:
        """The runtime a run manifest or bundle recorded (None: fp32, before precisions existed), checked
        runnable here: features of two precisions never mix, so there is no silent fallback."""
        precision = recorded_precision or DEFAULT_PRECISION
        if precision not in PRECISIONS:
            raise ValueError(f"{what} was made with precision {precision!r}, which this fruitpipe does not know")
        problem = supports(precision)
        if problem:
            raise ValueError(f"{what} was made with {precision} features and must be used with them: {problem}")
        return cls.for_precision(precision)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    return _cpu_flags_from(Path("/proc/cpuinfo"))


@lru_cache(maxsize=4)
def _cpu_flags_from(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def engine_installed(engine: str) -> bool:
    return importlib.util.find_spec(engine) is not None


def supports(precision: str, flags: frozenset[str] | None = None) -> str | None:
    """None when this CPU and installation can run `precision`, else the reason it cannot."""
    flags = cpu_flags() if flags is None else flags
    if precision == "bf16":
        if not flags & BF16_FLAGS:
            return "bf16 needs a CPU with AVX512-BF16 or AMX (this one has neither); use fp32"
        if not engine_installed(OPENVINO):
            return "bf16 runs on OpenVINO, which is not installed (pip install openvino)"
    return None


def resolve(precision: str, infer_batch: int | None = None, flags: frozenset[str] | None = None) -> Runtime:
    """The Runtime for a --precision value; `auto` picks by CPU. ValueError (one line) if not runnable here."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    flags = cpu_flags() if flags is None else flags
    if precision == "auto":
        precision = choose_auto(flags)
        logger.info("--precision auto: %s on this CPU", precision)
    problem = supports(precision, flags)
    if problem:
        raise ValueError(f"--precision {precision}: {problem}")
    return Runtime.for_precision(precision, infer_batch)


def choose_auto(flags: frozenset[str]) -> str:
    """bf16 where the CPU has native bf16 (and OpenVINO is installed), else fp32."""
    return "bf16" if supports("bf16", flags) is None else "fp32"
