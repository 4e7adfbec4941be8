#!/usr/bin/env python
"""Write the bundled outlier photos (dev-time tool, run once by hand; not used at run time).

`fruitpipe train` teaches the recogniser what is *not* a fruit from pictures of other things (outlier
exposure), by default:
- photos: the public-domain and CC0 photographs of GCompris listed with side "outliers" in
  `fruitpipe/benchmark/nonfruit_gcompris.json` (hand tools, renewable-energy installations, fishes), read
  out of Debian's `gcompris-qt-data` 3.1-2, written to `src/fruitpipe/data/outliers/<kind>/<name>.jpg` (RGB,
  longest side MAX_SIDE, JPEG quality QUALITY);
- drawings: DRAWN emoji (tools, vehicles, sports balls, stationery, clothes, fishes) in two of the sample's
  own styles, Noto Color Emoji and Twemoji, posed and lit like the sample (`image/render.py`), written to
  `drawings/<style>-<codepoint>-<n>_100.jpg`. Without them the class would learn "a photo" rather than "not a
  fruit": every outlier a photo, every fruit a drawing, and a photo of an apple would come out not a fruit.
LICENSE.md names each photo's author and licence and the drawings' sources. The other GCompris photos
(animals, people, monuments, household objects) and the scikit-image, scikit-learn and matplotlib photos
are the recognition benchmark's non-fruit yardstick: no kind of thing there is drawn or photographed here.

Needs the packages: .venv/bin/python -m fruitpipe.benchmark.recognition --fetch (or make recognition-data)
and Debian's fonts-noto-color-emoji.
Run:             .venv/bin/python scripts/render_outliers.py [--cache DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fruitpipe.benchmark import styles
from fruitpipe.benchmark.nonfruit import GCOMPRIS_LIST, gcompris_package
from fruitpipe.benchmark.packages import DEFAULT_CACHE
from fruitpipe.benchmark.qtresources import read_resource
from fruitpipe.image.render import cropped, write_frames

logger = logging.getLogger("render_outliers")
MAX_SIDE, QUALITY = 200, 85
FRAMES = 2  # posed frames per drawn emoji and style
NOTO_COLOR = styles.FontGlyphs("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", size=109, colour=True)
# kinds of things never in the non-fruit yardstick (no animal but fish, no building, person or household object)
DRAWN = {
    "tools": (0x1F527, 0x1F528, 0x1F529, 0x26CF, 0x1FA9A, 0x1FA9B, 0x1F52A, 0x1F9F0, 0x1FA93, 0x1F526),
    "vehicles": (0x1F697, 0x1F68C, 0x1F6B2, 0x1F682, 0x1F695, 0x1F69A, 0x2708, 0x1F681, 0x26F5, 0x1F6F4),
    "sports": (0x26BD, 0x1F3C0, 0x1F3C8, 0x26BE, 0x1F3BE, 0x1F3D0, 0x1F3B1, 0x1F3D3, 0x1F94A, 0x1F6F9),
    "stationery": (0x1F4CE, 0x270F, 0x1F4CC, 0x1F4CF, 0x2702, 0x1F4DA, 0x1F4BC, 0x1F58A, 0x1F4D3, 0x1F5D1),
    "clothes": (0x1F455, 0x1F456, 0x1F45F, 0x1F9E2, 0x1F45C, 0x1F9E6, 0x1F457, 0x1F9E4, 0x1F453, 0x231A),
    "fishes": (0x1F41F, 0x1F420, 0x1F421, 0x1F988),
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "fruitpipe" / "data" / "outliers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    listed = json.loads(GCOMPRIS_LIST.read_text(encoding="utf-8"))
    root = gcompris_package().root(args.cache)
    shutil.rmtree(args.out, ignore_errors=True)
    credits = []
    for photo in (p for p in listed["photos"] if p["side"] == "outliers"):
        kind, stem = Path(photo["resource"]).parent.name, Path(photo["resource"]).stem
        with Image.open(io.BytesIO(read_resource(root / photo["rcc"], photo["resource"]))) as image:
            rgb = image.convert("RGB")
        scale = min(1.0, MAX_SIDE / max(rgb.size))
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        target = args.out / kind / f"{stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(target, "JPEG", quality=QUALITY)
        credits.append(f"| `{kind}/{stem}.jpg` | {photo['subject']} | {photo['licence']} | {photo['statement']} |")
    drawn = draw_emoji(args.out / "drawings", args.cache)
    header = f"""# Bundled outlier pictures: source and licence

Pictures of things that are not fruit, which `fruitpipe train` uses by default to teach the recogniser to
answer "not sure" for them (outlier exposure; docs/recognition.md), made by `scripts/render_outliers.py`.

`drawings/`: {drawn} renderings ({FRAMES} posed frames each) of {sum(map(len, DRAWN.values()))} emoji of tools,
vehicles, sports balls, stationery, clothes and fishes in Noto Color Emoji (Copyright Google Inc.,
SIL Open Font License 1.1; Debian `fonts-noto-color-emoji`) and Twemoji (Copyright Twitter, Inc and other
contributors, Discord, Inc.; graphics CC-BY 4.0; npm `@discordapp/twemoji` 16.0.1), named
`<style>-<codepoint>-<frame>_100.jpg`; the same sources and licences as the bundled sample's drawings.

The photo folders: {len(credits)} photos, each public domain or CC0, taken from Debian's `{listed['package']}`
{listed['version']} (GCompris, packed in its Qt resource files; each photo's author and licence come from the
upstream README inside the same file), resized to at most {MAX_SIDE} px and re-encoded as JPEG.

| file | subject | licence | statement |
| --- | --- | --- | --- |
"""
    (args.out / "LICENSE.md").write_text(header + "\n".join(credits) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.rglob("*.jpg"))
    logger.info("%d outlier photos and %d drawings, %.2f MB in %s", len(credits), drawn, size / 1e6, args.out)


def draw_emoji(out: Path, cache: Path) -> int:
    """The DRAWN emoji in Noto Color Emoji and Twemoji, FRAMES posed frames each; how many images."""
    twemoji = next(style for style in styles.STYLES if style.name == "twemoji")
    sources = (("noto", NOTO_COLOR, Path("/")), ("twemoji", twemoji.source, twemoji.package.root(cache)))
    written = 0
    for name, source, root in sources:
        for codepoints in DRAWN.values():
            for codepoint in codepoints:
                glyph = source.glyph(root, codepoint)  # type: ignore[union-attr]
                if glyph is None:
                    raise RuntimeError(f"{name} has no U+{codepoint:04X}")
                rng = np.random.default_rng(styles.seed_words("outlier", name, codepoint))
                frames = write_frames(cropped(glyph), out, FRAMES, rng)
                for frame in frames:
                    frame.rename(out / f"{name}-{codepoint:x}-{frame.name}")
                written += len(frames)
    return written


if __name__ == "__main__":
    main()
