"""Shift families (image/shifts.py) and the shifted sets `fruitpipe sample-data --shift` writes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fruitpipe.image import shifts, shiftsets
from helpers import fruitpipe_cli


@pytest.fixture(scope="module")
def photo(sample_dir: Path) -> np.ndarray:
    first = sorted((sample_dir / "Test").glob("*/*.jpg"))[0]
    with Image.open(first) as image:
        return np.asarray(image.convert("RGB"))


def test_sides_are_disjoint_and_cover_the_registry() -> None:
    both = set(shifts.TRAINING_SIDE) & set(shifts.EVALUATION_SIDE)
    assert not both, f"shift families on both sides: {sorted(both)}"
    assert set(shifts.TRAINING_SIDE) | set(shifts.EVALUATION_SIDE) == set(shifts.FAMILIES)
    assert len(shifts.EVALUATION_SIDE) >= 8
    for name, family in shifts.FAMILIES.items():
        assert family.name == name and family.description
        assert family.side == (shifts.TRAINING if name in shifts.TRAINING_SIDE else shifts.EVALUATION)


@pytest.mark.parametrize("name", sorted(shifts.FAMILIES))
@pytest.mark.parametrize("size", [100, 224])
def test_family_is_deterministic_keeps_shape_and_changes_the_image(photo: np.ndarray, name: str, size: int) -> None:
    pixels = np.asarray(Image.fromarray(photo).resize((size, size))) if size != photo.shape[0] else photo
    before = pixels.copy()
    family = shifts.FAMILIES[name]
    first = family.apply(pixels, np.random.default_rng(7))
    second = family.apply(pixels, np.random.default_rng(7))
    assert first.dtype == np.uint8 and first.shape == pixels.shape
    assert first.tobytes() == second.tobytes()
    assert np.array_equal(pixels, before), "a shift must not modify its input"
    assert np.abs(first.astype(int) - pixels).mean() > 1.0, f"{name} barely changed the image"
    other = family.apply(pixels, np.random.default_rng(8))
    if name != "grayscale":  # the one family with no random choice
        assert other.tobytes() != first.tobytes()


def test_shift_refuses_other_arrays() -> None:
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        shifts.FAMILIES["grayscale"].apply(np.zeros((4, 4), dtype=np.uint8), np.random.default_rng(0))


def test_grayscale_and_low_light_against_numpy(photo: np.ndarray) -> None:
    gray = shifts.FAMILIES["grayscale"].apply(photo, np.random.default_rng(0))
    expected = np.clip(np.rint(photo @ np.array([0.299, 0.587, 0.114])), 0, 255)
    assert np.array_equal(gray[..., 0], expected) and np.array_equal(gray[..., 0], gray[..., 2])
    dark = shifts.FAMILIES["low_light"].apply(photo, np.random.default_rng(0))
    assert 0.09 < dark.mean() / photo.mean() < 0.26


def test_background_families_keep_the_fruit(photo: np.ndarray) -> None:
    """Where the fruit is, plain and textured backgrounds leave it as it was; elsewhere they change it."""
    mask = shifts.foreground_mask(photo)
    inner = np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(7)))
    assert 0.1 < mask.mean() < 0.9
    for name in ("plain_background", "textured_background"):
        out = shifts.FAMILIES[name].apply(photo, np.random.default_rng(3))
        assert np.array_equal(out[inner], photo[inner]), name
        assert np.abs(out[~mask].astype(int) - photo[~mask]).mean() > 10, name


def test_augmented_view(photo: np.ndarray) -> None:
    assert shifts.augmented_view(photo, "a.jpg", 0) is photo
    one = shifts.augmented_view(photo, "a.jpg", 1)
    assert one.tobytes() == shifts.augmented_view(photo, "a.jpg", 1).tobytes()
    views = {shifts.augmented_view(photo, key, view).tobytes() for key in ("a.jpg", "b.jpg") for view in (1, 2, 3)}
    assert len(views) == 6
    with pytest.raises(ValueError, match="unknown shift"):
        shifts.augmented_view(photo, "a.jpg", 1, families=("grayscale", "nope"))


@pytest.mark.parametrize("name", shifts.EVALUATION_SIDE)
def test_augmented_view_refuses_every_evaluation_side_family(photo: np.ndarray, name: str) -> None:
    """Augmentation and test-time views never use the suite's families, whatever the view (0 included)."""
    for view in (0, 1):
        with pytest.raises(ValueError, match=f"training-side shifts only; {name} is held out"):
            shifts.augmented_view(photo, "a.jpg", view, families=("geometry", name))


