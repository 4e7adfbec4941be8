"""Shared fixtures: one local[2] SparkSession, a private ONNX cache, small image sets."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fruitpipe.session import BASE_CONF

TEST_CONF = {
    **BASE_CONF,
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "2g",
    "spark.sql.session.timeZone": "UTC",
}


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports go to a per-session cache, so tests never depend on ~/.cache state."""
    cache = tmp_path_factory.mktemp("fruitpipe-cache")
    os.environ["FRUITPIPE_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session", autouse=True)
def aws_test_credentials() -> None:
    """A dummy credential chain, set before Spark starts so executors inherit it too."""
    from fruitpipe.devtools.s3server import use_dummy_credentials

    use_dummy_credentials()


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A moto S3 server process on 127.0.0.1 for the whole session."""
    from fruitpipe.devtools.s3server import MotoServer

    with MotoServer() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master("local[2]").appName("fruitpipe-tests")
    for key, value in TEST_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    from fruitpipe.sampledata import bundled_sample_dir

    return Path(bundled_sample_dir())


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


@pytest.fixture(scope="session")
def small_sample(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x (6 Training + 2 Test) images: quick Spark runs."""
    return copy_subset(sample_dir, tmp_path_factory.mktemp("small-sample"), 4, {"Training": 6, "Test": 2})


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


def fruitpipe_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python -m fruitpipe.cli ARGS` as a user runs it (its own Spark when it runs one)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.run([sys.executable, "-m", "fruitpipe.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def bundled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`fruitpipe run --csv` on the whole bundled sample, once per session; tests only read it."""
    output = tmp_path_factory.mktemp("e2e") / "out"
    result = fruitpipe_cli("run", "--output", str(output), "--csv", "--master", "local[2]")
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


@pytest.fixture(scope="session")
def trained_bundle(spark, bundled_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder trained on the session's bundled-sample run (tests/trained.py); Bundle.load takes it."""
    from trained import train_on

    return train_on(bundled_run[0], tmp_path_factory.mktemp("trained") / "model")
