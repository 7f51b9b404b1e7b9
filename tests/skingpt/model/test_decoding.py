"""Several requests decoded together: each row gets what it would get alone, and stops alone."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from skingpt.imaging import load_image
from skingpt.model import decoding
from skingpt.model.base import Request
from skingpt.model.decoding import Continuation, Prompt
from skingpt.model.modeling import SkinGPT, build_random, build_tiny_random
from skingpt.model.presets import TINY_RANDOM
from skingpt.model.scripted import load_scripted
from skingpt.prompts import SEPARATOR, Turn
from skingpt.settings import GenerationSettings

DATA = Path(__file__).parents[2] / "data"
GREEDY = GenerationSettings(max_new_tokens=24, do_sample=False)
SAMPLING = GenerationSettings(max_new_tokens=16)
# Different questions and histories, so that the prompts differ in length and get padded.
CONVERSATIONS: list[tuple[list[Turn], str]] = [
    ([], "What is this?"),
    ([Turn("Is it bad?", "It looks like a mild rash.")], "Should I see a doctor?"),
    ([], "An itchy red plaque on my arm for three weeks: what could it be?"),
    ([Turn("Does it spread?", "It can."), Turn("How fast?", "Over days.")], "Why?"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these small steps gain nothing from more, and lose much on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scaled_model() -> SkinGPT:
    """tiny-random's architecture with a language model of a few layers and hidden size 256."""
    text = {**TINY_RANDOM.text, "hidden_size": 256, "intermediate_size": 688}
    text |= {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8}
    return build_random(dataclasses.replace(TINY_RANDOM, name="scaled-random", text=text), seed=1)


@pytest.fixture(scope="module")
def stop_prone_model() -> SkinGPT:
    """tiny-random changed so that at every step ``#`` and end of sequence are likely.

    Every token embedding gets a large first component, which dominates the normalized hidden
    state, and the output rows of ``#`` and ``</s>`` read only that component: their logits
    are then high whatever the context. ``###`` needs three ``#`` in a row, so it always spans
    several tokens.
    """
    model = build_tiny_random()
    language_model = model.model.language_model
    tokenizer = model.tokenizer
    with torch.no_grad():
        language_model.get_input_embeddings().weight[:, 0] += 1.0
        head = language_model.lm_head.weight
        for token, weight in ((tokenizer.convert_tokens_to_ids("#"), 0.7), (_eos(model), 0.45)):
            head[token] = 0.0
            head[token, 0] = weight
    return model


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    paths = sorted(p for p in DATA.iterdir() if p.suffix in {".jpg", ".png"})
    return [load_image(path.read_bytes(), max_pixels=10**8) for path in paths[:4]]


def _eos(model: SkinGPT) -> int:
    return int(model.tokenizer.eos_token_id)


def _prompts(
    model: SkinGPT,
    photos: Sequence[Image.Image],
    generation: GenerationSettings,
    seeds: Sequence[int | None] = (None, None, None, None),
) -> list[Prompt]:
    prompts = []
    for photo, (history, question), seed in zip(photos, CONVERSATIONS, seeds, strict=True):
        prompt, _ = model.fit_prompt(history, question, generation)
        inputs_embeds = model.embed_prompt(prompt, model.image_embeddings(photo))[0]
        prompts.append(Prompt(inputs_embeds, generation, seed))
    return prompts


def _decode(model: SkinGPT, prompts: Sequence[Prompt]) -> list[Continuation]:
    return decoding.decode(
        model.model.language_model,
        prompts,
        tokenizer=model.tokenizer,
        eos_token_ids=[_eos(model)],
    )


def _alone(model: SkinGPT, prompts: Sequence[Prompt]) -> list[list[int]]:
    return [_decode(model, [prompt])[0].token_ids for prompt in prompts]


@pytest.mark.parametrize("name", ["tiny_model", "scaled_model"])
def test_greedy_rows_in_a_batch_get_the_tokens_they_get_alone(
    name: str, request: pytest.FixtureRequest, photos: list[Image.Image]
) -> None:
    model: SkinGPT = request.getfixturevalue(name)
    prompts = _prompts(model, photos, GREEDY)
    assert len({prompt.inputs_embeds.shape[0] for prompt in prompts}) == len(prompts)
    batched = [row.token_ids for row in _decode(model, prompts)]
    assert batched == _alone(model, prompts)
    assert len({tuple(tokens) for tokens in batched}) == len(prompts)
    assert max(len(tokens) for tokens in batched) == GREEDY.max_new_tokens


