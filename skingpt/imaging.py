"""Safe decoding of uploaded photos into the RGB image every later stage works on.

Only Pillow (with pillow-heif for iPhone photos) is needed here, so the bot can check and
normalise a photo without importing torch. The size is checked from the file header before any
pixel is decoded, so a decompression bomb costs nothing; a large image is shrunk by a whole factor
as soon as it is decoded, before any conversion, so that a small file of many pixels in a costly
mode (16-bit, alpha, CMYK) cannot make the bot allocate many times its decoded size.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError
from pillow_heif import register_heif_opener

from skingpt.errors import ImageRejected
from skingpt.i18n import N_

logger = logging.getLogger(__name__)

# Only the primary picture of a HEIF file is read: its thumbnails, depth maps and auxiliary
# images are never needed, so they are not even parsed.
register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

MIN_SIDE = 32

# Photo formats only: Pillow's other readers (EPS, for one, runs Ghostscript) never see uploads.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")

_EMPTY = N_("The file you sent is empty. Please send the photo again.")
_TOO_LARGE = N_(
    "This image is too large for me to open ({width}×{height} pixels). Please send it as a "
    "normal photo instead of a file, or a smaller copy."
)
_BOMB = N_(
    "This image is too large for me to open. Please send it as a normal photo instead of a "
    "file, or a smaller copy."
)
_NOT_AN_IMAGE = N_(
    "I could not read this file as an image. Please send a photo of the skin (JPEG or PNG)."
)
_DAMAGED = N_("This image file seems damaged or incomplete. Please take or send the photo again.")
_TOO_SMALL = N_(
    "This image is only {width}×{height} pixels; I need at least {minimum} on each side. "
    "Please send a closer, sharper photo."
)


def load_image(data: bytes, *, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Decode an uploaded file into an upright RGB image.

    Args:
        data: the file's bytes, whatever its name or MIME type claims.
        max_pixels: the largest width × height accepted; checked before decoding.
        max_side: when given, an image more than twice this size on both sides comes back
            shrunk by a whole factor (its shorter side still at least ``max_side``), which
            saves memory and time; :func:`normalise` then sets the exact size.

    Returns:
        An RGB image with EXIF orientation applied; for animations, the first frame.

    Raises:
        ImageRejected: with a message for the sender when the file cannot be used.
    """
    if not data:
        raise ImageRejected("empty", _EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. corrupt EXIF: handled below, not printed
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_available_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("too_large", _TOO_LARGE, width=width, height=height)
            image.seek(0)
            if max_side is not None:
                image.draft(None, (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", _NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_large", _BOMB) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, RuntimeError):
        # RuntimeError: how the AVIF and HEIF decoders report pixels they cannot decode.
        raise ImageRejected("damaged", _DAMAGED) from None
    if min(width, height) < MIN_SIDE:
        raise ImageRejected("too_small", _TOO_SMALL, width=width, height=height, minimum=MIN_SIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orientation = _orientation(image)  # read now: conversions drop a TIFF's tags
        rgb = _to_rgb(_shrink(_reducible(image), max_side))
    return rgb.transpose(_TRANSPOSE[orientation]) if orientation else rgb


def _available_formats() -> list[str]:
    Image.init()
    return [name for name in ACCEPTED_FORMATS if name in Image.OPEN]


def normalise(image: Image.Image, *, max_side: int) -> Image.Image:
    """Shrink an RGB image so its longer side is at most ``max_side`` (never enlarges)."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def encode_png(image: Image.Image) -> bytes:
    """Lossless bytes for storage, so a stored photo decodes to exactly the same pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def decode_stored(data: bytes) -> Image.Image:
    """Read back an image written by :func:`encode_png`."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


# How to turn an image with each EXIF orientation (2 to 8) upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes whose pixels can be averaged: palette indexes and 1-bit pixels cannot.
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
# 16-bit grey to 8-bit, rounded, as one table: no float copy of a large image.
_SIXTEEN_TO_EIGHT = np.round(np.arange(65536) / 257.0).astype(np.uint8)


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation that needs turning (2 to 8), or None."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a broken EXIF block must not cost the photo
        logger.info("Ignoring an unreadable EXIF orientation")
        return None
    return int(orientation) if orientation in _TRANSPOSE else None


def _reducible(image: Image.Image) -> Image.Image:
    """The image in a mode whose pixels can be averaged, at one to four bytes a pixel."""
    if image.mode in _REDUCIBLE:
        return image
    if image.mode in _SIXTEEN_BIT:
        grey = _SIXTEEN_TO_EIGHT[np.asarray(image)]  # (height, width) uint8
        return Image.fromarray(grey, mode="L")
    if image.mode in {"P", "PA"}:
        transparent = image.mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if transparent else "RGB")
    try:
        return image.convert("RGB" if image.mode != "1" else "L")
    except (ValueError, OSError):
        raise ImageRejected("unsupported_mode", _NOT_AN_IMAGE) from None


def _shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """Average whole blocks of pixels away while the shorter side stays at least ``max_side``."""
    if max_side is None:
        return image
    factor = min(image.size) // max_side
    return image.reduce(factor) if factor >= 2 else image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I", "F"}:
        return _stretch_to_8bit(image).convert("RGB")
    if mode in {"RGBA", "LA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError):
        raise ImageRejected("unsupported_mode", _NOT_AN_IMAGE) from None


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """32-bit grey (integer or float) has no fixed range: stretch what is used to 0–255."""
    pixels = np.asarray(image, dtype=np.float32)  # (height, width)
    finite = np.isfinite(pixels)
    if not finite.any():
        return Image.new("L", image.size)
    low, high = float(pixels[finite].min()), float(pixels[finite].max())
    pixels = np.nan_to_num(pixels, nan=low, posinf=high, neginf=low)
    scale = 255.0 / (high - low) if high > low else 0.0
    pixels = np.clip(np.round((pixels - low) * scale), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), mode="L")
