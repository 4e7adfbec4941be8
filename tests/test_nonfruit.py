"""The non-fruit photo set: written from installed packages, decodable, distinct, deterministic, licensed."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fruitpipe.benchmark import nonfruit


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return nonfruit.non_fruit_photos(tmp_path_factory.mktemp("nonfruit") / "set")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image)


def test_at_least_twelve_decodable_distinct_photos(photos: list[Path]) -> None:
    assert len(photos) >= 12
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in photos}) == len(photos)
    thumbnails = []
    for path in photos:
        array = pixels(path)
        assert min(array.shape[:2]) >= 100 and max(array.shape[:2]) <= nonfruit.MAX_SIDE
        assert array.std() > 10  # a real picture, not a flat fill
        thumbnails.append(np.asarray(Image.fromarray(array).resize((32, 32)), dtype=np.float64))
    for i, first in enumerate(thumbnails):
        for second in thumbnails[i + 1:]:
            assert np.abs(first - second).mean() > 5  # no two are the same picture re-encoded


def test_deterministic(photos: list[Path], tmp_path: Path) -> None:
    again = nonfruit.non_fruit_photos(tmp_path)
    assert [p.name for p in again] == [p.name for p in photos]
    for first, second in zip(photos, again, strict=True):
        assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / nonfruit.LICENSES_FILE).read_bytes() == (photos[0].parent / nonfruit.LICENSES_FILE).read_bytes()


def test_photos_are_the_packages_images(photos: list[Path]) -> None:
    """Checked against the packages' own loaders, not fruitpipe's file lookup."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    by_name = {p.stem: p for p in photos}
    china = load_sample_images().images[0]
    cat = skimage.data.chelsea()
    assert np.abs(pixels(by_name["sklearn-china"]).astype(float) - china).mean() < 3
    assert np.abs(pixels(by_name["skimage-chelsea"]).astype(float) - cat).mean() < 3
    camera = pixels(by_name["skimage-camera"]).astype(float)  # grey, expanded to RGB
    assert np.abs(camera - skimage.data.camera()[..., None]).mean() < 3


def test_licences_recorded_beside_the_photos(photos: list[Path]) -> None:
    records = json.loads((photos[0].parent / nonfruit.LICENSES_FILE).read_text(encoding="utf-8"))
    assert [record["photo"] for record in records] == [p.name for p in photos]
    for record in records:
        assert record["version"] == importlib.metadata.version(record["package"])
        assert record["licence"] and record["package_licence"] != "unknown" and record["statement"]
        assert record["subject"] and "fruit" not in record["subject"].lower()


def test_missing_package_is_a_value_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.metadata.distribution

    def without_skimage(name: str) -> importlib.metadata.Distribution:
        if name == "scikit-image":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_skimage)
    with pytest.raises(ValueError, match="needs scikit-image installed"):
        nonfruit.non_fruit_photos(tmp_path)
