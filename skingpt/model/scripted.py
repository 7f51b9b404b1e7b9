"""A model stand-in that answers from a TOML script: realistic canned text for tests only.

A script lists cases, each naming the sample photos it belongs to and its answers to the four
clinical questions (:data:`skingpt.prompts.CLINICAL_QUESTIONS`), optional per-language variants,
and keyword-triggered follow-up answers. An incoming photo selects the case whose photo has the
nearest perceptual fingerprint, so the photos survive the bot's resizing and JPEG re-encoding;
a photo like none of them gets the script's ``[default]`` case. Layout::

    max_distance = 24               # optional: most differing fingerprint bits still a match
    seconds_per_answer = 0.25       # optional: how long each answer takes, as a model's would

    [default]                       # same tables as a case, without ``images``
    ...

    [[cases]]
    name = "psoriasis_01"           # optional: the first photo's file stem
    images = ["../psoriasis_01.jpg"]  # relative to the script
    followup_default = "..."

    [cases.answers]                 # describe, features, cause, treatment: all four required
    describe = "..."

    [cases.answers.es]              # optional, any of the four and followup_default
    describe = "..."

    [[cases.followups]]
    when = ["contagious", "catch"]  # lowercase keywords or stems, found anywhere in the question
    answer = "..."
    answers = { es = "..." }        # optional

A case (or the default) may also carry, for fault-injection tests:

    seconds_per_answer = 2.0        # this case's answers take longer (or shorter) than the rest
    fault = "oom"                   # every answer about this photo fails instead:
                                    #   "oom"  raises torch's CUDA out-of-memory error
                                    #   "nan"  raises the RuntimeError sampling gives on NaN/inf
                                    #   "exit" ends the process at once, as a crash in native code
                                    #          would (in a Celery worker: the child dies mid-job)
"""

from __future__ import annotations

import logging
import os
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skingpt import prompts
from skingpt.errors import ConfigError, ImageRejected
from skingpt.imaging import load_image
from skingpt.model.base import Generated, Request
from skingpt.settings import GenerationSettings

logger = logging.getLogger(__name__)

ANSWER_KEYS = tuple(key for key, _ in prompts.CLINICAL_QUESTIONS)
FOLLOWUP_DEFAULT = "followup_default"

FINGERPRINT_BITS = 128

# Fingerprints of the same photo after resizing to 320 px and JPEG quality 70 differ in at most
# about 10 of 128 bits; different sample photos differ in 35 or more.
MAX_DISTANCE = 24

_MAX_PIXELS = 100_000_000
_QUESTION_KEYS = {" ".join(text.split()): key for key, text in prompts.CLINICAL_QUESTIONS}
_LANGUAGE_CODES = {name: code for code, name in prompts.LANGUAGE_NAMES.items()}
_LANGUAGE_REQUEST = re.compile(r"\s*Please answer in ([A-Za-z]+)\.\s*$")
_WORD = re.compile(r"\S+")
_SCRIPT_KEYS = {"max_distance", "seconds_per_answer", "default", "cases"}
_CASE_KEYS = {
    "name",
    "images",
    "answers",
    "followups",
    FOLLOWUP_DEFAULT,
    "fault",
    "seconds_per_answer",
}
FAULTS = ("oom", "nan", "exit")
_FOLLOWUP_KEYS = {"when", "answer", "answers"}


def fingerprint(image: Image.Image) -> int:
    """A 128-bit difference hash: which neighbour is brighter in two tiny greyscale copies."""
    grey = image.convert("L")
    # Box averaging over whole blocks washes out JPEG noise and resampling detail.
    across = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)  # (8, 9)
    down = np.asarray(grey.resize((8, 9), Image.Resampling.BOX), dtype=np.int16)  # (9, 8)
    bits = np.concatenate(
        [(across[:, 1:] > across[:, :-1]).ravel(), (down[1:, :] > down[:-1, :]).ravel()]
    )
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def distance(first: int, second: int) -> int:
    """How many bits two fingerprints differ in (Hamming distance)."""
    return (first ^ second).bit_count()


