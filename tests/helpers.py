"""Helpers the tests import (plain functions; conftest.py keeps only fixtures)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def copy_subset(source: Path, target: Path, classes: int, per_split: dict[str, int]) -> Path:
    """A small Fruits 360-layout copy of the bundled sample: first `classes` classes, n per split."""
    names = sorted(p.name for p in (source / "Training").iterdir() if p.is_dir())[:classes]
    for split, count in per_split.items():
        for name in names:
            files = sorted((source / split / name).glob("*.jpg"))[:count]
            (target / split / name).mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copy(file, target / split / name / file.name)
    return target


def jobs_started_by(spark, action) -> list[int]:
    """Spark jobs started while `action` ran (tracked through a job group on this thread): an empty
    list shows the driver did the work alone, with no task that could run on another host."""
    sc = spark.sparkContext
    group = f"probe-{id(action)}"
    sc.setJobGroup(group, "driver-only probe")
    try:
        action()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return list(sc.statusTracker().getJobIdsForGroup(group))


def fruitpipe_cli(*args: str, timeout: float = 900,
                  env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m fruitpipe.cli ARGS` as a user runs it (its own Spark when it runs one)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fruitpipe.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
