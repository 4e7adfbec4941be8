"""Named, deterministic image shifts: the training-side families (augmentation, the shifted validation
set) and the evaluation-side families (the shift suite `fruitpipe sample-data --shift` writes).

Every family is a pure function (uint8 HxWx3 RGB array, numpy Generator, strength) -> a new uint8
array of the same shape; the same generator state gives the same bytes. Sizes inside a family scale
with the image side (a 100 px Fruits 360 photo and its 224 px model input get the same look).

Why two disjoint sides, and why these: the suite is a yardstick only if no training choice has seen
its kind of change. A kind of change therefore lives on one side. Three kinds are a normal property of
every photo and appear on both sides only in separated ranges, changing different things:
- exposure: training's `colour_jitter` moves brightness by at most 20% and never the hue; the suite's
  `low_light` keeps 10-25% of the light (and `hue_rotation` turns the hue by 60-300 degrees).
- framing: training's `geometry` zooms 0.85-1.15 (the fruit fills the frame as in Fruits 360); the
  suite's `extreme_scale` shrinks the fruit to 25-40% of the side or zooms 2.2-3x into it.
- background: training's `plain_background` puts the fruit on one flat colour or a smooth gradient;
  the suite's `textured_background` on procedural texture and clutter (edges, patterns, other shapes).
Blur and sensor noise are training-side only (the suite has no blur or noise family), and the suite's
grayscale, hue rotation, heavy JPEG and posterise have no training-side kin.
Three training-side families are opt-in (`run --augment-families`, never in the default mix, so the
default views and the recognition benchmark's shifted holdout stay what they were) and were added after
the suite's line art, small fruit and occlusion were seen to be the weak families; each stays out of its
suite kin's range, and whether a recipe uses them is decided on selection data only (docs/recognition.md):
- `sketch` is a pencil sketch (a colour dodge: soft strokes *and shading*, sometimes a tint of colour);
  the suite's `outline` is bare edges, no shading, no colour.
- `scale_jitter` shrinks the fruit to 50-80% of the side or crops 1.25-2x into it (clamped there at any
  strength); the suite's `extreme_scale` is 25-40% or 2.2-3x.
- `cutout` erases one rectangle of at most a quarter of the image with noise or one grey (random
  erasing); the suite's `occlusion` covers 20-40% of the fruit with 1-3 solid coloured patches or bars.
Background families find the fruit as `sampledata` does: Fruits 360 photos are a fruit on white.
"""
from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from fruitpipe.image.sampledata import INK

TRAINING, EVALUATION = "training", "evaluation"
WHITE = 255
MAX_STRENGTH = 2.0  # a view's strength factor (`run --augment-strength`)
Shift = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]


@dataclass(frozen=True)
class Family:
    """One named shift: its side, what it does (one line), the function and its default strength."""

    name: str
    side: str  # TRAINING or EVALUATION
    description: str
    function: Shift
    strength: float = 1.0
    default_mix: bool = True  # a training-side family views draw from when `--augment-families` names none

    def apply(self, pixels: np.ndarray, rng: np.random.Generator, strength: float | None = None) -> np.ndarray:
        """The shifted copy of `pixels` (uint8 HxWx3); ValueError for anything else."""
        _check_pixels(pixels)
        out = self.function(pixels, rng, self.strength if strength is None else strength)
        return np.ascontiguousarray(out, dtype=np.uint8)


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"a shift takes a uint8 HxWx3 RGB array, got {pixels.dtype} {pixels.shape}")


def seed_words(*parts: str | int) -> list[int]:
    """A generator seed from a stable hash of the parts (never Python's salted hash())."""
    digest = hashlib.sha256("\0".join(str(part) for part in parts).encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def foreground_mask(pixels: np.ndarray) -> np.ndarray:
    """Where the fruit is: darker than INK in some channel, closed so highlights inside stay fruit."""
    size = _odd(pixels.shape[0] / 25)
    return _erode(_dilate(_darkest(pixels) < INK, size), size)


def _darkest(pixels: np.ndarray) -> np.ndarray:
    darkest: np.ndarray = np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])
    return darkest


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation by a size x size square, as two 1-D passes of shifted ORs (rank filters cost 20x)."""
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(size // 2, size // 2) if a == axis else (0, 0) for a in (0, 1)])
        length = out.shape[axis]
        out = np.zeros_like(out)
        for start in range(size):
            out |= padded[start:start + length] if axis == 0 else padded[:, start:start + length]
    return out


def _erode(mask: np.ndarray, size: int) -> np.ndarray:
    return ~_dilate(~mask, size)


def _odd(value: float) -> int:
    return max(3, int(value) // 2 * 2 + 1)


def _scale(pixels: np.ndarray) -> float:
    """Image side relative to a 100 px Fruits 360 photo."""
    return float(pixels.shape[0]) / 100.0


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels, "RGB")


def _composite(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The fruit of `pixels` over `background`. Opacity follows the distance from white (the
    anti-aliased, near-white rim blends in instead of leaving a white halo); inside the closed mask,
    minus a thin rim, the fruit is opaque (its highlights too)."""
    inner_alpha = _erode(foreground_mask(pixels), _odd(2 * _scale(pixels))).astype(np.float32)
    ink_alpha = np.clip((WHITE - 5 - _darkest(pixels).astype(np.float32)) / 60.0, 0.0, 1.0)
    alpha = np.maximum(inner_alpha, ink_alpha)[..., None]
    blended: np.ndarray = np.rint(background + (pixels - background) * alpha)
    return blended.astype(np.uint8)