def split_language(question: str) -> tuple[str, str]:
    """The question without a trailing "Please answer in X." and the language code it asked for.

    An unknown language name is removed too and answered in English.
    """
    found = _LANGUAGE_REQUEST.search(question)
    language = "en"
    if found:
        language = _LANGUAGE_CODES.get(found.group(1), "en")
        question = question[: found.start()]
    return " ".join(question.split()), language


@dataclass(frozen=True)
class FollowUp:
    """A follow-up answer given when the question holds any of the keywords."""

    when: tuple[str, ...]
    answers: Mapping[str, str]  # language code -> text; "en" always present


@dataclass(frozen=True)
class Case:
    """What the script says about one photo (or the default for photos it does not know)."""

    name: str
    answers: Mapping[str, Mapping[str, str]]  # language code -> answer key -> text
    followups: tuple[FollowUp, ...]
    fingerprints: tuple[int, ...] = ()
    fault: str | None = None  # one of FAULTS: how every answer about this photo fails
    seconds: float | None = None  # this case's own seconds_per_answer

    def respond(self, question: str) -> str:
        """The scripted answer to ``question``, in the language it asks for where written."""
        asked, language = split_language(question)
        key = _QUESTION_KEYS.get(asked)
        if key is None:
            lowered = asked.casefold()
            for followup in self.followups:
                if any(word in lowered for word in followup.when):
                    return followup.answers.get(language, followup.answers["en"])
            key = FOLLOWUP_DEFAULT
        return self.answers.get(language, {}).get(key, self.answers["en"][key])


class ScriptedVLM:
    """Answers like a model would, from a script; always labelled as a test model.

    Args:
        name: shown in replies, e.g. ``scripted:samples``.
        cases: the cases photos are matched against.
        default: the case for photos further than ``max_distance`` from every case.
        max_distance: the most fingerprint bits a photo may differ in and still match a case.
    """

    def __init__(
        self,
        name: str,
        cases: Sequence[Case],
        default: Case,
        *,
        max_distance: int,
        seconds_per_answer: float = 0.0,
    ) -> None:
        self.name = name
        # Canned text must never pass as a diagnosis: replies carry the test-model banner.
        self.untrained = True
        self.vision_encoder_runs = 0
        self.cases = tuple(cases)
        self.default = default
        self.max_distance = max_distance
        self.seconds_per_answer = seconds_per_answer

    def match(self, image: Image.Image) -> tuple[Case, int]:
        """The case nearest to ``image`` and its distance; the default case when none is near."""
        probe = fingerprint(image)
        best, best_distance = self.default, FINGERPRINT_BITS + 1
        for case in self.cases:
            for known in case.fingerprints:
                if distance(probe, known) < best_distance:
                    best, best_distance = case, distance(probe, known)
        if best_distance > self.max_distance:
            return self.default, best_distance
        return best, best_distance

    def answer(
        self,
        image: Image.Image,
        history: Sequence[prompts.Turn],
        question: str,
        generation: GenerationSettings,
        *,
        seed: int | None,
    ) -> Generated:
        """The scripted answer, cut to ``max_new_tokens`` words; ``seed`` changes nothing."""
        started = time.monotonic()
        self.vision_encoder_runs += 1
        case, away = self.match(image)
        logger.debug("Scripted case %s matched at distance %d", case.name, away)
        if case.fault is not None:
            _fail(case)
        text, words = _cap_words(case.respond(question), generation.max_new_tokens)
        # A real model takes seconds; queue and status behaviour are only visible if this does.
        time.sleep(self.seconds_per_answer if case.seconds is None else case.seconds)
        return Generated(
            text=text,
            new_tokens=words,
            seconds=time.monotonic() - started,
            prompt_positions=len(prompts.build_prompt(history, question).split()),
        )

    def answer_many(self, requests: Sequence[Request]) -> list[Generated]:
        """Answer the requests one after another, in order, each taking its own scripted time.

        A faulty case's error ends the whole call, as an error in a real batch does.
        """
        return [
            self.answer(r.image, r.history, r.question, r.generation, seed=r.seed)
            for r in requests
        ]


