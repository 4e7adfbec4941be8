"""End to end: `fruitpipe run` as a user runs it, on the bundled sample, checked from the files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fruitpipe.config import IMAGE_EXTENSIONS, PcaSettings, RunConfig
from helpers import fruitpipe_cli

pytestmark = pytest.mark.slow


fruitpipe = fruitpipe_cli


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def test_counts_and_dimensions(bundled_run, sample_dir: Path) -> None:
    output, result = bundled_run
    manifest = json.loads((output / "manifest.json").read_text())
    features = pq.read_table(output / "features").to_pandas()
    errors = pq.read_table(output / "errors").to_pandas()
    listed = len(image_files(sample_dir))
    assert manifest["counts"] == {"listed": listed, "ok": len(features), "rejected": len(errors), "views": 0,
                                  "featurized": listed, "reused": 0, "removed": 0}
    assert len(features) == listed - len(errors)
    assert features["path"].is_unique
    assert {len(v) for v in features["features"]} == {1280} == {manifest["feature_dim"]}
    assert {len(v) for v in features["pca"]} == {manifest["pca"]["k"]}
    assert set(features["label"]) == {p.name for p in (sample_dir / "Training").iterdir()}
    assert set(features["split"]) == {"Training", "Test"}
    assert set(zip(features["width"], features["height"], strict=True)) == {(100, 100)}
    assert f"{len(features)} ok" in result.stdout and str(output) in result.stdout


def test_output_contract_files(bundled_run) -> None:
    output, _ = bundled_run
    for name in ("features", "errors", "pca_model", "scree.png", "manifest.json", "_SUCCESS", "csv"):
        assert (output / name).exists(), name
    assert (output / "scree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    success = json.loads((output / "_SUCCESS").read_text())
    published = [p for p in output.rglob("*") if p.is_file() and p.name != "_SUCCESS"
                 and p.relative_to(output).parts[0] != "_fruitpipe"]  # the run's state (its journal), not output
    assert success["files"] == sorted(str(p.relative_to(output)) for p in published)
    assert {p.name for p in output.iterdir()} - {p.relative_to(output).parts[0] for p in published} == {
        "_SUCCESS", "_fruitpipe"}
    newest_other = max(p.stat().st_mtime for p in published)
    assert (output / "_SUCCESS").stat().st_mtime >= newest_other


def test_manifest_is_consistent(bundled_run, sample_dir: Path) -> None:
    output, _ = bundled_run
    manifest = json.loads((output / "manifest.json").read_text())
    for key in ("run_id", "input", "output", "model", "feature_dim", "pca", "counts", "timings_s",
                "throughput_img_s", "versions", "spark"):
        assert key in manifest, key
    assert Path(manifest["input"]) == sample_dir
    assert manifest["model"]["name"] == "efficientnet-lite0"
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["model"]["input_size"] == 224 and manifest["model"]["runtime"].startswith("onnxruntime")
    ratios = manifest["pca"]["explained_variance_ratio"]
    k, target = manifest["pca"]["k"], manifest["pca"]["variance_target"]
    assert target == 0.95 and np.sum(ratios[:k]) >= target > np.sum(ratios[: k - 1])
    assert manifest["timings_s"]["total"] >= sum(v for key, v in manifest["timings_s"].items() if key != "total")
    assert manifest["spark"]["master"] == "local[2]" and manifest["spark"]["executors"]
    expected_rate = manifest["counts"]["listed"] / manifest["timings_s"]["total"]
    assert manifest["throughput_img_s"] == pytest.approx(expected_rate, rel=0.01)


def test_csv_matches_parquet(bundled_run) -> None:
    output, _ = bundled_run
    import pandas as pd

    csv = pd.concat(pd.read_csv(p) for p in sorted((output / "csv").glob("*.csv"))).set_index("path").sort_index()
    features = pq.read_table(output / "features").to_pandas().set_index("path").sort_index()
    k = len(features["pca"].iloc[0])
    assert list(csv.columns) == ["label", "split", "view", *[f"pc{i}" for i in range(1, k + 1)]]
    assert csv.index.equals(features.index)
    np.testing.assert_allclose(csv.iloc[:, 3:].to_numpy(), np.stack(features["pca"]), atol=1e-5)


def test_saved_pca_model_reproduces_projection(bundled_run, spark) -> None:
    from fruitpipe.ml import CentredPCAModel

    output, _ = bundled_run
    model = CentredPCAModel.load(str(output / "pca_model"))
    stored = spark.read.parquet(str(output / "features")).limit(20)
    again = model.setOutputCol("again").transform(stored).toPandas()
    np.testing.assert_allclose(np.stack(again["again"]), np.stack(again["pca"]), atol=1e-4)


def test_rerun_refused_without_overwrite(bundled_run) -> None:
    output, _ = bundled_run
    result = fruitpipe("run", "--output", str(output))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and "--overwrite" in lines[0]
    assert (output / "_SUCCESS").exists()


def test_manifest_and_success_are_versioned_contracts(bundled_run) -> None:
    """What a run writes now carries schema_version 2 and reads back as the same typed value."""
    from fruitpipe.batch.manifest import RunManifest, SuccessMarker

    output, result = bundled_run
    written = json.loads((output / "manifest.json").read_text())
    manifest = RunManifest.loads((output / "manifest.json").read_bytes(), "manifest.json")
    assert written["schema_version"] == manifest.schema_version == 2 and manifest.to_json() == written
    assert f"fruitpipe run {manifest.run_id} done" in result.stdout  # the summary, from the typed value
    success = SuccessMarker.loads((output / "_SUCCESS").read_bytes(), "_SUCCESS")
    assert success.schema_version == 2 and success.counts == manifest.counts.to_json()


def test_flat_layout_with_fixed_k_and_overwrite(spark, small_sample: Path, tmp_path: Path) -> None:
    """In process (reuses the test session): the seed's flat layout, --k, --overwrite of our own output."""
    from fruitpipe.batch import pipeline

    flat = small_sample / "Training"
    output = tmp_path / "flat"
    config = RunConfig(input=str(flat), output=str(output), pca=PcaSettings(k=3))
    first = pipeline.run(config)
    second = pipeline.run(RunConfig(input=str(flat), output=str(output), pca=PcaSettings(k=3), overwrite=True))
    assert first.layout == second.layout == "flat" and second.pca.k == 3
    features = pq.read_table(output / "features").to_pandas()
    assert features["split"].isna().all() and set(features["label"]) == {p.name for p in flat.iterdir()}
    assert len(features) == second.counts.ok == len(image_files(flat))


