"""What the bot says outside of answers; every text is plain (no markup to break)."""

from __future__ import annotations

from collections.abc import Sequence

from skingpt.quality import QualityIssue
from skingpt.replies import DISCLAIMER

START = (
    "Hello. I look at photos of skin problems and describe what I see: what it might be, what "
    "you can do now, and when to see a health worker.\n\n"
    "How to use me: send one clear photo of the skin (as a photo or as a file), close up, in "
    "good light. You can add a question as the caption. Then ask follow-up questions by "
    "writing a message.\n\n"
    "What I am not: I am not a doctor, I cannot examine you, and I can be wrong. I never "
    "replace a visit to a clinic.\n\n" + DISCLAIMER
)

HELP = (
    "Send a photo of the skin problem (close up, in daylight, in focus). Add a question as "
    "the caption if you like. After my answer, write any follow-up question about the same "
    "photo. A new photo starts a new case. /forget deletes your photos, questions and answers "
    "at once; otherwise they are deleted automatically after a while.\n\n" + DISCLAIMER
)

SEND_PHOTO_FIRST = "Please send a photo of the skin first. Then you can ask questions about it."

UNSUPPORTED = (
    "I can only read photos of skin and text messages. Please send a photo of the skin, or "
    "write your question."
)

FORGOTTEN = (
    "Done: I deleted your photos, questions and answers. A photo still being analysed will "
    "not be answered. Send a new photo whenever you like."
)

NOTHING_TO_FORGET = "I have nothing stored about you in this chat."

ANALYSE_ANYWAY = "Analyse anyway"

STALE_BUTTON = "That photo is no longer waiting to be analysed. Please send the photo again."


def quality_report(issues: Sequence[QualityIssue]) -> str:
    """What is wrong with a photo and how to take a better one."""
    lines = ["Before I look at this photo:"]
    lines += [f"• {issue.problem} {issue.tip}" for issue in issues]
    lines.append(
        "\nA better photo gives a more useful answer. Send a new photo, or tap "
        f"“{ANALYSE_ANYWAY}” to use this one."
    )
    return "\n".join(lines)


WRITE_A_QUESTION = "Please write your question about the photo in words."

EDITED = "I do not read edited messages. Please send your question again as a new message."

FILE_TOO_BIG = (
    "This file is larger than the 20 MB I can download. Please send it as a photo instead of a "
    "file, or send a smaller copy."
)

DOWNLOAD_FAILED = "I could not download your file from Telegram. Please send it again."

SOMETHING_WENT_WRONG = (
    "Sorry, something went wrong on our side. Please try again in a minute; if it keeps "
    "happening, use /start."
)
