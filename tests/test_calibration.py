"""Temperature scaling, ECE and the "not sure" threshold (recognise/calibration.py), against independent
computations: a brute-force grid for T, a per-bin loop for ECE, hand-worked threshold examples."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fruitpipe.batch.manifest import Fields
from fruitpipe.recognise import calibration
from fruitpipe.recognise.calibration import calibrate, choose_threshold, expected_calibration_error, fit_temperature
from fruitpipe.recognise.contracts import BundleDescription, Calibration, TrainManifest
from test_contracts import MODEL, document, through_json


def synthetic(rows: int = 600, classes: int = 6, sharpen: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Margins of an over-confident model: labels drawn from softmax(true logits), margins = sharpen x logits."""
    generator = np.random.default_rng(seed)
    logits = generator.normal(0.0, 1.5, size=(rows, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([generator.choice(classes, p=row) for row in probabilities])
    return sharpen * logits, labels


def reference_nll(margins: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = np.exp(margins / temperature)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))


def reference_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) if b < bins - 1 else (confidence <= high))
        if inside.any():
            gap = abs(np.mean(predicted[inside] == labels[inside]) - np.mean(confidence[inside]))
            total += inside.sum() / len(labels) * gap
    return total


def test_temperature_is_the_nll_minimum_of_a_brute_force_grid() -> None:
    margins, labels = synthetic()
    fitted = fit_temperature(margins, labels)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 4001))
    best = grid[np.argmin([reference_nll(margins, labels, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=2e-3)
    assert 2.4 < fitted < 3.6  # the margins were sharpened 3x
    assert reference_nll(margins, labels, fitted) < reference_nll(margins, labels, 1.0)
    assert calibration.negative_log_likelihood(margins, labels, fitted) == pytest.approx(
        reference_nll(margins, labels, fitted), rel=1e-12)


def test_ece_equals_a_per_bin_loop() -> None:
    margins, labels = synthetic(seed=3)
    for temperature in (0.5, 1.0, 3.0):
        probabilities = calibration.softmax(margins, temperature)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
        assert expected_calibration_error(probabilities, labels) == pytest.approx(
            reference_ece(probabilities, labels), abs=1e-12)


@pytest.mark.parametrize("sharpen", [0.4, 1.0, 3.0, 8.0])
def test_scaling_never_raises_validation_nll_or_ece(sharpen: float) -> None:
    """The issue's rule: ECE after temperature scaling <= before, on validation."""
    margins, labels = synthetic(sharpen=sharpen, seed=int(sharpen * 10))
    result = calibrate(margins, labels, 0.95)
    assert result.ece_before == pytest.approx(reference_ece(calibration.softmax(margins), labels), abs=1e-12)
    assert result.ece_after == pytest.approx(
        reference_ece(calibration.softmax(margins, result.temperature), labels), abs=1e-12)
    assert result.ece_after <= result.ece_before
    assert reference_nll(margins, labels, result.temperature) <= reference_nll(margins, labels, 1.0) + 1e-12
    if sharpen != 1.0:  # a mis-scaled model is actually rescaled, and its ECE falls
        assert abs(math.log(result.temperature)) > 0.2 and result.ece_after < result.ece_before
    assert result.validation_rows == len(labels)


def test_a_validation_part_without_errors_keeps_t_1() -> None:
    """No errors: the NLL falls for ever as T -> 0; that says nothing about other photos, so T stays 1."""
    margins = np.array([[4.0, 0.0, -1.0], [0.0, 2.0, 1.0], [0.5, 0.0, 3.0]])
    labels = np.array([0, 1, 2])
    result = calibrate(margins, labels, 0.95)
    assert result.temperature == 1.0 and result.ece_after == result.ece_before
    assert result.threshold == pytest.approx(calibration.softmax(margins).max(axis=1).min(), abs=1e-15)
    assert result.coverage_at_threshold == 1.0 and result.target_reached


CONFIDENCE = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
CORRECT = np.array([1, 1, 1, 0, 1, 0], dtype=bool)


@pytest.mark.parametrize(("target", "threshold", "precision", "coverage"), [
    (0.8, 0.7, 0.8, 5 / 6),  # prefix precisions 1, 1, 1, 3/4, 4/5, 4/6: the lowest reaching 0.8 is 0.7
    (0.95, 0.9, 1.0, 0.5),
    (0.75, 0.7, 0.8, 5 / 6),
    (0.6, 0.6, 4 / 6, 1.0),
])
def test_threshold_is_the_lowest_confidence_reaching_the_target(target: float, threshold: float, precision: float,
                                                                coverage: float) -> None:
    order = np.array([3, 0, 5, 1, 4, 2])  # input order does not matter
    choice = choose_threshold(CONFIDENCE[order], CORRECT[order], target)
    assert (choice.threshold, choice.precision, choice.coverage, choice.reached) == pytest.approx(
        (threshold, precision, coverage, True))


def test_tied_confidences_are_answered_together() -> None:
    choice = choose_threshold(np.array([0.9, 0.9, 0.8, 0.7]), np.array([True, True, False, True]), 0.95)
    assert (choice.threshold, choice.coverage, choice.precision) == (0.9, 0.5, 1.0)
    tied_wrong = choose_threshold(np.array([0.9, 0.9, 0.8]), np.array([True, False, True]), 0.9)
    assert not tied_wrong.reached  # 0.9 answers both tied rows (1 of 2 right): the target is out of reach


def test_unreachable_target_takes_the_best_precision_above_the_coverage_floor() -> None:
    """20 rows, the most confident one wrong: no threshold reaches 0.9. With >= 10% (2 rows) answered, the best
    precision is 4/5 at the 5th confidence."""
    confidence = np.linspace(0.99, 0.4, 20)
    correct = np.array([False, True, True, True, True] + [False] * 15)
    choice = choose_threshold(confidence, correct, 0.9)
    assert not choice.reached
    assert (choice.threshold, choice.precision, choice.coverage) == pytest.approx((confidence[4], 0.8, 0.25))
    assert calibration.MIN_COVERAGE == 0.1
    with pytest.raises(ValueError, match="target precision"):
        choose_threshold(confidence, correct, 1.5)


def test_calibration_contract_is_optional_and_round_trips() -> None:
    value = Calibration(temperature=1.7, threshold=0.62, target_precision=0.95, validation_rows=144,
                        ece_before=0.08, ece_after=0.02, precision_at_threshold=0.96, coverage_at_threshold=0.9,
                        target_reached=True)
    old_bundle = BundleDescription.loads((MODEL / "bundle" / "bundle.json").read_bytes(), "bundle.json")
    assert old_bundle.calibration is None and "calibration" not in old_bundle.to_json()
    new_bundle = replace(old_bundle, calibration=value)
    assert new_bundle.to_json()["calibration"]["threshold"] == 0.62
    assert BundleDescription.from_json(Fields(through_json(new_bundle.to_json()), "bundle.json")) == new_bundle
    old_manifest = TrainManifest.loads((MODEL / "manifest.json").read_bytes(), "manifest.json")
    assert old_manifest.calibration is None
    assert old_manifest.to_json() == {"schema_version": 1, **document(MODEL / "manifest.json")}
    new_manifest = replace(old_manifest, calibration=value)
    assert TrainManifest.from_json(Fields(through_json(new_manifest.to_json()), "manifest.json")) == new_manifest
    with pytest.raises(ValueError, match="temperature > 0"):
        replace(value, temperature=0.0)
    with pytest.raises(ValueError, match=r"calibration\.threshold should be a number"):
        BundleDescription.from_json(Fields({**new_bundle.to_json(), "calibration": {**value.to_json(),
                                                                                     "threshold": "high"}}, "b"))