def test_variance_target_picks_k_like_sklearn(spark, small_sample: Path, tmp_path: Path) -> None:
    from sklearn.decomposition import PCA

    from fruitpipe.batch import pipeline

    output = tmp_path / "variance"
    manifest = pipeline.run(RunConfig(input=str(small_sample), output=str(output), pca=PcaSettings(variance=0.8)))
    features = np.stack(pq.read_table(output / "features").to_pandas()["features"]).astype(np.float64)
    cumulative = np.cumsum(PCA().fit(features).explained_variance_ratio_)
    assert manifest.pca.k == int(np.searchsorted(cumulative, 0.8 - 1e-9) + 1)


def test_overwrite_refuses_foreign_folder(tmp_path: Path, small_sample: Path) -> None:
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("do not delete")
    result = fruitpipe("run", "--input", str(small_sample), "--output", str(foreign), "--overwrite")
    assert result.returncode != 0 and "not a fruitpipe output" in result.stderr
    assert (foreign / "thesis.txt").read_text() == "do not delete"


def test_bad_input_folder_completes_with_every_bad_file_in_errors(spark, sample_dir: Path, tmp_path: Path) -> None:
    """Whole run (in process) over good photos plus every kind of bad file: nothing lost, nothing fatal."""
    import shutil

    from badimages import BAD_MAX_BYTES, BAD_MAX_PIXELS, write_bad_images
    from fruitpipe.batch import pipeline
    from fruitpipe.config import DecodeLimits

    folder = tmp_path / "input" / "Mixed Bag"
    folder.mkdir(parents=True)
    for photo in sorted((sample_dir / "Training" / "Banana").glob("*.jpg"))[:5]:
        shutil.copy(photo, folder / photo.name)
    expected = write_bad_images(folder, BAD_MAX_BYTES)
    output = tmp_path / "out"
    manifest = pipeline.run(RunConfig(input=str(folder.parent), output=str(output), pca=PcaSettings(k=2),
                                      limits=DecodeLimits(BAD_MAX_BYTES, BAD_MAX_PIXELS)))
    errors = pq.read_table(output / "errors").to_pandas()
    assert {Path(p).name: stage for p, stage in zip(errors["path"], errors["stage"], strict=True)} == expected
    assert errors["reason"].str.len().min() > 0
    assert manifest.counts.to_json() == {"listed": 5 + len(expected), "ok": 5, "rejected": len(expected), "views": 0,
                                         "featurized": 5 + len(expected), "reused": 0, "removed": 0}
    assert (output / "_SUCCESS").exists()


def test_an_unexpected_failure_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A failed Spark job surfaces as an exception the CLI did not plan for: still one line, exit 1."""
    from fruitpipe import cli

    def failing_job(args: object) -> int:
        raise RuntimeError("Job aborted due to stage failure: Task 3 failed 4 times\n\tat org.apache.spark...")

    monkeypatch.setattr(cli, "_cmd_models", failing_job)
    assert cli.main(["models"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["fruitpipe models: failed: RuntimeError: Job aborted due to stage failure: Task 3 failed 4 "
                     "times (run with -v for the traceback)"]


def test_a_failing_run_leaves_nothing_cached_in_the_session(spark, sample_dir: Path, tmp_path: Path) -> None:
    """The persisted features are released even when a stage fails (here: too few images for PCA)."""
    from fruitpipe.batch import pipeline

    folder = tmp_path / "in" / "Kiwi"
    folder.mkdir(parents=True)
    shutil.copy(sorted((sample_dir / "Training" / "Kiwi").glob("*.jpg"))[0], folder / "good.jpg")
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="only 1 of 2 images could be featurized"):
        pipeline.run(RunConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()