def test_greedy_decoding_matches_transformers_generate(
    tiny_model: SkinGPT, photos: list[Image.Image]
) -> None:
    penalized = GenerationSettings(max_new_tokens=20, do_sample=False, repetition_penalty=1.3)
    prompt = _prompts(tiny_model, photos, penalized)[1]
    eos = _eos(tiny_model)
    warning = "penalty only to newly generated tokens"  # as decode applies it
    with pytest.warns(UserWarning, match=warning):
        expected = tiny_model.model.language_model.generate(
            inputs_embeds=prompt.inputs_embeds[None],
            attention_mask=torch.ones(1, prompt.inputs_embeds.shape[0], dtype=torch.long),
            do_sample=False,
            max_new_tokens=20,
            repetition_penalty=1.3,
            top_p=None,
            top_k=None,
            temperature=None,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    assert _decode(tiny_model, [prompt])[0].token_ids == expected[0].tolist()
    unpenalized = Prompt(
        prompt.inputs_embeds, GenerationSettings(max_new_tokens=20, do_sample=False)
    )
    assert _decode(tiny_model, [unpenalized])[0].token_ids != expected[0].tolist()


def test_top_p_and_repetition_penalty_match_transformers_per_row() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

    rows = [(0.5, 1.2), (0.9, 1.0), (1.0, 0.8)]  # (top_p, repetition_penalty)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    generated = torch.tensor([[4, 4, 9], [1, 2, 3], [7, 8, 0]])
    settings = [GenerationSettings(top_p=p, repetition_penalty=r) for p, r in rows]
    penalized = decoding._penalize_repetition(logits, generated, settings)
    kept = decoding._keep_top_p(penalized, torch.tensor([p for p, _ in rows]))
    for row, (top_p, penalty) in enumerate(rows):
        expected = RepetitionPenaltyLogitsProcessor(penalty)(
            generated[row : row + 1], logits[row : row + 1]
        )
        expected = TopPLogitsWarper(top_p)(generated[row : row + 1], expected)
        assert torch.equal(kept[row], expected[0]), row
    assert bool(torch.isinf(kept[0]).any()) and not bool(torch.isinf(kept[2]).any())


def test_a_seeded_row_samples_the_same_whatever_its_batch_mates(
    tiny_model: SkinGPT, photos: list[Image.Image]
) -> None:
    first = _prompts(tiny_model, photos, SAMPLING, seeds=(7, 1, 2, 3))
    second = _prompts(tiny_model, photos, SAMPLING, seeds=(11, None, 7, None))
    alone = _decode(tiny_model, [first[0]])[0].token_ids
    mates = [first[0], first[1], first[2]]
    assert _decode(tiny_model, mates)[0].token_ids == alone
    moved = Prompt(first[0].inputs_embeds, SAMPLING, 7)
    other_mates = [second[1], second[3], moved]
    assert _decode(tiny_model, other_mates)[2].token_ids == alone

    same_prompt = [Prompt(first[0].inputs_embeds, SAMPLING, seed) for seed in (7, 8, 9, None)]
    answers = {tuple(row.token_ids) for row in _decode(tiny_model, same_prompt)}
    assert len(answers) == 4


def test_unseeded_rows_draw_fresh_samples(tiny_model: SkinGPT, photos: list[Image.Image]) -> None:
    prompt = _prompts(tiny_model, photos, SAMPLING)[0]
    assert _decode(tiny_model, [prompt])[0].token_ids != _decode(tiny_model, [prompt])[0].token_ids


def test_each_row_stops_on_its_own(stop_prone_model: SkinGPT, photos: list[Image.Image]) -> None:
    generation = GenerationSettings(max_new_tokens=30)
    prompt = _prompts(stop_prone_model, photos, generation)[0]
    seeded = [Prompt(prompt.inputs_embeds, generation, seed) for seed in range(8)]
    alone = _alone(stop_prone_model, seeded)
    # Shortest first: the reference decoder stops the whole batch when the first row stops.
    order = sorted(range(len(seeded)), key=lambda index: len(alone[index]))
    batched = _decode(stop_prone_model, [seeded[index] for index in order])
    assert [row.token_ids for row in batched] == [alone[index] for index in order]

    reasons = Counter(row.stopped_by for row in batched)
    assert set(reasons) == {"eos", "separator", "max_new_tokens"}, reasons
    lengths = [len(row.token_ids) for row in batched]
    assert lengths[0] < lengths[-1] == generation.max_new_tokens
    tokenizer = stop_prone_model.tokenizer
    for row in batched:
        ids = row.token_ids
        before = ids[:-1]
        # No row goes on after its stop, and none stops before it.
        assert _eos(stop_prone_model) not in before
        assert not decoding.contains_separator(tokenizer, before)
        if row.stopped_by == "eos":
            assert ids[-1] == _eos(stop_prone_model)
        elif row.stopped_by == "separator":
            assert tokenizer.decode(ids).endswith(SEPARATOR)
            assert SEPARATOR not in tokenizer.convert_ids_to_tokens(ids[-1])
        assert row.seconds <= batched[-1].seconds


def test_separator_is_found_across_tokens(tiny_model: SkinGPT) -> None:
    tokenizer = tiny_model.tokenizer
    hash_, double = tokenizer.convert_tokens_to_ids(["#", "##"])
    assert decoding.contains_separator(tokenizer, [40, hash_, double])
    assert not decoding.contains_separator(tokenizer, [40, hash_, 40, double])


def test_each_row_keeps_its_own_token_and_time_limits(
    tiny_model: SkinGPT, photos: list[Image.Image]
) -> None:
    limits = [3, 11, 24, 1]
    prompts = [
        Prompt(p.inputs_embeds, GenerationSettings(max_new_tokens=n, do_sample=False))
        for p, n in zip(_prompts(tiny_model, photos, GREEDY), limits, strict=True)
    ]
    batched = _decode(tiny_model, prompts)
    assert [len(row.token_ids) for row in batched] == limits
    assert {row.stopped_by for row in batched} == {"max_new_tokens"}
    assert [row.token_ids for row in batched] == _alone(tiny_model, prompts)

    hurried = GenerationSettings(max_new_tokens=200, do_sample=False, max_seconds=1e-4)
    patient = GenerationSettings(max_new_tokens=40, do_sample=False)
    mixed = [Prompt(prompts[0].inputs_embeds, hurried), Prompt(prompts[1].inputs_embeds, patient)]
    quick, slow = _decode(tiny_model, mixed)
    assert quick.stopped_by == "max_seconds" and len(quick.token_ids) < 5
    assert slow.stopped_by == "max_new_tokens" and len(slow.token_ids) == 40


def test_answer_many_answers_each_request_as_answer_does(
    tiny_model: SkinGPT, photos: list[Image.Image]
) -> None:
    long_history = [Turn(f"question {i} " * 8, f"answer {i} " * 8) for i in range(8)]
    tight = GenerationSettings(max_new_tokens=12, do_sample=False, max_context_tokens=200)
    requests = [
        Request(photo, history, question, GREEDY)
        for photo, (history, question) in zip(photos, CONVERSATIONS, strict=True)
    ]
    requests.append(Request(photos[0], long_history, "And now?", tight))
    requests.append(Request(photos[1], [], "What is this?", SAMPLING, seed=3))
    batched = tiny_model.answer_many(requests)
    for request, generated in zip(requests, batched, strict=True):
        alone = tiny_model.answer(
            request.image, request.history, request.question, request.generation, seed=request.seed
        )
        assert generated.text == alone.text
        assert generated.new_tokens == alone.new_tokens
        assert generated.prompt_positions == alone.prompt_positions > 32
        assert generated.dropped_turns == alone.dropped_turns
        assert generated.seconds > 0
    assert batched[4].dropped_turns > 0 and batched[0].dropped_turns == 0
    assert tiny_model.answer_many([]) == []


def test_a_bf16_model_decodes_a_batch_sampling_in_fp32(photos: list[Image.Image]) -> None:
    model = build_tiny_random()
    model.model.to(torch.bfloat16)
    requests = [
        Request(photos[0], [], "What is this?", GREEDY),
        Request(photos[1], CONVERSATIONS[1][0], "Sure?", SAMPLING, seed=4),
    ]
    # Padding, cache and embeddings stay in bf16 while the logits are processed in fp32.
    first, second = model.answer_many(requests)
    again = model.answer_many(requests)
    assert [g.text for g in again] == [first.text, second.text]
    assert first.new_tokens >= 1 and second.new_tokens >= 1


def test_scripted_answer_many_answers_in_order() -> None:
    model = load_scripted(DATA / "scripted" / "samples.toml")
    photos = [load_image(p.read_bytes(), max_pixels=10**8) for p in sorted(DATA.glob("*.jpg"))]
    requests = [Request(photo, [], "What is this?", GREEDY) for photo in photos[:3]]
    answers = model.answer_many(requests)
    assert model.vision_encoder_runs == len(requests)
    assert [a.text for a in answers] == [
        model.answer(r.image, [], r.question, GREEDY, seed=None).text for r in requests
    ]
    assert len({a.text for a in answers}) == len(requests)
