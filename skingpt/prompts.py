"""SkinGPT-4's conversation template and the text that surrounds the image.

The released model was trained and demonstrated with a MiniGPT-4 v0 style template: a system
line, then turns ``###Human: ...###Assistant: ...``. The photo enters the first human turn as
``<Img><ImageHere></Img>``, and ``<ImageHere>`` is later replaced by the 32 image embeddings.
The system line below is our own wording of the reference's instruction (an image arrives as
``<Img>ImageContent</Img>``; answer questions about it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<ImageHere>"
SEPARATOR = "###"
HUMAN = "Human"
ASSISTANT = "Assistant"

SYSTEM = (
    "An image will be given to you as <Img>ImageContent</Img>. Once you can see it, "
    "look at it closely and answer the questions about it."
)

DEFAULT_QUESTION = (
    "Describe the skin condition in this photo. What could it be, and what should I do?"
)

# The first analysis asks these in order, each in the context of the answers before it: the
# four questions of the SkinGPT-4 clinical evaluation (describe the condition, further features
# seen, likely cause, treatment), in our own words. The third also asks for the likely
# conditions, most likely first, which the structured reply lists.
CLINICAL_QUESTIONS = (
    ("describe", "Could you describe the skin condition in this image?"),
    ("features", "Please list any additional features you observe in the image."),
    (
        "cause",
        "What is the most likely condition, and what else could it be? Name them, most likely "
        "first, and explain what usually causes them.",
    ),
    ("treatment", "What treatment and care would you suggest for it?"),
)

LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "ar": "Arabic"}

_HASHES = re.compile(r"#{2,}")


@dataclass(frozen=True)
class Turn:
    """One finished exchange: the person's question and the model's answer."""

    question: str
    answer: str


def clean_user_text(text: str) -> str:
    """Remove what would let a user's words break the template.

    A typed ``<ImageHere>`` would be read as a second image slot, and ``###`` would end the
    turn early or fake an assistant turn.
    """
    text = text.replace(IMAGE_PLACEHOLDER, " ")
    text = _HASHES.sub("#", text)
    return " ".join(text.split())


def in_language(question: str, language: str) -> str:
    """The question with a request to answer in the person's language (English needs none)."""
    if language == "en" or language not in LANGUAGE_NAMES:
        return question
    return f"{question} Please answer in {LANGUAGE_NAMES[language]}."


def build_prompt(history: Sequence[Turn], question: str) -> str:
    """The full prompt text, ending with a bare ``Assistant:`` for the model to continue.

    The image stands in the first human turn, followed by that turn's question after a space,
    exactly as in the reference demo.
    """
    turns = [*history, Turn(question=question, answer="")]
    parts = [SYSTEM + SEPARATOR]
    for index, turn in enumerate(turns):
        asked = clean_user_text(turn.question)
        if index == 0:
            asked = f"<Img>{IMAGE_PLACEHOLDER}</Img> {asked}".rstrip()
        parts.append(f"{HUMAN}: {asked}{SEPARATOR}")
        if index == len(turns) - 1:
            parts.append(f"{ASSISTANT}:")
        else:
            parts.append(f"{ASSISTANT}: {clean_user_text(turn.answer)}{SEPARATOR}")
    return "".join(parts)


def fit_to_context(
    history: Sequence[Turn],
    question: str,
    length: Callable[[list[Turn], str], int],
    budget: int,
) -> tuple[list[Turn], str, int]:
    """The turns and question that fit in ``budget`` positions, and the length they take.

    The oldest finished turns go first (the image always moves into the first remaining
    turn); only when no earlier turn is left is the question itself shortened. When nothing
    is left to shorten, what remains is returned with its length, which may exceed the
    budget. The reference instead cuts the embedded sequence from the left, which can remove
    the system line and the image.
    """
    turns = list(history)
    used = length(turns, question)
    while used > budget and (turns or len(question) > 1):
        if turns:
            turns.pop(0)
        else:
            question = question[: len(question) * 3 // 4]
        used = length(turns, question)
    return turns, question, used


def split_at_image(prompt: str) -> tuple[str, str]:
    """The text before and after the single image placeholder."""
    before, found, after = prompt.partition(IMAGE_PLACEHOLDER)
    if not found or IMAGE_PLACEHOLDER in after:
        raise ValueError("A SkinGPT-4 prompt holds exactly one image placeholder.")
    return before, after


def extract_answer(generated: str) -> str:
    """The model's answer: text before the first ``###``, after any echoed ``Assistant:``."""
    text = generated.split(SEPARATOR, 1)[0]
    text = text.rsplit(f"{ASSISTANT}:", 1)[-1]
    return text.strip()
