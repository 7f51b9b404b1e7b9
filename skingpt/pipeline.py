"""From a photo, the earlier turns and a question to a labelled answer.

``skingpt ask`` and the Celery worker both call :meth:`Analyzer.answer`, so preprocessing,
prompt and generation are the same code in both, whichever model backend is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from skingpt import prompts
from skingpt.model.base import VisionLanguageModel
from skingpt.settings import GenerationSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """The model's answer to one question, with what is needed to label it honestly."""

    text: str
    model_name: str
    untrained: bool
    new_tokens: int
    seconds: float
    dropped_turns: int = 0


class Analyzer:
    """Answers questions about skin photos with one loaded model."""

    def __init__(self, model: VisionLanguageModel, generation: GenerationSettings) -> None:
        self.model = model
        self.generation = generation

    def answer(
        self,
        image: Image.Image,
        history: Sequence[prompts.Turn],
        question: str,
        *,
        seed: int | None = None,
    ) -> Answer:
        """Answer ``question`` about ``image``, in the context of the earlier turns."""
        generated = self.model.answer(
            image,
            history,
            question,
            self.generation,
            seed=self.generation.seed if seed is None else seed,
        )
        logger.info(
            "Answered in %.2f s: %d prompt positions, %d new tokens, %d old turns left out",
            generated.seconds,
            generated.prompt_positions,
            generated.new_tokens,
            generated.dropped_turns,
        )
        return Answer(
            text=generated.text,
            model_name=self.model.name,
            untrained=self.model.untrained,
            new_tokens=generated.new_tokens,
            seconds=generated.seconds,
            dropped_turns=generated.dropped_turns,
        )
