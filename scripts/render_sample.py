#!/usr/bin/env python
"""Render the bundled sample data set (dev-time tool, run once by hand; not used at run time).

No real fruit photo collection can be shipped or downloaded, so this draws freely licensed emoji
as synthetic stand-ins for Fruits 360: 100x100 RGB JPEGs of one fruit on a pure white background, seen
at many angles, scales, offsets and lightings, in the `Training/<Class>/<n>_100.jpg` /
`Test/<Class>/<n>_100.jpg` layout. Each fruit is drawn in four styles: Noto Color Emoji (SIL OFL 1.1)
and the training-side styles of `fruitpipe.benchmark.styles` (Twemoji, EmojiOne 2, Noto v1), so a
recogniser trained on the sample has seen more than one artist's fruit (docs/recognition.md says what
that buys on styles and photos it has never seen). A style without a fruit (EmojiOne 2 and Noto v1 have
no mango) leaves its share to Noto.

Needs Debian's font:  apt-get install -y fonts-noto-color-emoji
and the styles' npm packages: .venv/bin/python -m fruitpipe.benchmark.styles fetch --side training
Run:                  .venv/bin/python scripts/render_sample.py [--seed 360] [--out DIR] [--cache DIR]
The output is a pure function of the seed (and of the font, package and Pillow versions).
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fruitpipe.benchmark import styles
from fruitpipe.image.render import write_frames

logger = logging.getLogger("render_sample")

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size the CBDT bitmap strike supports
SPLITS = {"Training": 40, "Test": 15}
# frames per split and fruit of each training-side style (the rest of the split is Noto Color Emoji)
PER_STYLE = {"Training": 8, "Test": 3}
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


def main() -> None:
    """Render every class into a fresh output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=360)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=styles.DEFAULT_CACHE, help="the styles' unpacked packages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    font = ImageFont.truetype(str(FONT_PATH), size=FONT_SIZE)
    for split in SPLITS:
        shutil.rmtree(args.out / split, ignore_errors=True)
    for class_index, (name, char) in enumerate(CLASSES.items()):
        others = [(style.name, sprite) for style in styles.styles(styles.TRAINING)
                  if (sprite := style.sprite(args.cache, name)) is not None]
        sprites = [("noto-color", render_glyph(font, char)), *others]
        for split_index, (split, count) in enumerate(SPLITS.items()):
            first = 0
            for style_index, (_, sprite) in enumerate(sprites):
                frames = PER_STYLE[split] if style_index else count - PER_STYLE[split] * len(others)
                rng = np.random.default_rng([args.seed, class_index, split_index, style_index])
                write_frames(sprite, args.out / split / name, frames, rng, first=first)
                first += frames
        logger.info("rendered %s in %s", name, ", ".join(style_name for style_name, _ in sprites))
    size = sum(p.stat().st_size for p in args.out.rglob("*.jpg"))
    logger.info("%d classes, %.2f MB of JPEG in %s", len(CLASSES), size / 1e6, args.out)


if __name__ == "__main__":
    main()
