"""S3 under faults: throttling, bodies cut mid-way and one key failing for good, injected by a proxy
in front of the moto server; and a denied input prefix stopping the run early, in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fruitpipe.batch import pipeline
from fruitpipe.config import PcaSettings, RunConfig, S3Options
from fruitpipe.devtools.faultproxy import GET_OBJECT, LIST, FaultProxy
from fruitpipe.devtools.s3server import upload_folder

pytestmark = pytest.mark.slow

BUCKET, PREFIX = "faults-in", "photos"
INPUT = f"s3://{BUCKET}/{PREFIX}"
FAILING = "Training/Apple Red/11_100.jpg"  # one key of small_sample that always gets 500 InternalError


@pytest.fixture(scope="module")
def uploaded(s3_endpoint: str, small_sample: Path) -> list[str]:
    """small_sample under s3://faults-in/photos/; returns every object's full URI, sorted."""
    upload_folder(s3_endpoint, small_sample, BUCKET, PREFIX)
    uris = sorted(f"{INPUT}/{p.relative_to(small_sample).as_posix()}" for p in small_sample.rglob("*.jpg"))
    assert f"{INPUT}/{FAILING}" in uris
    return uris


@pytest.fixture(scope="module")
def fault_free(spark, s3_endpoint: str, uploaded: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same data through the real endpoint, no proxy: path -> CNN feature vector."""
    output = tmp_path_factory.mktemp("fault-free") / "out"
    manifest = pipeline.run(RunConfig(input=INPUT, output=str(output), pca=PcaSettings(k=3),
                                      s3=S3Options(endpoint_url=s3_endpoint)))
    assert manifest.counts.to_json() == {"listed": len(uploaded), "ok": len(uploaded), "rejected": 0, "views": 0,
                                         "featurized": len(uploaded), "reused": 0, "removed": 0}
    table = pq.read_table(output / "features").to_pandas()
    return {path: np.asarray(vector) for path, vector in zip(table["path"], table["features"], strict=True)}


def test_run_completes_under_throttling_cuts_and_a_failing_key(spark, s3_endpoint: str, uploaded: list[str],
                                                               fault_free: dict, tmp_path: Path) -> None:
    proxy = FaultProxy(s3_endpoint, slowdown_share=0.2, cut_share=0.1, fail_keys={FAILING}, seed=7)
    output = tmp_path / "out"
    with proxy as endpoint:
        manifest = pipeline.run(RunConfig(input=INPUT, output=str(output), pca=PcaSettings(k=3),
                                          s3=S3Options(endpoint_url=endpoint)))

    faults = proxy.faults()
    assert faults["slowdown"] > 0 and faults["cut"] > 0, faults
    # the failing key was retried by with_retries (read_attempts) around botocore (3 attempts), then given up
    attempts = S3Options().read_attempts
    assert attempts <= faults["fail_key"] <= attempts * 3, faults
    cut_paths = {path for method, path, action in proxy.log if action == "cut"}
    assert cut_paths and not any(FAILING in path for path in cut_paths)

    features = pq.read_table(output / "features").to_pandas()
    errors = pq.read_table(output / "errors").to_pandas()
    assert manifest.counts.to_json() == {"listed": len(uploaded), "ok": len(features), "rejected": len(errors),
                                         "views": 0, "featurized": len(uploaded) - 1, "reused": 0, "removed": 0}
    assert features["path"].is_unique and errors["path"].is_unique
    assert sorted([*features["path"], *errors["path"]]) == uploaded  # each key once, features or errors
    # retries absorbed every transient fault: the only rejected key is the one failing for good
    assert list(errors["path"]) == [f"{INPUT}/{FAILING}"]
    row = errors.iloc[0]
    assert row["stage"] == "read"
    assert "InternalError" in row["reason"] and "\n" not in row["reason"], row["reason"]

    for path, vector in zip(features["path"], features["features"], strict=True):
        np.testing.assert_allclose(np.asarray(vector), fault_free[path], atol=1e-5, err_msg=path)
    assert (output / "_SUCCESS").exists()


def test_denied_input_prefix_stops_the_run_early(s3_endpoint: str, uploaded: list[str], tmp_path: Path) -> None:
    proxy = FaultProxy(s3_endpoint, deny_listing={f"{BUCKET}/{PREFIX}"})
    output = tmp_path / "out"
    with proxy as endpoint, pytest.raises((PermissionError, ValueError)) as raised:
        pipeline.run(RunConfig(input=INPUT, output=str(output), s3=S3Options(endpoint_url=endpoint)))
    message = str(raised.value)
    assert "\n" not in message and "access denied" in message.lower(), message
    assert proxy.counts["denied"] == 1, proxy.counts  # a 403 is not retried
    assert proxy.counts[GET_OBJECT] == 0  # stopped before any image was read
    assert _files(output) == []


def test_denied_input_prefix_through_the_cli(s3_endpoint: str, uploaded: list[str], tmp_path: Path) -> None:
    proxy = FaultProxy(s3_endpoint, deny_listing={f"{BUCKET}/{PREFIX}"})
    output = tmp_path / "out"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    with proxy as endpoint:
        result = subprocess.run([sys.executable, "-m", "fruitpipe.cli", "run", "--input", INPUT,
                                 "--output", str(output), "--endpoint-url", endpoint, "--master", "local[1]"],
                                capture_output=True, text=True, env=env, timeout=300, check=False)
    lines = result.stderr.splitlines()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert "access denied" in lines[0].lower(), lines[0]
    assert proxy.counts[LIST] >= 1 and proxy.counts[GET_OBJECT] == 0
    assert _files(output) == []


def test_fault_decisions_are_reproducible() -> None:
    """Same seed, same (path, attempt) sequence: same faults, whatever the order of the requests."""
    def decisions(order: list[str]) -> dict[tuple[str, int], str]:
        proxy = FaultProxy("http://127.0.0.1:9", slowdown_share=0.2, cut_share=0.1, fail_keys={"bad"}, seed=3)
        seen: dict[tuple[str, int], str] = {}
        counts: dict[str, int] = {}
        for path in order:
            counts[path] = counts.get(path, 0) + 1
            seen[path, counts[path]] = proxy.decide("GET", path, {})[1]
        assert proxy.decide("GET", "/b/", {"list-type": ["2"]}) == (LIST, "forward")
        assert proxy.decide("PUT", "/b/k0", {})[1] == "forward"
        return seen

    paths = [f"/b/k{i}" for i in range(200)] * 3 + ["/b/bad.jpg"]
    first, second = decisions(paths), decisions(paths[::-1])
    assert first == second
    assert first["/b/bad.jpg", 1] == "fail_key"
    share = sum(action == "slowdown" for action in first.values()) / len(first)
    assert 0.12 < share < 0.28


def test_listings_outside_a_denied_prefix_still_get_faults() -> None:
    proxy = FaultProxy("http://127.0.0.1:9", slowdown_share=1.0, fault_kinds={LIST}, deny_listing=("b/secret/",))
    assert proxy.decide("GET", "/b/", {"list-type": ["2"], "prefix": ["secret/x"]}) == (LIST, "denied")
    assert proxy.decide("GET", "/b/", {"list-type": ["2"], "prefix": ["public/"]}) == (LIST, "slowdown")


def _files(folder: Path) -> list[str]:
    """Every file below `folder` (an empty folder, or none, means nothing was written)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
