"""What a run cost: CPU seconds measured while it ran, and money at an assumed price per vCPU-hour.

The figures are measured, the price is not: it is an assumption the user can change
(`fruitpipe run --price-per-vcpu-hour`) and the manifest and the report say which one was used.
"""
from __future__ import annotations

from dataclasses import dataclass

from fruitpipe.batch.manifest import RunCost
from fruitpipe.config import DEFAULT_PRICE_PER_VCPU_HOUR

DEFAULT_PRICE_ASSUMPTION = ("USD 0.048 per vCPU-hour: AWS on-demand m5.xlarge, us-east-1, Linux ($0.192/h for "
                            "4 vCPUs); EMR's per-instance fee, storage and data transfer not included")
COUNTED = ("counted: Spark's executorCpuTime of this run's stages (JVM task threads), the featurize Python "
           "workers' process CPU from their first to their last batch (reading, decoding, inference), and the "
           "driver's Python process")
NOT_COUNTED = ("not counted: Python worker start-up, the PCA fit's and the write's Python workers (numpy, small "
               "next to inference), the driver JVM's own threads (scheduling, listener), failed task attempts' "
               "Python CPU, and idle cores")


@dataclass(frozen=True)
class CpuSeconds:
    """The CPU a run measured; None: what could not be measured here, and why (`missing`)."""

    task: float | None
    python_workers: float | None
    driver: float
    missing: tuple[str, ...] = ()


def price_assumption(price_per_vcpu_hour: float) -> str:
    """The sentence the manifest and report carry about the price."""
    if price_per_vcpu_hour == DEFAULT_PRICE_PER_VCPU_HOUR:
        return DEFAULT_PRICE_ASSUMPTION
    return f"{price_per_vcpu_hour:g} per vCPU-hour, as given with --price-per-vcpu-hour"


def money(vcpu_seconds: float, price_per_vcpu_hour: float) -> float:
    """vCPU-seconds at a price per vCPU-hour."""
    return vcpu_seconds / 3600.0 * price_per_vcpu_hour


def estimate(cpu: CpuSeconds, images: int, wall_s: float, cores: int, price_per_vcpu_hour: float) -> RunCost:
    """The run's cost: used vCPU-seconds (the sum of the measured parts), per 1,000 images listed, and
    both the used and the reserved (wall x cores) figures in money."""
    parts = (cpu.task, cpu.python_workers)
    used = None if any(part is None for part in parts) else sum(part or 0.0 for part in parts) + cpu.driver
    reserved = wall_s * cores
    return RunCost(
        task_cpu_s=_rounded(cpu.task), python_worker_cpu_s=_rounded(cpu.python_workers),
        driver_cpu_s=round(cpu.driver, 3), vcpu_s=_rounded(used),
        vcpu_s_per_1000_images=None if used is None or not images else round(used / images * 1000, 3),
        reserved_vcpu_s=round(reserved, 3), price_per_vcpu_hour=price_per_vcpu_hour,
        price_assumption=price_assumption(price_per_vcpu_hour),
        estimated_cost=None if used is None else money(used, price_per_vcpu_hour),
        reserved_cost=money(reserved, price_per_vcpu_hour),
        notes=(COUNTED, NOT_COUNTED, *cpu.missing))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
