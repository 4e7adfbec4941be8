"""Bytes -> RGB pixels, with every way an input can be bad turned into a DecodeError reason.

Pure functions (Pillow + numpy); the same code serves the Spark path and single-image callers.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fruitpipe.config import DecodeLimits

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
WHITE = (255, 255, 255)


class DecodeError(ValueError):
    """An input that cannot become an image; the message is the reason recorded in errors/."""


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode fully, refusing empty, oversized, unrecognised, truncated and bomb-sized inputs."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise DecodeError(f"file too large: {len(data)} bytes > limit {limits.max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise DecodeError("not an image (format not recognised)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError(f"decompression bomb guard: {exc}") from None
        except Exception as exc:  # Pillow raises many types on corrupt headers
            raise DecodeError(f"unreadable image header: {exc}") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise DecodeError(
                f"decompression bomb guard: {width}x{height} = {width * height} pixels > limit {limits.max_pixels}"
            )
        try:
            image.load()
        except Exception as exc:
            raise DecodeError(f"truncated or corrupt image data: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, any mode to RGB; transparency is composited on white,
    the background of the photos this pipeline is made for."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_to_8_bit(image), mode="L")
    return image.convert("RGB") if image.mode != "RGB" else image


def _to_8_bit(image: Image.Image) -> np.ndarray:
    """16/32-bit integer images are read as 16-bit (0..65535 -> 0..255); float images are clipped."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode != "F":
        pixels = np.clip(pixels, 0, 65535) / 257.0
    return np.clip(pixels, 0, 255).round().astype(np.uint8)


def decode_rgb(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Bytes -> upright RGB image, or DecodeError with the reason."""
    image = open_image(data, limits)
    try:
        return to_rgb(image)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot convert {image.mode} image to RGB: {exc}") from None


def resize_square(image: Image.Image, size: int, resize: str) -> np.ndarray:
    """RGB image -> size x size x 3 uint8, with the model's declared filter."""
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE[resize])
    return np.asarray(image, dtype=np.uint8)


def decode_for_model(data: bytes, limits: DecodeLimits, size: int, resize: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Photo bytes -> the model's square uint8 input and the photo's upright (width, height).

    The one decode path of the pipeline's executors, the bundle (predict/serve) and the benchmark."""
    image = decode_rgb(data, limits)
    return resize_square(image, size, resize), image.size
