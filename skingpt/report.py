"""The structured reply to a finished job: which parts come from the model, which from rules.

From the model (its own words, cleaned): what it sees (the answers to "describe" and "features"),
the possible conditions ("cause"), what the person can do now ("treatment", with every sentence
that gives a dose removed) and, for follow-ups, the answer itself.

From fixed rules, never from the model: urgent-care advice when a red flag is found in the
person's words or in the model's output (it leads the reply), when and how urgently to see a
clinician, the note that doses were removed, the note that babies, children and pregnant or
breastfeeding people need a clinician for any medicine, the note that words in which the model
spoke as a clinician were removed, the "cannot tell" reply when the model's output is unusable,
the test-model banner and the disclaimer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from skingpt import prompts
from skingpt.i18n import N_, gettext_for
from skingpt.pipeline import ANALYSIS
from skingpt.redflags import RedFlag, Urgency, red_flags_in_case
from skingpt.replies import Block, Outcome, Style, banner, clean_model_text, outcome_blocks
from skingpt.safety import (
    Abstention,
    judge_answer,
    remove_dosing,
    remove_prompt_echo,
    remove_role_claims,
    special_populations,
)

SEES = N_("What I see")
CONDITIONS = N_("Possible conditions (most likely first)")
DO_NOW = N_("What you can do now")
SEE_CLINICIAN = N_("When to see a health worker")
YOUR_QUESTION = N_("Your question")
URGENT_HEADING = {
    Urgency.EMERGENCY: N_("🚨 Get medical help now"),
    Urgency.TODAY: N_("⚠️ See a health worker today"),
    Urgency.SOON: N_("⚠️ See a health worker soon"),
}
WHEN = {
    Urgency.EMERGENCY: N_(
        "Now: go to the nearest emergency service or call your local emergency number. Do not "
        "wait for this chat."
    ),
    Urgency.TODAY: N_("Today: see a doctor or nurse today, in person."),
    Urgency.SOON: N_(
        "Within a few days: book a visit with a health worker or skin doctor; do not wait for "
        "it to change further."
    ),
}
WHEN_ROUTINE = N_(
    "If it does not get better within two weeks, spreads, or worries you, show it to a health "
    "worker. Go the same day if it becomes very painful, spreads fast, or you get a fever."
)
DOSES_REMOVED = N_(
    "I left out medicine doses: only a pharmacist, nurse or doctor who sees you should tell you "
    "how much to use and for how long."
)
ASK_BEFORE_MEDICINE = N_(
    "For a baby or a child, and during pregnancy or breastfeeding, ask a health worker before "
    "using any medicine, including creams and ointments."
)
ROLE_REMOVED = N_(
    "I left out words in which the computer model spoke as if it were a doctor: it is not one, "
    "and this is not a diagnosis."
)
PART_UNCLEAR = N_("I cannot tell this part from the photo.")
CANNOT_TELL = {
    Abstention.EMPTY: N_("I cannot tell what this is: the model gave no answer."),
    Abstention.REPETITIVE: N_("I cannot tell what this is: the model's answer made no sense."),
    Abstention.NO_IMAGE: N_("I cannot tell what this is: the model could not read the photo."),
    Abstention.OFF_TOPIC: N_("I cannot tell what this is: the model's answer was not about skin."),
}
NEXT_STEPS = N_(
    "What you can do: send a new photo, close up, in focus and in daylight, or show the skin to "
    "a health worker. If it is painful, spreading fast, or comes with fever, go today."
)
CASE_LINE = N_("Case {code}")

_FIXED_QUESTIONS = {text for _, text in prompts.CLINICAL_QUESTIONS} | {prompts.DEFAULT_QUESTION}


@dataclass(frozen=True)
class Findings:
    """What rules found in one job: red flags, whether doses were removed, and abstention."""

    red_flags: list[RedFlag]
    abstention: Abstention | None
    doses_removed: bool
    medicine_caution: bool

    @property
    def urgency(self) -> Urgency | None:
        return self.red_flags[0].urgency if self.red_flags else None


def person_texts(history: Sequence[prompts.Turn], question: str) -> list[str]:
    """What the person wrote about the case (the fixed clinical questions left out)."""
    asked = [turn.question for turn in history] + [question]
    return [text for text in asked if text and text not in _FIXED_QUESTIONS]


def compose(
    *,
    kind: str,
    outcome: Outcome,
    answers: dict[str, str],
    history: Sequence[prompts.Turn],
    question: str,
    language: str,
    model_name: str = "",
    untrained: bool = False,
    case_code: str | None = None,
) -> tuple[list[Block], Findings]:
    """The reply's blocks (without the disclaimer, which every message gets) and the findings."""
    _ = gettext_for(language)
    words = person_texts(history, question)
    cleaned = {key: clean_model_text(text) for key, text in answers.items()}
    flags = red_flags_in_case([". ".join(words)], list(cleaned.values()), language, photo=True)
    lead = [banner(model_name, _)] if untrained else []
    if case_code:
        lead.append(Block(_(CASE_LINE).format(code=case_code), style=Style.NOTE))
    lead += [
        Block(flag.advice, heading=_(URGENT_HEADING[flag.urgency]), style=Style.URGENT)
        for flag in flags
    ]
    if outcome not in (Outcome.ANSWERED, Outcome.EMPTY):
        blocks = outcome_blocks(outcome, _)
        return [*lead, *blocks], Findings(flags, None, False, False)

    first = "describe" if kind == ANALYSIS else "answer"
    abstention = judge_answer(cleaned.get(first, ""), language)
    if outcome is Outcome.EMPTY:
        abstention = Abstention.EMPTY
    if abstention is not None:
        blocks = [Block(_(CANNOT_TELL[abstention])), Block(_(NEXT_STEPS))]
        return [*lead, *blocks], Findings(flags, abstention, False, False)

    removed = False
    claims_removed: list[str] = []

    def usable(key: str) -> str:
        nonlocal removed
        text = cleaned.get(key, "")
        if not text or judge_answer(text, language) is not None:
            return ""
        kept, dropped = remove_dosing(text)
        removed = removed or dropped
        kept, claimed = remove_role_claims(kept)
        if claimed:
            claims_removed.append(key)
        kept = remove_prompt_echo(kept)[0]
        return kept.strip()

    body: list[Block] = []
    if kind == ANALYSIS:
        seen = "\n\n".join(part for part in (usable("describe"), usable("features")) if part)
        body.append(Block(seen or _(PART_UNCLEAR), heading=_(SEES)))
        body.append(Block(usable("cause") or _(PART_UNCLEAR), heading=_(CONDITIONS)))
        if "question" in cleaned:
            body.append(Block(usable("question") or _(PART_UNCLEAR), heading=_(YOUR_QUESTION)))
        body.append(Block(usable("treatment") or _(PART_UNCLEAR), heading=_(DO_NOW)))
    else:
        body.append(Block(usable("answer") or _(PART_UNCLEAR)))
    caution = bool(special_populations(words, language))
    notes = []
    if removed:
        notes.append(Block(_(DOSES_REMOVED), style=Style.NOTE))
    if claims_removed:
        notes.append(Block(_(ROLE_REMOVED), style=Style.NOTE))
    if caution:
        notes.append(Block(_(ASK_BEFORE_MEDICINE), style=Style.NOTE))
    if kind == ANALYSIS or flags:
        urgency = flags[0].urgency if flags else None
        when = _(WHEN[urgency]) if urgency else _(WHEN_ROUTINE)
        notes.append(Block(when, heading=_(SEE_CLINICIAN)))
    return [*lead, *body, *notes], Findings(flags, None, removed, caution)
