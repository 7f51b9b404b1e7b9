"""What every model backend offers the pipeline: answer a question about one photo."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
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


@dataclass(frozen=True)
class Request:
    """One model call: a question about a photo after earlier turns.

    Attributes:
        seed: seeds this request's own sampling; None samples from fresh entropy.
        case: the case id, under which the embedding cache keeps this photo's embeddings.
    """

    image: Image.Image
    history: Sequence[Turn]
    question: str
    generation: GenerationSettings
    seed: int | None = None
    case: str | None = None


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

    def answer_many(self, requests: Sequence[Request]) -> list[Generated]:
        """Answer every request, decoded together where the backend can; same order."""
        ...


def sampling_options(generation: GenerationSettings) -> dict[str, Any]:
    """The ``generate()`` arguments every backend takes from the generation settings."""
    return {
        "max_new_tokens": generation.max_new_tokens,
        "do_sample": generation.do_sample,
        "top_p": generation.top_p if generation.do_sample else None,
        "temperature": generation.temperature if generation.do_sample else None,
        "top_k": None,
        "repetition_penalty": generation.repetition_penalty,
        "max_time": generation.max_seconds,
    }


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Sample from a random state of this job's own when a seed is given; leave it alone else."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield
