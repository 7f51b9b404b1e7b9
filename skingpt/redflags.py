r"""Medical red flags: signs in a person's words or in a model's answer that need a clinician soon
or emergency care, whatever else the model says.

Rules and word lists live in ``skingpt/rules/<language>.toml``, one file per language, so that a
clinician can review each language in one place. A rule fires when every one of its concept groups
has a term in the text that is not negated. Patterns are regular expressions matched against
normalised text (see :func:`normalise`), from a word start to a word end: endings are written out,
as in ``blister\w*``. ``@name`` in a list stands for every pattern of the concept ``name``.

A term is negated when a negation cue comes before it in the same clause, with at most
``negation_window`` words between them ("no fever", "sin fiebre", "n'a pas de fièvre",
"لا توجد حمى"). Clauses end at punctuation and at contrast words ("but", "pero", "mais", "لكن"), so
"no fever yesterday, but today a fever" still counts the second fever; a negation also stops at
"and", so "no fever and the redness spreads" keeps the redness. In a model's answer, terms after a
condition in the same sentence ("see a doctor if a fever develops") are advice, not findings, and
do not count.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "es", "fr", "ar")
DEFAULT_LANGUAGE = "en"


PHOTO_CONCEPT = "@rash"


class Urgency(StrEnum):
    """How fast the person should get care."""

    EMERGENCY = "emergency"  # call emergency services / go to an emergency department now
    TODAY = "today"  # see a clinician today
    SOON = "soon"  # see a clinician within days (e.g. a fast-changing mole)


_URGENCY_RANK = {Urgency.EMERGENCY: 0, Urgency.TODAY: 1, Urgency.SOON: 2}


@dataclass(frozen=True)
class RedFlag:
    """A rule that fired, with its advice in the person's language."""

    rule: str  # language-independent id, the same in every rules file
    urgency: Urgency
    advice: str


RULE_IDS: tuple[str, ...] = (
    "blistering_mucosa",
    "swelling_breathing",
    "purple_spots_fever",
    "fever_spreading_rash",
    "spreading_red_skin",
    "rash_near_eye",
    "child_infection",
    "changing_mole",
    "shingles",
)

# Characters mapped around the Unicode decomposition that strips accents and Arabic diacritics
# (NFKD turns أ إ آ ؤ ئ into the bare letter plus a hamza or madda mark, which goes). Apostrophes
# and hyphens become spaces in the text only: in a pattern they are regular-expression syntax.
_SPACED = str.maketrans(dict.fromkeys("'\u2019\u2018\u02bc`\u00b4-\u2010\u2011", " "))
_LIGATURES = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE"})
_LETTER_VARIANTS = str.maketrans(
    {
        "\u0640": None,  # tatweel, the stretching stroke
        "\u0671": "\u0627",  # alef wasla: alef
        "\u0629": "\u0647",  # teh marbuta: heh
        "\u0649": "\u064a",  # alef maksura: yeh
        "\u06cc": "\u064a",  # Farsi yeh: yeh
        "\u06a9": "\u0643",  # keheh: kaf
        "\u066b": ".",  # Arabic decimal separator
        **{chr(0x0660 + digit): str(digit) for digit in range(10)},  # Arabic-Indic digits
        **{chr(0x06F0 + digit): str(digit) for digit in range(10)},  # Eastern Arabic-Indic
    }
)

_WORD = re.compile(r"\w+")
# A clause ends at these, as well as at each language's contrast words.
_CLAUSE_PUNCTUATION = re.compile(r"[.,;:!?…\n\u060c\u061b\u061f\u2013\u2014]")
# A condition reaches further, to the end of its sentence: "if it grows, bleeds or itches".
_SENTENCE_PUNCTUATION = re.compile(r"[.;!?…\n\u061b\u061f]")
_PLACEHOLDER = re.compile(r"@(\w+)")


