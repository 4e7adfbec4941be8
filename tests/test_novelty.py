"""The novelty gate ("unlike the training photos" -> unknown): the numbers against sklearn and a direct
computation from the run's features, and the gate as predict applies it, --novelty-threshold included."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from fruitpipe.recognise import novelty
from fruitpipe.recognise.bundle import LOW_CONFIDENCE, UNLIKE_TRAINING, Bundle
from helpers import fruitpipe_cli
from trained import run_output_of


@pytest.mark.parametrize("seed", [0, 1])
def test_novelty_is_one_minus_the_best_cosine_similarity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, centroids = rng.normal(size=(50, 7)), novelty.unit_rows(rng.normal(size=(4, 7)))
    expected = 1.0 - cosine_similarity(rows, centroids).max(axis=1)
    np.testing.assert_allclose(novelty.novelty(rows, centroids), expected, atol=1e-12)
    assert novelty.novelty(centroids, centroids) == pytest.approx(np.zeros(4), abs=1e-12)


def test_centroids_are_the_normalised_means_of_the_unit_rows() -> None:
    rng = np.random.default_rng(3)
    rows, labels = rng.normal(size=(40, 5)) * rng.uniform(0.1, 10, size=(40, 1)), rng.integers(0, 3, size=40)
    halves = [novelty.class_sums(rows[part], labels[part], 4) for part in (slice(0, 25), slice(25, 40))]
    sums, counts = halves[0][0] + halves[1][0], halves[0][1] + halves[1][1]  # what train adds up per task
    assert counts.tolist() == [int((labels == c).sum()) for c in range(4)]
    for c in range(3):
        unit = rows[labels == c] / np.linalg.norm(rows[labels == c], axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        np.testing.assert_allclose(novelty.centroids(sums)[c], mean / np.linalg.norm(mean), atol=1e-12)
    assert not novelty.centroids(sums)[3].any()  # a class without rows: a zero centroid...
    np.testing.assert_array_equal(novelty.centroids(sums, counts), novelty.centroids(sums)[:3])  # ...left out


def test_photos_and_views_get_a_centroid_each() -> None:
    """Group numbers: the class for a photo, classes + the class for a view; a mixed centroid sits between
    the two and farther from the photos than their own."""
    labels, views = np.array([0, 0, 1, 1, 2]), np.array([0, 3, 0, 1, 0])
    assert novelty.group_of(labels, views, 3).tolist() == [0, 3, 1, 4, 2]
    rng = np.random.default_rng(8)
    class_direction, view_offset = 3.0 * np.eye(6)[1], 5.0 * np.eye(6)[0]  # views share an offset (new backgrounds...)
    photos, views_rows = rng.normal(size=(10, 6)) + class_direction, rng.normal(size=(40, 6)) + view_offset
    rows = np.vstack([photos, views_rows])
    group = novelty.group_of(np.zeros(50, dtype=int), np.r_[np.zeros(10), np.ones(40)], 1)
    sums, counts = novelty.class_sums(rows, group, 2)
    per_kind, mixed = novelty.centroids(sums, counts), novelty.centroids(sums.sum(axis=0, keepdims=True))
    assert per_kind.shape == (2, 6)
    assert np.median(novelty.novelty(photos, per_kind)) < np.median(novelty.novelty(photos, mixed))


def test_threshold_is_the_validation_quantile_and_bad_input_is_refused() -> None:
    scores = np.random.default_rng(5).random(1000)
    choice = novelty.choose_threshold(scores)
    assert choice.threshold == np.quantile(scores, 0.99, method="higher") and choice.threshold in scores
    assert choice.flagged == pytest.approx(np.mean(scores > choice.threshold)) and choice.flagged <= 0.01
    with pytest.raises(ValueError, match="no validation rows"):
        novelty.choose_threshold(np.zeros(0))
    with pytest.raises(ValueError, match="quantile"):
        novelty.choose_threshold(scores, 0.0)


# ---------------------------------------------------------------- on the trained bundle

@pytest.mark.slow
def test_bundle_centroids_are_the_class_means_of_the_training_rows(trained_bundle: Path) -> None:
    model = Bundle.load(trained_bundle)
    rows = pq.read_table(run_output_of(trained_bundle) / "features").to_pandas()
    training = rows[rows["split"] == "Training"]
    assert model.arrays.centroids is not None and model.description.novelty is not None
    for index, name in enumerate(model.classes):
        pca = np.stack(training.loc[training["label"] == name, "pca"].to_numpy()).astype(np.float64)
        mean = (pca / np.linalg.norm(pca, axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(model.arrays.centroids[index], mean / np.linalg.norm(mean), atol=1e-9)
    recorded = model.description.novelty
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    assert manifest["novelty"] == json.loads((trained_bundle / "bundle" / "bundle.json").read_text())["novelty"]
    assert recorded.centroid_rows == len(training) and recorded.quantile == novelty.NOVELTY_QUANTILE
    # the gate is of fruit rows; calibration also saw the held-out outlier photos
    assert recorded.validation_rows + manifest["outliers"]["validation_photos"] == manifest["calibration"][
        "validation_rows"]
    assert recorded.validation_flagged <= 1 - recorded.quantile + 1e-12 and 0 < recorded.threshold < 2
    assert model.novelty_threshold == recorded.threshold


@pytest.mark.slow
def test_a_photo_unlike_every_class_is_unknown_even_when_confident(trained_bundle: Path,
                                                                   unsure_photos: dict[str, Path]) -> None:
    # the confidence threshold and the "not a fruit" class off: only the gate decides
    confident = Bundle.load(trained_bundle, threshold=0.0, not_fruit=False)
    noise, banana = (confident.scores_of_pixels([confident.pixels(unsure_photos[name].read_bytes())])
                     for name in ("noise", "banana"))
    assert noise.novelty is not None and banana.novelty is not None and confident.novelty_threshold is not None
    assert banana.novelty[0] <= confident.novelty_threshold < noise.novelty[0]
    assert confident.answer_bytes(unsure_photos["noise"].read_bytes()).reason == UNLIKE_TRAINING
    assert not confident.answer_bytes(unsure_photos["banana"].read_bytes()).unknown
    assert Bundle.load(trained_bundle, threshold=1.0).answer_bytes(
        unsure_photos["banana"].read_bytes()).reason == LOW_CONFIDENCE
    paths = [str(unsure_photos["banana"]), str(unsure_photos["noise"])]
    for extra, expected in ((["--novelty-threshold", "2"], [None, None]), ([], [None, UNLIKE_TRAINING])):
        result = fruitpipe_cli("predict", "--model", str(trained_bundle), "--json", "--threshold", "0",
                               "--not-fruit", "off", *extra, *paths)
        assert result.returncode == 0, result.stderr
        answers = json.loads(result.stdout)
        assert [answer.get("unknown_reason") for answer in answers] == expected
        assert [answer["unknown"] for answer in answers] == [reason is not None for reason in expected]


@pytest.mark.slow
@pytest.mark.parametrize("value", ["2.5", "-1", "far"])
def test_bad_novelty_threshold_is_one_line(trained_bundle: Path, unsure_photos: dict[str, Path], value: str) -> None:
    result = fruitpipe_cli("predict", "--model", str(trained_bundle), str(unsure_photos["banana"]),
                           "--novelty-threshold", value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cosine distance between 0 and 2" in lines[0], result.stderr
