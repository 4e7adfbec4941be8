"""Shared fixtures: one local[2] SparkSession, a private ONNX cache, small image sets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruitpipe.batch.session import BASE_CONF
from helpers import copy_subset, fruitpipe_cli

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
    from fruitpipe.image.sampledata import bundled_sample_dir

    return Path(bundled_sample_dir())


@pytest.fixture(scope="session")
def small_sample(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x (6 Training + 2 Test) images: quick Spark runs."""
    return copy_subset(sample_dir, tmp_path_factory.mktemp("small-sample"), 4, {"Training": 6, "Test": 2})


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


@pytest.fixture(scope="session")
def unsure_photos(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fruit photo the model knows ("banana") and a synthetic picture that is no fruit ("noise")."""
    from badimages import jpeg_bytes

    folder = tmp_path_factory.mktemp("unsure-photos")
    (folder / "noise.jpg").write_bytes(jpeg_bytes(160, 120, seed=7))
    return {"banana": sorted((sample_dir / "Test" / "Banana").glob("*.jpg"))[0], "noise": folder / "noise.jpg"}


@pytest.fixture(scope="session")
def threshold_between(trained_bundle: Path, unsure_photos: dict[str, Path]) -> float:
    """A "not sure" threshold between the two photos' highest probabilities: the banana answered, the noise not."""
    from fruitpipe.recognise.bundle import Bundle

    model = Bundle.load(trained_bundle)
    banana, noise = (float(model.probabilities([unsure_photos[name].read_bytes()])[0].max())
                     for name in ("banana", "noise"))
    assert noise < banana, (noise, banana)
    return round((noise + banana) / 2, 6)


@pytest.fixture(scope="session")
def unsure_server(trained_bundle: Path, threshold_between: float, tmp_path_factory: pytest.TempPathFactory):
    """`fruitpipe serve --threshold T` (T: `threshold_between`) as its own process; yields its base URL."""
    from fruitpipe.devtools.serveprocess import running_server

    with running_server(trained_bundle, tmp_path_factory.mktemp("serve-threshold"),
                        "--threshold", str(threshold_between)) as server_process:
        yield server_process.base_url
