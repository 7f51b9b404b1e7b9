"""From a photo, the earlier turns and a question to labelled answers.

``skingpt ask``, the Celery worker and the offline clinic mode all call :meth:`Analyzer.analyse`,
so preprocessing, prompts and generation are the same code in each, whichever model backend is
loaded.

A first analysis asks the four clinical questions of :data:`prompts.CLINICAL_QUESTIONS` in order,
each in the context of the answers before it: four model calls, plus one more when the photo came
with the person's own question, and only one when the description is already unusable (the
rest would build on nothing). A follow-up is one call, in the context of the case's history.

In a batched worker the calls go through a :class:`~skingpt.batching.Batcher`, decoded together
with other jobs' calls; the job's deadline is checked between its calls and while it waits there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from skingpt import prompts
from skingpt.batching import Batcher
from skingpt.errors import DeadlinePassed
from skingpt.model.base import Request, VisionLanguageModel
from skingpt.settings import GenerationSettings

logger = logging.getLogger(__name__)

ANALYSIS = "analysis"
FOLLOWUP = "followup"


def plan(kind: str, question: str) -> list[tuple[str, str]]:
    """The model calls of one job, as (answer key, question) pairs, in order."""
    if kind != ANALYSIS:
        return [("answer", question)]
    steps = list(prompts.CLINICAL_QUESTIONS)
    if question.strip() and question != prompts.DEFAULT_QUESTION:
        steps.append(("question", question))
    return steps


@dataclass(frozen=True)
class Answer:
    """The model's answer to one question, with what is needed to label it honestly."""

    text: str
    model_name: str
    untrained: bool
    new_tokens: int
    seconds: float
    dropped_turns: int = 0


@dataclass(frozen=True)
class Analysis:
    """Every answer of one job, keyed as in :func:`plan`, and the turns they add to the case."""

    answers: dict[str, str]
    turns: list[prompts.Turn] = field(default_factory=list)
    model_name: str = ""
    untrained: bool = False
    seconds: float = 0.0
    new_tokens: int = 0


class Analyzer:
    """Answers questions about skin photos with one loaded model.

    Args:
        model: the loaded model; its name and label go on every answer.
        generation: how answers are written.
        batcher: when given, every model call goes through it (it owns ``model``), so that
            calls of concurrent jobs are decoded together; what is answered stays the same.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        generation: GenerationSettings,
        *,
        batcher: Batcher | None = None,
    ) -> None:
        self.model = model
        self.generation = generation
        self.batcher = batcher

    def answer(
        self,
        image: Image.Image,
        history: Sequence[prompts.Turn],
        question: str,
        *,
        seed: int | None = None,
        case: str | None = None,
        deadline: float | None = None,
    ) -> Answer:
        """Answer ``question`` about ``image``, in the context of the earlier turns.

        Args:
            case: the case the photo belongs to, where its embeddings can be kept.
            deadline: ``time.monotonic()`` after which waiting for the batcher stops.

        Raises:
            DeadlinePassed: the deadline came before the answer (batched only).
        """
        request = Request(
            image=image,
            history=tuple(history),
            question=question,
            generation=self.generation,
            seed=self.generation.seed if seed is None else seed,
            case=case,
        )
        if self.batcher is None:
            (generated,) = self.model.answer_many([request])
        else:
            generated = self.batcher.answer(request, deadline)
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

    def analyse(
        self,
        image: Image.Image,
        history: Sequence[prompts.Turn],
        question: str,
        *,
        kind: str = FOLLOWUP,
        language: str = "en",
        on_step: Callable[[int, int], None] | None = None,
        seed: int | None = None,
        case: str | None = None,
        deadline: float | None = None,
    ) -> Analysis:
        """Run the model calls of one job (see :func:`plan`), each in the context of the last.

        Args:
            case: the case the photo belongs to (see :meth:`answer`).
            deadline: ``time.monotonic()`` by which the job must be done; checked before each
                call and while a call waits for the batcher (None: no limit).

        Raises:
            DeadlinePassed: the deadline passed before the last call was answered.
        """
        from skingpt.safety import judge_answer

        steps = plan(kind, question)
        turns = list(history)
        answers: dict[str, str] = {}
        seconds = 0.0
        new_tokens = 0
        for index, (key, asked) in enumerate(steps):
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlinePassed(f"Out of time after {index} of {len(steps)} model calls")
            if on_step is not None:
                on_step(index + 1, len(steps))
            result = self.answer(
                image,
                turns,
                prompts.in_language(asked, language),
                seed=seed,
                case=case,
                deadline=deadline,
            )
            answers[key] = result.text
            turns.append(prompts.Turn(question=asked, answer=result.text))
            seconds += result.seconds
            new_tokens += result.new_tokens
            if key == "describe" and judge_answer(result.text, language) is not None:
                logger.info("The description is unusable; the remaining questions are skipped")
                break
        return Analysis(
            answers=answers,
            turns=turns[len(history) :],
            model_name=self.model.name,
            untrained=self.model.untrained,
            seconds=seconds,
            new_tokens=new_tokens,
        )
