"""Medicine safety and answer checks: no doses in what the model says, who the photo is about,
and whether a model's answer may be shown at all.

Word lists come from the ``[dosing]``, ``[populations]`` and ``[answers]`` tables of each
language's ``skingpt/rules/<language>.toml``; matching works as described in
:mod:`skingpt.redflags`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from skingpt import prompts
from skingpt.redflags import (
    DEFAULT_LANGUAGE,
    LANGUAGES,
    Vocabulary,
    compile_terms,
    normalise,
    vocabulary,
)

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
_DIGITS = r"[0-9]+(?:[.,][0-9]+)?"  # the text is normalised first: Arabic-Indic digits are ASCII

# A sentence ends at . ! ? (or their Arabic forms) before a space, unless a digit comes just
# before: "1. Apply..." is a list item and "2.5 mg" a number. A line break always ends one.
_SENTENCE_GAP = re.compile(r"((?<=[^\d\s][.!?\u061f\u06d4…])[ \t]+|[ \t]*\n\s*)")


@dataclass(frozen=True)
class _Dosing:
    """One language's dosing patterns."""

    dose: re.Pattern[str]  # a dose, strength or schedule on its own
    with_medicine: re.Pattern[str]  # these count only where a medicine is named too
    medicines: re.Pattern[str]


@functools.cache
def _dosing(language: str) -> _Dosing:
    vocab = vocabulary(language)
    words = "|".join(vocab.patterns("dosing", "numbers"))
    number = f"(?:{_DIGITS}|{words})"
    # "10mg" is a dose, but a number word needs a space: "a g..." is not "ag".
    quantity = rf"(?:{_DIGITS}\s*|(?:{words})\s+)"

    def numbered(key: str) -> list[str]:
        return [pattern.replace("<number>", number) for pattern in vocab.patterns("dosing", key)]

    units = "|".join(vocab.patterns("dosing", "units"))
    forms = "|".join(vocab.patterns("dosing", "forms"))
    always = [rf"{quantity}(?:{units})", rf"{number}\s+(?:{forms})", *numbered("phrases")]
    return _Dosing(
        dose=compile_terms(always, vocab.prefix),
        with_medicine=compile_terms(numbered("with_medicine"), vocab.prefix),
        medicines=vocab.terms("dosing", "medicines"),
    )


def _gives_dose(sentence: str) -> bool:
    normal = normalise(sentence)
    rules = [_dosing(language) for language in LANGUAGES]
    if any(rule.dose.search(normal) for rule in rules):
        return True
    names_medicine = any(rule.medicines.search(normal) for rule in rules)
    return names_medicine and any(rule.with_medicine.search(normal) for rule in rules)


def remove_dosing(text: str) -> tuple[str, bool]:
    """`text` without any sentence that gives a medicine dose, strength or schedule (mg, mcg, g,
    ml, IU/units, %, "twice a day", "every 8 hours", "for 7 days" tied to a medicine, "1 tablet",
    "2 puffs", in en/es/fr/ar wording and digits incl. Arabic-Indic digits); True when something
    was removed. Sentences naming a treatment without a dose stay ("an antifungal cream can
    help")."""
    kept, removed = _drop_sentences(text, _gives_dose)
    if removed:
        logger.debug("Removed %d sentence(s) giving a medicine dose", removed)
    return kept, bool(removed)


def remove_role_claims(text: str) -> tuple[str, bool]:
    """`text` without any sentence in which the model claims to be a clinician, calls its answer
    a diagnosis, says no clinician is needed, or tells the reader to ignore the warnings (in
    en/es/fr/ar); True when something was removed."""
    kept, removed = _drop_sentences(text, _claims_a_role)
    if removed:
        logger.info("Removed %d sentence(s) claiming a clinician's role", removed)
    return kept, bool(removed)


def remove_prompt_echo(text: str) -> tuple[str, bool]:
    """`text` without any sentence that repeats the model's instructions: the template's markers
    (``<Img>``, ``ImageContent``, ``###Human:``) or eight or more words in a row of the system
    line. A person who asks the model to print its prompt gets the answer without it; True when
    something was removed."""
    kept, removed = _drop_sentences(text, _echoes_prompt)
    if removed:
        logger.info("Removed %d sentence(s) repeating the model's instructions", removed)
    return kept, bool(removed)


_TEMPLATE_MARKERS = re.compile(
    r"<\s*/?\s*img\s*>|imagecontent|<\s*imagehere\s*>|#{2,}\s*(human|assistant)\b"
    r"|\b(human|assistant)\s*:",
    re.IGNORECASE,
)
_ECHO_WORDS = 8


@functools.cache
def _system_runs() -> frozenset[tuple[str, ...]]:
    words = re.findall(r"\w+", prompts.SYSTEM.lower())
    return frozenset(
        tuple(words[i : i + _ECHO_WORDS]) for i in range(len(words) - _ECHO_WORDS + 1)
    )


def _echoes_prompt(sentence: str) -> bool:
    if _TEMPLATE_MARKERS.search(sentence):
        return True
    words = re.findall(r"\w+", sentence.lower())
    runs = _system_runs()
    return any(
        tuple(words[i : i + _ECHO_WORDS]) in runs for i in range(len(words) - _ECHO_WORDS + 1)
    )


