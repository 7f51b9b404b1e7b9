"""Convert SkinGPT-4's published checkpoints into one safetensors folder the worker loads.

SkinGPT-4 ships in the LAVIS / MiniGPT-4 layout, spread over four sources:

* ``eva_vit_g.pth``: the EVA ViT-g/14 vision encoder, keys without a prefix;
* ``blip2_pretrained_flant5xxl.pth``: ``{"model": ...}`` with the Q-Former (``Qformer.bert.*``),
  ``query_tokens`` and ``ln_vision``, plus BLIP-2 parts SkinGPT-4 does not use;
* the SkinGPT-4 checkpoint: ``{"model": ...}`` with ``llama_proj.weight`` and ``.bias``;
* a Llama-2-13b-chat folder in the transformers layout.

The vision and Q-Former tensors may instead come from the ``Salesforce/blip2-flan-t5-xxl`` hub
folder, which holds the same weights already in transformers' names. Every source tensor is
either mapped to a target tensor or dropped for a stated reason; every target tensor must be
filled exactly once, with the shape the model expects.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from skingpt.errors import ModelUnavailable
from skingpt.model.folders import record_files, sha256
from skingpt.model.presets import Preset

logger = logging.getLogger(__name__)

SHARD_BYTES = 4 * 2**30

_V = "vision_model."
_Q = "qformer.encoder.layer."
_DROP = None

# (pattern on the source key, target or _DROP, reason). The first match wins.
RULES: list[tuple[re.Pattern[str], str | None, str]] = [
    (re.compile(p), t, r)
    for p, t, r in [
        # LAVIS EVA ViT-g (eva_vit_g.pth is read with the prefix "visual_encoder.").
        (r"visual_encoder\.cls_token", _V + "embeddings.class_embedding", "class token"),
        (r"visual_encoder\.pos_embed", _V + "embeddings.position_embedding", "positions"),
        (
            r"visual_encoder\.patch_embed\.proj\.(weight|bias)",
            _V + r"embeddings.patch_embedding.\1",
            "patch embedding",
        ),
        (
            r"visual_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)",
            _V + r"encoder.layers.\1.layer_norm\2.\3",
            "block norms",
        ),
        (
            r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight",
            _V + r"encoder.layers.\1.self_attn.qkv.weight",
            "attention input",
        ),
        (
            r"visual_encoder\.blocks\.(\d+)\.attn\.(q|v)_bias",
            _V + r"encoder.layers.\1.self_attn.qkv.bias",
            "joined as (q, zeros, v)",
        ),
        (
            r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
            _V + r"encoder.layers.\1.self_attn.projection.\2",
            "attention output",
        ),
        (
            r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)",
            _V + r"encoder.layers.\1.mlp.\2.\3",
            "MLP",
        ),
        (
            r"visual_encoder\.(norm|fc_norm|head)\..*",
            _DROP,
            "EVA-CLIP's own final norm and head; SkinGPT-4 builds the ViT without them and "
            "applies ln_vision instead",
        ),
        (r"visual_encoder\.rel_pos_bias\..*", _DROP, "SkinGPT-4's ViT-g has no relative bias"),
        (r"ln_vision\.(weight|bias)", _V + r"post_layernorm.\1", "ln_vision"),
        (r"query_tokens", "query_tokens", "the 32 learned queries"),
        # LAVIS Q-Former (BERT-base with cross-attention).
        (
            r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)",
            r"qformer.layernorm.\1",
            "query embedding norm",
        ),
        (r"Qformer\.bert\.embeddings\.position_ids", _DROP, "a buffer transformers rebuilds"),
        (
            r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight",
            _DROP,
            "text side of the Q-Former, which SkinGPT-4 deletes",
        ),
        (
            r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\."
            r"(query|key|value)\.(weight|bias)",
            _Q + r"\1.\2.attention.\3.\4",
            "attention",
        ),
        (
            r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\."
            r"(dense|LayerNorm)\.(weight|bias)",
            _Q + r"\1.\2.output.\3.\4",
            "attention output",
        ),
        (
            r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\."
            r"(dense|LayerNorm)\.(weight|bias)",
            _Q + r"\1.\2.\3.\4",
            "query feed-forward",
        ),
        (
            r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*",
            _DROP,
            "text-side feed-forward of the Q-Former, which SkinGPT-4 deletes",
        ),
        (r"Qformer\.cls\..*", _DROP, "Q-Former text head, which SkinGPT-4 deletes"),
        (
            r"(vision_proj|text_proj|itm_head)\..*|temp",
            _DROP,
            "BLIP-2 stage-1 contrastive and matching heads, unused at inference",
        ),
        (
            r"(t5_proj|opt_proj)\..*|(t5_model|opt_model)\..*",
            _DROP,
            "BLIP-2's own language model side; SkinGPT-4 has its own projection and Llama",
        ),
        # SkinGPT-4 and MiniGPT-4 checkpoints, and the Llama folder (read as "llm_model.").
        (r"llama_proj\.(weight|bias)", r"language_projection.\1", "SkinGPT-4's projection"),
        (
            r"(llm_model|llama_model)\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
            _DROP,
            "a rotary buffer transformers recomputes",
        ),
        (r"(llm_model|llama_model)\.(model\..*|lm_head\.weight)", r"language_model.\2", "Llama"),
        # transformers' BLIP-2 hub layout.
        (r"(vision_model\..*|qformer\..*)", r"\1", "already in transformers' names"),
        (r"language_projection\..*", _DROP, "the hub model's projection into Flan-T5"),
        (r"language_model\..*", _DROP, "the hub model's Flan-T5-XXL"),
    ]
]


@dataclass
class Conversion:
    """What a conversion read, kept and dropped."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)


