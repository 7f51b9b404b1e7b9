"""What every model backend offers the pipeline: answer a question about one photo."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from skingpt.prompts import Turn
from skingpt.settings import GenerationSettings


@dataclass(frozen=True)
class Generated:
    """What one generation produced."""

    text: str
    new_tokens: int
    seconds: float
    prompt_positions: int = 0
    dropped_turns: int = 0


class VisionLanguageModel(Protocol):
    """A loaded model that answers questions about a photo in the context of earlier turns."""

    name: str
    untrained: bool
    vision_encoder_runs: int

    def answer(
        self,
        image: Image.Image,
        history: Sequence[Turn],
        question: str,
        generation: GenerationSettings,
        *,
        seed: int | None,
    ) -> Generated:
        """Answer ``question``; the oldest turns are left out if the context is too short."""
        ...
