"""`fruitpipe run/train --remote sc://...` on a real Spark Connect server (local[2], one for the module).

The Connect runs are CLI subprocesses: a Connect session marks its whole Python process as Spark Connect
(pyspark sets SPARK_CONNECT_MODE_ENABLED), which would turn the session's classic `spark` fixture users
into Connect clients. The classic reference runs in this process on that fixture.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fruitpipe import cli
from fruitpipe.batch import pipeline
from fruitpipe.config import PcaSettings, RunConfig
from fruitpipe.devtools.s3server import download_prefix, upload_folder
from helpers import fruitpipe_cli

pytestmark = pytest.mark.slow
K = 4


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fruitpipe.devtools.connectserver import ConnectServer

    with ConnectServer(tmp_path_factory.mktemp("connect-server")) as url:
        yield url


@pytest.fixture(scope="module")
def classic(spark, small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("classic") / "out"
    pipeline.run(RunConfig(input=str(small_sample), output=str(output), pca=PcaSettings(k=K)))
    return output, json.loads((output / "manifest.json").read_text())


@pytest.fixture(scope="module")
def connect_run(connect_url: str, small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("connect") / "out"
    result = fruitpipe_cli("run", "--remote", connect_url, "--input", str(small_sample), "--output", str(output),
                           "--k", str(K))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


Rows = dict[str, tuple[np.ndarray, np.ndarray]]  # relative path -> (features, pca)


def rows_by_path(folder: Path, strip: str) -> Rows:
    table = pq.read_table(folder / "features").to_pydict()
    return {p[len(strip):]: (np.asarray(f), np.asarray(c))
            for p, f, c in zip(table["path"], table["features"], table["pca"], strict=True)}


def assert_same_run(ours: Rows, reference: Rows) -> None:
    """Features within 1e-5, PCA projections within 1e-4 once each component's sign is aligned."""
    assert ours.keys() == reference.keys()
    paths = sorted(ours)
    features, expected = (np.stack([rows[p][0] for p in paths]) for rows in (ours, reference))
    np.testing.assert_allclose(features, expected, atol=1e-5)
    projected, expected = (np.stack([rows[p][1] for p in paths]).astype(np.float64) for rows in (ours, reference))
    assert projected.shape == (len(paths), K)
    signs = np.where(np.sum(projected * expected, axis=0) < 0, -1.0, 1.0)
    np.testing.assert_allclose(projected, expected * signs, atol=1e-4)


def test_run_on_connect_equals_classic(connect_run: Path, classic, small_sample: Path) -> None:
    classic_out, classic_manifest = classic
    assert_same_run(rows_by_path(connect_run, f"{small_sample}/"), rows_by_path(classic_out, f"{small_sample}/"))
    manifest = json.loads((connect_run / "manifest.json").read_text())
    assert manifest["counts"] == classic_manifest["counts"]
    assert manifest["pca"]["explained_variance_ratio"] == pytest.approx(
        classic_manifest["pca"]["explained_variance_ratio"], abs=1e-6)
    spark = manifest["spark"]
    assert spark["executors"] is None  # not exposed by Spark Connect
    assert spark["master"] == "local[2]" and spark["application_id"].startswith("local-")
    assert (spark["default_parallelism"], spark["partitions"]) == (
        classic_manifest["spark"]["default_parallelism"], classic_manifest["spark"]["partitions"])
    assert "java" not in manifest["versions"]  # the client runs no JVM
    assert (connect_run / "_SUCCESS").exists() and (connect_run / "pca_model" / "arrays.npz").exists()
    cost = manifest["cost"]  # the status store and accumulators are the server's: null, and said why
    assert cost["task_cpu_s"] is None and cost["python_worker_cpu_s"] is None and cost["estimated_cost"] is None
    assert cost["driver_cpu_s"] > 0 and any("Spark Connect" in note for note in cost["notes"])
    assert manifest["class_counts"] == classic_manifest["class_counts"]
    assert "report.html" in json.loads((connect_run / "_SUCCESS").read_text())["files"]


