"""`fruitpipe run --augment N`: views of Training images made in the workers, PCA on the photos, and
`train`'s split that keeps a validation photo's views out of fitting."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fruitpipe.batch import pipeline
from fruitpipe.batch.manifest import RunManifest
from fruitpipe.config import PcaSettings, RunConfig
from fruitpipe.ml import CentredPCAModel

AUGMENT, K = 2, 3


def _features(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "features").sort_values(["path", "view"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(spark, small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain run and two --augment runs of the same images (the session's Spark, in process)."""
    root = tmp_path_factory.mktemp("augment")
    outputs = {"plain": root / "plain", "first": root / "first", "second": root / "second"}
    for name, output in outputs.items():
        pipeline.run(RunConfig(input=str(small_sample), output=str(output), pca=PcaSettings(k=K),
                               augment=0 if name == "plain" else AUGMENT))
    return outputs


def test_rows_per_split_and_counts(runs: dict[str, Path], small_sample: Path) -> None:
    features = _features(runs["first"])
    photos = {split: sorted(str(p) for p in (small_sample / split).glob("*/*.jpg")) for split in ("Training", "Test")}
    training, test = features[features.split == "Training"], features[features.split == "Test"]
    assert len(training) == len(photos["Training"]) * (1 + AUGMENT)
    assert sorted(training.path.unique()) == photos["Training"]
    assert (training.groupby("path").view.apply(sorted) == pd.Series([[0, 1, 2]] * len(photos["Training"]),
                                                                      index=photos["Training"])).all()
    assert len(test) == len(photos["Test"]) and set(test.view) == {0}
    manifest = RunManifest.loads((runs["first"] / "manifest.json").read_bytes(), "manifest")
    assert manifest.augment == AUGMENT
    assert (manifest.counts.listed, manifest.counts.ok, manifest.counts.rejected) == (len(features) - len(
        photos["Training"]) * AUGMENT, len(photos["Training"]) + len(photos["Test"]), 0)
    assert manifest.counts.views == len(photos["Training"]) * AUGMENT
    plain = RunManifest.loads((runs["plain"] / "manifest.json").read_bytes(), "manifest")
    assert plain.augment == 0 and plain.counts.views == 0


def test_views_are_deterministic_and_differ_from_the_photo(runs: dict[str, Path]) -> None:
    first, second = _features(runs["first"]), _features(runs["second"])
    assert first[["path", "view"]].equals(second[["path", "view"]])
    np.testing.assert_allclose(np.stack(first.features), np.stack(second.features), atol=1e-6)
    training = first[first.split == "Training"]
    by_view = {view: np.stack(rows.features) for view, rows in training.groupby("view")}
    assert np.abs(by_view[1] - by_view[0]).mean() > 1e-2
    assert np.abs(by_view[2] - by_view[1]).mean() > 1e-2


def test_view_zero_equals_the_plain_run(runs: dict[str, Path]) -> None:
    plain, augmented = _features(runs["plain"]), _features(runs["first"])
    photos = augmented[augmented.view == 0].reset_index(drop=True)
    assert set(plain.view) == {0}
    assert photos.path.tolist() == plain.path.tolist()
    np.testing.assert_allclose(np.stack(photos.features), np.stack(plain.features), atol=1e-5)


