"""The 18 fruits drawn in other styles, and photographed: yardsticks for "unlike its training set".

The bundled sample draws each fruit in a few free emoji styles (data/sample/LICENSE.md); a recogniser
trained on it is meant for photos and drawings none of us has. These sets stand in for those: every
fruit class in another artist's style (or a cut-out photograph), taken from a package in a registry
this project reaches (npm, Debian), rendered with the sample's own pose and light (`image/render.py`),
so a frame differs from the training images in its style only.

Each style is on exactly one side, and `tests/test_styles.py` fails if one is on two:
- TRAINING: drawn into the bundled sample's Training and Test splits (`scripts/render_sample.py`).
- SELECTION: scored when the recognition benchmark chooses a recipe; never trained on, never reported
  as a result.
- REPORT: scored for the reported figures only (the table's "other styles" and "photos" columns); never
  trained on, never part of any choice. The photographs are here, and every Fluent style (its 3D
  look is the closest to a photo), so no choice has seen an artist whose work is reported.
Monochrome line art is on the selection and report sides only: the shift suite's `outline` and
`grayscale` families have no training-side kin (docs/recognition.md).

`python -m fruitpipe.benchmark.styles fetch --cache DIR` downloads the packages (npm pack; apt-get
download, which needs the apt lists: run `apt-get update` as root first), `render --cache DIR --out DIR
--side report` writes `OUT/<style>/<Class>/<n>_100.jpg` (flat, labelled layout for `fruitpipe evaluate`).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fruitpipe.benchmark.packages import DEBIAN, DEFAULT_CACHE, NPM, Package, PackageMissingError
from fruitpipe.image.render import cropped, write_frames
from fruitpipe.image.shifts import seed_words

logger = logging.getLogger(__name__)

TRAINING, SELECTION, REPORT = "training", "selection", "report"
SIDES = (TRAINING, SELECTION, REPORT)
NOT_A_CHARACTER = "\U0010fffd"  # a private-use code point no emoji font draws
RASTER = 256  # side a vector sprite is rasterised at before posing

CODEPOINTS: dict[str, int] = {
    "Apple Green": 0x1F34F, "Apple Red": 0x1F34E, "Avocado": 0x1F951, "Banana": 0x1F34C, "Carrot": 0x1F955,
    "Cherry": 0x1F352, "Eggplant": 0x1F346, "Grape": 0x1F347, "Kiwi": 0x1F95D, "Lemon": 0x1F34B,
    "Mango": 0x1F96D, "Peach": 0x1F351, "Pear": 0x1F350, "Pepper Jalapeño": 0x1F336, "Pineapple": 0x1F34D,
    "Strawberry": 0x1F353, "Tangerine": 0x1F34A, "Tomato": 0x1F345,
}
CLASSES = tuple(CODEPOINTS)
ICONIFY_NAMES: dict[str, str] = {
    "Apple Green": "green-apple", "Apple Red": "red-apple", "Avocado": "avocado", "Banana": "banana",
    "Carrot": "carrot", "Cherry": "cherries", "Eggplant": "eggplant", "Grape": "grapes", "Kiwi": "kiwi-fruit",
    "Lemon": "lemon", "Mango": "mango", "Peach": "peach", "Pear": "pear", "Pepper Jalapeño": "hot-pepper",
    "Pineapple": "pineapple", "Strawberry": "strawberry", "Tangerine": "tangerine", "Tomato": "tomato",
}


def rasterise_svg(svg: str | bytes, side: int = RASTER) -> Image.Image:
    """An SVG drawing as an RGBA image `side` pixels across (resvg, no system libraries)."""
    import resvg_py  # the bench extra; only the style yardsticks and the sample renderer draw SVG

    text = _pixel_size(svg.decode("utf-8") if isinstance(svg, bytes) else svg)
    png = resvg_py.svg_to_bytes(svg_string=text, width=side, height=side)
    with Image.open(io.BytesIO(bytes(png))) as image:
        return image.convert("RGBA")


UNIT_PX = {"pt": 4 / 3, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0, "px": 1.0}
_ROOT_SIZE = re.compile(r'(<svg\b[^>]*?\b(?:width|height)=")([0-9.]+)(pt|mm|cm|in|px)"')


def _pixel_size(svg: str) -> str:
    """The root element's width and height in plain pixels: resvg refuses pt and mm there (old Sodipodi
    and Inkscape files); only their ratio matters once the drawing is scaled to `side`."""
    for _ in range(2):
        svg = _ROOT_SIZE.sub(lambda m: f'{m.group(1)}{float(m.group(2)) * UNIT_PX[m.group(3)]:.3f}"', svg, count=1)
    return svg


@dataclass(frozen=True)
class SvgFiles:
    """One SVG file per fruit, named by its code point (`{cp:x}` lower-case or `{cp:X}` upper-case hex)."""

    template: str

    def sprite(self, root: Path, label: str) -> Image.Image | None:
        return self.glyph(root, CODEPOINTS[label])

    def glyph(self, root: Path, codepoint: int) -> Image.Image | None:
        """Any emoji of the set by its code point (None when the set has no such file)."""
        path = root / self.template.format(cp=codepoint)
        return rasterise_svg(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass(frozen=True)
class Iconify:
    """An Iconify icon set (`icons.json`: SVG bodies by icon name)."""

    names: Mapping[str, str] = field(default_factory=lambda: ICONIFY_NAMES)

    def sprite(self, root: Path, label: str) -> Image.Image | None:
        icons = json.loads((root / "icons.json").read_text(encoding="utf-8"))
        icon = icons["icons"].get(self.names.get(label, ""))
        if icon is None:
            return None
        width, height = icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16))
        body = icon["body"]
        return rasterise_svg(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}">{body}</svg>')


@dataclass(frozen=True)
class FontGlyphs:
    """Glyphs of an emoji font: colour (CBDT/COLR, drawn at `size`, its bitmap strike) or black."""

    path: str
    size: int = 200
    colour: bool = False

    def sprite(self, root: Path, label: str) -> Image.Image | None:
        return self.glyph(root, CODEPOINTS[label])

    def glyph(self, root: Path, codepoint: int) -> Image.Image | None:
        """Any glyph of the font by its code point (None when the font has none)."""
        font = ImageFont.truetype(str(root / self.path), size=self.size)
        char = chr(codepoint)
        drawn = font.getmask(char)
        missing = font.getmask(NOT_A_CHARACTER)  # the font's "no such glyph" box (Symbola has no mango)
        if drawn.getbbox() is None or (drawn.size == missing.size and bytes(drawn) == bytes(missing)):
            return None
        canvas = Image.new("RGBA", (self.size * 2, self.size * 2), (255, 255, 255, 0))
        draw = ImageDraw.Draw(canvas)
        if self.colour:
            draw.text((self.size // 4, self.size // 4), char, font=font, embedded_color=True)
        else:
            draw.text((self.size // 4, self.size // 4), char, font=font, fill=(0, 0, 0, 255))
        return canvas if canvas.getchannel("A").getbbox() else None


@dataclass(frozen=True)
class ImageFiles:
    """One picture file per fruit (PNG/WebP with transparency, or SVG), paths inside the package."""

    files: Mapping[str, str]

    def sprite(self, root: Path, label: str) -> Image.Image | None:
        relative = self.files.get(label)
        if relative is None:
            return None
        path = root / relative
        if path.suffix == ".svg":
            return rasterise_svg(path.read_text(encoding="utf-8"))
        with Image.open(path) as image:
            return image.convert("RGBA")


SpriteSource = SvgFiles | Iconify | FontGlyphs | ImageFiles


@dataclass(frozen=True)
class Style:
    """A named way of drawing (or photographing) the 18 fruits, on one side of the wall."""

    name: str
    side: str
    kind: str  # "drawing" or "photo"
    description: str
    licence: str
    package: Package
    source: SpriteSource

    def sprite(self, cache: Path, label: str) -> Image.Image | None:
        """The fruit's sprite cropped to its visible pixels, or None when the style has no such fruit."""
        found = self.source.sprite(self.package.root(cache), label)
        return None if found is None else cropped(found)


