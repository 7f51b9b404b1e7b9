"""The photo check: every sample passes; a degraded copy of each is caught for its own defect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageFilter

from skingpt.imaging import load_image
from skingpt.quality import assess

DEGRADE: dict[str, Callable[[Image.Image], Image.Image]] = {
    "too_small": lambda image: image.resize((150, 150 * image.height // image.width)),
    "blurred": lambda image: image.filter(ImageFilter.GaussianBlur(max(image.size) / 200)),
    "too_dark": lambda image: ImageEnhance.Brightness(image).enhance(0.2),
    "too_bright": lambda image: ImageEnhance.Brightness(image).enhance(2.5),
}


def _photo(path: Path) -> Image.Image:
    return load_image(path.read_bytes(), max_pixels=10**8)


def test_assess_passes_every_sample_photo(sample_photos: list[Path]) -> None:
    assert any(min(_photo(p).size) <= 384 for p in sample_photos)  # dermoscopic ones included
    for path in sample_photos:
        assert assess(_photo(path)) == [], path.name


@pytest.mark.parametrize("defect", sorted(DEGRADE))
def test_assess_names_the_defect_of_each_degraded_copy(
    defect: str, sample_photos: list[Path]
) -> None:
    for path in sample_photos:
        issues = assess(DEGRADE[defect](_photo(path)))
        assert [issue.code for issue in issues] == [defect], path.name
        assert issues[0].tip.endswith(".")
