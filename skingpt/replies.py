"""Replies as blocks of text, rendered as Telegram HTML or as plain text, and split to fit.

Every dynamic fragment (model text, the person's words) is escaped when rendered as HTML; the
plain rendering is exactly the text Telegram shows for the HTML one, so lengths are counted on
it and the plain version can be resent when Telegram refuses the HTML. Every part of a split
reply ends with the disclaimer.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from skingpt.i18n import N_, Translate

DISCLAIMER = N_(
    "⚕️ This is not a diagnosis. It is an automated description from a computer model that can "
    "be wrong, and it does not replace a doctor or nurse. If the skin changes quickly, bleeds, "
    "hurts a lot, or comes with fever or feeling unwell, see a health worker today; in an "
    "emergency call your local emergency number."
)

TEST_MODEL_BANNER = N_(
    "⚠️ TEST MODEL: this answer comes from a test model ({model}), not a trained one. "
    "The text below says nothing about the photo."
)

# Control characters other than tab and newline, and the replacement character left by a token
# cut in the middle of a UTF-8 sequence: a model can emit them, and clients show boxes.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ufffd]")

TELEGRAM_LIMIT = 4096  # UTF-16 code units per message
_GAP = "\n\n"
_BOUNDARIES = ("\n\n", "\n", ". ", "! ", "? ", "؟ ", "; ", ", ", "، ", " ")


class Outcome(StrEnum):
    """How a job ended, as stored in Redis and read by the bot."""

    ANSWERED = "answered"
    EMPTY = "empty"
    PHOTO_EXPIRED = "photo_expired"
    TIMED_OUT = "timed_out"
    WAITED_TOO_LONG = "waited_too_long"
    FAILED = "failed"


OUTCOME_TEXT = {
    Outcome.EMPTY: N_(
        "I cannot tell what this is from the photo: the model gave no usable answer. "
        "Please try a sharper photo in good daylight, or show the skin to a health worker."
    ),
    Outcome.PHOTO_EXPIRED: N_(
        "I no longer have your photo (photos are deleted after a while for your privacy). "
        "Please send the photo again."
    ),
    Outcome.TIMED_OUT: N_(
        "Sorry, the analysis took too long and was stopped. Please send your message again "
        "in a few minutes."
    ),
    Outcome.WAITED_TOO_LONG: N_(
        "Sorry, many people are asking right now and your message waited too long, so I did "
        "not look at it. Please send it again later. If the skin problem is getting worse "
        "quickly, do not wait: see a health worker."
    ),
    Outcome.FAILED: N_(
        "Sorry, something went wrong on our side while looking at your photo. Please send it "
        "again in a few minutes."
    ),
}


class Style(StrEnum):
    """How a block is shown."""

    PLAIN = "plain"
    URGENT = "urgent"  # bold: advice that leads the reply
    NOTE = "note"  # italic: fixed notes such as the disclaimer


@dataclass(frozen=True)
class Block:
    """One paragraph: an optional bold heading line, then text. Both are plain, unescaped."""

    text: str
    heading: str = ""
    style: Style = Style.PLAIN

    def plain(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    def html(self) -> str:
        text = html.escape(self.text, quote=False)
        if self.style is Style.URGENT:
            text = f"<b>{text}</b>"
        elif self.style is Style.NOTE:
            text = f"<i>{text}</i>"
        if self.heading:
            return f"<b>{html.escape(self.heading, quote=False)}</b>\n{text}"
        return text


@dataclass(frozen=True)
class Message:
    """One message to send: the HTML to try first and the plain text to fall back on."""

    html: str
    plain: str


def clean_model_text(text: str) -> str:
    """Model output without control characters and surrounding blank space."""
    return _CONTROL.sub("", text).strip()


def banner(model_name: str, _: Translate) -> Block:
    """The warning that leads every reply of a test model."""
    return Block(_(TEST_MODEL_BANNER).format(model=model_name or "test"), style=Style.URGENT)


def disclaimer(_: Translate) -> Block:
    return Block(_(DISCLAIMER), style=Style.NOTE)


def outcome_blocks(
    outcome: Outcome, _: Translate, *, model_name: str = "", untrained: bool = False
) -> list[Block]:
    """The reply for a job that produced no answer."""
    blocks = [banner(model_name, _)] if untrained else []
    return [*blocks, Block(_(OUTCOME_TEXT.get(outcome, OUTCOME_TEXT[Outcome.FAILED])))]


def render_plain(blocks: Sequence[Block]) -> str:
    return _GAP.join(block.plain() for block in blocks)


def render_html(blocks: Sequence[Block]) -> str:
    return _GAP.join(block.html() for block in blocks)


def to_messages(
    blocks: Sequence[Block], _: Translate, *, limit: int = TELEGRAM_LIMIT
) -> list[Message]:
    """The reply as messages of at most ``limit`` UTF-16 units, each ending with the disclaimer.

    Cuts fall between blocks, or inside a long block on a paragraph, line, sentence or word
    boundary where one is near enough.
    """
    tail = disclaimer(_)
    room = limit - utf16_len(_GAP + tail.plain())
    parts: list[list[Block]] = [[]]
    for block in _fitting_blocks(blocks, room):
        used = utf16_len(render_plain(parts[-1]))
        extra = utf16_len(block.plain()) + (utf16_len(_GAP) if parts[-1] else 0)
        if parts[-1] and used + extra > room:
            parts.append([])
        parts[-1].append(block)
    return [
        Message(html=render_html([*part, tail]), plain=render_plain([*part, tail]))
        for part in parts
        if part
    ]


def format_plain(blocks: Sequence[Block], _: Translate) -> str:
    """The whole reply as one plain text, ending with the disclaimer (for the command line)."""
    return render_plain([*blocks, disclaimer(_)])


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: characters outside the BMP count twice."""
    return len(text.encode("utf-16-le")) // 2


def _fitting_blocks(blocks: Sequence[Block], room: int) -> list[Block]:
    """The blocks, with any block longer than ``room`` cut into pieces that fit."""
    fitting = []
    for block in blocks:
        if not block.text.strip() and not block.heading:
            continue
        if utf16_len(block.plain()) <= room:
            fitting.append(block)
            continue
        heading_room = utf16_len(block.heading) + 1 if block.heading else 0
        rest = block.text.strip()
        first = True
        while rest:
            space = room - (heading_room if first else 0)
            cut = len(rest) if utf16_len(rest) <= space else _cut_point(rest, space)
            piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
            fitting.append(replace(block, text=piece, heading=block.heading if first else ""))
            first = False
    return fitting


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
    return max(fits, 1)
