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


# Control characters other than tab and newline, and the replacement character left by a token
# cut in the middle of a UTF-8 sequence: a model can emit them, and clients show boxes.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ufffd]")

TELEGRAM_LIMIT = 4096  # UTF-16 code units per message
_GAP = "\n\n"
_BOUNDARIES = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")


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


def reply_body(
    outcome: Outcome, answer: str = "", *, model_name: str = "", untrained: bool = False
) -> str:
    """Everything a reply says before the disclaimer."""
    parts = []
    if untrained:
        parts.append(TEST_MODEL_BANNER.format(model=model_name or "test"))
    answer = _CONTROL.sub("", answer).strip()
    if outcome is Outcome.ANSWERED and answer:
        parts.append(answer)
    else:
        parts.append(_OUTCOME_TEXT.get(outcome, _OUTCOME_TEXT[Outcome.EMPTY]))
    return _GAP.join(parts)


def format_reply(
    outcome: Outcome, answer: str = "", *, model_name: str = "", untrained: bool = False
) -> str:
    """The whole reply a person reads, always ending with the disclaimer."""
    body = reply_body(outcome, answer, model_name=model_name, untrained=untrained)
    return body + _GAP + DISCLAIMER


def split_reply(body: str, *, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Messages of at most ``limit`` UTF-16 units, each ending with the disclaimer.

    Cuts fall on a paragraph, line, sentence or word boundary where one is near enough.
    """
    room = limit - utf16_len(_GAP + DISCLAIMER)
    pieces = []
    rest = body.strip()
    while utf16_len(rest) > room:
        cut = _cut_point(rest, room)
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    pieces.append(rest)
    return [piece + _GAP + DISCLAIMER for piece in pieces if piece]


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: characters outside the BMP count twice."""
    return len(text.encode("utf-16-le")) // 2


def _cut_point(text: str, room: int) -> int:
    fits = 0
    used = 0
    for char in text:
        used += 2 if ord(char) > 0xFFFF else 1
        if used > room:
            break
        fits += 1
    window = text[:fits]
    for boundary in _BOUNDARIES:
        at = window.rfind(boundary)
        if at > fits // 2:
            return at + len(boundary)
    return fits