def map_key(key: str) -> tuple[str | None, str]:
    """The target of one source key (None when dropped) and the reason."""
    for pattern, target, reason in RULES:
        if pattern.fullmatch(key):
            return (pattern.sub(target, key) if target is not None else None), reason
    raise ModelUnavailable(
        f"No rule for the tensor {key!r}: this does not look like a SkinGPT-4, LAVIS BLIP-2, "
        "Llama or transformers BLIP-2 checkpoint."
    )


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would read from a folder: the index's, or all of one kind."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                names = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ModelUnavailable(f"{index} is not a valid weight index.") from None
            return [folder / name for name in sorted(names)]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelUnavailable(f"{folder} holds no *.safetensors or pytorch_model*.bin files.")
    return files


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or folder, without running any pickled code.

    A tensor found in two files of one folder is an error, never silently overwritten.
    """
    if path.is_dir():
        tensors: dict[str, torch.Tensor] = {}
        found_in: dict[str, str] = {}
        for file in weight_files(path):
            for key, tensor in read_tensors(file).items():
                if key in found_in:
                    raise ModelUnavailable(
                        f"{path}: {key} is in both {found_in[key]} and {file.name}; remove the "
                        "stale file."
                    )
                tensors[key] = tensor
                found_in[key] = file.name
        return tensors
    if not path.is_file():
        raise ModelUnavailable(f"{path} does not exist or is not a file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old, non-zip checkpoint cannot be memory-mapped
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except ModelUnavailable:
        raise
    except Exception as error:  # unreadable, truncated, or a pickle that is not plain tensors
        raise ModelUnavailable(
            f"{path} cannot be read as a checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'})."
        ) from None
    return _state_dict(loaded, path)


def _state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            skipped = sorted(k for k in loaded if k != wrapper)
            if skipped:
                logger.info("%s: reading %r, skipping %s", path.name, wrapper, ", ".join(skipped))
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping):
        raise ModelUnavailable(f"{path} holds no dictionary of tensors.")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(loaded):
        others = sorted(k for k, v in loaded.items() if not isinstance(v, torch.Tensor))
        raise ModelUnavailable(f"{path} mixes tensors with other values: {others[:5]}")
    return tensors


def collect(sources: Mapping[str, tuple[Path, str]]) -> Conversion:
    """Map the tensors of every source; ``sources`` maps a role to (path, key prefix)."""
    result = Conversion()
    qv_biases: dict[str, dict[str, torch.Tensor]] = {}
    for role, (path, prefix) in sources.items():
        files = weight_files(path) if path.is_dir() else [path]
        tensors = read_tensors(path)
        result.sources[role] = {file.name: sha256(file) for file in files}
        for key, tensor in tensors.items():
            source_key = prefix + key
            try:
                target, reason = map_key(source_key)
            except ModelUnavailable:
                raise ModelUnavailable(
                    f"{path} (given as --{role.replace('_', '-')}) holds {key!r}, which that "
                    f"option does not take. Check that each file is given to the right option."
                ) from None
            if target is None:
                result.dropped[reason] += 1
                continue
            _check_finite(key, tensor, path)
            if source_key.endswith(("attn.q_bias", "attn.v_bias")):
                part = source_key[-6]
                if part in qv_biases.get(target, {}):
                    raise ModelUnavailable(f"{key} is given twice; the second is in {path}.")
                qv_biases.setdefault(target, {})[part] = tensor
                continue
            if target in result.tensors:
                raise ModelUnavailable(
                    f"{target} is given twice: by {result.origin[target]} and by "
                    f"{role}:{key}. Each option takes its own file: is one file given twice?"
                )
            result.tensors[target] = tensor
            result.origin[target] = f"{role}:{key}"
    for target, parts in qv_biases.items():
        if set(parts) != {"q", "v"}:
            raise ModelUnavailable(f"{target} needs both q_bias and v_bias; found {sorted(parts)}")
        # EVA's attention has biases on queries and values only; keys get zeros.
        q, v = parts["q"], parts["v"]
        result.tensors[target] = torch.cat([q, torch.zeros_like(q), v])
        result.origin[target] = "q_bias + zeros + v_bias"
    return result


def _check_finite(key: str, tensor: torch.Tensor, path: Path) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ModelUnavailable(
            f"{key} in {path} holds NaN or infinite values; the file is damaged."
        )


def check_against_model(tensors: Mapping[str, torch.Tensor], model: Any) -> None:
    """Fail unless the tensors fill the model exactly: no missing, extra or mis-shaped key."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    projection = tensors.get("language_projection.weight")
    text_width = expected["language_projection.weight"][0]
    if projection is not None and projection.shape[0] != text_width:
        raise ModelUnavailable(
            f"The SkinGPT-4 checkpoint projects into a {projection.shape[0]}-wide language model "
            f"({_llama_size(projection.shape[0])}), but the Llama folder is {text_width} wide "
            f"({_llama_size(text_width)}). Use the Llama that the checkpoint was trained with."
        )
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{name} {tuple(t.shape)} (model wants {expected[name]})"
        for name, t in tensors.items()
        if name in expected and tuple(t.shape) != expected[name]
    )
    problems = [
        f"{label} ({len(names)}): {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
        for label, names in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
        if names
    ]
    if problems:
        raise ModelUnavailable("The weights do not fit the model: " + "; ".join(problems))


