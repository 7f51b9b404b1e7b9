"""What a checkpoint file or folder holds, for ``skingpt weights inspect``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from skingpt.errors import ModelUnavailable
from skingpt.model.convert import map_key, read_tensors
from skingpt.model.folders import PROVENANCE_FILE, verify_files

_PARTS = (
    ("vision_model.", "vision_encoder"),
    ("vision_tower.", "vision_encoder"),
    ("multi_modal_projector.", "projection"),
    ("lm_head.", "language_model"),
    ("qformer.", "qformer"),
    ("query_tokens", "qformer"),
    ("language_projection.", "projection"),
    ("language_model.", "language_model"),
)

_USE = {
    "skingpt-converted": "loaded by `skingpt worker` / `skingpt ask` with SKINGPT_WEIGHTS",
    "lavis-eva-vit": "input to `skingpt weights convert --vision`",
    "lavis-blip2": "input to `skingpt weights convert --qformer`",
    "skingpt4-checkpoint": "input to `skingpt weights convert --checkpoint`",
    "minigpt4-checkpoint": "input to `skingpt weights convert --checkpoint`",
    "hf-blip2": "input to `skingpt weights convert --blip2-hub`",
    "hf-llama": "input to `skingpt weights convert --llama`",
    "transformers-vlm": "loaded by `skingpt worker` / `skingpt ask` with SKINGPT_WEIGHTS "
    "(transformers backend)",
}


def describe(path: Path) -> dict[str, Any]:
    """Layout, parameter count per part, dtypes, which command uses it, and what is missing."""
    if not path.exists():
        raise ModelUnavailable(f"{path} does not exist.")
    tensors = read_tensors(path)
    layout, prefix = _layout(path, tensors)
    parts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    unknown: list[str] = []
    converted = layout in {"skingpt-converted", "transformers-vlm"}
    for key, tensor in tensors.items():
        try:
            # A converted folder is already in the target names.
            target, reason = (key, "") if converted else map_key(prefix + key)
            part = _part(target) if target is not None else None
        except (ModelUnavailable, StopIteration):
            unknown.append(key)
            continue
        if part is None:
            dropped[reason] += tensor.numel()
        else:
            parts[part] += tensor.numel()
    report: dict[str, Any] = {
        "path": str(path),
        "layout": layout,
        "used_as": _USE[layout],
        "tensors": len(tensors),
        "parameters": dict(parts),
        "dropped_parameters": dict(dropped),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
        "unknown_tensors": sorted(unknown)[:20],
    }
    projection = tensors.get("llama_proj.weight")
    if projection is not None:
        report["projection"] = f"{projection.shape[1]} -> {projection.shape[0]}"
    if layout == "skingpt-converted":
        report["missing"] = _missing(path, tensors)
    if path.is_dir() and (path / PROVENANCE_FILE).is_file():
        report["provenance"] = json.loads((path / PROVENANCE_FILE).read_text())
        try:
            verify_files(path, required=True)
            report["checksums"] = "all files match the record"
        except ModelUnavailable as problem:
            report["checksums"] = str(problem)
    return report


def _layout(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    keys = list(tensors)
    config = _config(path)
    if config.get("model_type") == "blip-2":
        text_type = config.get("text_config", {}).get("model_type")
        return ("skingpt-converted" if text_type == "llama" else "hf-blip2"), ""
    if config.get("vision_config") and config.get("text_config"):
        return "transformers-vlm", ""
    if config.get("model_type") == "llama" or any(k.startswith("model.layers.") for k in keys):
        return "hf-llama", "llm_model."
    if "llama_proj.weight" in tensors:
        minigpt = any(k.startswith("llama_model.") for k in keys)
        return ("minigpt4-checkpoint" if minigpt else "skingpt4-checkpoint"), ""
    if any(k.startswith("Qformer.bert.") for k in keys):
        return "lavis-blip2", ""
    if any(k.startswith("blocks.") and k.endswith("attn.q_bias") for k in keys):
        return "lavis-eva-vit", "visual_encoder."
    if any(k.startswith(("vision_model.", "qformer.")) for k in keys):
        return "hf-blip2", ""
    raise ModelUnavailable(f"{path}: not a checkpoint layout this project knows.")


def _config(path: Path) -> dict[str, Any]:
    config = path / "config.json" if path.is_dir() else None
    if config is None or not config.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(config.read_text())
    return loaded


def _part(target: str) -> str:
    target = target.removeprefix("model.")
    return next((part for prefix, part in _PARTS if target.startswith(prefix)), "other")


def _missing(path: Path, tensors: dict[str, torch.Tensor]) -> list[str]:
    from transformers import AutoConfig, Blip2ForConditionalGeneration

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(AutoConfig.from_pretrained(path))
    return sorted(set(model.state_dict()) - set(tensors))