def normalise(text: str) -> str:
    """`text` as patterns see it: lower case, without accents, Arabic diacritics, tatweel or
    invisible format characters, with one form each of alef, heh (for teh marbuta) and yeh (for
    alef maksura), ASCII digits, and apostrophes and hyphens read as spaces."""
    return _fold(text.translate(_SPACED)).casefold()


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    # Marks (accents, Arabic diacritics) and invisible format characters (zero-width spaces
    # and joiners, direction marks) would split a word the patterns should see whole.
    bare = "".join(char for char in decomposed if unicodedata.category(char) not in ("Mn", "Cf"))
    return bare.translate(_LETTER_VARIANTS)


def compile_terms(patterns: Iterable[str], prefix: str = "") -> re.Pattern[str]:
    """One regular expression matching any of `patterns` as whole words, `prefix` allowed before.

    Patterns are folded like the text (but not lower-cased, which would turn ``\\W`` into ``\\w``);
    the match ignores case instead.
    """
    alternatives = "|".join(f"(?:{_fold(pattern)})" for pattern in patterns)
    if not alternatives:
        return re.compile(r"(?!)")  # an empty list matches nothing
    # The word end is checked after the match, so that a pattern may end on punctuation ("%").
    return re.compile(rf"(?<!\w){prefix}(?:{alternatives})(?:(?<!\w)|(?!\w))", re.IGNORECASE)


@dataclass(frozen=True)
class Scan:
    """One normalised text, with where its clauses, negations and conditions are."""

    text: str
    clause_starts: tuple[int, ...]
    sentence_starts: tuple[int, ...]
    scope_stops: tuple[int, ...]
    negations: tuple[tuple[int, int], ...]
    conditions: tuple[int, ...]
    window: int

    def affirmed(self, term: re.Pattern[str], *, conditional_counts: bool = True) -> bool:
        """True when `term` occurs at least once neither negated nor, unless
        `conditional_counts`, inside a conditional clause."""
        return any(
            self._stands(match.start(), conditional_counts) for match in term.finditer(self.text)
        )

    def _stands(self, start: int, conditional_counts: bool) -> bool:
        clause_start = _last_at_or_before(self.clause_starts, start)
        scope_start = max(clause_start, _last_at_or_before(self.scope_stops, start))
        for cue_start, cue_end in self.negations:
            if cue_end > start:
                break
            near = len(_WORD.findall(self.text, cue_end, start)) <= self.window
            if cue_start > scope_start and near:
                return False
        if conditional_counts:
            return True
        sentence_start = _last_at_or_before(self.sentence_starts, start)
        return not any(sentence_start < cue < start for cue in self.conditions)


def _last_at_or_before(positions: Sequence[int], start: int) -> int:
    index = bisect.bisect_right(positions, start)
    return positions[index - 1] if index else -1


