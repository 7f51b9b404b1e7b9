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


def test_split_reply_keeps_every_part_within_telegrams_limit() -> None:
    from skingpt.replies import reply_body, split_reply, utf16_len

    sentence = "The plaque is red and scaly 🙂 and about two centimetres wide. "
    answer = "\n\n".join(sentence * 12 for _ in range(12))  # about 9,000 characters
    parts = split_reply(reply_body(Outcome.ANSWERED, answer))
    assert len(parts) >= 3
    for part in parts:
        assert utf16_len(part) <= 4096
        assert part.endswith(DISCLAIMER)
        assert part.removesuffix(DISCLAIMER).rstrip().endswith(".")  # cut at a sentence end
    text = " ".join(p.removesuffix(DISCLAIMER) for p in parts)
    assert text.count("two centimetres") == 144


def test_split_reply_leaves_a_short_reply_whole() -> None:
    from skingpt.replies import reply_body, split_reply

    body = reply_body(Outcome.ANSWERED, "Eczema.")
    assert split_reply(body) == [format_reply(Outcome.ANSWERED, "Eczema.")]
