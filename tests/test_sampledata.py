"""Tests of the bundled sample set and of synthesize()."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from fruitpipe.image import sampledata
from fruitpipe.image.sampledata import bundled_sample_dir, synthesize

SPLITS = ("Training", "Test")


def _classes(root: Path, split: str) -> list[str]:
    return sorted(d.name for d in (root / split).iterdir() if d.is_dir())


def _files(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_fruit_jpeg(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "JPEG", path
        assert im.size == (100, 100), path
        assert im.mode == "RGB", path
        im.load()  # decodes fully, raising on truncated data


@pytest.fixture(scope="module")
def sample() -> Path:
    return bundled_sample_dir()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "set"
    return out, synthesize(out, per_class=11, seed=7)


def test_bundled_sample_has_enough_classes_and_images(sample: Path) -> None:
    classes = _classes(sample, "Training")
    assert len(classes) >= 12
    assert _classes(sample, "Test") == classes
    for name in classes:
        assert len(list((sample / "Training" / name).glob("*_100.jpg"))) >= 40, name
        assert len(list((sample / "Test" / name).glob("*_100.jpg"))) >= 15, name


def test_bundled_sample_images_are_valid_jpegs(sample: Path) -> None:
    images = sorted(sample.rglob("*.jpg"))
    assert len(images) >= 12 * 55
    for path in images:
        _assert_fruit_jpeg(path)


def test_bundled_sample_class_names_exercise_spaces_and_unicode(sample: Path) -> None:
    classes = _classes(sample, "Training")
    assert any(" " in name for name in classes)
    assert any(not name.isascii() for name in classes)


def test_bundled_sample_is_small_and_licensed(sample: Path) -> None:
    size = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert "Open Font License" in (sample / "LICENSE.md").read_text(encoding="utf-8")


def test_synthesize_counts_per_class_and_split(sample: Path, small_set: tuple[Path, dict]) -> None:
    out, summary = small_set
    classes = _classes(sample, "Training")
    assert summary["classes"] == classes
    assert summary["per_class_counts"] == {"Training": 8, "Test": 3}  # 11 * 40/55 = 8
    assert summary["counts"] == {"Training": 8 * len(classes), "Test": 3 * len(classes)}
    assert summary["total"] == 11 * len(classes)
    assert Path(summary["output_dir"]) == out
    for split, count in (("Training", 8), ("Test", 3)):
        assert _classes(out, split) == classes
        for name in classes:
            names = sorted(p.name for p in (out / split / name).iterdir())
            assert names == sorted(f"{n}_100.jpg" for n in range(count)), (split, name)


def test_synthesize_writes_valid_jpegs(small_set: tuple[Path, dict]) -> None:
    out, summary = small_set
    images = sorted(out.rglob("*.jpg"))
    assert len(images) == summary["total"]
    for path in images:
        _assert_fruit_jpeg(path)


def test_synthesize_is_deterministic(tmp_path: Path, small_set: tuple[Path, dict]) -> None:
    out, _ = small_set
    synthesize(tmp_path / "again", per_class=11, seed=7)
    synthesize(tmp_path / "other", per_class=11, seed=8)
    first, again, other = _files(out), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys()
    assert sum(first[k] != other[k] for k in first) > len(first) // 2


def test_synthesize_does_not_depend_on_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthesize(tmp_path / "serial", per_class=5, seed=3, workers=1)
    monkeypatch.setattr(sampledata, "SMALL_JOB", 0)  # force the process pool even for a tiny job
    monkeypatch.setattr(sampledata, "CHUNK", 2)
    synthesize(tmp_path / "pool", per_class=5, seed=3, workers=2)
    serial = _files(tmp_path / "serial")
    assert serial and serial == _files(tmp_path / "pool")


def test_synthesize_keeps_the_source_split_ratio(tmp_path: Path, sample: Path) -> None:
    source = tmp_path / "source"
    for split in SPLITS:
        for name in _classes(sample, split)[:2]:
            (source / split / name).mkdir(parents=True)
            for n in range(2):
                shutil.copy(sample / split / name / f"{n}_100.jpg", source / split / name)
    summary = synthesize(tmp_path / "out", per_class=10, seed=0, source=source)
    assert summary["per_class_counts"] == {"Training": 5, "Test": 5}
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 20


def test_synthesize_accepts_an_empty_existing_folder(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, per_class=2, seed=0)
    assert summary["per_class_counts"] == {"Training": 1, "Test": 1}


def test_synthesize_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        synthesize(tmp_path, per_class=11)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("per_class", [-1, 0, 1])
def test_synthesize_refuses_too_few_images(tmp_path: Path, per_class: int) -> None:
    with pytest.raises(ValueError, match="per_class"):
        synthesize(tmp_path / "out", per_class=per_class)
    assert not (tmp_path / "out").exists()
