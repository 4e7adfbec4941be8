"""Unit tests of fruitpipe.image.decode: rejection reasons, mode conversion, orientation, resize."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badimages import (
    BAD_MAX_PIXELS,
    EXIF_ORIENTATION,
    bad_image_bytes,
    encode,
    fruit_pixels,
    header_bomb_png,
    jpeg_bytes,
    write_odd_images,
)
from fruitpipe.config import DecodeLimits
from fruitpipe.image.decode import DecodeError, decode_rgb, open_image, resize_square

SMALL_MAX_BYTES = 50_000
LIMITS = DecodeLimits(max_bytes=SMALL_MAX_BYTES, max_pixels=BAD_MAX_PIXELS)
BAD = bad_image_bytes(SMALL_MAX_BYTES)

# Words the reason must contain (case-insensitive), so errors/ tells the user what was wrong.
REASON_WORDS = {
    "empty.jpg": ("empty", "0 bytes"),
    "truncated.jpg": ("truncated",),
    "text.jpg": ("not an image",),
    "corrupt_idat.png": ("corrupt",),
    "bomb_header.png": ("decompression bomb", "900000000"),
    "too_many_pixels.png": ("decompression bomb", "2500x2000", str(BAD_MAX_PIXELS)),
    "oversized.jpg": ("too large", str(SMALL_MAX_BYTES)),
}


def test_every_bad_case_has_expected_words() -> None:
    assert set(REASON_WORDS) == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_decode_error_with_reason(name: str) -> None:
    content, _ = BAD[name]
    with pytest.raises(DecodeError) as caught:
        decode_rgb(content, LIMITS)
    reason = str(caught.value).lower()
    for word in REASON_WORDS[name]:
        assert word.lower() in reason, (name, reason)


def test_decode_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        decode_rgb(b"", LIMITS)


def test_limits_are_what_rejects_the_size_and_pixel_cases() -> None:
    """Oversized and too-many-pixels inputs are valid images: relaxing the limit decodes them."""
    relaxed = DecodeLimits(max_bytes=10 * SMALL_MAX_BYTES + 200_000, max_pixels=10 * BAD_MAX_PIXELS)
    assert decode_rgb(BAD["oversized.jpg"][0], relaxed).size == (100, 100)
    assert decode_rgb(BAD["too_many_pixels.png"][0], relaxed).size == (2500, 2000)


def test_max_pixels_boundary() -> None:
    data = encode(Image.new("RGB", (50, 40)), "PNG")
    assert open_image(data, DecodeLimits(max_pixels=2000)).size == (50, 40)
    with pytest.raises(DecodeError, match="2000 pixels > limit 1999"):
        open_image(data, DecodeLimits(max_pixels=1999))


def test_max_bytes_boundary() -> None:
    data = jpeg_bytes()
    assert open_image(data, DecodeLimits(max_bytes=len(data))).size == (100, 100)
    with pytest.raises(DecodeError, match="too large"):
        open_image(data, DecodeLimits(max_bytes=len(data) - 1))


def test_header_bomb_refused_before_pixels_are_allocated() -> None:
    """The default limits must stop a 30000x30000 header (Pillow's own guard or ours)."""
    with pytest.raises(DecodeError, match="decompression bomb"):
        open_image(header_bomb_png(), DecodeLimits())


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("odd")
    return folder, write_odd_images(folder)


def test_odd_images_have_the_modes_they_claim(odd_folder: tuple[Path, dict[str, str]]) -> None:
    folder, modes = odd_folder
    for name, mode in modes.items():
        with Image.open(folder / name) as image:
            assert image.mode == mode, name


def test_odd_modes_decode_to_rgb_uint8(odd_folder: tuple[Path, dict[str, str]]) -> None:
    folder, modes = odd_folder
    for name in modes:
        image = decode_rgb((folder / name).read_bytes(), DecodeLimits())
        pixels = np.asarray(image)
        assert image.mode == "RGB", name
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, name
        assert pixels.std() > 1, f"{name} decoded to a flat picture"


def test_grayscale_becomes_equal_channels() -> None:
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    pixels = np.asarray(decode_rgb(encode(Image.fromarray(gray), "PNG"), DecodeLimits()))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)