def _llama_size(width: int) -> str:
    return {4096: "Llama 7B", 5120: "Llama 13B", 8192: "Llama 70B"}.get(width, "unknown size")


def convert(
    *,
    out: Path,
    preset: Preset,
    llama: Path,
    checkpoint: Path,
    vision: Path | None = None,
    qformer: Path | None = None,
    blip2_hub: Path | None = None,
    dtype: torch.dtype = torch.float16,
    vit_precision: str = "fp16",
) -> Conversion:
    """Write a model folder: ``config.json``, safetensors shards, the tokenizer, provenance.

    Args:
        out: the folder to create (must be empty or absent).
        preset: vision and Q-Former sizes; the language model's come from ``llama``.
        llama: a transformers Llama folder (config, weights, tokenizer).
        checkpoint: the SkinGPT-4 checkpoint with ``llama_proj``.
        vision: LAVIS ``eva_vit_g.pth``; with ``qformer``, or else ``blip2_hub``.
        qformer: LAVIS ``blip2_pretrained_flant5xxl.pth``.
        blip2_hub: a ``Salesforce/blip2-flan-t5-xxl`` folder instead of the two LAVIS files.
        dtype: storage dtype of the weights (the reference runs the LLM in fp16).
        vit_precision: ``fp16`` rounds the ViT's Linear and Conv weights through fp16, as the
            reference does before running it (``vit_precision: fp16``); ``fp32`` keeps them.
    """
    from transformers import AutoTokenizer, LlamaConfig

    started = time.monotonic()
    if blip2_hub is None and (vision is None or qformer is None):
        raise ModelUnavailable("Give both the ViT and the Q-Former files, or a BLIP-2 hub folder.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelUnavailable(f"{out} exists and is not an empty folder; choose a new folder.")
    for option, given in (
        ("--llama", llama),
        ("--checkpoint", checkpoint),
        ("--vision", vision),
        ("--qformer", qformer),
        ("--blip2-hub", blip2_hub),
    ):
        if given is not None and not given.exists():
            raise ModelUnavailable(f"{option} {given} does not exist.")
    if not (llama / "config.json").is_file():
        raise ModelUnavailable(
            f"--llama {llama} is not a transformers Llama folder (it has no config.json)."
        )
    sources: dict[str, tuple[Path, str]] = {}
    if blip2_hub is not None:
        sources["blip2_hub"] = (blip2_hub, "")
    else:
        assert vision is not None and qformer is not None
        sources["vision"] = (vision, "visual_encoder.")
        sources["qformer"] = (qformer, "")
    sources["checkpoint"] = (checkpoint, "")
    sources["llama"] = (llama, "llm_model.")

    config = preset.blip2_config(text=LlamaConfig.from_pretrained(llama).to_dict())
    config.skingpt_untrained = False
    model = _meta_model(config)

    result = collect(sources)
    check_against_model(result.tensors, model)
    tensors = _cast(result.tensors, dtype=dtype, vit_precision=vit_precision)

    out.mkdir(parents=True, exist_ok=True)
    _write_shards(tensors, out)
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(llama).save_pretrained(out)
    provenance = {
        "format": 1,
        "preset": preset.name,
        "dtype": str(dtype).removeprefix("torch."),
        "vit_precision": vit_precision,
        "sources": result.sources,
        "dropped": dict(result.dropped),
    }
    record_files(out, provenance)
    logger.info(
        "Converted %d tensors into %s in %.1f s; dropped %d (%s)",
        len(tensors),
        out,
        time.monotonic() - started,
        sum(result.dropped.values()),
        "; ".join(f"{n} × {reason}" for reason, n in result.dropped.items()),
    )
    return result


def _meta_model(config: Any) -> Any:
    from transformers import Blip2ForConditionalGeneration

    with torch.device("meta"):
        return Blip2ForConditionalGeneration(config)


def _cast(
    tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype, vit_precision: str
) -> dict[str, torch.Tensor]:
    # LAVIS rounds the weights and biases of Conv and Linear layers; EVA's q/v biases are
    # parameters of their own (qkv.bias here) and stay in fp32.
    vit_linear = re.compile(
        r"vision_model\.(encoder\.layers\.\d+\.(self_attn\.qkv\.weight|"
        r"(self_attn\.projection|mlp\.fc[12])\.(weight|bias))|"
        r"embeddings\.patch_embedding\.(weight|bias))"
    )
    cast: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        tensor = tensor.float()
        if vit_precision == "fp16" and vit_linear.fullmatch(name):
            tensor = tensor.half().float()
        if name.startswith(("qformer.", "query_tokens")):
            cast[name] = tensor.contiguous()  # transformers keeps the Q-Former in fp32
        else:
            cast[name] = tensor.to(dtype).contiguous()
    return cast


def _write_shards(tensors: Mapping[str, torch.Tensor], out: Path) -> list[str]:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names