def test_s3_run_on_connect_equals_classic(connect_url: str, s3_endpoint: str, small_sample: Path, classic,
                                          tmp_path: Path) -> None:
    """The endpoint reaches the server's executors in the task values (--endpoint-url), not the environment;
    the server is named by SPARK_REMOTE this time (no --remote)."""
    from fruitpipe.devtools.s3server import client

    upload_folder(s3_endpoint, small_sample, "connect-in", "fruits")
    client(s3_endpoint).create_bucket(Bucket="connect-out")
    result = fruitpipe_cli("run", "--input", "s3://connect-in/fruits", "--output", "s3://connect-out/run",
                           "--endpoint-url", s3_endpoint, "--k", str(K), env_extra={"SPARK_REMOTE": connect_url})
    assert result.returncode == 0, result.stderr[-3000:]
    keys = download_prefix(s3_endpoint, "connect-out", "run", tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["spark"]["executors"] is None, "ran on a classic session, not on the SPARK_REMOTE server"
    assert {"manifest.json", "_SUCCESS", "pca_model/arrays.npz"} <= set(keys)
    assert not any("_temporary" in key for key in keys)
    assert_same_run(rows_by_path(tmp_path, "s3://connect-in/fruits/"), rows_by_path(classic[0], f"{small_sample}/"))


def test_train_on_connect(connect_url: str, connect_run: Path, tmp_path: Path) -> None:
    """MLlib's LogisticRegression runs through Spark Connect: train needs no classic session."""
    from fruitpipe.recognise.bundle import Bundle

    result = fruitpipe_cli("train", "--remote", connect_url, "--features", str(connect_run),
                           "--output", str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["counts"]["test"] == 8 and 0.0 <= manifest["metrics"]["accuracy"] <= 1.0
    # the bundled outlier photos were featurized and projected through Connect too, and calibrated with the rest
    assert manifest["outliers"]["photos"] > 0 and manifest["outliers"]["unreadable"] == 0
    assert manifest["calibration"]["validation_rows"] == (manifest["counts"]["validation"]
                                                          + manifest["outliers"]["validation_photos"])
    assert "coverage" in json.loads((tmp_path / "model" / "metrics.json").read_text())["calibration"]
    bundle = Bundle.load(str(tmp_path / "model"))
    saved = np.load(connect_run / "pca_model" / "arrays.npz")
    np.testing.assert_array_equal(bundle.arrays.components, saved["components"])


def test_conf_the_server_cannot_take_is_one_line(connect_url: str, small_sample: Path, tmp_path: Path) -> None:
    result = fruitpipe_cli("run", "--remote", connect_url, "--input", str(small_sample), "--output",
                           str(tmp_path / "out"), "--conf", "spark.executor.memory=2g")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "fruitpipe run: error: --conf spark.executor.memory cannot apply to a Spark Connect session")


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--remote", "sc://127.0.0.1:15002", "--master", "local[2]"], {}, "--master cannot apply with --remote"),
    (["--master", "local[2]"], {"SPARK_REMOTE": "sc://127.0.0.1:15002"}, "--master cannot apply with SPARK_REMOTE"),
    (["--remote", "sc://127.0.0.1:15002", "--env-archive", "env.tar.gz"], {}, "--env-archive cannot apply"),
    (["--remote", "spark://127.0.0.1:7077"], {}, "--remote expects a Spark Connect URL"),
])
def test_remote_conflicts_are_refused_before_spark(argv, env, message, monkeypatch, capsys, tmp_path: Path) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["run", "--output", str(tmp_path / "out"), *argv]) == cli.EXIT_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_unreachable_server_fails_fast() -> None:
    """One line in seconds (the Connect client alone retries for minutes), the URL's token left out."""
    from fruitpipe.batch.session import connect_session
    from fruitpipe.devtools.processes import free_port

    with pytest.raises(ValueError) as raised, connect_session(f"sc://127.0.0.1:{free_port()}/;token=secret"):
        pass
    assert str(raised.value).startswith("cannot reach the Spark Connect server at sc://127.0.0.1:")
    assert "secret" not in str(raised.value)
