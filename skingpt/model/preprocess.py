"""SkinGPT-4's eval image transform (LAVIS ``blip2_image_eval``).

Resize to 224×224 with bicubic interpolation and no crop (the aspect ratio is not kept), scale
to [0, 1], then normalise with the OpenAI CLIP mean and standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pixel_values(image: Image.Image, *, size: int = IMAGE_SIZE) -> torch.Tensor:
    """The model input for one RGB image.

    Returns:
        A float32 tensor of shape (1, 3, size, size).
    """
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # (size, size, 3)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    normalised = (array - mean) / std
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy()).unsqueeze(0)
