"""Converting SkinGPT-4's published layouts, using tiny checkpoints these tests write.

The source files are produced from a tiny random model by mapping its tensors back into each
original layout (LAVIS ViT and BLIP-2 files, SkinGPT-4 and MiniGPT-4 checkpoints, a Llama
folder, the transformers BLIP-2 hub folder). The converted folder must load strictly and give
back the same tensors; one vision block and the projection are also recomputed from the
equations on the original tensors.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from skingpt.errors import ModelUnavailable
from skingpt.model.convert import convert, map_key, read_tensors
from skingpt.model.folders import PROVENANCE_FILE
from skingpt.model.modeling import SkinGPT, build_tiny_random, load_pretrained
from skingpt.model.presets import TINY_RANDOM
from skingpt.prompts import build_prompt
from skingpt.settings import GenerationSettings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def source() -> SkinGPT:
    """A tiny model with no zero or unit tensors (transformers initialises biases to zero and
    norms to one, which would hide a swapped mapping), and no key bias, as EVA has none."""
    model = build_tiny_random(seed=3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.model.parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.05
            parameter.add_(noise)
        for layer in model.model.vision_model.encoder.layers:
            width = layer.self_attn.qkv.bias.shape[0] // 3
            layer.self_attn.qkv.bias[width : 2 * width] = 0
    return model


def _lavis_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    vit: dict[str, torch.Tensor] = {"norm.weight": torch.ones(4), "head.weight": torch.ones(2, 4)}
    renames = {
        "embeddings.class_embedding": "cls_token",
        "embeddings.position_embedding": "pos_embed",
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    }
    for name, tensor in state.items():
        if not name.startswith("vision_model.") or "post_layernorm" in name:
            continue
        key = name.removeprefix("vision_model.")
        if key in renames:
            vit[renames[key]] = tensor
            continue
        key = re.sub(r"encoder\.layers\.(\d+)\.", r"blocks.\1.", key)
        key = key.replace("layer_norm", "norm").replace("self_attn.projection", "attn.proj")
        if key.endswith("self_attn.qkv.bias"):
            q, _k, v = tensor.chunk(3)
            vit[key.replace("self_attn.qkv.bias", "attn.q_bias")] = q
            vit[key.replace("self_attn.qkv.bias", "attn.v_bias")] = v
        else:
            vit[key.replace("self_attn.qkv", "attn.qkv")] = tensor
    return vit


def _lavis_blip2(state: dict[str, torch.Tensor]) -> dict[str, object]:
    model: dict[str, torch.Tensor] = {
        "query_tokens": state["query_tokens"],
        "ln_vision.weight": state["vision_model.post_layernorm.weight"],
        "ln_vision.bias": state["vision_model.post_layernorm.bias"],
        "Qformer.bert.embeddings.position_ids": torch.arange(8)[None],
        "Qformer.bert.embeddings.word_embeddings.weight": torch.ones(10, 4),
        "Qformer.bert.encoder.layer.0.intermediate.dense.weight": torch.ones(4, 4),
        "Qformer.cls.predictions.bias": torch.ones(10),
        "vision_proj.weight": torch.ones(4, 4),
        "temp": torch.tensor(0.07),
        "t5_proj.weight": torch.ones(8, 4),
    }
    for name, tensor in state.items():
        if not name.startswith("qformer."):
            continue
        key = name.replace("qformer.layernorm", "Qformer.bert.embeddings.LayerNorm")
        key = key.replace("qformer.encoder", "Qformer.bert.encoder")
        model[key.replace("attention.attention", "attention.self")] = tensor
    return {"model": model, "epoch": 9}


def _write_sources(model: SkinGPT, folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    paths = {name: folder / name for name in ("eva_vit_g.pth", "blip2.pth", "skingpt4.pth")}
    torch.save(_lavis_vit(state), paths["eva_vit_g.pth"])
    torch.save(_lavis_blip2(state), paths["blip2.pth"])
    projection = {
        "llama_proj.weight": state["language_projection.weight"],
        "llama_proj.bias": state["language_projection.bias"],
    }
    torch.save(
        {"model": projection, "optimizer": {"state": {}}, "epoch": 4}, paths["skingpt4.pth"]
    )
    llama = folder / "llama"
    model.model.language_model.save_pretrained(llama)
    model.tokenizer.save_pretrained(llama)
    paths["llama"] = llama
    return paths


def _convert(paths: dict[str, Path], out: Path, **options: object) -> None:
    convert(
        out=out,
        preset=TINY_RANDOM,
        llama=paths["llama"],
        checkpoint=paths["skingpt4.pth"],
        vision=paths["eva_vit_g.pth"],
        qformer=paths["blip2.pth"],
        **{"dtype": torch.float32, "vit_precision": "fp32", **options},
    )  # type: ignore[arg-type]


def _assert_same_weights(loaded: SkinGPT, original: SkinGPT) -> None:
    theirs = original.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name


def test_convert_lavis_layout_loads_strictly_with_the_same_weights(
    source: SkinGPT, tmp_path: Path
) -> None:
    paths = _write_sources(source, tmp_path / "src")
    _convert(paths, tmp_path / "out")
    loaded = load_pretrained(tmp_path / "out", device=CPU, dtype=torch.float32)
    _assert_same_weights(loaded, source)
    assert loaded.untrained is False
    assert loaded.model.vision_model.post_layernorm.eps == 1e-5
    prompt = build_prompt([], "What is this?")
    embeds = loaded.embed_prompt(prompt, loaded.encode_image(torch.zeros(1, 3, 224, 224))[0])
    greedy = GenerationSettings(max_new_tokens=6, do_sample=False)
    expected = source.embed_prompt(prompt, source.encode_image(torch.zeros(1, 3, 224, 224))[0])
    assert torch.equal(embeds, expected)
    mine = loaded.generate(embeds, greedy, seed=None)
    assert mine.new_tokens > 0
    assert mine.text == source.generate(expected, greedy, seed=None).text


def test_convert_records_sources_and_the_loader_checks_the_files(
    source: SkinGPT, tmp_path: Path
) -> None:
    paths = _write_sources(source, tmp_path / "src")
    _convert(paths, tmp_path / "out")
    record = (tmp_path / "out" / PROVENANCE_FILE).read_text()
    assert "eva_vit_g.pth" in record and "skingpt4.pth" in record
    assert "text side of the Q-Former" in record
    weights = tmp_path / "out" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match="checksum"):
        load_pretrained(tmp_path / "out", device=CPU, dtype=torch.float32)


def test_convert_hub_layout_gives_the_same_model(source: SkinGPT, tmp_path: Path) -> None:
    paths = _write_sources(source, tmp_path / "src")
    hub = tmp_path / "blip2-flan-t5-xxl"
    hub.mkdir()
    state = source.model.state_dict()
    kept = {
        k: v.contiguous()
        for k, v in state.items()
        if k.startswith(("vision_model.", "qformer.", "query_tokens"))
    }
    kept["language_projection.weight"] = torch.ones(16, 32)  # into Flan-T5: dropped
    kept["language_model.shared.weight"] = torch.ones(10, 16)
    save_file(kept, hub / "model.safetensors")
    convert(
        out=tmp_path / "out",
        preset=TINY_RANDOM,
        llama=paths["llama"],
        checkpoint=paths["skingpt4.pth"],
        blip2_hub=hub,
        dtype=torch.float32,
        vit_precision="fp32",
    )
    _assert_same_weights(
        load_pretrained(tmp_path / "out", device=CPU, dtype=torch.float32), source
    )
    from skingpt.model.checkpoints import describe

    described = describe(hub)
    assert described["layout"] == "hf-blip2"
    assert set(described["parameters"]) == {"vision_encoder", "qformer"}
    assert described["dropped_parameters"] == {
        "the hub model's projection into Flan-T5": 16 * 32,
        "the hub model's Flan-T5-XXL": 10 * 16,
    }


def test_convert_minigpt4_style_checkpoint(source: SkinGPT, tmp_path: Path) -> None:
    paths = _write_sources(source, tmp_path / "src")
    state = source.model.state_dict()
    torch.save(
        {
            "model": {
                "llama_proj.weight": state["language_projection.weight"],
                "llama_proj.bias": state["language_projection.bias"],
                "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8),
            }
        },
        paths["skingpt4.pth"],
    )
    _convert(paths, tmp_path / "out")
    _assert_same_weights(
        load_pretrained(tmp_path / "out", device=CPU, dtype=torch.float32), source
    )
    from skingpt.model.checkpoints import describe

    assert describe(paths["skingpt4.pth"])["layout"] == "minigpt4-checkpoint"


def test_convert_rounds_vit_weights_through_fp16_by_default(
    source: SkinGPT, tmp_path: Path
) -> None:
    paths = _write_sources(source, tmp_path / "src")
    _convert(paths, tmp_path / "out", vit_precision="fp16")
    loaded = load_pretrained(tmp_path / "out", device=CPU, dtype=torch.float32)
    fc1 = source.model.vision_model.encoder.layers[0].mlp.fc1.weight
    assert torch.equal(
        loaded.model.vision_model.encoder.layers[0].mlp.fc1.weight, fc1.half().float()
    )
    assert not torch.equal(fc1.half().float(), fc1)
    # Norms and the language model are not rounded.
    assert torch.equal(
        loaded.model.vision_model.post_layernorm.weight,
        source.model.vision_model.post_layernorm.weight,
    )


def test_convert_names_both_sizes_when_7b_meets_13b(source: SkinGPT, tmp_path: Path) -> None:
    paths = _write_sources(source, tmp_path / "src")
    torch.save(
        {
            "model": {
                "llama_proj.weight": torch.zeros(4096, 32),
                "llama_proj.bias": torch.zeros(4096),
            }
        },
        paths["skingpt4.pth"],
    )
    with pytest.raises(ModelUnavailable, match=r"4096-wide .*Llama 7B.*64 wide"):
        _convert(paths, tmp_path / "out")


def test_convert_fails_on_a_missing_or_unknown_tensor(source: SkinGPT, tmp_path: Path) -> None:
    paths = _write_sources(source, tmp_path / "src")
    vit = torch.load(paths["eva_vit_g.pth"], weights_only=True)
    del vit["blocks.1.mlp.fc2.weight"]
    torch.save(vit, paths["eva_vit_g.pth"])
    with pytest.raises(ModelUnavailable, match=r"missing \(1\): .*layers\.1\.mlp\.fc2\.weight"):
        _convert(paths, tmp_path / "out")
    vit["blocks.1.mlp.fc2.weight"] = torch.zeros(32, 64)
    vit["blocks.1.attn.relative_position_bias_table"] = torch.zeros(3)
    torch.save(vit, paths["eva_vit_g.pth"])
    with pytest.raises(ModelUnavailable, match="relative_position_bias_table"):
        _convert(paths, tmp_path / "out2")


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/skingpt-pickle-ran",))


def test_read_tensors_never_runs_pickled_code(tmp_path: Path) -> None:
    marker = Path("/tmp/skingpt-pickle-ran")
    marker.unlink(missing_ok=True)
    torch.save({"model": {"x": _Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(ModelUnavailable, match=r"cannot be read as a checkpoint \(Unpickling"):
        read_tensors(tmp_path / "evil.pth")
    assert not marker.exists()


def test_map_key_follows_the_reference_table() -> None:
    assert map_key("Qformer.bert.encoder.layer.3.crossattention.self.key.weight")[0] == (
        "qformer.encoder.layer.3.crossattention.attention.key.weight"
    )
    assert map_key("ln_vision.bias")[0] == "vision_model.post_layernorm.bias"
    assert map_key("llama_proj.weight")[0] == "language_projection.weight"
    assert map_key("Qformer.bert.embeddings.position_ids")[0] is None
    assert map_key("llm_model.lm_head.weight")[0] == "language_model.lm_head.weight"


def test_converted_embeddings_match_the_equations(source: SkinGPT, tmp_path: Path) -> None:
    """Block 0 of the ViT and the projection, computed by hand from the LAVIS tensors."""
    paths = _write_sources(source, tmp_path / "src")
    _convert(paths, tmp_path / "out")
    loaded = load_pretrained(tmp_path / "out", device=CPU, dtype=torch.float32)
    vit = torch.load(paths["eva_vit_g.pth"], weights_only=True)
    projection = torch.load(paths["skingpt4.pth"], weights_only=True)["model"]
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    # Patch embedding, class token and positions: (1, 257, width).
    patches = (
        torch.nn.functional.conv2d(
            pixels, vit["patch_embed.proj.weight"], vit["patch_embed.proj.bias"], stride=14
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([vit["cls_token"], patches], dim=1) + vit["pos_embed"]

    # One pre-norm block: x + Attn(LN1(x)), then + MLP(LN2(x)); EVA's qkv bias is (q, 0, v).
    width, heads = x.shape[-1], TINY_RANDOM.vision["num_attention_heads"]
    h = torch.nn.functional.layer_norm(
        x, (width,), vit["blocks.0.norm1.weight"], vit["blocks.0.norm1.bias"], eps=1e-6
    )
    bias = torch.cat(
        [vit["blocks.0.attn.q_bias"], torch.zeros(width), vit["blocks.0.attn.v_bias"]]
    )
    q, k, v = (h @ vit["blocks.0.attn.qkv.weight"].T + bias).chunk(3, dim=-1)
    split = [t.view(1, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
    attended = (weights @ split[2]).transpose(1, 2).reshape(1, -1, width)
    x = x + attended @ vit["blocks.0.attn.proj.weight"].T + vit["blocks.0.attn.proj.bias"]
    h = torch.nn.functional.layer_norm(
        x, (width,), vit["blocks.0.norm2.weight"], vit["blocks.0.norm2.bias"], eps=1e-6
    )
    h = torch.nn.functional.gelu(
        h @ vit["blocks.0.mlp.fc1.weight"].T + vit["blocks.0.mlp.fc1.bias"]
    )
    x = x + h @ vit["blocks.0.mlp.fc2.weight"].T + vit["blocks.0.mlp.fc2.bias"]

    hidden = loaded.model.vision_model(pixel_values=pixels, output_hidden_states=True)
    assert torch.allclose(hidden.hidden_states[1], x, atol=1e-5)

    # The projection: image embedding = Q-Former output · Wᵀ + b.
    queries = torch.randn(1, 32, 32)
    expected = queries @ projection["llama_proj.weight"].T + projection["llama_proj.bias"]
    assert torch.allclose(loaded.model.language_projection(queries), expected, atol=1e-6)


def test_weights_commands_convert_and_inspect(source: SkinGPT, tmp_path: Path) -> None:
    from skingpt.cli import main
    from skingpt.model.checkpoints import describe

    paths = _write_sources(source, tmp_path / "src")
    assert describe(paths["eva_vit_g.pth"])["layout"] == "lavis-eva-vit"
    assert describe(paths["blip2.pth"])["layout"] == "lavis-blip2"
    checkpoint = describe(paths["skingpt4.pth"])
    assert checkpoint["layout"] == "skingpt4-checkpoint"
    assert checkpoint["projection"] == "32 -> 64"
    assert describe(paths["llama"])["parameters"] == {
        "language_model": sum(p.numel() for p in source.model.language_model.parameters())
    }
    out = tmp_path / "out"
    status = main(
        [
            "weights",
            "convert",
            "--preset",
            "tiny-random",
            "--llama",
            str(paths["llama"]),
            "--checkpoint",
            str(paths["skingpt4.pth"]),
            "--vision",
            str(paths["eva_vit_g.pth"]),
            "--qformer",
            str(paths["blip2.pth"]),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    converted = describe(out)
    assert converted["layout"] == "skingpt-converted"
    assert converted["missing"] == []
    assert converted["parameters"]["projection"] == 32 * 64 + 64
    assert converted["provenance"]["vit_precision"] == "fp16"
    assert (
        main(
            [
                "weights",
                "convert",
                "--preset",
                "tiny-random",
                "--llama",
                str(paths["llama"]),
                "--checkpoint",
                str(paths["skingpt4.pth"]),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_loader_refuses_added_removed_or_unrecorded_files(source: SkinGPT, tmp_path: Path) -> None:
    paths = _write_sources(source, tmp_path / "src")
    out = tmp_path / "out"
    _convert(paths, out)
    extra = out / "model-extra.safetensors"
    save_file({"language_projection.bias": torch.full((64,), 1000.0)}, extra)
    with pytest.raises(ModelUnavailable, match="was not written with this model"):
        load_pretrained(out, device=CPU, dtype=torch.float32)
    extra.unlink()
    (out / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailable, match=r"tokenizer\.json is missing"):
        load_pretrained(out, device=CPU, dtype=torch.float32)
    (out / PROVENANCE_FILE).unlink()
    with pytest.raises(ModelUnavailable, match=r"has no skingpt_weights\.json"):
        load_pretrained(out, device=CPU, dtype=torch.float32)


def test_convert_refuses_tensors_given_twice_or_not_finite(
    source: SkinGPT, tmp_path: Path
) -> None:
    paths = _write_sources(source, tmp_path / "src")
    blip2 = torch.load(paths["blip2.pth"], weights_only=True)
    vit = torch.load(paths["eva_vit_g.pth"], weights_only=True)
    blip2["model"]["visual_encoder.blocks.0.attn.q_bias"] = vit["blocks.0.attn.q_bias"]
    torch.save(blip2, paths["blip2.pth"])
    with pytest.raises(ModelUnavailable, match="given twice"):
        _convert(paths, tmp_path / "out1")

    paths = _write_sources(source, tmp_path / "src2")
    stale = {k: torch.zeros_like(v) for k, v in read_tensors(paths["llama"]).items()}
    save_file(stale, paths["llama"] / "old-model.safetensors")
    with pytest.raises(ModelUnavailable, match="remove the stale file"):
        _convert(paths, tmp_path / "out2")

    paths = _write_sources(source, tmp_path / "src3")
    checkpoint = torch.load(paths["skingpt4.pth"], weights_only=True)
    checkpoint["model"]["llama_proj.weight"][0, 0] = float("nan")
    torch.save(checkpoint, paths["skingpt4.pth"])
    with pytest.raises(ModelUnavailable, match="NaN or infinite"):
        _convert(paths, tmp_path / "out3")


def test_convert_names_the_option_of_a_misplaced_file(source: SkinGPT, tmp_path: Path) -> None:
    paths = _write_sources(source, tmp_path / "src")
    with pytest.raises(ModelUnavailable, match=r"given as --vision\) holds 'query_tokens'"):
        convert(
            out=tmp_path / "out",
            preset=TINY_RANDOM,
            llama=paths["llama"],
            checkpoint=paths["skingpt4.pth"],
            vision=paths["blip2.pth"],
            qformer=paths["eva_vit_g.pth"],
        )
    with pytest.raises(ModelUnavailable, match=r"--llama .* does not exist"):
        convert(
            out=tmp_path / "out",
            preset=TINY_RANDOM,
            llama=tmp_path / "nope",
            checkpoint=paths["skingpt4.pth"],
            vision=paths["eva_vit_g.pth"],
            qformer=paths["blip2.pth"],
        )