def _claims_a_role(sentence: str) -> bool:
    normal = normalise(sentence)
    return any(_role_claims(language).search(normal) for language in LANGUAGES)


@functools.cache
def _role_claims(language: str) -> re.Pattern[str]:
    return vocabulary(language).terms("answers", "role_claims")


def _drop_sentences(text: str, drop: Callable[[str], bool]) -> tuple[str, int]:
    """`text` without the sentences `drop` picks, and how many went."""
    pieces = _SENTENCE_GAP.split(text)
    kept: list[list[str]] = []  # [sentence, the gap after it]
    removed = 0
    for sentence, gap in zip(pieces[0::2], [*pieces[1::2], ""], strict=True):
        if not drop(sentence):
            kept.append([sentence, gap])
            continue
        removed += 1
        if kept:  # a removed line's line break stays, so the next line does not join this one
            kept[-1][1] = max(kept[-1][1], gap, key=lambda space: space.count("\n"))
    if not removed:
        return text, 0
    return "".join(sentence + gap for sentence, gap in kept).strip(), removed


class Population(StrEnum):
    """People for whom medicines and advice need extra care."""

    INFANT = "infant"
    CHILD = "child"
    PREGNANCY = "pregnancy"
    BREASTFEEDING = "breastfeeding"


@functools.cache
def _population_terms(language: str) -> dict[Population, re.Pattern[str]]:
    vocab = vocabulary(language)
    return {population: vocab.terms("populations", population.value) for population in Population}


def _with_english(language: str) -> list[Vocabulary]:
    return list({code: vocabulary(code) for code in (language, DEFAULT_LANGUAGE)}.values())


def special_populations(texts: Sequence[str], language: str) -> set[Population]:
    """Who the person says the photo is about, from their own words (that language's terms and
    English): "my baby", "my 3 year old", "my son/daughter" (child), "I am pregnant",
    "20 weeks pregnant", "breastfeeding", "mi bebé", "embarazada", "mon enfant", "enceinte",
    "allaite", "طفلي", "رضيع", "حامل", "أرضع" ... Negation counts: "I am not pregnant" is not
    pregnancy."""
    found: set[Population] = set()
    for vocab in _with_english(language):
        terms = _population_terms(vocab.language)
        for text in texts:
            scan = vocab.scan(text)
            found |= {population for population, term in terms.items() if scan.affirmed(term)}
    return found


class Abstention(StrEnum):
    """Why a model's answer must not be shown as an assessment."""

    EMPTY = "empty"  # nothing, or only punctuation/whitespace, or fewer than ~3 words
    REPETITIVE = "repetitive"  # the text loops: a phrase or sentence repeated
    NO_IMAGE = "no_image"  # denies seeing the image
    OFF_TOPIC = "off_topic"  # not about skin/dermatology at all


MIN_WORDS = 3
# Real answers of a few hundred words repeat a three-word phrase now and then; a looping one
# repeats the same few phrases, so that half or fewer of its three-word phrases are distinct.
MIN_DISTINCT_TRIGRAMS = 0.5
# A loop at the end of an otherwise good answer: one three-word phrase covering a fifth of it.
MAX_TRIGRAM_SHARE = 0.2
MIN_REPEATED_SENTENCE_WORDS = 4
# An answer needs one skin word per this many words: a long recipe that says "red" once is still
# off topic, while a rambling answer that keeps coming back to the skin is not.
WORDS_PER_SKIN_TERM = 100


@functools.cache
def _answer_terms(language: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    vocab = vocabulary(language)
    return vocab.terms("answers", "no_image"), vocab.terms("answers", "dermatology")


def _repetitive(normal: str, words: list[str]) -> bool:
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if len(trigrams) >= 4:
        if len(set(trigrams)) / len(trigrams) < MIN_DISTINCT_TRIGRAMS:
            return True
        top = Counter(trigrams).most_common(1)[0][1]
        if top >= 4 and 3 * top / len(words) >= MAX_TRIGRAM_SHARE:
            return True
    sentences = Counter(
        " ".join(sentence_words)
        for sentence in re.split(r"[.!?\n\u061f\u06d4…]+", normal)
        if len(sentence_words := _WORD.findall(sentence)) >= MIN_REPEATED_SENTENCE_WORDS
    )
    return any(count > 1 for count in sentences.values())


def judge_answer(text: str, language: str) -> Abstention | None:
    """Why a model answer must not be shown as an assessment, or None when it is usable.
    Uses the answer language's vocabulary and always the English one."""
    normal = normalise(text)
    words = _WORD.findall(normal)
    if len(words) < MIN_WORDS:
        return Abstention.EMPTY
    terms = [_answer_terms(vocab.language) for vocab in _with_english(language)]
    if any(no_image.search(normal) for no_image, _ in terms):
        return Abstention.NO_IMAGE
    if _repetitive(normal, words):
        return Abstention.REPETITIVE
    skin_terms = {match.start() for _, skin in terms for match in skin.finditer(normal)}
    if len(skin_terms) * WORDS_PER_SKIN_TERM < len(words):
        return Abstention.OFF_TOPIC
    return None
