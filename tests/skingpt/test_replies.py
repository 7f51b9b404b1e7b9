"""Replies render as escaped HTML and as the same text plain, split under Telegram's limit,
with the disclaimer in every part."""

from __future__ import annotations

import re

from skingpt.i18n import gettext_for
from skingpt.replies import (
    DISCLAIMER,
    Block,
    Outcome,
    Style,
    format_plain,
    outcome_blocks,
    to_messages,
    utf16_len,
)

_ = gettext_for("en")


def _visible(html_text: str) -> str:
    """The text Telegram shows for our HTML: tags dropped, the three entities decoded."""
    text = re.sub(r"</?[bi]>", "", html_text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def test_every_outcome_reply_carries_the_disclaimer() -> None:
    for outcome in Outcome:
        messages = to_messages(outcome_blocks(outcome, _), _)
        assert len(messages) == 1
        assert messages[0].plain.endswith(DISCLAIMER)


def test_test_model_banner_leads_the_reply() -> None:
    blocks = outcome_blocks(Outcome.EMPTY, _, model_name="tiny-random", untrained=True)
    plain = format_plain(blocks, _)
    assert plain.startswith("⚠️ TEST MODEL")
    assert "tiny-random" in plain


def test_model_text_is_escaped_in_html_and_shown_unchanged_in_plain() -> None:
    hostile = 'Use <b>this</b> & "that" <a href="x">link</a> </i>'
    blocks = [Block(hostile, heading="What I see <now>"), Block("Note", style=Style.NOTE)]
    message = to_messages(blocks, _)[0]
    assert "<a href" not in message.html and "&lt;b&gt;this&lt;/b&gt; &amp;" in message.html
    assert message.html.startswith("<b>What I see &lt;now&gt;</b>\n")
    assert _visible(message.html) == message.plain
    assert hostile in message.plain


def test_long_reply_splits_at_sentences_with_the_disclaimer_in_every_part() -> None:
    sentence = "The plaque is red and scaly 🙂 and about two centimetres wide. "
    answer = "\n\n".join(sentence * 12 for _ in range(12))  # about 9,000 characters
    blocks = [Block(answer, heading="What I see"), Block("Short end.", heading="When")]
    messages = to_messages(blocks, _)
    assert len(messages) >= 3
    for message in messages:
        assert utf16_len(message.plain) <= 4096
        assert message.plain.endswith(DISCLAIMER)
        assert _visible(message.html) == message.plain
        assert message.plain.removesuffix(DISCLAIMER).rstrip().endswith(".")
    text = " ".join(m.plain.removesuffix(DISCLAIMER) for m in messages)
    assert text.count("two centimetres") == 144
    assert messages[0].plain.startswith("What I see\n")
    assert text.count("What I see") == 1


def test_arabic_reply_splits_on_arabic_punctuation() -> None:
    sentence = "هذه بقعة حمراء متقشرة على الجلد؟ "
    messages = to_messages([Block(sentence * 300)], gettext_for("ar"))
    assert len(messages) >= 2
    for message in messages:
        assert utf16_len(message.plain) <= 4096
        assert message.plain.split("\n\n")[0].rstrip().endswith("؟")


def test_short_reply_stays_whole() -> None:
    messages = to_messages([Block("Eczema.")], _)
    assert [m.plain for m in messages] == ["Eczema.\n\n" + DISCLAIMER]
