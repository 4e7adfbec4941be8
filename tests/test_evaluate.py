"""fruitpipe evaluate: metrics against sklearn and a direct ECE computation, folder matching, the two
probability paths (bundle in process vs Spark) agreeing, train's Test metrics reproduced, CLI errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from fruitpipe import cli
from fruitpipe.batch import sources
from fruitpipe.config import EvaluateConfig
from fruitpipe.recognise import evaluate, evaluation
from fruitpipe.recognise.bundle import Bundle
from fruitpipe.storage import Store


def random_predictions(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are right more often than chance; class 0 never true, so one class is absent."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), truth] += rng.uniform(0, 3, n)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return truth, probabilities


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed: int) -> None:
    truth, probabilities = random_predictions(400, 7, seed)
    names = [f"c{i}" for i in range(7)]
    result = evaluation.compute(truth, probabilities, names)
    predicted = probabilities.argmax(axis=1)
    labels = list(range(7))
    assert result.count == 400
    assert result.accuracy == pytest.approx(sk.accuracy_score(truth, predicted), abs=1e-12)
    assert result.macro_f1 == pytest.approx(sk.f1_score(truth, predicted, average="macro", zero_division=0),
                                            abs=1e-12)
    assert result.top3_accuracy == pytest.approx(sk.top_k_accuracy_score(truth, probabilities, k=3, labels=labels),
                                                 abs=1e-12)
    precision, recall, f1, support = sk.precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                        zero_division=0)
    np.testing.assert_allclose([row.precision for row in result.per_class], precision, atol=1e-12)
    np.testing.assert_allclose([row.recall for row in result.per_class], recall, atol=1e-12)
    np.testing.assert_allclose([row.f1 for row in result.per_class], f1, atol=1e-12)
    assert [row.support for row in result.per_class] == support.tolist()
    np.testing.assert_array_equal(np.asarray(result.confusion), sk.confusion_matrix(truth, predicted, labels=labels))
    assert result.classes == names


@pytest.mark.parametrize("seed", [0, 3])
def test_log_loss_equals_sklearn(seed: int) -> None:
    """Class 0 is never true (labels= names every class of the model, as sklearn then needs)."""
    truth, probabilities = random_predictions(300, 6, seed)
    result = evaluation.compute(truth, probabilities, [f"c{i}" for i in range(6)])
    expected = sk.log_loss(truth, probabilities, labels=list(range(6)))
    assert result.log_loss == pytest.approx(expected, rel=1e-12)
    assert result.to_json()["log_loss"] == result.log_loss


def test_log_loss_ranks_models_that_are_all_right_and_clips_zero() -> None:
    """Same accuracy (100%), less confidence in the true class -> higher log-loss; p = 0 costs -ln(1e-15)."""
    truth = np.array([0, 1, 1])
    sure = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    unsure = np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55]])
    confident, hesitant = (evaluation.compute(truth, p, ["a", "b"]) for p in (sure, unsure))
    assert confident.accuracy == hesitant.accuracy == 1.0
    assert confident.log_loss == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.9])), rel=1e-12)
    assert hesitant.log_loss is not None and confident.log_loss < hesitant.log_loss
    wrong = evaluation.compute(np.array([0]), np.array([[0.0, 1.0]]), ["a", "b"])
    assert wrong.log_loss == pytest.approx(-np.log(1e-15), rel=1e-12)


def straightforward_ece(truth: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    total = 0.0
    for i in range(bins):
        lower, upper = i / bins, (i + 1) / bins
        members = (confidence >= lower) & ((confidence < upper) if i < bins - 1 else (confidence <= upper))
        if members.any():
            total += members.sum() / len(truth) * abs(correct[members].mean() - confidence[members].mean())
    return total


@pytest.mark.parametrize("seed", [0, 5])
def test_ece_and_threshold_equal_direct_computation(seed: int) -> None:
    truth, probabilities = random_predictions(500, 5, seed)
    result = evaluation.compute(truth, probabilities, list("abcde"), threshold=0.6)
    assert result.ece == pytest.approx(straightforward_ece(truth, probabilities), abs=1e-12)
    assert result.ece > 0.0
    assert len(result.reliability) == 15 and sum(row.count for row in result.reliability) == 500
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    answered = confidence >= 0.6
    assert result.at_threshold is not None
    assert result.at_threshold.coverage == pytest.approx(answered.mean())
    assert result.at_threshold.accuracy == pytest.approx(correct[answered].mean())
    curve = {point.threshold: point for point in result.coverage_curve}
    assert curve[0.0].coverage == 1.0 and curve[0.0].accuracy == pytest.approx(result.accuracy)
    assert curve[1.0].answered == int((confidence >= 1.0).sum())
    assert [p.coverage for p in result.coverage_curve] == sorted((p.coverage for p in result.coverage_curve),
                                                                 reverse=True)


def test_folder_names_match_exactly_then_loosely() -> None:
    classes = ["Apple Red 1", "Banana", "Kiwi", "Pear X", "pear_x"]
    matched, unknown = evaluate.match_folders(
        {"Banana": 3, "apple_red_1": 2, "KIWI": 1, "Not A Fruit": 4, "PEAR X": 5, "Pear X": 6}, classes)
    assert matched == {"Banana": "Banana", "apple_red_1": "Apple Red 1", "KIWI": "Kiwi", "Pear X": "Pear X"}
    assert unknown == (evaluation.UnknownFolder("Not A Fruit", 4), evaluation.UnknownFolder("PEAR X", 5))


# ---------------------------------------------------------------- with a trained model


@pytest.fixture(scope="module")
def mixed_folder(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flat layout: two class folders (one renamed loosely) with 4 Test photos each, an unreadable photo,
    and a "Not A Fruit" folder that matches no class."""
    root = tmp_path_factory.mktemp("evaluate-mixed")
    names = sorted(p.name for p in (sample_dir / "Test").iterdir())[:2]
    for name, folder in zip(names, [names[0], names[1].lower().replace(" ", "_")], strict=True):
        (root / folder).mkdir()
        for photo in sorted((sample_dir / "Test" / name).glob("*.jpg"))[:4]:
            shutil.copy(photo, root / folder / photo.name)
    (root / names[0] / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "Not A Fruit").mkdir()
    for photo in sorted((sample_dir / "Test" / names[0]).glob("*.jpg"))[:3]:
        shutil.copy(photo, root / "Not A Fruit" / photo.name)
    return root


