"""The property the decode fuzzer checks, shared by the atheris harness (tests/fuzz_decode.py) and the
corpus replay in pytest (tests/test_fuzz.py): any bytes either become the model's square uint8 input,
through the executors' decode and preprocessing path, or are refused with a DecodeError (a reason for
errors/). Anything else (another exception, a wrong shape, a NaN after normalisation) is a bug."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from badimages import bad_image_bytes, encode, jpeg_bytes, odd_images
from fruitpipe.config import DecodeLimits
from fruitpipe.image.decode import DecodeError, decode_for_model
from fruitpipe.image.embed import normalise
from fruitpipe.image.models import Preprocessing

SIZE = 32
# small limits keep every accepted input cheap: what a worker may allocate per image stays bounded
LIMITS = DecodeLimits(max_bytes=2_000_000, max_pixels=4_000_000)
PREPROCESSING = Preprocessing(input_size=SIZE)
REGRESSIONS = Path(__file__).parent / "data" / "fuzz"  # inputs a fuzz run once broke: replayed forever


def check_one(data: bytes) -> None:
    """Raise AssertionError (or the unexpected exception) when `data` breaks the decode contract."""
    try:
        pixels, (width, height) = decode_for_model(data, LIMITS, SIZE, "bilinear")
    except DecodeError as refused:
        assert str(refused), "a refusal must carry its reason"
        return
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8, (pixels.shape, pixels.dtype)
    assert 0 < width * height <= LIMITS.max_pixels, (width, height)
    model_input = normalise(pixels[None], PREPROCESSING)
    assert model_input.shape == (1, 3, SIZE, SIZE) and np.isfinite(model_input).all()


def seed_corpus() -> dict[str, bytes]:
    """The tests' bad and odd inputs, a plain photo, and every regression found so far."""
    corpus = {name: content for name, (content, _) in bad_image_bytes(LIMITS.max_bytes).items()}
    corpus.update({name: encode(image, fmt, **params) for name, (image, fmt, params) in odd_images().items()})
    corpus["photo.jpg"] = jpeg_bytes()
    corpus.update({f"regression/{path.name}": path.read_bytes() for path in sorted(REGRESSIONS.glob("*"))
                   if path.is_file() and path.name != "README.md"})
    return corpus
