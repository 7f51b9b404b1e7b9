"""The fixed text around every answer: the test-model warning and the medical disclaimer.

Both the bot and ``skingpt ask`` build replies here, so no path can leave the disclaimer out.
"""

from __future__ import annotations

import re
from enum import StrEnum

DISCLAIMER = (
    "⚕️ This is not a diagnosis. It is an automated description from a computer model that can "
    "be wrong, and it does not replace a doctor or nurse. If the skin changes quickly, bleeds, "
    "hurts a lot, or comes with fever or feeling unwell, see a health worker today; in an "
    "emergency call your local emergency number."
)

TEST_MODEL_BANNER = (
    "⚠️ TEST MODEL: this answer comes from an untrained model with random weights ({model}). "
    "The text below is meaningless and says nothing about the photo."
)


# Control characters other than tab and newline (a model can emit them; clients show boxes).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Outcome(StrEnum):
    """How a job ended, as stored in Redis and read by the bot."""

    ANSWERED = "answered"
    EMPTY = "empty"
    PHOTO_EXPIRED = "photo_expired"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


_OUTCOME_TEXT = {
    Outcome.EMPTY: (
        "I cannot tell what this is from the photo: the model gave no usable answer. "
        "Please try a sharper photo in good daylight, or show the skin to a health worker."
    ),
    Outcome.PHOTO_EXPIRED: (
        "I no longer have your photo (photos are deleted after a while for your privacy). "
        "Please send the photo again."
    ),
    Outcome.TIMED_OUT: (
        "Sorry, the analysis took too long and was stopped. Please send your message again "
        "in a few minutes."
    ),
    Outcome.FAILED: (
        "Sorry, something went wrong on our side while looking at your photo. Please send it "
        "again in a few minutes."
    ),
}


def format_reply(
    outcome: Outcome, answer: str = "", *, model_name: str = "", untrained: bool = False
) -> str:
    """The whole reply a person reads, always ending with the disclaimer."""
    parts = []
    if untrained:
        parts.append(TEST_MODEL_BANNER.format(model=model_name or "test"))
    answer = _CONTROL.sub("", answer).strip()
    if outcome is Outcome.ANSWERED and answer:
        parts.append(answer)
    else:
        parts.append(_OUTCOME_TEXT.get(outcome, _OUTCOME_TEXT[Outcome.EMPTY]))
    parts.append(DISCLAIMER)
    return "\n\n".join(parts)