@pytest.mark.slow
def test_train_refuses_a_run_of_a_shifted_suite_in_one_line(spark, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """sample-data --shift writes Test images only: `run` on it works, `train` on that run is refused by name."""
    from fruitpipe.cli import main

    suite, run = tmp_path / "suite", tmp_path / "run"
    assert main(["sample-data", "--shift", shifts.EVALUATION_SIDE[0], "--per-class", "2", "--output", str(suite)]) == 0
    assert {path.parent.parent.name for path in suite.rglob("*.jpg")} == {"Test"}
    assert main(["run", "--input", str(suite), "--output", str(run), "--k", "4", "--master", "local[2]"]) == 0
    capsys.readouterr()
    assert main(["train", "--features", str(run), "--output", str(tmp_path / "model"), "--master", "local[2]"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors == [f"fruitpipe train: error: no Training rows in {run}: train needs a Training split "
                      "(a sample-data --shift set is for evaluate only)"]
    assert not any((tmp_path / "model").rglob("*"))  # nothing written


def test_seed_words_are_stable() -> None:
    """A hash of the parts, not Python's salted hash(): fixed across processes and machines."""
    assert shifts.seed_words("view", "a.jpg", 1) == shifts.seed_words("view", "a.jpg", 1)
    digest = hashlib.sha256(b"view\x00a.jpg\x001").digest()
    assert shifts.seed_words("view", "a.jpg", 1)[0] == int.from_bytes(digest[:4], "little")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_shifted_set_is_deterministic_and_counted(tmp_path: Path, sample_dir: Path) -> None:
    first = shiftsets.write_shifted(tmp_path / "a", "hue_rotation", per_class=3, seed=5)
    shiftsets.write_shifted(tmp_path / "b", "hue_rotation", per_class=3, seed=5)
    shiftsets.write_shifted(tmp_path / "c", "hue_rotation", per_class=3, seed=6)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b")
    assert files != _files(tmp_path / "c")
    classes = sorted(p.name for p in (sample_dir / "Test").iterdir() if p.is_dir())
    assert first.classes == tuple(classes) and first.per_class == 3
    assert sorted(files) == sorted(f"Test/{name}/{i}_100.jpg" for name in classes for i in range(3))


def test_shifted_set_default_count_and_all_evaluation(tmp_path: Path, sample_dir: Path) -> None:
    written = shiftsets.write_shifted(tmp_path / "all", shiftsets.ALL_EVALUATION, per_class=1)
    assert sorted(written.folders) == sorted(shifts.EVALUATION_SIDE)
    for name in shifts.EVALUATION_SIDE:
        assert len(list((tmp_path / "all" / name / "Test").glob("*/*.jpg"))) == len(written.classes)
    fewest = min(len(list(d.glob("*.jpg"))) for d in (sample_dir / "Test").iterdir() if d.is_dir())
    assert shiftsets.write_shifted(tmp_path / "default", "grayscale").per_class == fewest


def test_cli_shift_errors_and_listing(tmp_path: Path) -> None:
    listing = fruitpipe_cli("sample-data", "--list-shifts")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(shifts.FAMILIES)
    assert all(line.split()[1] == shifts.FAMILIES[line.split()[0]].side for line in lines)
    bad = fruitpipe_cli("sample-data", "--output", str(tmp_path / "x"), "--shift", "sepia")
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and "unknown shift 'sepia'" in bad.stderr
    assert "grayscale" in bad.stderr and "all-evaluation" in bad.stderr
    assert not (tmp_path / "x").exists()
    done = fruitpipe_cli("sample-data", "--output", str(tmp_path / "y"), "--shift", "occlusion", "--per-class", "2")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "y" / "Test").glob("*/*.jpg"))) == 2 * len(list((tmp_path / "y" / "Test").iterdir()))


def test_opt_in_families_stay_out_of_the_default_mix() -> None:
    """`sketch`, `scale_jitter` and `cutout` are used only when named: the default views (and so every model
    and journal made before them) are unchanged."""
    opt_in = {name for name, family in shifts.FAMILIES.items() if not family.default_mix}
    assert opt_in == {"sketch", "scale_jitter", "cutout"}
    assert opt_in <= set(shifts.TRAINING_SIDE)
    assert shifts.view_families(()) == shifts.DEFAULT_VIEWS
    assert not opt_in & set(shifts.DEFAULT_VIEWS)
    assert shifts.view_families(["cutout", "geometry"]) == ("geometry", "cutout")


def _non_white(pixels: np.ndarray) -> int:
    return int((pixels.min(axis=2) < 235).sum())


def test_scale_jitter_never_reaches_the_suites_extreme_scale(photo: np.ndarray) -> None:
    """At the largest strength the shrunken fruit keeps >= 50% of its side (>= 25% of its area, with
    resampling's margin); the suite's extreme_scale goes down to 25% of the side (6% of the area)."""
    family = shifts.FAMILIES["scale_jitter"]
    ratios = [_non_white(family.apply(photo, np.random.default_rng(seed), shifts.MAX_STRENGTH)) / _non_white(photo)
              for seed in range(40)]
    assert min(ratios) > 0.2, min(ratios)
    assert any(ratio < 0.5 for ratio in ratios) and any(ratio > 1.0 for ratio in ratios)  # both branches drawn
    suite = [_non_white(shifts.FAMILIES["extreme_scale"].apply(photo, np.random.default_rng(seed))) / _non_white(photo)
             for seed in range(40)]
    assert min(suite) < 0.2  # the yardstick above would catch an unclamped shrink


def test_cutout_erases_one_rectangle_of_at_most_a_quarter(photo: np.ndarray) -> None:
    family = shifts.FAMILIES["cutout"]
    for seed in range(30):
        out = family.apply(photo, np.random.default_rng(seed), shifts.MAX_STRENGTH)
        ys, xs = np.nonzero((out != photo).any(axis=2))
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box <= shifts.MAX_ERASED * photo.shape[0] * photo.shape[1] * 1.05, seed


def test_sketch_is_strokes_on_white_not_the_fruits_colours(photo: np.ndarray) -> None:
    untinted = [out for out in (shifts.FAMILIES["sketch"].apply(photo, np.random.default_rng(seed))
                                for seed in range(12)) if np.array_equal(out[..., 0], out[..., 2])]
    assert untinted, "half the sketches have no tint"
    for out in untinted:
        assert np.percentile(out, 50) > 200  # mostly paper
        assert out.min() < 90  # with dark strokes