TUX = "usr/share/tuxpaint/stamps/food"
OPENCLIPART = "usr/share/openclipart/svg/food"
_ICONIFY = "@iconify-json/"
STYLES: tuple[Style, ...] = (
    # training: drawn into the bundled sample besides Noto Color Emoji (data/sample/LICENSE.md)
    Style("twemoji", TRAINING, "drawing", "Twemoji: flat vector, no outlines", "CC-BY-4.0 (Twitter, Inc. and "
          "contributors)", Package(NPM, "@discordapp/twemoji", "16.0.1"), SvgFiles("dist/svg/{cp:x}.svg")),
    Style("emojione", TRAINING, "drawing", "EmojiOne 2: flat vector with details", "CC-BY-4.0 (Emoji One)",
          Package(NPM, _ICONIFY + "emojione", "1.2.3"), Iconify()),
    Style("noto-v1", TRAINING, "drawing", "Noto Emoji v1 (Android 5-7): glossy, saturated", "Apache-2.0 (Google)",
          Package(NPM, _ICONIFY + "noto-v1", "1.2.5"), Iconify()),
    # selection: recipe choice only
    Style("openmoji-color", SELECTION, "drawing", "OpenMoji: flat fills, thick black outlines", "CC-BY-SA-4.0",
          Package(NPM, "openmoji", "17.0.0"), SvgFiles("color/svg/{cp:X}.svg")),
    Style("openmoji-black", SELECTION, "drawing", "OpenMoji black: line art only", "CC-BY-SA-4.0",
          Package(NPM, "openmoji", "17.0.0"), SvgFiles("black/svg/{cp:X}.svg")),
    Style("emojione-v1", SELECTION, "drawing", "EmojiOne 1: angular two-tone", "CC-BY-SA-4.0",
          Package(NPM, _ICONIFY + "emojione-v1", "1.2.3"), Iconify()),
    Style("emojione-monotone", SELECTION, "drawing", "EmojiOne monotone: black woodcut look", "CC-BY-4.0",
          Package(NPM, _ICONIFY + "emojione-monotone", "1.2.1"), Iconify()),
    Style("fxemoji", SELECTION, "drawing", "Firefox OS emoji: flat pastel", "Apache-2.0 (as the package states)",
          Package(NPM, _ICONIFY + "fxemoji", "1.2.2"),
          Iconify({**ICONIFY_NAMES, "Apple Green": "greenapple", "Apple Red": "redapple", "Eggplant": "aubergine",
                   "Pepper Jalapeño": "chilipepper"})),
    Style("streamline", SELECTION, "drawing", "Streamline: outlined cartoon (9 fruits)", "CC-BY-4.0",
          Package(NPM, _ICONIFY + "streamline-emojis", "1.2.4"),
          Iconify({**ICONIFY_NAMES, "Strawberry": "strawberry-1"})),
    # report: the reported figures only
    Style("fluent-3d", REPORT, "drawing", "Microsoft Fluent Emoji 3D: soft-shaded, rendered look", "MIT",
          Package(NPM, "@lobehub/fluent-emoji-3d", "1.1.0"),
          ImageFiles({label: f"assets/{cp:x}.webp" for label, cp in CODEPOINTS.items()}
                     | {"Pepper Jalapeño": "assets/1f336-fe0f.webp"})),
    Style("fluent-flat", REPORT, "drawing", "Microsoft Fluent Emoji flat", "MIT",
          Package(NPM, _ICONIFY + "fluent-emoji-flat", "1.2.6"), Iconify()),
    Style("fluent-high-contrast", REPORT, "drawing", "Microsoft Fluent Emoji high contrast: black glyphs", "MIT",
          Package(NPM, _ICONIFY + "fluent-emoji-high-contrast", "1.2.6"), Iconify()),
    Style("noto-mono", REPORT, "drawing", "Noto Emoji (monochrome font): black line drawings", "OFL-1.1",
          Package(NPM, "@fontsource/noto-emoji", "5.3.2"), FontGlyphs("files/noto-emoji-6-400-normal.woff2")),
    Style("symbola", REPORT, "drawing", "Symbola: black engraving look with hatching", "free for any use (G. Douros)",
          Package(DEBIAN, "fonts-symbola", "2.60-1.1"),
          FontGlyphs("usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")),
    Style("openclipart", REPORT, "drawing", "Openclipart: clip-art by several artists", "public domain",
          Package(DEBIAN, "openclipart-svg", "1:0.18+dfsg-19"), ImageFiles({
              "Apple Red": f"{OPENCLIPART}/fruit/another_apple_01.svg",
              "Banana": f"{OPENCLIPART}/fruit/bananas_nicu_buculei_01.svg",
              "Carrot": f"{OPENCLIPART}/vegetables/what_s_up_doc_01.svg",
              "Cherry": f"{OPENCLIPART}/fruit/cherry_jonathan_dietrich_01.svg",
              "Grape": f"{OPENCLIPART}/fruit/grape_01.svg", "Lemon": f"{OPENCLIPART}/fruit/lemon_whole_ganson.svg",
              "Peach": f"{OPENCLIPART}/fruit/peach_simple.svg", "Pear": f"{OPENCLIPART}/fruit/pear_02.svg",
              "Pepper Jalapeño": f"{OPENCLIPART}/vegetables/peperoncino_pepper_fra_.svg",
              "Pineapple": f"{OPENCLIPART}/fruit/pineapple.svg", "Strawberry": f"{OPENCLIPART}/fruit/strawberry_01.svg",
              "Tangerine": f"{OPENCLIPART}/fruit/orange_dave_pena_01.svg"})),
    Style("tuxpaint-cartoon", REPORT, "drawing", "Tux Paint cartoon stamps: outlined, glossy", "GPL-2",
          Package(DEBIAN, "tuxpaint-stamps-default", "2022.06.04-1"), ImageFiles({
              label: f"{TUX}/fruit/cartoon/{file}" for label, file in {
                  "Apple Red": "apple.png", "Banana": "banana.png", "Cherry": "cherries.png", "Grape": "grapes.png",
                  "Lemon": "lemon.png", "Peach": "peach.png", "Pear": "pear.png", "Pineapple": "pineapple.png",
                  "Strawberry": "strawberry.png", "Tangerine": "orange.png"}.items()})),
    Style("tuxpaint-photos", REPORT, "photo", "Tux Paint photo stamps: real fruit, cut out (no peach)", "GPL-2",
          Package(DEBIAN, "tuxpaint-stamps-default", "2022.06.04-1"), ImageFiles({
              label: f"{TUX}/{file}" for label, file in {
                  "Apple Green": "fruit/apple_green.png", "Apple Red": "fruit/apple_red.png",
                  "Avocado": "fruit/avocado.png", "Banana": "fruit/banana.png", "Carrot": "vegetables/carrot.png",
                  "Cherry": "fruit/Cherry_Stella.png", "Eggplant": "vegetables/eggplant.png",
                  "Grape": "fruit/grapes.png", "Kiwi": "fruit/kiwi.png", "Lemon": "fruit/lemon.png",
                  "Mango": "fruit/mango.png", "Pear": "fruit/pear.png", "Pepper Jalapeño": "vegetables/chilepepper.png",
                  "Pineapple": "fruit/pineapple.png", "Strawberry": "fruit/strawberry.png",
                  "Tangerine": "fruit/mandarine.png", "Tomato": "vegetables/tomato.png"}.items()})),
)


