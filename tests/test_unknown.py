"""Calibration end to end on the bundled sample's trained model: what `fruitpipe train` records, the Spark batch
path vs the bundle with a temperature applied, an old bundle without calibration, and the "not sure" threshold
as `fruitpipe predict` (JSON and console) and `fruitpipe serve` (HTTP) apply it, --threshold included."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fruitpipe.recognise import calibration
from fruitpipe.recognise.bundle import Bundle
from helpers import fruitpipe_cli
from trained import run_output_of

pytestmark = pytest.mark.slow
FORCED_TEMPERATURE = 0.37  # not 1, so the parity test sees the temperature at work


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path) -> Bundle:
    return Bundle.load(trained_bundle)


@pytest.fixture(scope="module")
def test_rows(trained_bundle: Path) -> pd.DataFrame:
    """The run's Test rows, read with pyarrow."""
    rows = pq.read_table(run_output_of(trained_bundle) / "features").to_pandas()
    return rows[rows["split"] == "Test"].sort_values("path").reset_index(drop=True)


def with_calibration(bundle_folder: Path, **changes: object) -> Path:
    """bundle.json's calibration edited (bundle.json itself is not in the checksummed files)."""
    description = bundle_folder / "bundle.json"
    document = json.loads(description.read_text())
    if changes:
        document["calibration"] = {**document["calibration"], **changes}
    else:
        del document["calibration"]
    description.write_text(json.dumps(document, indent=2))
    return bundle_folder


def test_train_records_the_calibration_it_fitted_on_validation(trained_bundle: Path, bundle: Bundle,
                                                                test_rows: pd.DataFrame) -> None:
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    recorded = manifest["calibration"]
    assert json.loads((trained_bundle / "bundle" / "bundle.json").read_text())["calibration"] == recorded
    assert manifest["counts"]["validation"] == 18 * 8
    # calibrated on every validation row: the fruit photos and the held-out outlier photos
    assert recorded["validation_rows"] == 18 * 8 + manifest["outliers"]["validation_photos"]
    assert manifest["outliers"]["validation_photos"] > 0
    assert recorded["target_precision"] == 0.95 and recorded["ece_after"] <= recorded["ece_before"]
    assert recorded["target_reached"] and recorded["precision_at_threshold"] >= 0.95
    assert bundle.temperature == recorded["temperature"] and bundle.threshold == recorded["threshold"]
    assert 0.0 < bundle.threshold < 1.0
    # Test figures in metrics.json come from Spark's aggregation; recomputed here from the bundle's numpy path
    reported = json.loads((trained_bundle / "metrics.json").read_text())["calibration"]
    scored = bundle.scores_of_pixels([bundle.pixels(Path(path).read_bytes()) for path in test_rows["path"]])
    probabilities = scored.probabilities
    labels = test_rows["label"].map(bundle.classes.index).to_numpy()
    assert scored.novelty is not None and bundle.novelty_threshold is not None
    novel = scored.novelty > bundle.novelty_threshold  # the novelty gate also makes a photo unknown
    assert scored.outlier is not None  # trained with the bundled outlier photos
    not_fruit = scored.outlier >= probabilities.max(axis=1)  # and so does "not a fruit" winning
    answered = (probabilities.max(axis=1) >= bundle.threshold) & ~novel & ~not_fruit
    assert reported["coverage"] == pytest.approx(answered.mean(), abs=1e-12)
    assert reported["unknown"] == int((~answered).sum()) and reported["unlike_training"] == int(novel.sum())
    assert reported["not_fruit"] == int(not_fruit.sum())
    assert reported["ece"] == pytest.approx(calibration.expected_calibration_error(probabilities, labels), abs=1e-6)
    right = probabilities.argmax(axis=1) == labels
    assert reported["accuracy_answered"] == pytest.approx(right[answered].mean(), abs=1e-12)


def test_bundle_matches_spark_with_a_temperature(spark, trained_bundle: Path, test_rows: pd.DataFrame,
                                                 tmp_path: Path) -> None:
    """Batch path (Spark's model, softmax(rawPrediction / T) in Spark SQL) vs the bundle (numpy), same T."""
    from pyspark.ml.functions import array_to_vector

    from fruitpipe.ml import load_logistic_regression
    from fruitpipe.recognise.train import calibrated_probability

    folder = with_calibration(Path(shutil.copytree(trained_bundle / "bundle", tmp_path / "bundle")),
                              temperature=FORCED_TEMPERATURE)
    scaled = Bundle.load(folder)
    assert scaled.temperature == FORCED_TEMPERATURE
    model = load_logistic_regression(str(trained_bundle / "classifier"))
    frame = spark.createDataFrame(test_rows[["path", "pca"]]).withColumn("pca_vector", array_to_vector("pca"))
    spark_rows = model.transform(frame).select("path", calibrated_probability(FORCED_TEMPERATURE).alias("p"),
                                               "rawPrediction").toPandas().set_index("path").loc[test_rows["path"]]
    every_class = np.stack(spark_rows["p"])  # the 18 fruits, then "not a fruit" (the bundled outlier photos)
    spark_probabilities = every_class[:, :18]
    scored = scaled.scores_of_pixels([scaled.pixels(Path(path).read_bytes()) for path in test_rows["path"]])
    bundle_probabilities = scored.probabilities
    assert bundle_probabilities.shape == spark_probabilities.shape == (270, 18) and every_class.shape == (270, 19)
    assert np.abs(bundle_probabilities - spark_probabilities).max() <= 1e-5
    assert scored.outlier is not None and np.abs(scored.outlier - every_class[:, 18]).max() <= 1e-5
    margins = np.stack([row.toArray() for row in spark_rows["rawPrediction"]])  # independent softmax of Spark's
    expected = np.exp(margins / FORCED_TEMPERATURE - (margins / FORCED_TEMPERATURE).max(axis=1, keepdims=True))
    np.testing.assert_allclose(every_class, expected / expected.sum(axis=1, keepdims=True), atol=1e-12)
    unscaled = Bundle.load(trained_bundle).probabilities([Path(test_rows["path"][0]).read_bytes()])
    # the temperature changed them (compared as log-probabilities: a confident model's top one saturates near 1)
    assert np.abs(np.log(unscaled[0]) - np.log(bundle_probabilities[0])).max() > 1e-2


