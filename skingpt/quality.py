"""A quick check of a photo before any GPU time is spent on it: size, focus and exposure.

Each problem is named with a tip for taking the photo again; the person can still ask for an
analysis. Thresholds were set on the sample photos in ``tests/data`` (all pass, the small
dermoscopic images included) and on degraded copies of them (each caught): see
``tests/skingpt/test_quality.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from skingpt.i18n import N_

# The model sees 224×224; much less than that leaves it too little to look at.
MIN_SIDE = 200
# Variance of the Laplacian over squared mean brightness (×1000), on the photo scaled to 512 px,
# so that dimming a photo does not make it look blurred: sharp samples score 1.1 and up, the
# same photos blurred score under 0.3.
MIN_SHARPNESS = 0.5
MIN_MEAN_BRIGHTNESS = 45.0
MAX_MEAN_BRIGHTNESS = 215.0
MAX_BLOWN_OUT = 0.25  # share of pixels at pure white
_ANALYSIS_SIDE = 512


@dataclass(frozen=True)
class QualityIssue:
    """One problem with a photo, with what to do about it."""

    code: str
    problem: str
    tip: str


ISSUES = {
    "too_small": QualityIssue(
        "too_small",
        N_("The photo is very small, so details of the skin are lost."),
        N_("Send the original photo, or take it closer, filling the picture with the skin."),
    ),
    "blurred": QualityIssue(
        "blurred",
        N_("The photo looks blurred."),
        N_(
            "Hold the phone still, tap the skin on the screen to focus, and keep about a hand's "
            "width away."
        ),
    ),
    "too_dark": QualityIssue(
        "too_dark",
        N_("The photo is too dark."),
        N_("Take it in daylight, near a window, or switch on more light; avoid your own shadow."),
    ),
    "too_bright": QualityIssue(
        "too_bright",
        N_("The photo is too bright: parts of it are washed out."),
        N_("Avoid direct sun or the flash; use soft daylight from the side."),
    ),
}


def assess(image: Image.Image) -> list[QualityIssue]:
    """The problems found in an RGB photo, most important first; empty when it looks usable."""
    if min(image.size) < MIN_SIDE:
        return [ISSUES["too_small"]]
    gray = np.asarray(_scaled(image.convert("L")), dtype=np.float32)  # (height, width)
    mean = float(gray.mean())
    if mean > MAX_MEAN_BRIGHTNESS or float((gray >= 250).mean()) > MAX_BLOWN_OUT:
        return [ISSUES["too_bright"]]  # washed-out areas have no edges: focus cannot be judged
    issues = []
    if _sharpness(gray) < MIN_SHARPNESS:
        issues.append(ISSUES["blurred"])
    if mean < MIN_MEAN_BRIGHTNESS:
        issues.append(ISSUES["too_dark"])
    return issues


def _scaled(gray: Image.Image) -> Image.Image:
    scale = _ANALYSIS_SIDE / max(gray.size)
    if scale >= 1:
        return gray
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    return gray.resize(size, Image.Resampling.BILINEAR)


def _sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian relative to brightness: low when edges are soft."""
    centre = gray[1:-1, 1:-1]
    laplacian = 4 * centre - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(laplacian.var()) / max(float(gray.mean()), 1.0) ** 2 * 1000