def _fail(case: Case) -> None:
    """Fail the way a real model fails, so that the code around it meets the real errors."""
    # Tests count these lines to know how often the model ran on a faulty photo.
    logger.info("Scripted fault %s in case %s", case.fault, case.name)
    if case.fault == "exit":
        logging.shutdown()
        os._exit(1)
    if case.fault == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (scripted fault)"
        )
    raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")


def load_scripted(path: Path) -> ScriptedVLM:
    """Read a script and fingerprint its photos; errors name the file and what to fix."""
    if not path.is_file():
        raise ConfigError(
            f"The model script {path} does not exist: set SKINGPT_SCRIPT to a script .toml file."
        )
    try:
        script = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid UTF-8 TOML ({error}); fix it there.") from None
    _check_keys(path, "the top level", script, _SCRIPT_KEYS)
    max_distance = script.get("max_distance", MAX_DISTANCE)
    if not isinstance(max_distance, int) or not 0 <= max_distance <= FINGERPRINT_BITS:
        raise ConfigError(
            f"{path}: max_distance must be a whole number from 0 to {FINGERPRINT_BITS}."
        )
    seconds = script.get("seconds_per_answer", 0.0)
    if not isinstance(seconds, int | float) or not 0 <= seconds <= 60:
        raise ConfigError(f"{path}: seconds_per_answer must be a number from 0 to 60.")
    if not isinstance(script.get("default"), dict):
        raise ConfigError(f"{path} has no [default] case; add one for photos it does not list.")
    default = _read_case(path, "[default]", script["default"], with_images=False)
    cases_table = script.get("cases", [])
    if not isinstance(cases_table, list):
        raise ConfigError(f"{path}: write each case as a [[cases]] table.")
    cases = [
        _read_case(path, f"case {index + 1}", table, with_images=True)
        for index, table in enumerate(cases_table)
    ]
    _check_distinct(path, cases, max_distance)
    logger.info("Loaded the model script %s: %d cases and a default", path.name, len(cases))
    return ScriptedVLM(
        f"scripted:{path.stem}",
        cases,
        default,
        max_distance=max_distance,
        seconds_per_answer=float(seconds),
    )


def _read_case(path: Path, where: str, table: Any, *, with_images: bool) -> Case:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table.")
    allowed = _CASE_KEYS if with_images else _CASE_KEYS - {"images"}
    _check_keys(path, where, table, allowed)
    fingerprints: tuple[int, ...] = ()
    name = table.get("name", "default")
    if with_images:
        images = table.get("images")
        if not images or not isinstance(images, list):
            raise ConfigError(f'{path}: {where} needs images = ["photo.jpg", ...].')
        fingerprints = tuple(_fingerprint_file(path, where, image) for image in images)
        name = table.get("name", Path(str(images[0])).stem)
    if not isinstance(name, str):
        raise ConfigError(f"{path}: the name of {where} must be a string.")
    where = f"case {name!r}" if with_images else where
    answers = _read_answers(path, where, table.get("answers"))
    answers["en"][FOLLOWUP_DEFAULT] = _text(path, where, FOLLOWUP_DEFAULT, table)
    followups = table.get("followups", [])
    if not isinstance(followups, list):
        raise ConfigError(f"{path}: write the follow-ups of {where} as [[...followups]] tables.")
    fault = table.get("fault")
    if fault is not None and fault not in FAULTS:
        raise ConfigError(f"{path}: the fault of {where} must be one of {', '.join(FAULTS)}.")
    seconds = table.get("seconds_per_answer")
    if seconds is not None and (not isinstance(seconds, int | float) or not 0 <= seconds <= 60):
        raise ConfigError(f"{path}: seconds_per_answer of {where} must be a number from 0 to 60.")
    return Case(
        name=name,
        answers=answers,
        followups=tuple(_read_followup(path, where, entry) for entry in followups),
        fingerprints=fingerprints,
        fault=fault,
        seconds=None if seconds is None else float(seconds),
    )


