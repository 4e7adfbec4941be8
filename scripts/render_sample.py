#!/usr/bin/env python
"""Render the bundled sample data set (dev-time tool, run once by hand; not used at run time).

No real fruit photo collection can be shipped or downloaded, so this draws freely licensed
Noto Color Emoji glyphs (SIL OFL 1.1) as synthetic stand-ins for Fruits 360: 100x100 RGB JPEGs
of one fruit on a pure white background, seen at many angles, scales, offsets and lightings,
in the `Training/<Class>/<n>_100.jpg` / `Test/<Class>/<n>_100.jpg` layout.

Needs Debian's font:  apt-get install -y fonts-noto-color-emoji
Run:                  .venv/bin/python scripts/render_sample.py [--seed 360] [--out DIR]
The output is a pure function of the seed (and of the font and Pillow versions).
"""
from __future__ import annotations

import argparse
import logging
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

logger = logging.getLogger("render_sample")

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size the CBDT bitmap strike supports
SIZE = 100  # output side, as in Fruits 360
SUPERSAMPLE = 3  # draw large, then downscale once, for clean edges
SPLITS = {"Training": 40, "Test": 15}
JPEG_QUALITY = 88
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "fruitpipe" / "data" / "sample"

CLASSES: dict[str, str] = {
    "Apple Red": "\N{RED APPLE}",
    "Apple Green": "\N{GREEN APPLE}",
    "Avocado": "\N{AVOCADO}",
    "Banana": "\N{BANANA}",
    "Carrot": "\N{CARROT}",
    "Cherry": "\N{CHERRIES}",
    "Eggplant": "\N{AUBERGINE}",
    "Grape": "\N{GRAPES}",
    "Kiwi": "\N{KIWIFRUIT}",
    "Lemon": "\N{LEMON}",
    "Mango": "\N{MANGO}",
    "Peach": "\N{PEACH}",
    "Pear": "\N{PEAR}",
    "Pepper Jalapeño": "\N{HOT PEPPER}",
    "Pineapple": "\N{PINEAPPLE}",
    "Strawberry": "\N{STRAWBERRY}",
    "Tangerine": "\N{TANGERINE}",
    "Tomato": "\N{TOMATO}",
}


def render_glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image:
    """Draw one colour glyph on a transparent canvas and crop it to its visible pixels."""
    canvas = Image.new("RGBA", (FONT_SIZE * 2, FONT_SIZE * 2), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 4, FONT_SIZE // 4), char, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None or (bbox[2] - bbox[0]) < 20 or (bbox[3] - bbox[1]) < 20:
        raise RuntimeError(f"glyph {char!r} rendered empty: is the font complete?")
    return canvas.crop(bbox)


def relight(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vary brightness, contrast, colour temperature and gamma, like the studio lamps drifting."""
    x = rgb.astype(np.float32) / 255.0
    gamma = rng.uniform(0.8, 1.25)
    x = x**gamma
    contrast = rng.uniform(0.85, 1.15)
    x = (x - 0.5) * contrast + 0.5
    warmth = rng.uniform(-0.06, 0.06)  # > 0: warmer (more red, less blue)
    x *= np.array([1.0 + warmth, 1.0, 1.0 - warmth], dtype=np.float32)
    x *= rng.uniform(0.85, 1.12)  # brightness
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def pose(sprite: Image.Image, angle: float, turn: float, scale: float) -> Image.Image:
    """Rotate in-plane and foreshorten horizontally (a turntable seen from the side), then size it."""
    premul = sprite.convert("RGBa")  # resample premultiplied so edges do not darken
    squash = 0.78 + 0.22 * abs(math.cos(math.radians(turn)))
    w, h = premul.size
    premul = premul.resize((max(1, round(w * squash)), h), Image.Resampling.LANCZOS)
    if math.cos(math.radians(turn)) < 0:  # the far side of the turntable: mirror image
        premul = premul.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    premul = premul.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    posed = premul.convert("RGBA")
    posed = posed.crop(posed.getchannel("A").getbbox())
    target = scale * SIZE * SUPERSAMPLE
    factor = target / max(posed.size)
    new_size = (max(1, round(posed.width * factor)), max(1, round(posed.height * factor)))
    return posed.resize(new_size, Image.Resampling.LANCZOS)


def compose(sprite: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Place the posed fruit on white with a small offset and a soft contact shadow."""
    big = SIZE * SUPERSAMPLE
    rgb = relight(np.asarray(sprite.convert("RGB")), rng)
    fruit = Image.fromarray(rgb, "RGB")
    alpha = sprite.getchannel("A")
    room_x, room_y = big - sprite.width, big - sprite.height
    jitter = 0.06 * big
    x = int(np.clip(room_x / 2 + rng.uniform(-jitter, jitter), 0, room_x))
    y = int(np.clip(room_y / 2 + rng.uniform(-jitter, jitter), 0, room_y))
    canvas = Image.new("RGB", (big, big), (255, 255, 255))
    if rng.random() < 0.7:
        strength = rng.uniform(0.08, 0.22)
        shadow = alpha.point(lambda a, s=strength: round(a * s))
        shadow = shadow.filter(ImageFilter.GaussianBlur(4 * SUPERSAMPLE))
        dx, dy = (int(v) for v in rng.integers(1, 4 * SUPERSAMPLE, size=2))
        canvas.paste((90, 90, 90), (x + dx, y + dy), shadow)
    canvas.paste(fruit, (x, y), alpha)
    return canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def render_split(glyph: Image.Image, out_dir: Path, count: int, rng: np.random.Generator) -> None:
    """Write `count` frames of one class: one turntable revolution plus jittered pose and light."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start, tilt = rng.uniform(0, 360), rng.uniform(-25, 25)
    for n in range(count):
        turn = start + 360.0 * n / count + rng.uniform(-4, 4)
        angle = tilt + 20.0 * math.sin(math.radians(turn)) + rng.uniform(-180, 180) * (rng.random() < 0.35)
        posed = pose(glyph, angle, turn, scale=rng.uniform(0.6, 0.95))
        compose(posed, rng).save(out_dir / f"{n}_100.jpg", "JPEG", quality=JPEG_QUALITY)


def main() -> None:
    """Render every class into a fresh output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=360)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    font = ImageFont.truetype(str(FONT_PATH), size=FONT_SIZE)
    for split in SPLITS:
        shutil.rmtree(args.out / split, ignore_errors=True)
    for class_index, (name, char) in enumerate(CLASSES.items()):
        glyph = render_glyph(font, char)
        for split_index, (split, count) in enumerate(SPLITS.items()):
            rng = np.random.default_rng([args.seed, class_index, split_index])
            render_split(glyph, args.out / split / name, count, rng)
        logger.info("rendered %s", name)
    size = sum(p.stat().st_size for p in args.out.rglob("*.jpg"))
    logger.info("%d classes, %.2f MB of JPEG in %s", len(CLASSES), size / 1e6, args.out)


if __name__ == "__main__":
    main()
