"""Every reply ends with the disclaimer and says when it comes from the test model."""

from __future__ import annotations

from skingpt.replies import DISCLAIMER, Outcome, format_reply


def test_format_reply_always_carries_the_disclaimer() -> None:
    for outcome in Outcome:
        assert format_reply(outcome, "Some answer").endswith(DISCLAIMER)


def test_format_reply_marks_the_untrained_model() -> None:
    reply = format_reply(Outcome.ANSWERED, "noise", model_name="tiny-random", untrained=True)
    assert reply.startswith("⚠️ TEST MODEL")
    assert "tiny-random" in reply
    assert "TEST MODEL" not in format_reply(Outcome.ANSWERED, "Eczema.")


def test_format_reply_says_it_cannot_tell_when_the_answer_is_empty() -> None:
    reply = format_reply(Outcome.ANSWERED, " \x07 ")
    assert "cannot tell" in reply
    assert "\x07" not in reply


def test_format_reply_keeps_the_answer_and_drops_control_characters() -> None:
    reply = format_reply(Outcome.ANSWERED, "Looks like\x1b eczema.\nKeep it moist.")
    assert "Looks like eczema.\nKeep it moist." in reply
