"""The shared answering path: photo, history and question in; a labelled answer out."""

from __future__ import annotations

from pathlib import Path

from skingpt.imaging import load_image
from skingpt.model.modeling import SkinGPT
from skingpt.pipeline import Analyzer
from skingpt.prompts import SYSTEM, Turn
from skingpt.settings import GenerationSettings


def test_answer_on_a_sample_photo_is_labelled_untrained(
    tiny_model: SkinGPT, sample_photos: list[Path]
) -> None:
    analyzer = Analyzer(tiny_model, GenerationSettings(max_new_tokens=16, seed=1))
    image = load_image(sample_photos[0].read_bytes(), max_pixels=10**8)
    answer = analyzer.answer(image, [], "What is this?")
    assert answer.untrained and answer.model_name == "tiny-random"
    assert 1 <= answer.new_tokens <= 16
    assert answer.dropped_turns == 0


def test_same_seed_same_answer_for_the_same_photo(
    tiny_model: SkinGPT, sample_photos: list[Path]
) -> None:
    analyzer = Analyzer(tiny_model, GenerationSettings(max_new_tokens=16, seed=1))
    image = load_image(sample_photos[1].read_bytes(), max_pixels=10**8)
    assert analyzer.answer(image, [], "Q").text == analyzer.answer(image, [], "Q").text


def test_fit_prompt_drops_old_turns_but_keeps_system_and_image(tiny_model: SkinGPT) -> None:
    history = [Turn(f"question {i} " * 20, f"answer {i} " * 20) for i in range(12)]
    generation = GenerationSettings(max_new_tokens=100, max_context_tokens=600)
    prompt, dropped = tiny_model.fit_prompt(history, "latest question", generation)
    assert dropped > 0
    assert tiny_model.prompt_length(prompt) <= 500
    assert prompt.startswith(SYSTEM)
    assert "<Img><ImageHere></Img> question " in prompt
    assert "question 11" in prompt and "question 0 " not in prompt
    assert prompt.endswith("latest question###Assistant:")


def test_fit_prompt_shortens_a_huge_question_last(tiny_model: SkinGPT) -> None:
    generation = GenerationSettings(max_new_tokens=100, max_context_tokens=400)
    prompt, _ = tiny_model.fit_prompt([], "why " * 2000, generation)
    assert tiny_model.prompt_length(prompt) <= 300
    assert prompt.startswith(SYSTEM) and "<ImageHere>" in prompt


def test_plan_asks_the_four_clinical_questions_then_the_persons_own() -> None:
    from skingpt.pipeline import ANALYSIS, FOLLOWUP, plan
    from skingpt.prompts import CLINICAL_QUESTIONS, DEFAULT_QUESTION

    assert plan(ANALYSIS, DEFAULT_QUESTION) == list(CLINICAL_QUESTIONS)
    assert plan(ANALYSIS, "Is it serious?") == [
        *CLINICAL_QUESTIONS,
        ("question", "Is it serious?"),
    ]
    assert plan(FOLLOWUP, "Is it serious?") == [("answer", "Is it serious?")]