@dataclass(frozen=True)
class Rule:
    """One red-flag rule of one language, its concept groups compiled."""

    id: str
    urgency: Urgency
    advice: str
    all_of: tuple[re.Pattern[str], ...]
    # Groups that name the skin problem itself (they hold ``@rash``): a photo of it says as
    # much as the words, so with a photo the person need not write "rash" as well.
    shown_by_photo: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Vocabulary:
    """One language's rules file, read and compiled."""

    language: str
    table: Mapping[str, Any]
    rules: tuple[Rule, ...]
    prefix: str
    window: int
    clause_breaks: re.Pattern[str]
    scope_stops: re.Pattern[str]
    negation: re.Pattern[str]
    not_negation: re.Pattern[str]
    conditional: re.Pattern[str]

    def patterns(self, section: str, key: str) -> list[str]:
        """The patterns listed under ``[section] key``, each ``@concept`` written out."""
        return self.expand(_strings(self.table, section, key, self.language), f"[{section}]")

    def terms(self, section: str, key: str) -> re.Pattern[str]:
        """``[section] key`` compiled, with this language's attached prefixes allowed."""
        return compile_terms(self.patterns(section, key), self.prefix)

    def scan(self, text: str, also: Sequence[Vocabulary] = ()) -> Scan:
        """`text` normalised, with its clause breaks, negation cues and conditions located, by
        this language's cues and those of the languages in `also`."""
        normal = normalise(text)
        clause_starts = {match.start() for match in _CLAUSE_PUNCTUATION.finditer(normal)}
        sentence_starts = {match.start() for match in _SENTENCE_PUNCTUATION.finditer(normal)}
        stops: set[int] = set()
        negations: set[tuple[int, int]] = set()
        conditions: set[int] = set()
        for vocab in (self, *also):
            contrasts = {match.start() for match in vocab.clause_breaks.finditer(normal)}
            clause_starts |= contrasts
            sentence_starts |= contrasts
            stops |= {match.start() for match in vocab.scope_stops.finditer(normal)}
            not_cues = [match.span() for match in vocab.not_negation.finditer(normal)]
            negations |= {
                match.span()
                for match in vocab.negation.finditer(normal)
                if not any(start <= match.start() < end for start, end in not_cues)
            }
            conditions |= {match.start() for match in vocab.conditional.finditer(normal)}
        return Scan(
            text=normal,
            clause_starts=tuple(sorted(clause_starts)),
            sentence_starts=tuple(sorted(sentence_starts)),
            scope_stops=tuple(sorted(stops)),
            negations=tuple(sorted(negations)),
            conditions=tuple(sorted(conditions)),
            window=self.window,
        )

    def expand(self, patterns: list[str], where: str) -> list[str]:
        """`patterns` with each ``@concept`` replaced by the patterns of that concept."""
        concepts = self.table.get("concepts", {})
        expanded: list[str] = []
        for pattern in patterns:
            reference = _PLACEHOLDER.fullmatch(pattern)
            if reference is None:
                expanded.append(pattern)
                continue
            name = reference.group(1)
            if name not in concepts:
                raise ValueError(
                    f"rules/{self.language}.toml {where}: '@{name}' names no entry of "
                    "[concepts]; add it there or fix the name."
                )
            expanded += self.expand(_strings(self.table, "concepts", name, self.language), where)
        return expanded


def _strings(table: Mapping[str, Any], section: str, key: str, language: str) -> list[str]:
    value = table.get(section, {}).get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            f"rules/{language}.toml: [{section}] {key} must be a list of patterns (strings)."
        )
    return value


def _supported(language: str) -> str:
    """The rules language for a language tag ("es-MX" -> "es"), English when it has none."""
    primary = language.replace("_", "-").split("-", 1)[0].strip().lower()
    return primary if primary in LANGUAGES else DEFAULT_LANGUAGE


@functools.cache
def vocabulary(language: str) -> Vocabulary:
    """The rules file of `language` (English for an unknown code), read once."""
    language = _supported(language)
    source = resources.files("skingpt").joinpath("rules", f"{language}.toml")
    table = tomllib.loads(source.read_text(encoding="utf-8"))
    matching = table.get("matching", {})
    window = matching.get("negation_window")
    prefix = matching.get("attached_prefix", "")
    if not isinstance(window, int) or not isinstance(prefix, str):
        raise ValueError(
            f"rules/{language}.toml: [matching] needs negation_window (a number of words) and "
            "attached_prefix (a pattern, or '' for none)."
        )

    def cues(key: str) -> re.Pattern[str]:
        # Cues are written out whole: a prefix could turn "ما" (not) into "لما" (when).
        return compile_terms(_strings(table, "matching", key, language))

    vocab = Vocabulary(
        language=language,
        table=table,
        rules=(),
        prefix=prefix,
        window=window,
        clause_breaks=cues("clause_breaks"),
        scope_stops=cues("negation_stops"),
        negation=cues("negation"),
        not_negation=cues("not_negation"),
        conditional=cues("conditional"),
    )
    vocab = dataclasses.replace(vocab, rules=_read_rules(vocab))
    logger.debug("Read %d red-flag rules for %s", len(vocab.rules), language)
    return vocab