def test_cmyk_jpeg_keeps_colours() -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:] = (30, 60, 200)
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    decoded = np.asarray(decode_rgb(data, DecodeLimits())).astype(int)
    assert np.abs(decoded[4:-4, 4:12] - (200, 30, 30)).max() <= 12
    assert np.abs(decoded[4:-4, 20:-4] - (30, 60, 200)).max() <= 12


def test_16_bit_gradient_maps_to_8_bit() -> None:
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    decoded = np.asarray(decode_rgb(encode(Image.fromarray(values), "PNG"), DecodeLimits()))
    expected = np.round(values / 257.0)
    assert np.abs(decoded[..., 0].astype(int) - expected).max() <= 1


SIXTEEN_BIT_CASES = {
    "uniform_white": np.full((16, 16), 65535, dtype=np.uint16),
    "dark_gradient": np.linspace(0, 1000, 256).round().astype(np.uint16).reshape(16, 16),
}


@pytest.mark.parametrize("case", sorted(SIXTEEN_BIT_CASES))
def test_16_bit_image_keeps_its_brightness(case: str) -> None:
    values = SIXTEEN_BIT_CASES[case]
    decoded = np.asarray(decode_rgb(encode(Image.fromarray(values), "PNG"), DecodeLimits()))
    assert np.abs(decoded[..., 0].astype(int) - np.round(values / 257.0)).max() <= 1


# EXIF orientation -> the numpy operation that makes the stored pixels upright (EXIF 2.3, tag 0x0112).
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    data = encode(Image.fromarray(fruit_pixels(60, 40)), "JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as stored:  # the same JPEG decoded without any orientation
        raw = np.asarray(stored.convert("RGB"))
    decoded = np.asarray(decode_rgb(data, DecodeLimits()))
    np.testing.assert_array_equal(decoded, ORIENTATIONS[orientation](raw))


def test_transparency_composited_on_white() -> None:
    rgba = np.zeros((10, 30, 4), dtype=np.uint8)
    rgba[:, :10] = (0, 0, 0, 0)          # fully transparent black -> white
    rgba[:, 10:20] = (200, 0, 100, 128)  # half transparent
    rgba[:, 20:] = (10, 20, 30, 255)     # opaque
    decoded = np.asarray(decode_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG"), DecodeLimits())).astype(float)
    alpha = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1 - alpha)
    assert np.abs(decoded - expected).max() <= 1.0


def test_palette_transparency_composited_on_white() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    data = encode(palette, "PNG", transparency=0)
    decoded = np.asarray(decode_rgb(data, DecodeLimits()))
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    assert tuple(decoded[4, 4]) == (255, 0, 0)


def test_grey_with_alpha_composited_on_white() -> None:
    la = Image.merge("LA", (Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)))
    assert np.asarray(decode_rgb(encode(la, "PNG"), DecodeLimits())).min() == 255


@pytest.mark.parametrize("size, resize", [(224, "bilinear"), (32, "nearest"), (240, "bicubic"), (100, "lanczos")])
def test_resize_square_shape_and_dtype(size: int, resize: str) -> None:
    image = Image.fromarray(fruit_pixels(160, 90))
    pixels = resize_square(image, size, resize)
    assert pixels.shape == (size, size, 3)
    assert pixels.dtype == np.uint8


def test_resize_square_keeps_pixels_at_target_size_and_uses_filter() -> None:
    original = fruit_pixels(64, 64)
    np.testing.assert_array_equal(resize_square(Image.fromarray(original), 64, "bilinear"), original)
    nearest = resize_square(Image.fromarray(original), 32, "nearest")
    np.testing.assert_array_equal(nearest, np.asarray(Image.fromarray(original).resize((32, 32), Image.NEAREST)))
