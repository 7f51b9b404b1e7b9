"""Uploads become upright RGB images, and unusable files are refused with a clear reason."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skingpt.errors import ImageRejected
from skingpt.imaging import decode_stored, encode_png, load_image, normalise

MAX_PIXELS = 40_000_000


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _reason(data: bytes) -> str:
    with pytest.raises(ImageRejected) as caught:
        load_image(data, max_pixels=MAX_PIXELS)
    assert caught.value.user_message.endswith(".")
    return caught.value.reason


def test_load_image_reads_every_sample_photo_as_rgb(sample_photos: list[Path]) -> None:
    for path in sample_photos:
        image = load_image(path.read_bytes(), max_pixels=MAX_PIXELS)
        assert image.mode == "RGB"
        assert min(image.size) >= 300, path.name


def test_load_image_applies_exif_orientation() -> None:
    picture = Image.new("RGB", (200, 100), "red")
    exif = picture.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = load_image(_encode(picture, "JPEG", exif=exif), max_pixels=MAX_PIXELS)
    assert image.size == (100, 200)


def test_load_image_survives_a_broken_exif_block() -> None:
    data = _encode(Image.new("RGB", (64, 64), "blue"), "JPEG", exif=b"Exif\x00\x00garbage")
    assert load_image(data, max_pixels=MAX_PIXELS).size == (64, 64)


def test_load_image_composites_transparency_on_white() -> None:
    picture = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    image = load_image(_encode(picture, "PNG"), max_pixels=MAX_PIXELS)
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_load_image_converts_16_bit_grayscale() -> None:
    pixels = np.full((64, 64), 65535, dtype=np.uint16)
    pixels[:, :32] = 0
    image = load_image(_encode(Image.fromarray(pixels), "PNG"), max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((40, 5)) == (255, 255, 255)
    assert image.getpixel((5, 5)) == (0, 0, 0)


def test_load_image_converts_cmyk_and_palette_images() -> None:
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    assert load_image(_encode(cmyk, "JPEG"), max_pixels=MAX_PIXELS).getpixel((1, 1))[0] > 200
    palette = Image.new("RGB", (64, 64), "green").convert("P")
    assert load_image(_encode(palette, "GIF"), max_pixels=MAX_PIXELS).mode == "RGB"


def test_load_image_refuses_a_decompression_bomb_before_decoding() -> None:
    # A valid PNG header that claims 100000 × 100000 pixels, with almost no data behind it.
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    assert _reason(data) == "too_large"


def test_load_image_refuses_bad_files_with_their_reason() -> None:
    jpeg = _encode(Image.new("RGB", (256, 256), "white"), "JPEG")
    assert _reason(b"") == "empty"
    assert _reason(b"%PDF-1.4 this is not an image") == "not_an_image"
    assert _reason(jpeg[: len(jpeg) // 3]) == "damaged"
    assert _reason(_encode(Image.new("RGB", (20, 400)), "PNG")) == "too_small"


def test_normalise_caps_the_long_side_and_never_enlarges() -> None:
    assert normalise(Image.new("RGB", (3000, 1500)), max_side=1000).size == (1000, 500)
    assert normalise(Image.new("RGB", (300, 150)), max_side=1000).size == (300, 150)


def test_stored_png_gives_back_the_same_pixels(sample_photos: list[Path]) -> None:
    image = load_image(sample_photos[0].read_bytes(), max_pixels=MAX_PIXELS)
    restored = decode_stored(encode_png(image))
    assert np.array_equal(np.asarray(image), np.asarray(restored))
