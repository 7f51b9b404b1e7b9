"""A worker decodes each stored photo once while it keeps answering about it."""

from __future__ import annotations

from pathlib import Path

from skingpt.imaging import encode_png, load_image
from worker.runner import RecentPhotos

DATA = Path(__file__).parents[1] / "data"


def _stored(name: str) -> bytes:
    return encode_png(load_image((DATA / name).read_bytes(), max_pixels=40_000_000))


def test_the_same_stored_photo_is_decoded_once_and_others_are_not_confused() -> None:
    photos = RecentPhotos(size=2)
    psoriasis, eczema, nevus = (
        _stored(n) for n in ("psoriasis_01.jpg", "eczema_02.jpg", "nevus_01.jpg")
    )
    first = photos.decode(psoriasis)
    assert photos.decode(psoriasis) is first
    other = photos.decode(eczema)
    assert other is not first and other.tobytes() != first.tobytes()
    # Only the last two stay: the first is decoded again, to the same pixels.
    photos.decode(nevus)
    again = photos.decode(psoriasis)
    assert again is not first and again.tobytes() == first.tobytes()
