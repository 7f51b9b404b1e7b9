"""The eval transform: 224×224 bicubic, no crop, CLIP mean and standard deviation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from skingpt.model.preprocess import CLIP_MEAN, CLIP_STD, pixel_values


def test_pixel_values_shape_and_dtype() -> None:
    values = pixel_values(Image.new("RGB", (640, 480), "white"))
    assert values.shape == (1, 3, 224, 224)
    assert values.dtype == torch.float32


def test_pixel_values_normalise_with_clip_constants() -> None:
    mean_colour = tuple(round(m * 255) for m in CLIP_MEAN)
    values = pixel_values(Image.new("RGB", (300, 300), mean_colour))
    assert values.abs().max() < 0.01
    white = pixel_values(Image.new("RGB", (300, 300), "white"))
    for channel in range(3):
        expected = (1.0 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert torch.allclose(white[0, channel], torch.tensor(expected), atol=1e-5)


def test_pixel_values_squash_the_whole_image_without_cropping() -> None:
    # A wide image, red on the left quarter: nothing is cropped away, the aspect ratio is not kept.
    picture = Image.new("RGB", (800, 200), "blue")
    picture.paste((255, 0, 0), (0, 0, 200, 200))
    red_mask = pixel_values(picture)[0, 0] > 0  # (224, 224)
    red_columns = red_mask.all(dim=0).nonzero().flatten()
    assert red_columns.min() == 0
    assert 50 <= int(red_columns.max()) <= 56  # a quarter of 224
    assert bool(red_mask.all(dim=1).any()) is False  # red spans no full row


def test_pixel_values_match_pillow_bicubic_resize() -> None:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))
    expected = np.asarray(picture.resize((224, 224), Image.Resampling.BICUBIC), np.float32) / 255
    expected = (expected - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    actual = pixel_values(picture)[0].permute(1, 2, 0).numpy()
    assert np.allclose(actual, expected, atol=1e-6)