def _read_rules(vocab: Vocabulary) -> tuple[Rule, ...]:
    entries = vocab.table.get("rules", [])
    where = f"rules/{vocab.language}.toml"
    by_id: dict[str, Rule] = {}
    for entry in entries:
        rule_id, urgency, advice = entry.get("id"), entry.get("urgency"), entry.get("advice")
        groups = entry.get("all_of")
        if urgency not in set(Urgency) or not isinstance(advice, str) or not advice.strip():
            raise ValueError(f"{where}: rule {rule_id!r} needs an urgency and advice.")
        if not isinstance(groups, list) or not groups:
            raise ValueError(f"{where}: rule {rule_id!r} needs all_of, a list of concept groups.")
        compiled = []
        shown = set()
        for index, group in enumerate(groups):
            if not isinstance(group, list) or not all(isinstance(item, str) for item in group):
                raise ValueError(f"{where}: rule {rule_id!r}: each group is a list of patterns.")
            compiled.append(compile_terms(vocab.expand(group, f"rule {rule_id}"), vocab.prefix))
            if PHOTO_CONCEPT in group:
                shown.add(index)
        by_id[str(rule_id)] = Rule(
            str(rule_id), Urgency(urgency), advice.strip(), tuple(compiled), frozenset(shown)
        )
    if set(by_id) != set(RULE_IDS) or len(entries) != len(RULE_IDS):
        missing, unknown = set(RULE_IDS) - set(by_id), set(by_id) - set(RULE_IDS)
        raise ValueError(
            f"{where} must define each rule of RULE_IDS once; missing {sorted(missing)}, "
            f"unknown {sorted(unknown)}."
        )
    return tuple(by_id[rule_id] for rule_id in RULE_IDS)


def _matched(
    vocab: Vocabulary,
    text: str,
    *,
    conditional_counts: bool,
    also: Sequence[Vocabulary] = (),
    photo: bool = False,
) -> set[str]:
    scan = vocab.scan(text, also)
    return {
        rule.id
        for rule in vocab.rules
        if all(
            (photo and index in rule.shown_by_photo)
            or scan.affirmed(group, conditional_counts=conditional_counts)
            for index, group in enumerate(rule.all_of)
        )
    }


def _flags(vocab: Vocabulary, rule_ids: set[str]) -> list[RedFlag]:
    rules = sorted(
        (rule for rule in vocab.rules if rule.id in rule_ids),
        key=lambda rule: (_URGENCY_RANK[rule.urgency], RULE_IDS.index(rule.id)),
    )
    return [RedFlag(rule.id, rule.urgency, rule.advice) for rule in rules]


def find_red_flags(text: str, language: str) -> list[RedFlag]:
    """Rules of `language` that match `text` (advice in that language), most urgent first."""
    vocab = vocabulary(language)
    return _flags(vocab, _matched(vocab, text, conditional_counts=True))


def red_flags_in_case(
    user_texts: Sequence[str],
    model_texts: Sequence[str],
    language: str,
    *,
    photo: bool = False,
) -> list[RedFlag]:
    """Rules matched in the person's words (their language's rules) and in the model's output
    (their language's rules AND always the English rules, since the model may answer in English).
    Deduplicated by rule id, most urgent first, advice always in `language`.

    With ``photo`` (the person sent a photo of the skin problem), the person's words need not
    name the rash: "I have a fever and it is spreading" about a photo is a rash that spreads.
    In the model's output a term after a condition in the same sentence ("if a fever develops")
    is general advice rather than something seen, and does not count; in the person's words it
    does.
    """
    vocab = vocabulary(language)
    matched: set[str] = set()
    for text in user_texts:
        matched |= _matched(vocab, text, conditional_counts=True, photo=photo)
    # An answer in one language can trip the other's rules (Latin medical words, words both
    # share), so both languages' negations and conditions apply under either rules.
    model_rules = {
        language: vocabulary(language) for language in (vocab.language, DEFAULT_LANGUAGE)
    }
    for text in model_texts:
        for rules in model_rules.values():
            others = [other for other in model_rules.values() if other is not rules]
            matched |= _matched(rules, text, conditional_counts=False, also=others)
    return _flags(vocab, matched)
