"""From a photo, the earlier turns and a question to the model's answer.

``skingpt ask`` and the Celery worker both call :meth:`Analyzer.answer`, so the preprocessing,
prompt and generation are the same code in both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from skingpt import prompts
from skingpt.model.modeling import SkinGPT
from skingpt.model.preprocess import pixel_values
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

    def __init__(self, skingpt: SkinGPT, generation: GenerationSettings) -> None:
        self.skingpt = skingpt
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
        image_embeds = self.skingpt.encode_image(pixel_values(image))[0]  # (32, hidden)
        prompt, dropped = self.fit_prompt(history, question)
        inputs_embeds = self.skingpt.embed_prompt(prompt, image_embeds)
        generated = self.skingpt.generate(
            inputs_embeds, self.generation, seed=self.generation.seed if seed is None else seed
        )
        logger.info(
            "Answered in %.2f s: %d prompt positions, %d new tokens, %d old turns left out",
            generated.seconds,
            inputs_embeds.shape[1],
            generated.new_tokens,
            dropped,
        )
        return Answer(
            text=generated.text,
            model_name=self.skingpt.name,
            untrained=self.skingpt.untrained,
            new_tokens=generated.new_tokens,
            seconds=generated.seconds,
            dropped_turns=dropped,
        )

    def fit_prompt(self, history: Sequence[prompts.Turn], question: str) -> tuple[str, int]:
        """The prompt, shortened to leave room for the answer within the context length.

        The reference cuts the embedded sequence from the left, which can remove the system
        line and the image. Here the oldest finished turns go first; the image always moves
        into the first remaining turn, and only if no earlier turn is left is the question
        itself shortened.
        """
        budget = self.generation.max_context_tokens - self.generation.max_new_tokens
        turns = list(history)
        dropped = 0
        prompt = prompts.build_prompt(turns, question)
        while self.skingpt.prompt_length(prompt) > budget:
            if turns:
                turns.pop(0)
                dropped += 1
            elif len(question) > 1:
                question = question[: len(question) * 3 // 4]
            else:
                raise ValueError(f"max_context_tokens leaves no room for a prompt ({budget}).")
            prompt = prompts.build_prompt(turns, question)
        return prompt, dropped
