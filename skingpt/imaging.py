"""Safe decoding of uploaded photos into the RGB image every later stage works on.

Only Pillow is needed here, so the bot can check and normalise a photo without importing torch.
The size is checked from the file header before any pixel is decoded, so a decompression bomb
costs nothing.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skingpt.errors import ImageRejected
from skingpt.i18n import N_

logger = logging.getLogger(__name__)

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


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an uploaded file into an upright RGB image.

    Args:
        data: the file's bytes, whatever its name or MIME type claims.
        max_pixels: the largest width × height accepted; checked before decoding.

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
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", _NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_large", _BOMB) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError):
        raise ImageRejected("damaged", _DAMAGED) from None
    if min(width, height) < MIN_SIDE:
        raise ImageRejected("too_small", _TOO_SMALL, width=width, height=height, minimum=MIN_SIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _to_rgb(_upright(image))


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


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the photo
        logger.info("Ignoring an unreadable EXIF orientation")
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        return _scale_to_8bit(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError):
        raise ImageRejected("unsupported_mode", _NOT_AN_IMAGE) from None


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        pixels = pixels / 257.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0.0
    return Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), mode="L")
