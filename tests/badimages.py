"""Writers of bad and odd image files for decode, featurizer and pipeline tests.

`write_bad_images` files are designed against BAD_MAX_BYTES / BAD_MAX_PIXELS: run the
featurizer with those limits and every file must be rejected at the stage it maps to.
`write_odd_images` files are valid under those limits (and the defaults) and must featurize.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BAD_MAX_BYTES = 1_000_000
BAD_MAX_PIXELS = 4_000_000
EXIF_ORIENTATION = 0x0112


def fruit_pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An asymmetric RGB uint8 picture: gradients, a red blob left of centre, a blue bar on the right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    pixels[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    pixels[..., 2] = 128
    blob = (x - width * 0.3) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.2) ** 2
    pixels[blob] = (220, 30, 30)
    pixels[:, int(width * 0.85):] = (20, 40, 200)
    pixels[: max(1, height // 10), : max(1, width // 10)] = rng.integers(0, 256, (3,), dtype=np.uint8)
    return pixels


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg_bytes(width: int = 100, height: int = 100, seed: int = 0) -> bytes:
    return encode(Image.fromarray(fruit_pixels(width, height, seed)), "JPEG", quality=90)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A well-formed PNG whose IHDR declares width x height grey pixels but carries one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def corrupt_idat_png() -> bytes:
    """A real PNG with its compressed pixel stream scrambled (header intact, body undecodable)."""
    data = bytearray(encode(Image.fromarray(fruit_pixels(64, 64, seed=1)), "PNG"))
    start = data.find(b"IDAT") + 4 + 16
    for i in range(start, start + 200):
        data[i] ^= 0x5A
    return bytes(data)


def bad_image_bytes(max_bytes: int = BAD_MAX_BYTES) -> dict[str, tuple[bytes, str]]:
    """File name -> (content, stage expected to reject it) under BAD_MAX_PIXELS and `max_bytes`."""
    real = jpeg_bytes()
    return {
        "empty.jpg": (b"", "decode"),
        "truncated.jpg": (real[: len(real) // 2], "decode"),
        "text.jpg": (b"this is not a picture\nbut a text file named .jpg\n", "decode"),
        "corrupt_idat.png": (corrupt_idat_png(), "decode"),
        "bomb_header.png": (header_bomb_png(), "decode"),
        # decodable and small in bytes, but more pixels than BAD_MAX_PIXELS (2500x2000 = 5M)
        "too_many_pixels.png": (encode(Image.new("RGB", (2500, 2000), (250, 250, 250)), "PNG"), "decode"),
        # a valid JPEG padded past max_bytes (decoders ignore trailing bytes): refused before reading
        "oversized.jpg": (real + b"\0" * max_bytes, "read"),
    }


def write_bad_images(folder: Path, max_bytes: int = BAD_MAX_BYTES) -> dict[str, str]:
    """Write every bad case into `folder`; returns file name -> expected error stage."""
    folder.mkdir(parents=True, exist_ok=True)
    stages = {}
    for name, (content, stage) in bad_image_bytes(max_bytes).items():
        (folder / name).write_bytes(content)
        stages[name] = stage
    return stages


def odd_images() -> dict[str, tuple[Image.Image, str, dict[str, object]]]:
    """File name -> (image, save format, save params). Modes are what Pillow reports on reopening."""
    rgb = Image.fromarray(fruit_pixels(120, 90, seed=2))
    rgba = rgb.convert("RGBA")
    alpha = np.full((90, 120), 255, dtype=np.uint8)
    alpha[:, :40] = 0
    alpha[:, 40:60] = 128
    rgba.putalpha(Image.fromarray(alpha))
    palette = rgb.quantize(16)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    gray16 = Image.fromarray((np.arange(90 * 120).reshape(90, 120) * 6).astype(np.uint16))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return {
        "gray_L.jpg": (rgb.convert("L"), "JPEG", {}),
        "palette_P.png": (palette, "PNG", {}),
        "palette_P_transparent.png": (transparent_palette, "PNG", {"transparency": 0}),
        "rgba_transparent.png": (rgba, "PNG", {}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {"quality": 95}),
        "gray16.png": (gray16, "PNG", {}),
        "exif_orientation6.jpg": (rgb, "JPEG", {"exif": exif.tobytes()}),
        "large_nonsquare.jpg": (Image.fromarray(fruit_pixels(1600, 900, seed=3)), "JPEG", {"quality": 85}),
        "photo.png": (rgb, "PNG", {}),
    }


ODD_MODES = {
    "gray_L.jpg": "L",
    "palette_P.png": "P",
    "palette_P_transparent.png": "P",
    "rgba_transparent.png": "RGBA",
    "cmyk.jpg": "CMYK",
    "gray16.png": "I;16",
    "exif_orientation6.jpg": "RGB",
    "large_nonsquare.jpg": "RGB",
    "photo.png": "RGB",
}


def write_odd_images(folder: Path) -> dict[str, str]:
    """Write good images in odd modes into `folder`; returns file name -> mode Pillow opens it in."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (image, fmt, params) in odd_images().items():
        (folder / name).write_bytes(encode(image, fmt, **params))
    return dict(ODD_MODES)