def _read_answers(path: Path, where: str, table: Any) -> dict[str, dict[str, str]]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} needs an answers table with {', '.join(ANSWER_KEYS)}.")
    languages = [code for code in prompts.LANGUAGE_NAMES if code != "en"]
    _check_keys(path, f"the answers of {where}", table, {*ANSWER_KEYS, *languages})
    label = f"the answers of {where}"
    answers = {"en": {key: _text(path, label, key, table) for key in ANSWER_KEYS}}
    for code in languages:
        if code in table:
            variant = table[code]
            label = f"the {code} answers of {where}"
            if not isinstance(variant, dict):
                raise ConfigError(f"{path}: {label} must be a table.")
            _check_keys(path, label, variant, {*ANSWER_KEYS, FOLLOWUP_DEFAULT})
            answers[code] = {key: _text(path, label, key, variant) for key in variant}
    return answers


def _read_followup(path: Path, where: str, table: Any) -> FollowUp:
    label = f"a follow-up of {where}"
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {label} must be a table.")
    _check_keys(path, label, table, _FOLLOWUP_KEYS)
    when = table.get("when")
    if (
        not isinstance(when, list)
        or not when
        or not all(isinstance(word, str) and word.strip() for word in when)
    ):
        raise ConfigError(f'{path}: {label} needs when = ["keyword", ...] with words in it.')
    answers = {"en": _text(path, label, "answer", table)}
    variants = table.get("answers", {})
    if not isinstance(variants, dict):
        raise ConfigError(f"{path}: the answers of {label} must be a table of languages.")
    languages = {code for code in prompts.LANGUAGE_NAMES if code != "en"}
    _check_keys(path, f"the answers of {label}", variants, languages)
    answers.update({code: _text(path, label, code, variants) for code in variants})
    return FollowUp(when=tuple(word.strip().casefold() for word in when), answers=answers)


def _text(path: Path, where: str, key: str, table: Mapping[str, Any]) -> str:
    if key not in table:
        raise ConfigError(f'{path}: {where} lacks {key!r}; add {key} = "..." there.')
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key!r} in {where} must be a string.")
    return value.strip()


def _fingerprint_file(path: Path, where: str, image: Any) -> int:
    if not isinstance(image, str):
        raise ConfigError(f"{path}: the images of {where} must be file names (strings).")
    photo = path.parent / image
    if not photo.is_file():
        raise ConfigError(
            f"{path}: {where} names the photo {image!r}, but {photo} does not exist. "
            "Image paths are relative to the script."
        )
    try:
        return fingerprint(load_image(photo.read_bytes(), max_pixels=_MAX_PIXELS))
    except ImageRejected as error:
        raise ConfigError(f"{path}: {where} names {photo}, which is unusable: {error}") from None


def _check_distinct(path: Path, cases: Sequence[Case], max_distance: int) -> None:
    for index, case in enumerate(cases):
        for other in cases[index + 1 :]:
            closest = min(
                distance(mine, theirs)
                for mine in case.fingerprints
                for theirs in other.fingerprints
            )
            if closest <= max_distance:
                raise ConfigError(
                    f"{path}: the photos of cases {case.name!r} and {other.name!r} are too alike "
                    f"to tell apart ({closest} bits differ, max_distance is {max_distance}). "
                    "Use different photos or lower max_distance."
                )


def _check_keys(path: Path, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}: {where} has unknown keys {', '.join(unknown)}; "
            f"allowed are {', '.join(sorted(allowed))}."
        )


def _cap_words(text: str, max_words: int) -> tuple[str, int]:
    """The text cut after ``max_words`` whitespace-separated words, and how many it keeps."""
    words = list(_WORD.finditer(text))
    if len(words) <= max_words:
        return text, len(words)
    return text[: words[max_words - 1].end()], max_words
