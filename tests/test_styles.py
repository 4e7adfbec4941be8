"""The style yardsticks (benchmark/styles.py) and the rendering they share with the bundled sample.

What decides honesty is tested without the registry packages (CI has none of them fetched): every style
is on exactly one side, every package is pinned, the photographs and every artist whose work is reported
stay on the report side, and monochrome line art never reaches the training side. The rendering is
checked on a drawn sprite: deterministic, on white, the fruit's own colours.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fruitpipe.benchmark import packages, styles
from fruitpipe.image import render


def test_each_style_is_on_exactly_one_side_and_names_are_unique() -> None:
    names = [style.name for style in styles.STYLES]
    assert len(names) == len(set(names))
    assert all(style.side in styles.SIDES for style in styles.STYLES)
    by_side = {side: {style.name for style in styles.styles(side)} for side in styles.SIDES}
    assert not (by_side["training"] & by_side["selection"]) and not (by_side["training"] & by_side["report"])
    assert not (by_side["selection"] & by_side["report"])
    assert sum(len(names) for names in by_side.values()) == len(styles.STYLES)
    with pytest.raises(ValueError, match="unknown side"):
        styles.styles("suite")


def test_no_artist_is_on_two_sides() -> None:
    """A package (one artist's set) feeds one side only: choosing on one Fluent style and reporting another
    would let the choice see the reported artist."""
    sides: dict[str, set[str]] = {}
    for style in styles.STYLES:
        sides.setdefault(style.package.name, set()).add(style.side)
    assert all(len(found) == 1 for found in sides.values()), sides


def test_photographs_and_line_art_are_never_trained_on() -> None:
    assert all(style.side == styles.REPORT for style in styles.STYLES if style.kind == "photo")
    assert any(style.kind == "photo" for style in styles.styles(styles.REPORT))
    training = styles.styles(styles.TRAINING)
    assert training and all(style.kind == "drawing" for style in training)
    monochrome = ("black", "monotone", "mono", "high-contrast", "symbola")
    assert not [style.name for style in training if any(word in style.name for word in monochrome)]


def test_packages_are_pinned_to_exact_versions() -> None:
    for style in styles.STYLES:
        package = style.package
        assert package.registry in (packages.NPM, packages.DEBIAN)
        assert package.version and not any(mark in package.version for mark in "^~*<>=x "), package


def test_a_missing_package_names_the_command_that_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(packages.PackageMissingError, match="make recognition-data"):
        styles.STYLES[0].sprite(tmp_path, "Banana")


def _sprite() -> Image.Image:
    """A red disc on a transparent canvas, with a green leaf: a stand-in drawing."""
    canvas = Image.new("RGBA", (120, 140), (255, 255, 255, 0))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((10, 30, 110, 130), fill=(200, 30, 30, 255))
    draw.polygon([(60, 30), (80, 5), (70, 35)], fill=(40, 160, 40, 255))
    return canvas


def test_frames_are_deterministic_white_backed_fruit_images(tmp_path: Path) -> None:
    sprite = render.cropped(_sprite())
    first = render.write_frames(sprite, tmp_path / "a", 4, np.random.default_rng(7))
    again = render.write_frames(sprite, tmp_path / "b", 4, np.random.default_rng(7))
    assert [p.name for p in first] == [f"{n}_100.jpg" for n in range(4)]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    other = render.write_frames(sprite, tmp_path / "c", 1, np.random.default_rng(8), first=4)
    assert other[0].name == "4_100.jpg" and other[0].read_bytes() != first[0].read_bytes()
    for path in first:
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert pixels.shape == (render.SIZE, render.SIZE, 3)
        corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() >= 235  # on white (a soft shadow may touch one corner at most lightly)
        fruit = pixels[(pixels.min(axis=2) < 200)]
        assert len(fruit) > 500 and (fruit[:, 0] > fruit[:, 2] + 60).mean() > 0.7  # mostly the red disc


def test_render_writes_each_class_the_style_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`render` skips fruits the style lacks and seeds each fruit by (style, class, seed)."""
    drawn = {"Banana", "Kiwi"}

    class Stub:
        def sprite(self, root: Path, label: str) -> Image.Image | None:
            return _sprite() if label in drawn else None

    package = packages.Package(packages.NPM, "stub", "1.0.0")
    (package.folder(tmp_path) / "package").mkdir(parents=True)
    (package.folder(tmp_path) / ".complete").write_text("stub 1.0.0\n", encoding="utf-8")
    style = styles.Style("stub", styles.REPORT, "drawing", "stub", "none", package, Stub())  # type: ignore[arg-type]
    count = styles.render(style, tmp_path, tmp_path / "out", per_class=3)
    assert count == 6 and sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(drawn)
    again = styles.render(style, tmp_path, tmp_path / "again", per_class=3)
    assert again == 6
    assert (tmp_path / "out/Kiwi/2_100.jpg").read_bytes() == (tmp_path / "again/Kiwi/2_100.jpg").read_bytes()
    assert (tmp_path / "out/Kiwi/0_100.jpg").read_bytes() != (tmp_path / "out/Banana/0_100.jpg").read_bytes()


def test_svg_sizes_in_points_are_rasterised() -> None:
    """Old Sodipodi files give their size in pt, which resvg refuses as it is; the ratio is kept."""
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="75pt" height="150pt" viewBox="0 0 10 20">'
           '<rect x="0" y="0" width="10" height="20" fill="#ff0000"/></svg>')
    image = styles.rasterise_svg(svg, side=64)
    assert image.mode == "RGBA" and image.size == (32, 64)  # the drawing's own ratio, fitted in the square
    assert (np.asarray(image)[..., :3] == (255, 0, 0)).all(axis=2).mean() > 0.95
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert buffer.tell() > 0
