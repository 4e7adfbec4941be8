"""A fruit drawing or cut-out (RGBA sprite) -> frames in the Fruits 360 look: 100x100 RGB on white.

The bundled sample (`scripts/render_sample.py`) and the style yardsticks of the recognition benchmark
(`benchmark/styles.py`) both pass their sprites through here, so an image in another drawing style (or a
cut-out photo) differs from the training images in its style only, not in how it was posed and lit:
each frame turns the sprite on a turntable (in-plane angle plus horizontal foreshortening), scales it to
0.6-0.95 of the frame, offsets it a little, drifts the light (gamma, contrast, colour temperature,
brightness) and, for most frames, adds a soft contact shadow. Pure function of the sprite and the
generator: the same seed gives the same pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SIZE = 100  # output side, as in Fruits 360
SUPERSAMPLE = 3  # compose large, then downscale once, for clean edges
JPEG_QUALITY = 88


def cropped(sprite: Image.Image) -> Image.Image:
    """The RGBA sprite cropped to its visible pixels; ValueError when nothing is visible."""
    rgba = sprite.convert("RGBA")
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError("the sprite has no visible pixels")
    return rgba.crop(bbox)


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
    relit: np.ndarray = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return relit


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


def frames(sprite: Image.Image, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` frames of one fruit: one turntable revolution plus jittered pose and light."""
    start, tilt = rng.uniform(0, 360), rng.uniform(-25, 25)
    out = []
    for n in range(count):
        turn = start + 360.0 * n / count + rng.uniform(-4, 4)
        angle = tilt + 20.0 * math.sin(math.radians(turn)) + rng.uniform(-180, 180) * (rng.random() < 0.35)
        out.append(compose(pose(sprite, angle, turn, scale=rng.uniform(0.6, 0.95)), rng))
    return out


def write_frames(sprite: Image.Image, out_dir: Path, count: int, rng: np.random.Generator,
                 first: int = 0) -> list[Path]:
    """`frames` saved as `out_dir/<n>_100.jpg` (the Fruits 360 file names), n from `first`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, frame in enumerate(frames(sprite, count, rng), start=first):
        target = out_dir / f"{n}_100.jpg"
        frame.save(target, "JPEG", quality=JPEG_QUALITY)
        written.append(target)
    return written