def test_old_bundle_without_calibration_loads_and_never_answers_unknown(trained_bundle: Path, bundle: Bundle,
                                                                        unsure_photos: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    folder = with_calibration(Path(shutil.copytree(trained_bundle / "bundle", tmp_path / "bundle")))
    old = Bundle.load(folder)
    assert old.description.calibration is None and old.temperature == 1.0 and old.threshold is None
    data = [unsure_photos["banana"].read_bytes(), unsure_photos["noise"].read_bytes()]
    margins_softmax = old.probabilities(data)
    assert [old.answer(row).unknown for row in margins_softmax] == [False, False]
    assert bundle.answer(bundle.probabilities(data)[1]).unknown  # the calibrated bundle is not sure of the noise
    assert Bundle.load(folder, threshold=0.999).answer(margins_softmax[1]).unknown  # --threshold still applies
    assert old.describe()["threshold"] is None and old.describe()["calibration"] is None


def test_threshold_is_validated(trained_bundle: Path) -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="threshold must be a probability"):
            Bundle.load(trained_bundle, threshold=bad)


# ---------------------------------------------------------------- fruitpipe predict

def test_predict_json_carries_unknown_and_respects_threshold(trained_bundle: Path, bundle: Bundle,
                                                             unsure_photos: dict[str, Path],
                                                             threshold_between: float) -> None:
    paths = [str(unsure_photos["banana"]), str(unsure_photos["noise"])]
    for threshold, expected in ((None, None), (threshold_between, [False, True]), (0.0, [False, False]),
                                (1.0, [True, True])):
        flag = [] if threshold is None else ["--threshold", str(threshold)]
        # the confidence threshold alone (the novelty gate: test_novelty.py; "not a fruit": test_outliers.py)
        gate_off = ["--novelty-threshold", "2", "--not-fruit", "off"]
        result = fruitpipe_cli("predict", "--model", str(trained_bundle), *paths, "--json", *flag, *gate_off)
        assert result.returncode == 0, result.stderr
        answers = json.loads(result.stdout)
        in_use = bundle.threshold if threshold is None else threshold
        top = [answer["predictions"][0]["probability"] for answer in answers]
        assert [answer["unknown"] for answer in answers] == [p < in_use for p in top]
        if expected is not None:
            assert [answer["unknown"] for answer in answers] == expected


def test_predict_console_says_not_sure_with_two_guesses(trained_bundle: Path, bundle: Bundle,
                                                        unsure_photos: dict[str, Path],
                                                        threshold_between: float) -> None:
    result = fruitpipe_cli("predict", "--model", str(trained_bundle), str(unsure_photos["banana"]),
                           str(unsure_photos["noise"]), "--threshold", str(threshold_between),
                           "--novelty-threshold", "2", "--not-fruit", "off")  # the threshold's own wording
    assert result.returncode == 0, result.stderr
    first, second = bundle.predict_bytes(unsure_photos["noise"].read_bytes(), top_k=2)
    lines = result.stdout.splitlines()
    noise_at = lines.index(str(unsure_photos["noise"]))
    assert lines[noise_at + 1] == (f"  not sure: maybe {first.label} ({first.probability:.0%}) "
                                   f"or {second.label} ({second.probability:.0%}) (low confidence)")
    assert sum("not sure" in line for line in lines) == 1  # the banana is answered


@pytest.mark.parametrize("value", ["1.5", "-0.2", "high"])
def test_bad_threshold_is_one_line(trained_bundle: Path, unsure_photos: dict[str, Path], value: str) -> None:
    for command in (["predict", "--model", str(trained_bundle), str(unsure_photos["banana"])],
                    ["serve", "--model", str(trained_bundle)]):
        result = fruitpipe_cli(*command, "--threshold", value)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "probability between 0 and 1" in lines[0], result.stderr


# ---------------------------------------------------------------- fruitpipe serve --threshold

def test_serve_threshold_overrides_the_bundles(unsure_server: str, bundle: Bundle, unsure_photos: dict[str, Path],
                                               threshold_between: float) -> None:
    health = httpx.get(f"{unsure_server}/health", timeout=30).json()
    assert health["threshold"] == threshold_between != bundle.threshold
    assert health["temperature"] == bundle.temperature
    for name, unknown in (("banana", False), ("noise", True)):
        data = unsure_photos[name].read_bytes()
        response = httpx.post(f"{unsure_server}/predict", params={"top_k": 3},
                              files={"file": (f"{name}.jpg", data, "image/jpeg")}, timeout=120)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = bundle.predict_bytes(data, top_k=3)
        assert body["unknown"] is unknown
        assert [p["label"] for p in body["predictions"]] == [p.label for p in expected]
        assert np.allclose([p["probability"] for p in body["predictions"]], [p.probability for p in expected],
                           rtol=0, atol=1e-5)
