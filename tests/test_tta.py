"""Test-time augmentation in the bundle (`--tta N`), checked against views made and scored one at a time:
tta 1 is the photo alone, bit for bit; tta N is the numpy mean of the N views' calibrated probabilities."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from fruitpipe.image import shifts
from fruitpipe.image.embed import embed
from fruitpipe.recognise.bundle import Bundle
from helpers import fruitpipe_cli

pytestmark = pytest.mark.slow

TTA = 4


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path) -> Bundle:
    return Bundle.load(trained_bundle, threads=1)


@pytest.fixture(scope="module")
def photos(sample_dir: Path, bundle: Bundle) -> list[np.ndarray]:
    """Three Test photos of different classes, decoded to the model's input."""
    paths = [sorted((sample_dir / "Test" / name).glob("*.jpg"))[0] for name in ("Banana", "Kiwi", "Apple Red")]
    return [bundle.pixels(path.read_bytes()) for path in paths]


def test_tta_1_is_the_photo_alone_bit_for_bit(trained_bundle: Path, bundle: Bundle, photos: list[np.ndarray]) -> None:
    """The default and an explicit tta 1 give exactly what embedding the photos and classifying gives."""
    direct = bundle.classify(embed(np.stack(photos), bundle.preprocessing, bundle.onnx_path, 1, bundle.runtime))
    explicit = Bundle.load(trained_bundle, threads=1, tta=1)
    assert bundle.tta == 1 and bundle.describe()["tta"] == 1
    assert np.array_equal(bundle.probabilities_of_pixels(photos), direct)
    assert np.array_equal(explicit.probabilities_of_pixels(photos), direct)


def test_tta_n_is_the_mean_of_the_views_probabilities(trained_bundle: Path, bundle: Bundle,
                                                      photos: list[np.ndarray]) -> None:
    """Views made here with augmented_view (key "tta", geometry only), scored one by one with tta 1, averaged."""
    with_tta = Bundle.load(trained_bundle, threads=1, tta=TTA)
    views = [[shifts.augmented_view(photo, "tta", view, ("geometry",)) for view in range(TTA)] for photo in photos]
    assert views[0][0] is photos[0]  # view 0 is the photo itself
    assert len({view.tobytes() for view in views[0]}) == TTA  # every view differs
    per_view = np.array([[bundle.probabilities_of_pixels([view])[0] for view in photo_views] for photo_views in views])
    expected = per_view.mean(axis=1)
    got = with_tta.probabilities_of_pixels(photos)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    outlier = with_tta.scores_of_pixels(photos).outlier  # the bundled outlier photos' "not a fruit" class
    np.testing.assert_allclose(got.sum(axis=1) + (0.0 if outlier is None else outlier), 1.0, atol=1e-9)
    assert not np.allclose(got, bundle.probabilities_of_pixels(photos), atol=1e-6)  # the views did something
    assert with_tta.describe()["tta"] == TTA


def test_bundle_json_tta_absent_recorded_and_out_of_range(trained_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(trained_bundle / "bundle", tmp_path / "bundle"))
    description = copy / "bundle.json"
    document = json.loads(description.read_text())
    assert "tta" not in document or document["tta"] == 1
    description.write_text(json.dumps({key: value for key, value in document.items() if key != "tta"}))
    assert Bundle.load(copy).tta == 1
    description.write_text(json.dumps({**document, "tta": 3}))
    assert Bundle.load(copy).tta == 3 and Bundle.load(copy, tta=2).tta == 2  # --tta overrides the recorded one
    description.write_text(json.dumps({**document, "tta": 99}))
    with pytest.raises(ValueError, match="tta must be from 1 to 16, got 99"):
        Bundle.load(copy)
    with pytest.raises(ValueError, match="--tta must be an integer from 1 to 16, got 0"):
        Bundle.load(trained_bundle, tta=0)


@pytest.mark.parametrize(("command", "value"), [("predict", "0"), ("serve", "17"), ("evaluate", "0"),
                                                ("train", "17")])
def test_tta_out_of_range_is_one_line(trained_bundle: Path, sample_dir: Path, tmp_path: Path, command: str,
                                      value: str) -> None:
    args = {"predict": ["--model", str(trained_bundle), str(next((sample_dir / "Test").glob("*/*.jpg")))],
            "serve": ["--model", str(trained_bundle), "--port", "0"],
            "evaluate": ["--model", str(trained_bundle), "--input", str(sample_dir)],
            "train": ["--features", str(tmp_path / "run"), "--output", str(tmp_path / "model")]}[command]
    result = fruitpipe_cli(command, *args, "--tta", value)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fruitpipe {command}: error: --tta must be an integer from 1 to 16, got {value}"], result.stderr


def test_evaluate_refuses_spark_with_tta_in_one_line(trained_bundle: Path, sample_dir: Path) -> None:
    result = fruitpipe_cli("evaluate", "--model", str(trained_bundle), "--input", str(sample_dir), "--spark",
                           "--tta", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "--spark scores one view per photo" in lines[0], \
        result.stderr


def test_evaluate_with_tta_scores_the_averaged_views(trained_bundle: Path, sample_dir: Path, tmp_path: Path) -> None:
    """evaluate --tta 2 on a few photos: in process, metrics.json says tta 2, accuracy from the averaged views."""
    from fruitpipe.config import EvaluateConfig
    from fruitpipe.recognise import evaluate

    folder = tmp_path / "few"
    for name in ("Banana", "Kiwi"):
        (folder / name).mkdir(parents=True)
        for path in sorted((sample_dir / "Test" / name).glob("*.jpg"))[:3]:
            shutil.copy(path, folder / name / path.name)
    report = evaluate.evaluate(EvaluateConfig(model=str(trained_bundle), input=str(folder), tta=2))
    model = Bundle.load(trained_bundle, tta=2)
    truth, predicted = [], []
    for name in ("Banana", "Kiwi"):
        for path in sorted((folder / name).glob("*.jpg")):
            truth.append(name)
            predicted.append(model.classes[int(np.argmax(model.probabilities([path.read_bytes()])[0]))])
    assert report.engine == "bundle" and report.tta == 2 and report.to_json()["tta"] == 2
    assert report.metrics.accuracy == pytest.approx(np.mean(np.array(truth) == np.array(predicted)))


def test_serve_health_shows_the_tta_in_use(trained_bundle: Path, sample_dir: Path, tmp_path: Path) -> None:
    from fruitpipe.devtools.serveprocess import running_server

    photo = sorted((sample_dir / "Test" / "Kiwi").glob("*.jpg"))[0]
    expected = Bundle.load(trained_bundle, tta=3).answer_bytes(photo.read_bytes(), top_k=1)
    with running_server(trained_bundle, tmp_path, "--tta", "3") as server:
        assert httpx.get(f"{server.base_url}/health", timeout=30).json()["tta"] == 3
        response = httpx.post(f"{server.base_url}/predict", files={"file": (photo.name, photo.read_bytes(),
                                                                            "image/jpeg")},
                              params={"top_k": 1}, timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"][0]
    assert served["label"] == expected.predictions[0].label
    assert served["probability"] == pytest.approx(expected.predictions[0].probability, abs=1e-6)