def test_evaluate_reproduces_train_test_metrics(trained_bundle: Path, sample_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "evaluation"
    report = evaluate.evaluate(EvaluateConfig(model=str(trained_bundle), input=str(sample_dir), output=str(output),
                                              threshold=0.5))
    trained = json.loads((trained_bundle / "manifest.json").read_text())["metrics"]
    train_metrics = json.loads((trained_bundle / "metrics.json").read_text())
    assert (report.split, report.layout, report.engine) == ("Test", "fruits360", "bundle")
    assert report.metrics.count == train_metrics["count"] == 18 * 15
    assert report.metrics.accuracy == trained["accuracy"]
    assert report.metrics.macro_f1 == trained["macro_f1"]
    assert [list(row) for row in report.metrics.confusion] == train_metrics["confusion_matrix"]["counts"]
    assert {p.name for p in output.iterdir()} == {"metrics.json", "per_class.csv", "confusion.png",
                                                  "reliability.png", "coverage.png"}
    written = json.loads((output / "metrics.json").read_text())
    assert written["accuracy"] == trained["accuracy"] and written["at_threshold"]["threshold"] == 0.5
    assert (output / "per_class.csv").read_text() == (trained_bundle / "per_class.csv").read_text()
    assert (output / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_folders_apart_and_both_paths_agree(trained_bundle: Path, mixed_folder: Path, spark) -> None:
    model = Bundle.load(trained_bundle)
    config = EvaluateConfig(model=str(trained_bundle), input=str(mixed_folder), spark=True)
    selection = evaluate.select(sources.list_images(Store(), str(mixed_folder)), model.classes, None)
    assert selection.unknown == (evaluation.UnknownFolder("Not A Fruit", 3),)
    assert len(selection.folders) == 2 and len(selection.photos) == 9
    in_process = evaluate.bundle_scores(model, selection, Store())
    through_spark = evaluate.spark_scores(model, selection, config, Store())
    assert [photo.photo for photo in in_process.unreadable] == [str(mixed_folder / model.classes[0] / "broken.jpg")]
    assert [photo.photo for photo in through_spark.unreadable] == [photo.photo for photo in in_process.unreadable]
    assert through_spark.unreadable[0].reason and in_process.unreadable[0].reason
    order = np.lexsort((in_process.probabilities[:, 0], in_process.truth))
    spark_order = np.lexsort((through_spark.probabilities[:, 0], through_spark.truth))
    np.testing.assert_array_equal(in_process.truth[order], through_spark.truth[spark_order])
    np.testing.assert_allclose(through_spark.probabilities[spark_order], in_process.probabilities[order], atol=1e-5)
    assert in_process.novelty is not None and through_spark.novelty is not None  # the novelty gate, both paths
    np.testing.assert_allclose(through_spark.novelty[spark_order], in_process.novelty[order], atol=1e-5)
    # and directly: the bundle's probabilities of one photo, computed without evaluate
    photo = sorted((mixed_folder / model.classes[0]).glob("*_100.jpg"))[0]
    direct = model.probabilities([photo.read_bytes()])[0]
    assert np.abs(in_process.probabilities - direct).max(axis=1).min() < 1e-12
    report = evaluate.evaluate(config)
    assert report.engine == "spark" and report.metrics.count == 8
    assert report.unknown_folders == (evaluation.UnknownFolder("Not A Fruit", 3),)


def test_cli_json_summary_and_unknown_folder(trained_bundle: Path, mixed_folder: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", "--model", str(trained_bundle), "--input", str(mixed_folder), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["unknown_folders"] == [{"name": "Not A Fruit", "photos": 3}]
    assert document["count"] == 8 and len(document["unreadable"]) == 1 and document["split"] is None
    assert cli.main(["evaluate", "--model", str(trained_bundle), "--input", str(mixed_folder)]) == 0
    out = capsys.readouterr().out
    assert "Not A Fruit (3 photos)" in out and "ECE" in out and "top-3" in out


def test_cli_errors_are_one_line(trained_bundle: Path, mixed_folder: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "Zebra").mkdir()
    shutil.copy(next(mixed_folder.rglob("*_100.jpg")), tmp_path / "Zebra" / "z.jpg")
    cases = [
        (["--model", str(tmp_path / "missing"), "--input", str(mixed_folder)], "model folder not found"),
        (["--model", str(trained_bundle), "--input", str(empty)], "no images"),
        (["--model", str(trained_bundle), "--input", str(tmp_path / "Zebra")], "matches a class"),
        (["--model", str(trained_bundle), "--input", str(mixed_folder), "--split", "Test"], "--split applies"),
    ]
    for arguments, message in cases:
        assert cli.main(["evaluate", *arguments]) == cli.EXIT_ERROR
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
