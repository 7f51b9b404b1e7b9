"""Uploads become upright RGB images, and unusable files are refused with a clear reason."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

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


def _quadrants() -> Image.Image:
    """An upright 200 × 100 picture whose four quarters have four different colours."""
    picture = Image.new("RGB", (200, 100), (255, 0, 0))
    picture.paste((0, 255, 0), (100, 0, 200, 50))
    picture.paste((0, 0, 255), (0, 50, 100, 100))
    picture.paste((255, 255, 0), (100, 50, 200, 100))
    return picture


def _quarter_colours(image: Image.Image) -> list[tuple[int, ...]]:
    width, height = image.size
    points = [(width // 4, height // 4), (3 * width // 4, height // 4)]
    points += [(width // 4, 3 * height // 4), (3 * width // 4, 3 * height // 4)]
    return [image.getpixel(point) for point in points]  # type: ignore[misc]


# How a camera stores an upright picture for each EXIF orientation: the inverse of the turn
# that orientation asks for when it is displayed.
_STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("orientation", sorted(_STORED_AS))
def test_stored_photo_is_upright_whatever_its_exif_orientation(orientation: int, fmt: str) -> None:
    upright = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(_STORED_AS[orientation])
    data = _encode(stored, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
    image = load_image(data, max_pixels=MAX_PIXELS, max_side=1024)
    kept = decode_stored(encode_png(normalise(image, max_side=1024)))
    assert kept.size == upright.size
    assert _quarter_colours(kept) == _quarter_colours(upright)


def test_heic_photo_is_read_upright() -> None:
    upright = _quadrants().resize((400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(upright.transpose(Image.Transpose.ROTATE_90), "HEIF", exif=exif.tobytes())
    image = load_image(data, max_pixels=MAX_PIXELS)
    assert image.size == upright.size
    colours = _quarter_colours(image)
    for got, wanted in zip(colours, _quarter_colours(upright), strict=True):
        assert max(abs(a - b) for a, b in zip(got, wanted, strict=True)) < 40, colours


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_is_read_from_its_first_frame(fmt: str) -> None:
    first, second = Image.new("RGB", (64, 64), (200, 0, 0)), Image.new("RGB", (64, 64), "blue")
    data = _encode(first, fmt, save_all=True, append_images=[second], duration=100)
    red, _, blue = load_image(data, max_pixels=MAX_PIXELS).getpixel((32, 32))  # type: ignore[misc]
    assert red > 150 and blue < 50


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


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` × ``height`` pixels, with no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    jpeg = bytearray(_encode(Image.new("RGB", (64, 64)), "JPEG"))
    frame = jpeg.find(b"\xff\xc0")  # start of frame: length, precision, height, width
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _gif_claiming(width: int, height: int) -> bytes:
    gif = bytearray(_encode(Image.new("P", (64, 64)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


@pytest.mark.parametrize(
    "data",
    [
        _png_claiming(60_000, 60_000),
        _png_claiming(100_000, 100_000),
        _png_claiming(7_000, 7_000),  # under Pillow's own limit, over ours
        _jpeg_claiming(65_000, 65_000),
        _gif_claiming(65_535, 65_535),
        _encode(Image.new("L", (8_000, 8_000)), "PNG"),  # a real one: 62 kB, 64 megapixels
    ],
    ids=["png-60000", "png-100000", "png-7000", "jpeg-65000", "gif-65535", "png-8000-real"],
)
def test_load_image_refuses_huge_images_from_their_header_without_decoding(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(image: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    assert _reason(data) == "too_large"


_PEAK_MEMORY = """
import resource, sys
from skingpt.imaging import load_image, normalise
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = normalise(load_image(data, max_pixels=40_000_000, max_side=1024), max_side=1024)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, image.size)
"""


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_load_image_needs_little_more_memory_than_the_decoded_pixels(
    mode: str, tmp_path: Path
) -> None:
    """A small file of many pixels in a costly mode once took over 1 GB to convert."""
    side = 6_300  # 39.7 megapixels, just under the bot's limit
    if mode == "I;16":
        picture = Image.fromarray(np.zeros((side, side), dtype=np.uint16))
    else:
        picture = Image.new("RGBA", (side, side), (10, 20, 30, 128))
    path = tmp_path / "large.png"
    path.write_bytes(_encode(picture, "PNG"))
    del picture
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    grown, size = run.stdout.split(maxsplit=1)
    assert json.loads(size.replace("(", "[").replace(")", "]")) == [1024, 1024]
    decoded = side * side * (2 if mode == "I;16" else 4)
    assert int(grown) < 4 * decoded, f"{int(grown) / 1e6:.0f} MB for {decoded / 1e6:.0f} MB"


def test_load_image_shrinks_a_large_photo_by_a_whole_factor() -> None:
    image = load_image(
        _encode(Image.new("RGB", (5_000, 3_000), "red"), "PNG"),
        max_pixels=MAX_PIXELS,
        max_side=1024,
    )
    assert image.size == (2_500, 1_500)  # halved: a third would leave the short side under 1024


def test_load_image_reads_32_bit_images_with_missing_values() -> None:
    pixels = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    pixels[0, :] = np.nan
    image = load_image(_encode(Image.fromarray(pixels, mode="F"), "TIFF"), max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((63, 63)) == (255, 255, 255)


def test_load_image_refuses_bad_files_with_their_reason() -> None:
    jpeg = _encode(Image.new("RGB", (256, 256), "white"), "JPEG")
    assert _reason(b"") == "empty"
    assert _reason(b"%PDF-1.4 this is not an image") == "not_an_image"
    assert _reason(jpeg[: len(jpeg) // 3]) == "damaged"
    photo = Image.open(Path(__file__).parents[1] / "data" / "psoriasis_01.jpg")
    avif = _encode(photo, "AVIF")  # its decoder fails on these pixels with a RuntimeError
    assert _reason(avif[: len(avif) // 2] + bytes(len(avif) // 2)) == "damaged"
    heic = _encode(photo, "HEIF")
    assert _reason(heic[: len(heic) // 2]) == "damaged"
    assert _reason(_encode(Image.new("RGB", (20, 400)), "PNG")) == "too_small"


def test_normalise_caps_the_long_side_and_never_enlarges() -> None:
    assert normalise(Image.new("RGB", (3000, 1500)), max_side=1000).size == (1000, 500)
    assert normalise(Image.new("RGB", (300, 150)), max_side=1000).size == (300, 150)


def test_stored_png_gives_back_the_same_pixels(sample_photos: list[Path]) -> None:
    image = load_image(sample_photos[0].read_bytes(), max_pixels=MAX_PIXELS)
    restored = decode_stored(encode_png(image))
    assert np.array_equal(np.asarray(image), np.asarray(restored))
