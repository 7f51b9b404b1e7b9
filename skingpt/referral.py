"""A short referral summary of one case, for a community health worker to forward to a clinic.

The complaint and duration are the person's own words; the findings and possible conditions
are the model's (marked as an automated description); the urgency comes from the red-flag
rules, never from the model.
"""

from __future__ import annotations

import datetime as dt
import re

from skingpt import prompts
from skingpt.i18n import N_, gettext_for
from skingpt.redflags import Urgency, red_flags_in_case
from skingpt.replies import TELEGRAM_LIMIT, clean_model_text, utf16_len
from skingpt.report import person_texts
from skingpt.safety import judge_answer
from skingpt.store import Store, case_code

TITLE = N_("Referral summary — case {code}")
DATE = N_("Date: {date}")
COMPLAINT = N_("Complaint (in their words): {text}")
DURATION = N_("Duration given: {text}")
FINDINGS = N_("Findings (automated description, not a diagnosis): {text}")
CONDITIONS = N_("Possible conditions (automated): {text}")
URGENCY = N_("Urgency: {text}")
MAX_UNITS = TELEGRAM_LIMIT - 96  # one message, whatever the person wrote
PHOTOS = N_("Photos in this case: {count}")
NOT_GIVEN = N_("not given")
NOT_AVAILABLE = N_("not available")
URGENCY_TEXT = {
    Urgency.EMERGENCY: N_("EMERGENCY — send to emergency care now"),
    Urgency.TODAY: N_("URGENT — to be seen today"),
    Urgency.SOON: N_("SOON — to be seen within a few days"),
    None: N_("routine — no warning signs found"),
}

# "for 3 weeks", "since yesterday", "desde hace 2 días", "depuis 3 mois", "منذ أسبوعين" ...
_NUMBER = (
    r"(?:\d+|[\u0660-\u0669]+|a|an|one|two|three|four|five|six|un|une|uno|una|dos|tres|deux|trois)"
)
_DURATIONS = {
    "en": rf"\b(?:for|since|about|over)\s+(?:the\s+(?:last|past)\s+)?(?:{_NUMBER}\s+)?"
    r"(?:days?|weeks?|months?|years?)\b|\bsince\s+(?:yesterday|last\s+\w+)\b"
    rf"|\b{_NUMBER}\s+(?:days?|weeks?|months?|years?)\s+ago\b",
    "es": rf"\b(?:desde\s+hace|hace|durante)\s+(?:{_NUMBER}\s+)?"
    r"(?:d[ií]as?|semanas?|mes(?:es)?|a[ñn]os?)\b|\bdesde\s+ayer\b",
    "fr": rf"\b(?:depuis|pendant|il\s+y\s+a)\s+(?:{_NUMBER}\s+)?"
    r"(?:jours?|semaines?|mois|ans?|ann[ée]es?)\b|\bdepuis\s+hier\b",
    "ar": r"منذ\s+\S+(?:\s+\S+)?|من\s+(?:أسبوع|شهر|سنة|يوم)\S*",
}


def find_duration(texts: list[str], language: str) -> str | None:
    """The first "how long" phrase in the person's words, as they wrote it."""
    for code in dict.fromkeys((language, "en")):
        pattern = _DURATIONS.get(code)
        if pattern is None:
            continue
        for text in texts:
            found = re.search(pattern, text, flags=re.IGNORECASE)
            if found:
                return found.group(0).strip()
    return None


def referral_text(store: Store, case: str, language: str) -> str:
    """The summary of ``case`` in ``language`` (model text stays as the model wrote it)."""
    _ = gettext_for(language)
    turns = store.turns(case)
    meta = store.case(case)
    answers = {key: "" for key, _text in prompts.CLINICAL_QUESTIONS}
    asked = {text: key for key, text in prompts.CLINICAL_QUESTIONS}
    for turn in turns:
        if turn.question in asked:
            answers[asked[turn.question]] = clean_model_text(turn.answer)
    words = person_texts(turns, "")
    model_texts = [clean_model_text(turn.answer) for turn in turns]
    flags = red_flags_in_case([". ".join(words)], model_texts, language, photo=True)
    findings = " ".join(
        _first_sentences(text, 2)
        for text in (answers["describe"], answers["features"])
        if text and judge_answer(text, language) is None
    )
    cause = (
        answers["cause"]
        if answers["cause"] and judge_answer(answers["cause"], language) is None
        else ""
    )
    urgency = flags[0].urgency if flags else None
    lines = [
        _(TITLE).format(code=case_code(case)),
        _(DATE).format(date=dt.date.today().isoformat()),
        _(COMPLAINT).format(text=_clip(" / ".join(words), 600) or _(NOT_GIVEN)),
        _(DURATION).format(text=find_duration(words, language) or _(NOT_GIVEN)),
        _(FINDINGS).format(text=findings or _(NOT_AVAILABLE)),
        _(CONDITIONS).format(text=_first_sentences(cause, 2) or _(NOT_AVAILABLE)),
        _(URGENCY).format(text=_(URGENCY_TEXT[urgency])),
    ]
    lines += [f"• {flag.advice}" for flag in flags]
    lines.append(_(PHOTOS).format(count=meta.photos if meta else 0))
    return _clip("\n".join(lines), MAX_UNITS)


def _clip(text: str, units: int) -> str:
    """``text`` cut to at most ``units`` UTF-16 units, marked with an ellipsis when cut."""
    if utf16_len(text) <= units:
        return text
    kept = []
    used = 1  # the ellipsis
    for char in text:
        used += 2 if ord(char) > 0xFFFF else 1
        if used > units:
            break
        kept.append(char)
    return "".join(kept).rstrip() + "…"


def _first_sentences(text: str, count: int) -> str:
    sentences = re.split(r"(?<=[.!?؟])\s+", text.strip())
    return " ".join(sentences[:count])
