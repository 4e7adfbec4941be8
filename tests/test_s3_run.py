"""Object storage end to end on a real S3-protocol server (moto, 127.0.0.1): S3 in, S3 out, mixed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fruitpipe.batch import pipeline
from fruitpipe.config import PcaSettings, RunConfig, S3Options
from fruitpipe.devtools.s3server import download_prefix, upload_folder
from fruitpipe.ml import CentredPCAModel
from fruitpipe.storage import Store

pytestmark = pytest.mark.slow


def features_by_path(folder: Path, strip: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    table = pq.read_table(folder / "features").to_pandas()
    columns = zip(table["path"], table["features"], table["pca"], strict=True)
    return {p[len(strip):]: (np.asarray(f), np.asarray(c)) for p, f, c in columns}


@pytest.fixture(scope="module")
def local_reference(spark, small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("local-ref") / "out"
    manifest = pipeline.run(RunConfig(input=str(small_sample), output=str(output), pca=PcaSettings(k=4)))
    return output, manifest


def test_s3_to_s3_equals_local_run(spark, s3_endpoint: str, small_sample: Path, local_reference,
                                   tmp_path: Path) -> None:
    uploaded = upload_folder(s3_endpoint, small_sample, "fruit-in", "datasets/fruits 360")
    _bucket(s3_endpoint, "fruit-out")
    manifest = pipeline.run(RunConfig(input="s3://fruit-in/datasets/fruits 360", output="s3://fruit-out/runs/r1",
                                      pca=PcaSettings(k=4), s3=S3Options(endpoint_url=s3_endpoint)))
    assert manifest.counts.to_json() == {"listed": uploaded, "ok": uploaded, "rejected": 0, "views": 0,
                                         "featurized": uploaded, "reused": 0, "removed": 0}
    keys = download_prefix(s3_endpoint, "fruit-out", "runs/r1", tmp_path)
    for name in ("manifest.json", "_SUCCESS", "scree.png", "errors/part-00000.parquet"):
        assert name in keys
    assert {"pca_model/arrays.npz", "pca_model/metadata/part-00000"} <= set(keys)
    assert not any("_temporary" in key for key in keys)
    state = [k for k in keys if k.startswith("_fruitpipe/")]  # the run's journal: state, not published output
    assert state and all(k.startswith("_fruitpipe/journal-") for k in state)  # the lock is released
    assert json.loads((tmp_path / "_SUCCESS").read_text())["files"] == [
        k for k in keys if k != "_SUCCESS" and k not in state]
    local_out, local_manifest = local_reference
    remote = features_by_path(tmp_path, "s3://fruit-in/datasets/fruits 360/")
    local = features_by_path(local_out, f"{small_sample}/")
    assert remote.keys() == local.keys()
    for key, (features, projection) in remote.items():
        np.testing.assert_allclose(features, local[key][0], atol=1e-5)
        np.testing.assert_allclose(projection, local[key][1], atol=1e-4)
    assert manifest.pca.explained_variance_ratio == pytest.approx(local_manifest.pca.explained_variance_ratio, abs=1e-6)

    store = Store(S3Options(endpoint_url=s3_endpoint))
    model = CentredPCAModel.read().using(store).load("s3://fruit-out/runs/r1/pca_model")  # straight from S3
    again = model.setOutputCol("again").transform(spark.read.parquet(str(tmp_path / "features"))).toPandas()
    np.testing.assert_allclose(np.stack(again["again"]), np.stack(again["pca"]), atol=1e-5)


def test_local_in_s3_out_and_back(spark, s3_endpoint: str, small_sample: Path, tmp_path: Path) -> None:
    _bucket(s3_endpoint, "round-trip")
    options = S3Options(endpoint_url=s3_endpoint)
    first = pipeline.run(RunConfig(input=str(small_sample), output="s3://round-trip/out", pca=PcaSettings(k=2),
                                   s3=options))
    refused = pytest.raises(ValueError, match="already exists")
    with refused:
        pipeline.run(RunConfig(input=str(small_sample), output="s3://round-trip/out", s3=options))
    again = pipeline.run(RunConfig(input=str(small_sample), output="s3://round-trip/out", pca=PcaSettings(k=2),
                                   s3=options, overwrite=True))
    assert again.counts == first.counts
    keys = download_prefix(s3_endpoint, "round-trip", "out", tmp_path / "copy")
    assert sum(k.startswith("features/") for k in keys) >= 1 and "_SUCCESS" in keys


def _bucket(endpoint: str, name: str) -> None:
    from fruitpipe.devtools.s3server import client

    s3 = client(endpoint)
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=name)
