"""SkinGPT-4 on transformers' BLIP-2 classes: full-size shapes, and the tiny model at work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from skingpt.errors import ModelUnavailable
from skingpt.model.modeling import (
    SkinGPT,
    build_on_meta,
    build_tiny_random,
    load_pretrained,
    parameter_counts,
    save_pretrained,
)
from skingpt.model.presets import SKINGPT4_LLAMA2_13B
from skingpt.model.tokenizer import build_tiny_tokenizer
from skingpt.prompts import SEPARATOR, build_prompt
from skingpt.settings import GenerationSettings

GREEDY = GenerationSettings(max_new_tokens=12, do_sample=False)


def test_full_preset_has_skingpt4_sizes_on_the_meta_device() -> None:
    model = build_on_meta(SKINGPT4_LLAMA2_13B)
    counts = parameter_counts(model)
    assert counts == {
        "vision_encoder": 985_952_256,
        "qformer": 105_137_664 + 32 * 768,
        "projection": 3_937_280,
        "language_model": 13_015_864_320,
    }
    assert model.language_projection.weight.shape == (5120, 768)
    assert model.query_tokens.shape == (1, 32, 768)
    assert model.vision_model.embeddings.position_embedding.shape == (1, 257, 1408)
    cross = model.qformer.encoder.layer[0].crossattention.attention.key.weight
    assert cross.shape == (768, 1408)
    assert model.vision_model.post_layernorm.eps == 1e-5
    assert model.vision_model.encoder.layers[0].layer_norm1.eps == 1e-6
    assert model.language_model.model.embed_tokens.weight.shape == (32000, 5120)
    assert model.vision_model.post_layernorm.weight.is_meta


def test_tiny_tokenizer_is_deterministic_and_llama_shaped() -> None:
    first, second = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert (first.unk_token_id, first.bos_token_id, first.eos_token_id) == (0, 1, 2)
    assert first.pad_token is None
    text = "Is it contagious? ¿Es contagioso? هل هو معدٍ؟ 🙂"
    assert first.decode(first(text, add_special_tokens=False).input_ids) == text


def test_tiny_model_builds_deterministically(tiny_model: SkinGPT) -> None:
    other = build_tiny_random()
    for (name, mine), (_, theirs) in zip(
        tiny_model.model.state_dict().items(), other.model.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name


def test_encode_image_gives_32_embeddings_per_image(tiny_model: SkinGPT) -> None:
    before = tiny_model.vision_encoder_runs
    embeds = tiny_model.encode_image(torch.randn(2, 3, 224, 224))
    assert embeds.shape == (2, 32, tiny_model.model.config.text_config.hidden_size)
    assert tiny_model.vision_encoder_runs == before + 2


def test_prompt_is_tokenized_by_segment_with_bos_only_first(tiny_model: SkinGPT) -> None:
    prompt = build_prompt([], "What is this?")
    ids_before, ids_after = tiny_model.prompt_token_ids(prompt)
    bos = tiny_model.tokenizer.bos_token_id
    assert ids_before[0] == bos and bos not in ids_before[1:] and bos not in ids_after
    before, after = prompt.split("<ImageHere>")
    assert tiny_model.tokenizer.decode(ids_before[1:]) == before
    assert tiny_model.tokenizer.decode(ids_after) == after


def test_embed_prompt_splices_the_image_where_the_placeholder_stands(
    tiny_model: SkinGPT,
) -> None:
    prompt = build_prompt([], "What is this?")
    image_embeds = torch.randn(32, tiny_model.model.config.text_config.hidden_size)
    embeds = tiny_model.embed_prompt(prompt, image_embeds)
    ids_before, ids_after = tiny_model.prompt_token_ids(prompt)
    start = len(ids_before)
    assert embeds.shape[1] == tiny_model.prompt_length(prompt) == start + 32 + len(ids_after)
    assert torch.equal(embeds[0, start : start + 32], image_embeds)
    token_table = tiny_model.model.get_input_embeddings().weight
    assert torch.equal(embeds[0, 0], token_table[ids_before[0]])
    assert torch.equal(embeds[0, start + 32], token_table[ids_after[0]])


def test_generate_stops_at_the_separator(tiny_model: SkinGPT) -> None:
    # Make the separator's tokens overwhelmingly likely: generation must stop right after it.
    separator_ids = tiny_model.tokenizer(SEPARATOR, add_special_tokens=False).input_ids
    model = build_tiny_random()
    head = model.model.language_model.lm_head.weight
    with torch.no_grad():
        head[separator_ids[0]] = model.model.get_input_embeddings().weight.abs().sum(0) * 50
    embeds = model.embed_prompt(build_prompt([], "Q"), torch.zeros(32, head.shape[1]))
    generated = model.generate(
        embeds, GenerationSettings(max_new_tokens=40, do_sample=False), seed=None
    )
    assert generated.text == ""
    assert generated.new_tokens <= len(separator_ids) + 1 < 40


def test_generate_with_a_seed_is_reproducible(tiny_model: SkinGPT) -> None:
    embeds = tiny_model.embed_prompt(build_prompt([], "Q"), torch.randn(32, 64))
    sampling = GenerationSettings(max_new_tokens=16)
    first = tiny_model.generate(embeds, sampling, seed=5)
    again = tiny_model.generate(embeds, sampling, seed=5)
    others = {tiny_model.generate(embeds, sampling, seed=s).text for s in range(6, 10)}
    assert first.text == again.text
    assert len(others | {first.text}) > 1


def test_saved_model_loads_back_and_answers_the_same(tmp_path: Path, tiny_model: SkinGPT) -> None:
    save_pretrained(tiny_model, tmp_path)
    loaded = load_pretrained(tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    assert loaded.untrained is True
    assert loaded.model.vision_model.post_layernorm.eps == 1e-5
    embeds = torch.randn(32, 64)
    prompt = build_prompt([], "What is this?")
    mine = tiny_model.generate(tiny_model.embed_prompt(prompt, embeds), GREEDY, seed=None)
    theirs = loaded.generate(loaded.embed_prompt(prompt, embeds), GREEDY, seed=None)
    assert mine.text == theirs.text


def test_load_pretrained_names_a_missing_tensor(tmp_path: Path, tiny_model: SkinGPT) -> None:
    save_pretrained(tiny_model, tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    del tensors["language_projection.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelUnavailable, match="checksum"):
        load_pretrained(tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(ModelUnavailable, match=r"language_projection\.weight"):
        load_pretrained(tmp_path, device=torch.device("cpu"), dtype=torch.float32, verify=False)


def test_load_pretrained_needs_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"config\.json"):
        load_pretrained(tmp_path, device=torch.device("cpu"), dtype=torch.float32)


def test_generate_is_bounded_by_time(tiny_model: SkinGPT) -> None:
    image = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    embeds = tiny_model.embed_prompt(build_prompt([], "Q"), image)
    patient = GenerationSettings(max_new_tokens=400, do_sample=False, max_seconds=100)
    hurried = GenerationSettings(max_new_tokens=400, do_sample=False, max_seconds=1e-4)
    unbounded = tiny_model.generate(embeds, patient, seed=None).new_tokens
    assert unbounded > 20  # this prompt runs long when nothing stops it early
    assert 1 <= tiny_model.generate(embeds, hurried, seed=None).new_tokens < 5
