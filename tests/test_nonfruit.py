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


def _rcc(files: dict[str, bytes], compress: set[str]) -> bytes:
    """A Qt resource file (format 1) written from its specification: the reader's independent check.
    Files sit in one folder below the root; `compress` names the zlib-compressed ones."""
    import struct
    import zlib
    folder = {path.split("/")[1] for path in files}
    assert len(folder) == 1
    folder_name = folder.pop()
    names_blob, name_offsets = b"", {}
    for name in [folder_name, *(path.split("/")[2] for path in files)]:
        name_offsets[name] = len(names_blob)
        names_blob += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    data_blob, data_offsets, flags = b"", {}, {}
    for path, content in files.items():
        data_offsets[path] = len(data_blob)
        if path in compress:
            payload, flags[path] = struct.pack(">I", len(content)) + zlib.compress(content), 1
        else:
            payload, flags[path] = content, 0
        data_blob += struct.pack(">I", len(payload)) + payload
    nodes = [struct.pack(">IHII", 0, 2, 1, 1),  # root: a folder with one child, node 1
             struct.pack(">IHII", name_offsets[folder_name], 2, len(files), 2)]
    for path in files:
        nodes.append(struct.pack(">IHHHI", name_offsets[path.split("/")[2]], flags[path], 0, 0, data_offsets[path]))
    tree = b"".join(nodes)
    header = 20
    return (b"qres" + struct.pack(">4I", 1, header, header + len(tree), header + len(tree) + len(data_blob))
            + tree + data_blob + names_blob)


def test_qt_resource_reader_returns_each_file(tmp_path: Path) -> None:
    from fruitpipe.benchmark.qtresources import read_resource

    files = {"/photos/cat.webp": b"RIFF-a-cat" * 50, "/photos/cup.webp": b"a cup", "/photos/street.webp": b"x" * 999}
    rcc = tmp_path / "set.rcc"
    rcc.write_bytes(_rcc(files, compress={"/photos/cat.webp", "/photos/street.webp"}))
    for path, content in files.items():
        assert read_resource(rcc, path) == content
    with pytest.raises(FileNotFoundError):
        read_resource(rcc, "/photos/dog.webp")
    with pytest.raises(IsADirectoryError):
        read_resource(rcc, "/photos")
    (tmp_path / "other.bin").write_bytes(b"not a resource file")
    with pytest.raises(ValueError, match="not a Qt resource file"):
        read_resource(tmp_path / "other.bin", "/photos/cat.webp")


def test_gcompris_listing_is_public_domain_or_cc0_and_names_are_unique() -> None:
    listed = json.loads(nonfruit.GCOMPRIS_LIST.read_text(encoding="utf-8"))
    photos = listed["photos"]
    assert len(photos) == 215 and listed["package"] == nonfruit.gcompris_package().name
    sides = {p["side"] for p in photos}
    assert sides == {nonfruit.REPORT_SIDE, nonfruit.OUTLIER_SIDE}
    # a kind of thing (the folder it sits in) is on one side only: outliers trained on are never reported
    kinds: dict[tuple[str, str], set[str]] = {}
    for p in photos:
        kinds.setdefault((p["rcc"], Path(p["resource"]).parent.name), set()).add(p["side"])
    assert all(len(found) == 1 for found in kinds.values()), kinds
    names = {(Path(p["rcc"]).stem, Path(p["resource"]).stem) for p in photos}
    assert len(names) == len(photos)
    assert all(p["licence"] in ("Public Domain", "CC0-1.0", "CC0") or "public domain" in p["licence"].lower()
               for p in photos), {p["licence"] for p in photos}
    assert all(p["rcc"].startswith("usr/share/gcompris-qt/rcc/") and p["resource"].startswith("/") for p in photos)
    fruit_words = ("fruit", "apple", "banana", "lemon", "berry", "grape", "vegetable", "tomato")
    assert not [p["subject"] for p in photos if any(word in p["subject"].lower() for word in fruit_words)]


def test_bundled_outliers_are_the_listed_outlier_side_only() -> None:
    """data/outliers holds exactly the GCompris photos listed on the outlier side (by kind and name), each
    credited in its LICENSE.md, and the drawn outliers; none of the report-side photos is there."""
    from fruitpipe.recognise.outliers import bundled_outliers_dir

    listed = json.loads(nonfruit.GCOMPRIS_LIST.read_text(encoding="utf-8"))["photos"]
    folder = bundled_outliers_dir()
    bundled = {path.relative_to(folder).as_posix() for path in folder.glob("*/*.jpg") if path.parent.name != "drawings"}
    expected = {f"{Path(p['resource']).parent.name}/{Path(p['resource']).stem}.jpg"
                for p in listed if p["side"] == nonfruit.OUTLIER_SIDE}
    reported = {f"{Path(p['resource']).parent.name}/{Path(p['resource']).stem}.jpg"
                for p in listed if p["side"] == nonfruit.REPORT_SIDE}
    assert bundled == expected and not bundled & reported
    credits = (folder / "LICENSE.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in credits for name in bundled)
    drawings = sorted((folder / "drawings").glob("*.jpg"))
    assert drawings and {path.name.split("-")[0] for path in drawings} == {"noto", "twemoji"}
    assert "CC-BY 4.0" in credits and "Open Font License" in credits