def styles(side: str | None = None) -> list[Style]:
    """Every style, or those of one side; ValueError for an unknown side."""
    if side is not None and side not in SIDES:
        raise ValueError(f"unknown side {side!r}; choose one of {', '.join(SIDES)}")
    return [style for style in STYLES if side is None or style.side == side]


def fetch(cache: Path, side: str | None = None) -> None:
    """Every package the chosen styles need, downloaded and unpacked into `cache` once."""
    for package in dict.fromkeys(style.package for style in styles(side)):
        logger.info("fetching %s %s %s", package.registry, package.name, package.version)
        package.fetch(cache)


def render(style: Style, cache: Path, out: Path, per_class: int, seed: int = 0) -> int:
    """`per_class` posed frames of each fruit the style draws into `out/<Class>/<n>_100.jpg`; images written."""
    written = 0
    for label in CLASSES:
        sprite = style.sprite(cache, label)
        if sprite is None:
            continue
        rng = np.random.default_rng(seed_words("style", style.name, label, seed))
        written += len(write_frames(sprite, out / label, per_class, rng))
    return written


def render_side(side: str, cache: Path, out: Path, per_class: int, seed: int = 0) -> dict[str, Path]:
    """Every style of `side` as its own labelled folder `out/<style>`, rendered once (reused when present)."""
    folders = {}
    for style in styles(side):
        folder = out / style.name
        if not (folder / ".complete").is_file():
            count = render(style, cache, folder, per_class, seed)
            (folder / ".complete").write_text(f"{count}\n", encoding="utf-8")
            logger.info("rendered %d images of %s (%s)", count, style.name, side)
        folders[style.name] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fruitpipe.benchmark.styles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("fetch", "render", "list"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the packages are unpacked")
    parser.add_argument("--side", choices=SIDES, help="only the styles of this side (default: all)")
    parser.add_argument("--out", type=Path, help="render: the folder to write OUT/<style>/<Class>/ into")
    parser.add_argument("--per-class", type=int, default=10, help="render: frames per fruit and style")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "list":
            for style in styles(args.side):
                sys.stdout.write(f"{style.side:9s} {style.name:22s} {style.kind:7s} {style.description} "
                                 f"[{style.package.registry} {style.package.name} {style.package.version}; "
                                 f"{style.licence}]\n")
        elif args.action == "fetch":
            fetch(args.cache, args.side)
        else:
            if args.out is None:
                parser.error("render needs --out")
            for side in [args.side] if args.side else list(SIDES[1:]):
                render_side(side, args.cache, args.out, args.per_class)
    except (RuntimeError, PackageMissingError) as exc:
        sys.stderr.write(f"fruitpipe styles: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