def test_pca_is_fitted_on_the_photos_only(runs: dict[str, Path]) -> None:
    features = _features(runs["first"])
    arrays = CentredPCAModel.load(str(runs["first"] / "pca_model")).arrays()
    photos = np.stack(features[features.view == 0].features).astype(np.float64)
    everything = np.stack(features.features).astype(np.float64)
    np.testing.assert_allclose(arrays.mean, photos.mean(axis=0), atol=1e-6)
    assert np.abs(everything.mean(axis=0) - photos.mean(axis=0)).max() > 1e-3  # the check can tell them apart
    eigenvalues, vectors = np.linalg.eigh(np.cov(photos, rowvar=False))
    order = np.argsort(eigenvalues)[::-1]
    np.testing.assert_allclose(arrays.spectrum[:K], (eigenvalues[order] / eigenvalues.sum())[:K], rtol=1e-4)
    cosines = np.abs(np.sum(arrays.components * vectors[:, order[:K]], axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)
    projected = (np.stack(features.features) - arrays.mean) @ arrays.components
    np.testing.assert_allclose(np.stack(features.pca), projected, atol=1e-3)


def test_train_on_an_augmented_run(spark, runs: dict[str, Path], tmp_path: Path) -> None:
    from fruitpipe.recognise.contracts import TrainManifest
    from trained import train_on

    model_dir = train_on(runs["first"], tmp_path / "model", outliers=None)  # the views, not the outliers
    manifest = TrainManifest.loads((model_dir / "manifest.json").read_bytes(), "train manifest")
    features = _features(runs["first"])
    assert manifest.counts.training == int(((features.split == "Training") & (features.view == 0)).sum())
    assert manifest.counts.test == int((features.split == "Test").sum())
    assert manifest.metrics.accuracy >= 0.5
    _check_gate_per_kind(spark, model_dir, features)


def _check_gate_per_kind(spark, model_dir: Path, features: pd.DataFrame) -> None:
    """The gate's centroids: per class of its photos, then per class of its views, from all of Training; its
    threshold and photo share from the validation part against the fit part's, recomputed here in numpy."""
    from fruitpipe.recognise import novelty
    from fruitpipe.recognise.bundle import Bundle
    from fruitpipe.recognise.train import validation_split

    model = Bundle.load(model_dir)
    gate, classes = model.description.novelty, list(model.classes)
    training = features[features.split == "Training"]

    def centroids(rows: pd.DataFrame) -> np.ndarray:
        kinds = [rows[(rows.label == name) & kind] for kind in (rows.view == 0, rows.view > 0) for name in classes]
        means = [novelty.unit_rows(np.stack(part.pca).astype(np.float64)).mean(axis=0) for part in kinds]
        return novelty.unit_rows(np.stack(means))

    assert gate is not None and gate.centroids == 2 * len(classes) and gate.centroid_rows == len(training)
    np.testing.assert_allclose(model.arrays.centroids, centroids(training), atol=1e-9)
    frame = spark.createDataFrame(training[["path", "label", "view"]])
    fit_paths, held = (set(part.toPandas().path) for part in validation_split(frame, 0.2, 0))
    fit, validation = training[training.path.isin(fit_paths)], training[training.path.isin(held)]
    scores = novelty.novelty(np.stack(validation.pca).astype(np.float64), centroids(fit))
    threshold = np.quantile(scores, novelty.NOVELTY_QUANTILE, method="higher")
    assert gate.threshold == pytest.approx(threshold, abs=1e-9) and gate.validation_rows == len(validation)
    assert gate.validation_photos_flagged == pytest.approx(np.mean(scores[validation.view.to_numpy() == 0] > threshold))


def test_validation_split_keeps_views_with_their_photo(spark) -> None:
    """A held-out photo's views go with it to validation (the shifted validation set), never to the fit
    part; a fitted photo's views are fitted on; every photo lands in exactly one part; a run without
    views splits as before (same held-out photos)."""
    from pyspark.sql import functions as F

    from fruitpipe.recognise.train import validation_split

    rows = [(f"{label}/{i}.jpg", label, view) for label in ("a", "b") for i in range(10) for view in range(3)]
    data = spark.createDataFrame(rows, "path string, label string, view int")
    fit, validation = (part.toPandas() for part in validation_split(data, 0.3, seed=1))
    held = set(validation.path)
    assert len(held) == 6 and len(validation) == 6 * 3
    assert (validation.groupby("path").view.apply(sorted) == pd.Series([[0, 1, 2]] * 6, index=sorted(held))).all()
    assert not held & set(fit.path)
    assert set(fit.path) | held == {path for path, _, _ in rows}
    assert (fit.groupby("path").view.apply(sorted) == pd.Series([[0, 1, 2]] * len(set(fit.path)),
                                                                 index=sorted(set(fit.path)))).all()
    photos_only = data.where("view = 0")
    _, plain_validation = validation_split(photos_only, 0.3, seed=1)
    assert set(plain_validation.toPandas().path) == held
    moved = data.withColumn("path", F.concat(F.lit("s3://bucket/elsewhere/Training/"), "path"))
    _, moved_validation = validation_split(moved, 0.3, seed=1)  # the same photos in another place
    assert {"/".join(path.rsplit("/", 2)[-2:]) for path in moved_validation.toPandas().path} == held
    _, other_seed = validation_split(photos_only, 0.3, seed=2)
    assert set(other_seed.toPandas().path) != held


def test_worker_rejects_an_image_once_and_augments_only_chosen_rows(tmp_path: Path, small_sample: Path) -> None:
    """In the worker itself (no Spark): a bad image is one row with its reason, an unchosen image one
    row, a chosen one 1 + N rows; a model failure rejects each photo once, not once per view."""
    import dataclasses

    import pyarrow as pa

    from fruitpipe.config import DecodeLimits
    from fruitpipe.executor.worker import FeaturizeTask, featurize_partition
    from fruitpipe.image import models
    from fruitpipe.runtime import resolve

    good = sorted(str(p) for p in (small_sample / "Training").glob("*/*.jpg"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    spec = models.resolve("efficientnet-lite0")
    task = FeaturizeTask(model_file=str(models.onnx_file(spec)), preprocessing=spec.preprocessing,
                         runtime=resolve("fp32", None), feature_dim=spec.feature_dim, limits=DecodeLimits(),
                         path_col="path", output_col="features", augment=AUGMENT, augment_col="chosen")
    batch = pa.RecordBatch.from_pydict({"path": [good[0], str(bad), good[1]], "chosen": [True, True, False]})

    def rows(task: FeaturizeTask) -> pd.DataFrame:
        return pa.Table.from_batches(list(featurize_partition(task, iter([batch])))).to_pandas()

    out = rows(task)
    assert list(zip(out.path, out.view, strict=True)) == [(good[0], 0), (good[0], 1), (good[0], 2), (str(bad), 0),
                                                          (good[1], 0)]
    assert out.error_stage.tolist() == [None, None, None, "decode", None]
    failing = rows(dataclasses.replace(task, feature_dim=7))  # the model returns 1280: every photo rejected
    assert list(zip(failing.path, failing.view, failing.error_stage, strict=True)) == [
        (good[0], 0, "embed"), (str(bad), 0, "decode"), (good[1], 0, "embed")]


def test_view_families_and_strength_shape_the_views_in_the_worker(small_sample: Path) -> None:
    """--augment-families / --augment-strength reach the worker: its view v is the embedding of
    `augmented_view(pixels, path, v, families, strength)` computed here, and differs from the default views."""
    import pyarrow as pa

    from fruitpipe.config import DecodeLimits
    from fruitpipe.executor.worker import FeaturizeTask, featurize_partition
    from fruitpipe.image import models, shifts
    from fruitpipe.image.decode import decode_for_model
    from fruitpipe.image.embed import embed
    from fruitpipe.runtime import resolve

    photo = sorted(str(p) for p in (small_sample / "Training").glob("*/*.jpg"))[0]
    spec = models.resolve("efficientnet-lite0")
    onnx, pre = str(models.onnx_file(spec)), spec.preprocessing
    families = shifts.view_families(["plain_background", "geometry"])
    assert families == ("geometry", "plain_background")  # the table's order, whatever order was given

    def worker_views(**settings: object) -> np.ndarray:
        task = FeaturizeTask(model_file=onnx, preprocessing=pre, runtime=resolve("fp32", None),
                             feature_dim=spec.feature_dim, limits=DecodeLimits(), path_col="path",
                             output_col="features", augment=AUGMENT, **settings)  # type: ignore[arg-type]
        out = pa.Table.from_batches(list(featurize_partition(task, iter([pa.RecordBatch.from_pydict(
            {"path": [photo]})])))).to_pandas()
        return np.stack(out.sort_values("view").features)

    shaped = worker_views(augment_families=families, augment_strength=0.5)
    pixels = decode_for_model(Path(photo).read_bytes(), DecodeLimits(), pre.input_size, pre.resize)[0]
    expected = embed(np.stack([pixels] + [shifts.augmented_view(pixels, photo, view, families, 0.5)
                                          for view in range(1, AUGMENT + 1)]), pre, onnx, 1)
    np.testing.assert_allclose(shaped, expected, atol=1e-4)
    default = worker_views()
    np.testing.assert_allclose(shaped[0], default[0], atol=1e-5)  # the photo itself is untouched
    assert np.abs(shaped[1:] - default[1:]).mean() > 1e-2


def test_view_settings_are_checked_recorded_and_part_of_the_identity() -> None:
    from fruitpipe.batch.journal import Identity
    from fruitpipe.batch.manifest import ModelEntry
    from fruitpipe.image import models, shifts
    from fruitpipe.runtime import resolve

    with pytest.raises(ValueError, match="held out for evaluation"):
        shifts.view_families(["geometry", "outline"])
    with pytest.raises(ValueError, match="unknown shift 'sepia'"):
        shifts.view_families(["sepia"])
    with pytest.raises(ValueError, match="give --augment too"):
        RunConfig(input="in", output="out", augment_strength=0.5)
    with pytest.raises(ValueError, match="--augment-strength must be a number in"):
        RunConfig(input="in", output="out", augment=2, augment_strength=2.5)
    entry = ModelEntry.of(models.resolve("efficientnet-lite0"), resolve("fp32", None))
    default = Identity.of(entry, 2, shifts.DEFAULT_VIEWS, 1.0)
    assert default == Identity.of(entry, 2)  # every family named counts as none named
    # a journal written before the view settings existed keeps its fingerprint and reads back equal
    import dataclasses
    import hashlib
    import json

    legacy = default.to_json()
    assert "augment_families" not in legacy and "augment_strength" not in legacy
    assert Identity.from_json(legacy, "journal") == default
    old_fields = {field.name: getattr(default, field.name) for field in dataclasses.fields(default)
                  if field.name not in ("augment_families", "augment_strength")}  # what the fingerprint hashed before
    assert default.fingerprint() == hashlib.sha256(json.dumps(old_fields, sort_keys=True).encode()).hexdigest()[:16]
    weaker = Identity.of(entry, 2, ("geometry",), 0.5)
    assert weaker.fingerprint() != default.fingerprint()
    assert Identity.from_json(weaker.to_json(), "journal") == weaker
    differences = weaker.differences(default)
    assert any("--augment-families geometry here" in line for line in differences)
    assert any("--augment-strength 0.5 here vs 1.0" in line for line in differences)


def test_cli_refuses_a_suite_family_in_the_views_in_one_line(tmp_path: Path) -> None:
    from conftest import fruitpipe_cli

    result = fruitpipe_cli("run", "--output", str(tmp_path / "out"), "--augment", "2", "--augment-families",
                           "geometry,outline")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "outline is held out for evaluation" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
