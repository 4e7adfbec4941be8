"""Outlier exposure (`fruitpipe train --outliers`): a "not a fruit" class trained on photos of other things.

Checked against independent computations: the calibration's threshold recomputed on the rows a user gets
an answer for; the bundle's "not a fruit" decisions against its own probabilities; the trained class on
the very outlier photos it saw (through `fruitpipe predict`, the user's command); a model trained without
outliers has no such class; the rule can be turned off; a folder without usable photos is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import fruitpipe_cli
from fruitpipe.recognise import calibration
from fruitpipe.recognise.bundle import LOW_CONFIDENCE, NOT_FRUIT, Bundle
from fruitpipe.recognise.outliers import bundled_outliers_dir


@pytest.fixture(scope="module")
def small_run(spark, small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick run of 4 classes (the session's Spark, in process)."""
    from fruitpipe.batch import pipeline
    from fruitpipe.config import PcaSettings, RunConfig

    output = tmp_path_factory.mktemp("outliers") / "run"
    pipeline.run(RunConfig(input=str(small_sample), output=str(output), pca=PcaSettings(k=8)))
    return output


def test_calibration_threshold_is_chosen_on_the_rows_that_get_an_answer() -> None:
    """With the outlier class last: rows whose top class is "not a fruit" are left out of the threshold
    choice, the rest are judged by their best fruit; an outlier answered as a fruit is a wrong answer."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400)  # 3 fruit classes and the outlier class (index 3)
    margins = rng.normal(0, 1, (400, 4))
    margins[np.arange(400), labels] += rng.uniform(0, 4, 400)
    with_outliers = calibration.calibrate(margins, labels, 0.9, outlier_index=3)
    probabilities = calibration.softmax(margins, with_outliers.temperature)
    answerable = probabilities.argmax(axis=1) != 3
    fruit = probabilities[:, :3]
    expected = calibration.choose_threshold(fruit.max(axis=1)[answerable],
                                            (fruit.argmax(axis=1) == labels)[answerable], 0.9)
    assert with_outliers.threshold == expected.threshold
    assert with_outliers.coverage_at_threshold == pytest.approx(expected.coverage)
    assert with_outliers.validation_rows == 400
    plain = calibration.calibrate(margins, labels, 0.9)
    assert plain.threshold != with_outliers.threshold  # the outlier rows changed the choice


@pytest.mark.slow
def test_bundle_says_not_a_fruit_when_that_class_wins(trained_bundle: Path, unsure_photos: dict[str, Path]) -> None:
    model = Bundle.load(trained_bundle)
    assert model.has_outlier_class and model.not_fruit and model.arrays.coefficients.shape[0] == len(model.classes) + 1
    recorded = json.loads((trained_bundle / "manifest.json").read_text())["outliers"]
    photos = sorted(bundled_outliers_dir().glob("*/*.jpg"))
    assert recorded["source"] == "bundled" and recorded["photos"] == len(photos) and recorded["unreadable"] == 0
    assert 0 < recorded["validation_photos"] < len(photos)
    assert model.describe()["outliers"] == recorded
    # the decision is exactly "P(not a fruit) >= the highest fruit probability", whatever the threshold
    scored = model.scores_of_pixels([model.pixels(path.read_bytes()) for path in photos[:24]]
                                    + [model.pixels(unsure_photos["banana"].read_bytes())])
    assert scored.outlier is not None
    for probabilities, outlier in zip(scored.probabilities, scored.outlier, strict=True):
        wins = outlier >= probabilities.max()
        assert (model.unknown_reason(probabilities, None, float(outlier)) == NOT_FRUIT) == wins
    assert not scored.outlier[-1] >= scored.probabilities[-1].max()  # the banana is a fruit
    np.testing.assert_array_equal(model.not_fruit_rows(scored.probabilities, scored.outlier),
                                  scored.outlier >= scored.probabilities.max(axis=1))
    off = Bundle.load(trained_bundle, not_fruit=False)
    assert off.not_fruit_rows(scored.probabilities, scored.outlier) is None
    assert all(off.unknown_reason(p, None, float(o)) != NOT_FRUIT for p, o in zip(scored.probabilities,
                                                                                  scored.outlier, strict=True))


@pytest.mark.slow
def test_predict_answers_not_a_fruit_for_the_outlier_photos_and_off_turns_it_off(trained_bundle: Path) -> None:
    """Through the user's command: the trained photos come out "not a fruit" (nearly all: the class learnt
    them), and with --not-fruit off their answers are fruit guesses (low confidence at most)."""
    photos = [str(path) for path in sorted(bundled_outliers_dir().glob("*/*.jpg"))[::6]]
    on = json.loads(fruitpipe_cli("predict", "--model", str(trained_bundle), "--json", *photos).stdout)
    reasons = [answer.get("unknown_reason") for answer in on]
    assert sum(reason == NOT_FRUIT for reason in reasons) >= 0.9 * len(photos), reasons
    assert all(answer["unknown"] == (answer.get("unknown_reason") is not None) for answer in on)
    off = json.loads(fruitpipe_cli("predict", "--model", str(trained_bundle), "--json", "--not-fruit", "off",
                                   *photos).stdout)
    assert {answer.get("unknown_reason") for answer in off} <= {None, LOW_CONFIDENCE, "unlike the training photos"}
    assert [answer["predictions"] for answer in off] == [answer["predictions"] for answer in on]


@pytest.mark.slow
def test_train_without_outliers_has_no_such_class_and_bad_folders_are_refused(small_run: Path,
                                                                             tmp_path: Path) -> None:
    from trained import train_on

    plain = Bundle.load(train_on(small_run, tmp_path / "plain", outliers=None))
    assert not plain.has_outlier_class and plain.description.outliers is None
    assert plain.arrays.coefficients.shape[0] == len(plain.classes)
    empty = tmp_path / "not-photos"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    result = fruitpipe_cli("train", "--features", str(small_run), "--output", str(tmp_path / "m"),
                           "--outliers", str(empty))
    assert result.returncode != 0 and "usable photo" in result.stderr and "Traceback" not in result.stderr