def _signed(rng: np.random.Generator, low: float, high: float) -> float:
    """A magnitude in [low, high] with a random sign: a jitter that is never (almost) nothing."""
    return float(rng.uniform(low, high) * rng.choice((-1.0, 1.0)))


# ----- training side ---------------------------------------------------------------------------------

def colour_jitter(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    image = ImageEnhance.Brightness(_image(pixels)).enhance(1 + strength * _signed(rng, 0.05, 0.2))
    image = ImageEnhance.Contrast(image).enhance(1 + strength * _signed(rng, 0.05, 0.25))
    return np.asarray(ImageEnhance.Color(image).enhance(1 + strength * _signed(rng, 0.1, 0.3)))


def gaussian_blur(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    radius = strength * float(rng.uniform(0.5, 1.5)) * _scale(pixels)
    return np.asarray(_image(pixels).filter(ImageFilter.GaussianBlur(radius)))


def gaussian_noise(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    sigma = strength * float(rng.uniform(2.0, 6.0))
    noisy: np.ndarray = np.clip(np.rint(pixels + sigma * rng.standard_normal(size=pixels.shape, dtype=np.float32)),
                                0, 255)
    return noisy.astype(np.uint8)


def geometry(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Rotation (any angle), mirror and a mild zoom about the centre, white filling the corners."""
    angle = math.radians(strength * float(rng.uniform(-180.0, 180.0)))
    zoom = 1 + strength * float(rng.uniform(-0.15, 0.15))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    height, width = pixels.shape[:2]
    cx, cy = width / 2, height / 2
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    a, b, d, e = flip * cos, flip * sin, -sin, cos  # inverse map: mirror after rotate, output -> input
    matrix = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
    moved = _image(pixels).transform((width, height), Image.Transform.AFFINE, matrix,
                                     resample=Image.Resampling.BILINEAR, fillcolor=(WHITE,) * 3)
    return np.asarray(moved)


def plain_background(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """One flat colour or a smooth two-colour gradient behind the fruit."""
    height, width = pixels.shape[:2]
    first, second = rng.uniform(0, 255, size=(2, 3))
    if rng.random() < 0.5:
        second = first
    angle = float(rng.uniform(0, 2 * math.pi))
    side = max(height, width)
    ys, xs = np.ogrid[0:height, 0:width]
    ramp = np.clip((xs / side - 0.5) * math.cos(angle) + (ys / side - 0.5) * math.sin(angle) + 0.5, 0, 1)
    colour = first.astype(np.float32) + (second - first).astype(np.float32) * ramp.astype(np.float32)[..., None]
    background = np.clip(WHITE * (1 - strength) + colour * strength, 0, WHITE)  # strength > 1: past white, clipped
    return _composite(pixels, background)



def sketch(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A pencil sketch: the luminance colour-dodged by its blurred negative (strokes where it changes,
    soft shading), darkened by a random pencil pressure, with a faint tint of the colour half the time."""
    gray = np.asarray(_image(pixels).convert("L"), dtype=np.float32)
    radius = strength * float(rng.uniform(1.0, 3.0)) * _scale(pixels)
    negative = Image.fromarray((WHITE - gray).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(radius))
    dodge = np.clip(gray * WHITE / np.maximum(WHITE - np.asarray(negative, dtype=np.float32), 1.0), 0, WHITE)
    pencil = WHITE * (dodge / WHITE) ** float(rng.uniform(4.0, 10.0))
    tint = float(rng.uniform(0.15, 0.4)) if rng.random() < 0.5 else 0.0
    drawn = pencil[..., None] * (1 - tint) + pencil[..., None] * pixels.astype(np.float32) / WHITE * tint
    return np.clip(np.rint(drawn), 0, WHITE).astype(np.uint8)


SHRINK_RANGE, CROP_RANGE = (0.5, 0.8), (1.25, 2.0)  # scale_jitter at any strength (extreme_scale: 0.25-0.4, 2.2-3)


def scale_jitter(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """The fruit at 50-80% of the side somewhere on white, or a 1.25-2x crop into it; the strength widens the
    draw towards the bounds, never past them (beyond them is the suite's `extreme_scale`)."""
    height, width = pixels.shape[:2]
    image = _image(pixels)
    if rng.random() < 0.5:
        low, high = SHRINK_RANGE
        scale = max(low, high - strength * float(rng.uniform(0.0, high - low)))
        small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (width, height), (WHITE,) * 3)
        corner = (int(rng.integers(0, width - small.width + 1)), int(rng.integers(0, height - small.height + 1)))
        canvas.paste(small, corner)
        return np.asarray(canvas)
    low, high = CROP_RANGE
    zoom = min(high, low + strength * float(rng.uniform(0.0, high - low)))
    crop_w, crop_h = width / zoom, height / zoom
    x0, y0 = float(rng.uniform(0, width - crop_w)), float(rng.uniform(0, height - crop_h))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h)))


MAX_ERASED = 0.25  # cutout's largest share of the image at any strength (occlusion: 20-40% of the fruit's box)


def cutout(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random erasing: one rectangle of 5-15% of the image (at most a quarter at any strength), any aspect
    from 1:3 to 3:1, anywhere, filled with uniform noise or one grey."""
    height, width = pixels.shape[:2]
    area = min(MAX_ERASED, strength * float(rng.uniform(0.05, 0.15))) * height * width
    aspect = math.exp(float(rng.uniform(math.log(1 / 3), math.log(3))))
    patch_h = int(min(height, max(1, round(math.sqrt(area * aspect)))))
    patch_w = int(min(width, max(1, round(area / patch_h))))
    y0, x0 = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    out = pixels.copy()
    if rng.random() < 0.5:
        out[y0:y0 + patch_h, x0:x0 + patch_w] = rng.integers(0, 256, size=(patch_h, patch_w, 3), dtype=np.uint8)
    else:
        out[y0:y0 + patch_h, x0:x0 + patch_w] = int(rng.integers(0, 256))
    return out


# ----- evaluation side -------------------------------------------------------------------------------

def grayscale(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    gray = pixels @ np.array([0.299, 0.587, 0.114])
    mixed: np.ndarray = np.clip(np.rint(pixels * (1 - strength) + gray[..., None] * strength), 0, 255)
    return mixed.astype(np.uint8)


def hue_rotation(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Hue turned by 60-300 degrees: a red apple comes out green or blue; white stays white."""
    hsv = np.asarray(_image(pixels).convert("HSV")).copy()
    turn = strength * float(rng.uniform(60.0, 300.0)) / 360.0
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(turn * 256)) % 256).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def low_light(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Under-exposed: 10-25% of the light, with the loss of levels that brings (no added noise)."""
    kept = 1 - strength * float(rng.uniform(0.75, 0.9))
    return np.rint(pixels * kept).astype(np.uint8)


def heavy_jpeg(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    quality = int(np.clip(round(15 - strength * float(rng.uniform(0, 10))), 1, 15))
    buffer = io.BytesIO()
    _image(pixels).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def posterise(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Cartoon: flattened regions (median filter) in 4 or 8 levels per channel."""
    smooth = _image(pixels).filter(ImageFilter.MedianFilter(_odd(strength * 5 * _scale(pixels))))
    bits = 2 if rng.random() < 0.5 or strength >= 1.5 else 3
    return np.asarray(ImageOps.posterize(smooth, bits))


def outline(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A line drawing: the fruit's edges in dark ink on white, no colour, no shading."""
    gray = _image(pixels).convert("L").filter(ImageFilter.GaussianBlur(0.5 * _scale(pixels)))
    padded = Image.fromarray(np.pad(np.asarray(gray), 1, mode="edge"), "L")  # no frame drawn at the border
    edges = np.asarray(padded.filter(ImageFilter.FIND_EDGES), dtype=np.float32)[1:-1, 1:-1]
    gain = strength * float(rng.uniform(4.0, 8.0))
    ink = np.clip(255 - edges * gain, 0, 255).astype(np.uint8)
    return np.repeat(ink[..., None], 3, axis=2)


def textured_background(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """The fruit on a procedural texture (clouds, stripes, checks) or among clutter (random shapes)."""
    height, width = pixels.shape[:2]
    makers = (_clouds, _stripes, _checks, _clutter)
    texture = makers[int(rng.integers(len(makers)))](height, width, rng)
    background = WHITE * (1 - strength) + texture * strength
    return _composite(pixels, background)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = rng.uniform(0, 255, size=(2, 3))
    return first, second


def _clouds(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise: a coarse random grid upsampled smoothly, in two octaves."""
    field = np.zeros((height, width), dtype=np.float32)
    for cells, weight in ((4, 0.65), (12, 0.35)):
        coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
        field += weight * np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    first, second = _two_colours(rng)
    mix = field[..., None]
    return np.asarray(first * (1 - mix) + second * mix, dtype=np.float32)


def _stripes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.uniform(0, math.pi))
    period = float(rng.uniform(0.06, 0.2)) * max(height, width)
    ys, xs = np.mgrid[0:height, 0:width]
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
    mix = (np.sin(2 * math.pi * phase) > 0)[..., None]
    first, second = _two_colours(rng)
    return np.where(mix, first, second).astype(np.float32)


def _checks(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    cell = max(2, int(float(rng.uniform(0.06, 0.15)) * max(height, width)))
    ys, xs = np.mgrid[0:height, 0:width]
    mix = (((ys // cell) + (xs // cell)) % 2 == 0)[..., None]
    first, second = _two_colours(rng)
    return np.where(mix, first, second).astype(np.float32)


def _clutter(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Dozens of overlapping ellipses and rectangles in random colours: a busy table top."""
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(canvas)
    side = max(height, width)
    for _ in range(int(rng.integers(25, 45))):
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * side
        w, h = rng.uniform(0.05, 0.3, 2) * side
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return np.asarray(canvas, dtype=np.float32)


def occlusion(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """One to three opaque patches or bars over the fruit, hiding 20-40% of its bounding box."""
    ys, xs = np.nonzero(foreground_mask(pixels))
    height, width = pixels.shape[:2]
    top, bottom, left, right = ((ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if xs.size
                                else (0, height, 0, width))
    box_h, box_w = bottom - top, right - left
    count = int(rng.integers(1, 4))
    share = strength * float(rng.uniform(0.2, 0.4)) / count  # of the box, per patch
    canvas = _image(pixels).copy()
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        aspect = float(rng.uniform(0.25, 4.0))  # bars as well as squares
        ph = min(box_h, max(1.0, math.sqrt(share * box_h * box_w * aspect)))
        pw = min(box_w, max(1.0, share * box_h * box_w / ph))
        y0 = top + float(rng.uniform(0, max(0.0, box_h - ph)))
        x0 = left + float(rng.uniform(0, max(0.0, box_w - pw)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle((x0, y0, x0 + pw, y0 + ph), fill=colour)
    return np.asarray(canvas)


def extreme_scale(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Either the fruit tiny (25-40% of the side) somewhere on a white canvas, or a 2.2-3x zoom into it."""
    height, width = pixels.shape[:2]
    image = _image(pixels)
    if rng.random() < 0.5:
        scale = 1 - strength * (1 - float(rng.uniform(0.25, 0.4)))
        small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (width, height), (WHITE,) * 3)
        corner = (int(rng.integers(0, width - small.width + 1)), int(rng.integers(0, height - small.height + 1)))
        canvas.paste(small, corner)
        return np.asarray(canvas)
    zoom = 1 + strength * (float(rng.uniform(2.2, 3.0)) - 1)
    crop_w, crop_h = width / zoom, height / zoom
    x0 = float(rng.uniform(0, width - crop_w))
    y0 = float(rng.uniform(0, height - crop_h))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h)))


_ALL = (
    # training side in the order a view applies them: the background still white when it is replaced
    Family("geometry", TRAINING, "any rotation, mirror, zoom 0.85-1.15 (white fill)", geometry),
    Family("plain_background", TRAINING, "flat colour or smooth gradient behind the fruit", plain_background),
    Family("colour_jitter", TRAINING, "brightness +-20%, contrast +-25%, saturation +-30% (hue untouched)",
           colour_jitter),
    Family("gaussian_blur", TRAINING, "isotropic blur, sigma 0.5-1.5 px per 100 px", gaussian_blur),
    Family("gaussian_noise", TRAINING, "additive sensor noise, sigma 2-6 grey levels", gaussian_noise),
    # opt-in (`--augment-families`), applied last: the view's drawing, framing and erasing of what came before
    Family("sketch", TRAINING, "pencil sketch: strokes and shading in grey, sometimes a tint of colour (opt-in)",
           sketch, default_mix=False),
    Family("scale_jitter", TRAINING, "fruit at 50-80% of the side on white, or a 1.25-2x crop (opt-in)",
           scale_jitter, default_mix=False),
    Family("cutout", TRAINING, "random erasing: one noise or grey rectangle, <= 25% of the image (opt-in)",
           cutout, default_mix=False),
    Family("grayscale", EVALUATION, "no colour at all (luminance only)", grayscale),
    Family("hue_rotation", EVALUATION, "hue turned by 60-300 degrees (a strong colour cast)", hue_rotation),
    Family("low_light", EVALUATION, "under-exposed: 10-25% of the light", low_light),
    Family("heavy_jpeg", EVALUATION, "JPEG quality 5-15: blocks and ringing", heavy_jpeg),
    Family("posterise", EVALUATION, "cartoon: median-flattened, 4 or 8 levels per channel", posterise),
    Family("outline", EVALUATION, "line drawing: dark edges on white, no colour", outline),
    Family("textured_background", EVALUATION, "procedural texture or clutter behind the fruit",
           textured_background),
    Family("occlusion", EVALUATION, "1-3 opaque patches or bars hiding 20-40% of the fruit", occlusion),
    Family("extreme_scale", EVALUATION, "fruit at 25-40% of the side on white, or a 2.2-3x zoom into it",
           extreme_scale),
)
FAMILIES: dict[str, Family] = {family.name: family for family in _ALL}
TRAINING_SIDE: tuple[str, ...] = tuple(f.name for f in _ALL if f.side == TRAINING)
EVALUATION_SIDE: tuple[str, ...] = tuple(f.name for f in _ALL if f.side == EVALUATION)
DEFAULT_VIEWS: tuple[str, ...] = tuple(f.name for f in _ALL if f.side == TRAINING and f.default_mix)


def family(name: str) -> Family:
    """The family called `name`; ValueError naming every valid one otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown shift {name!r}; choose one of {', '.join(FAMILIES)}") from None


def view_families(names: Sequence[str] = ()) -> tuple[str, ...]:
    """The families augmented views draw from, in the table's order (the order views apply them): the
    default mix (`DEFAULT_VIEWS`) when `names` is empty. ValueError for an unknown name, and for an
    evaluation-side one: a view made with it would let the model see the suite it is scored on."""
    if not names:
        return DEFAULT_VIEWS
    chosen = {family(name).name for name in names}
    held_out = sorted(name for name in chosen if FAMILIES[name].side != TRAINING)
    if held_out:
        raise ValueError(f"augmented views use training-side shifts only ({', '.join(TRAINING_SIDE)}); "
                         f"{', '.join(held_out)} is held out for evaluation")
    return tuple(name for name in TRAINING_SIDE if name in chosen)


def augmented_view(pixels: np.ndarray, key: str, view: int, families: Sequence[str] = DEFAULT_VIEWS,
                   strength: float = 1.0) -> np.ndarray:
    """View `view` of an image known as `key` (its path): 0 is the image itself (the same array);
    view v > 0 applies each of `families` with probability 1/2 (at least one), in the given order, each at
    `strength` times its own strength, from a generator seeded by a hash of (key, view): the same view on
    every machine and run.

    Only training-side families are accepted: an evaluation-side family in a view (augmentation or
    test-time augmentation) would let the model see the suite it is scored on."""
    if view < 0:
        raise ValueError(f"a view index is >= 0, got {view}")
    if not 0 < strength <= MAX_STRENGTH:
        raise ValueError(f"a view's strength factor is in (0, {MAX_STRENGTH:g}], got {strength}")
    chosen = [family(name) for name in families]
    held_out = [shift.name for shift in chosen if shift.side != TRAINING]
    if held_out:
        raise ValueError(f"augmented views use training-side shifts only; {', '.join(held_out)} "
                         "is held out for evaluation")
    if view == 0:
        return pixels
    if not chosen:
        raise ValueError("augmented views need at least one shift family")
    rng = np.random.default_rng(seed_words("view", key, view))
    picked = rng.random(len(chosen)) < 0.5
    if not picked.any():
        picked[int(rng.integers(len(chosen)))] = True
    out = pixels
    for shift, used in zip(chosen, picked, strict=True):
        if used:
            out = shift.apply(out, rng, shift.strength * strength)
    return out
