"""GPU check for the full-size SkinGPT-4: build time, image encoding, generation speed and memory.

The ``skingpt4-llama2-13b`` preset is built with random weights straight on the GPU, so the check
needs no checkpoint and no network. Random weights change nothing about speed or memory (every
matrix is multiplied whatever its values), only the text, which is never decoded here.

Stages, each written to ``OUT/gpu_check.json`` as soon as one of its measurements finishes, so a
run cut short still reports what it got:

- ``environment``: GPU, memory, library versions, whether bitsandbytes imports.
- ``bf16``: build, parameter counts, VRAM, image-encoder latency at batch 1 and 8, and
  greedy answers of up to 300 tokens at batch 1 and 8 through ``SkinGPT.answer_many`` (what
  serving calls), each row a different photo and question.
- ``bandwidth``: batch-1 decoding speed turned into GB/s of weights read, against the GPU's peak,
  and against the fastest decoding that peak allows; batched throughput against batch 1.
- ``bf16_batch32``: the same generation at batch 32, when the time budget allows.
- ``nf4``: the language model quantized to 4-bit NF4 with bitsandbytes, then the same generations.

Usage, from the repository root::

    python benchmarks/gpu_check.py --out /tmp/gpu_check          # on a CUDA machine
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_smoke  # on CPU, tiny model, no nf4

The exit status is 0 unless a stage failed; skipped stages (no CUDA, no bitsandbytes, out of
time) say why in the JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runs as ``python benchmarks/gpu_check.py`` from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import gc
import importlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from skingpt import prompts
from skingpt.errors import ConfigError
from skingpt.model.base import Generated, Request
from skingpt.model.modeling import SkinGPT, build_on_meta, parameter_counts, quantization_config
from skingpt.model.presets import SKINGPT4_LLAMA2_13B, TINY_RANDOM, Preset
from skingpt.model.tokenizer import build_tiny_tokenizer
from skingpt.settings import GenerationSettings

logger = logging.getLogger("gpu_check")

RESULT_FILE = "gpu_check.json"
GIB = 2**30

# Peak memory bandwidth in TB/s from the vendors' data sheets, matched against
# torch.cuda.get_device_name(); every listed word must appear in the name.
PEAK_BANDWIDTH_TB_S: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 4.8),
    (("H100", "SXM"), 3.35),
    (("H100", "HBM3"), 3.35),  # the SXM card reports itself as "NVIDIA H100 80GB HBM3"
    (("A100", "80GB"), 2.0),
    (("L40S",), 0.864),
    (("RTX 4090",), 1.008),
)


@dataclass(frozen=True)
class Plan:
    """What one run measures and at which sizes.

    Attributes:
        preset: the model size to build.
        device: where to build it.
        new_tokens: ``max_new_tokens`` of every timed generation.
        repeats: timed runs per latency measurement (the median is reported).
        batches: generation batch sizes in the ``bf16`` and ``nf4`` stages.
        big_batch: the batch size of the ``bf16_batch32`` stage.
        estimates: seconds each stage is expected to take, for the time budget.
    """

    preset: Preset
    device: torch.device
    new_tokens: int
    repeats: int
    batches: tuple[int, ...] = (1, 8)
    big_batch: int = 32
    estimates: dict[str, float] = field(default_factory=dict)


def full_plan() -> Plan:
    """The real check: the 13B preset on the GPU."""
    return Plan(
        preset=SKINGPT4_LLAMA2_13B,
        device=torch.device("cuda"),
        new_tokens=300,
        repeats=5,
        # Generous H200 figures (build about 10 s, a 300-token generation about 10-20 s).
        estimates={"bf16": 120.0, "bf16_batch32": 60.0, "nf4": 90.0},
    )


def smoke_plan() -> Plan:
    """Every stage on CPU with the tiny model, to test this script where there is no GPU."""
    # The tiny model's vocabulary is its tokenizer's, exactly as build_tiny_random() makes it.
    vocab_size = len(build_tiny_tokenizer())
    preset = dataclasses.replace(TINY_RANDOM, text={**TINY_RANDOM.text, "vocab_size": vocab_size})
    return Plan(
        preset=preset,
        device=torch.device("cpu"),
        new_tokens=8,
        repeats=2,
        estimates={"bf16": 5.0, "bf16_batch32": 5.0, "nf4": 5.0},
    )


class StageSkipped(Exception):
    """Raised inside a stage that cannot run; the message is the reason."""


class Report:
    """The JSON result, rewritten to disk after every measurement."""

    def __init__(self, out_dir: Path, *, mode: str, preset: str, budget_s: float) -> None:
        self.path = out_dir / RESULT_FILE
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.stages: dict[str, dict[str, Any]] = {}
        self.data: dict[str, Any] = {
            "benchmark": "gpu_check",
            "mode": mode,
            "preset": preset,
            "budget_s": budget_s,
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": 0.0,
            "finished": False,
            "stages": self.stages,
        }

    def seconds_left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 2)
        # Write then rename, so a run killed mid-write leaves the previous complete file.
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(partial, self.path)

    def run_stage(
        self, name: str, body: Callable[[dict[str, Any]], None], *, estimate_s: float = 0.0
    ) -> None:
        """Run one stage, recording its results, its skip reason or its error."""
        result: dict[str, Any] = {}
        self.stages[name] = result
        left = self.seconds_left()
        if estimate_s and estimate_s > left:
            result["skipped"] = (
                f"time budget: needs about {estimate_s:.0f} s, {max(left, 0):.0f} s left "
                f"of {self.budget_s:.0f} s (raise --budget)"
            )
            logger.warning("Skipping %s: %s", name, result["skipped"])
            self.save()
            return
        logger.info("Stage %s", name)
        started = time.perf_counter()
        try:
            body(result)
        except StageSkipped as skip:
            result["skipped"] = str(skip)
            logger.warning("Skipping %s: %s", name, skip)
        except Exception as error:
            # Recorded, not raised: the later stages still run and report.
            result["error"] = {"type": type(error).__name__, "message": str(error)}
            logger.exception("Stage %s failed", name)
        result["seconds"] = round(time.perf_counter() - started, 2)
        self.save()


# --- building the model with random weights -------------------------------------------------


def build_random(preset: Preset, *, device: torch.device, dtype: torch.dtype) -> SkinGPT:
    """The preset with random weights, allocated once on ``device`` in ``dtype``.

    Built on the meta device (no memory, no initialisation), cast there for free, then given
    uninitialised storage on ``device`` and filled in place: for the 13B model this takes
    seconds on a GPU instead of minutes of CPU initialisation and a host-to-device copy.
    """
    model = build_on_meta(preset)
    distinct = len(list(model.parameters()))
    if distinct != len(list(model.named_parameters(remove_duplicate=False))):
        # to_empty() gives each reference its own storage, which would untie shared weights.
        raise RuntimeError(f"{preset.name} shares weights between modules; to_empty would untie")
    model.to(dtype=dtype)
    model.to_empty(device=device)
    _recompute_buffers(model, device)
    _fill_random(model)
    model.requires_grad_(False)
    _check_no_meta_tensors(model)
    # The tiny tokenizer stands in for Llama's, which is not downloaded: its ~700 ids all lie
    # below the 13B model's 32000-row embedding table, and the text is never decoded.
    tokenizer = build_tiny_tokenizer()
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise RuntimeError("The stand-in tokenizer has ids beyond the embedding table.")
    return SkinGPT(model, tokenizer, name=preset.name, untrained=True)


def _recompute_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Buffers (Llama's rotary frequencies) are computed in ``__init__``; meta left them empty.

    Each module holding buffers is built again, small and on CPU, from its own config, and its
    buffers are copied over in their original dtype (the rotary ones stay float32).
    """
    for name, module in model.named_modules():
        buffers = [key for key, _ in module.named_buffers(recurse=False)]
        if not buffers:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise RuntimeError(
                f"{name} ({type(module).__name__}) holds buffers {buffers} that this script "
                "cannot recompute; teach _recompute_buffers how."
            )
        fresh = type(module)(config)
        for key in buffers:
            persistent = key not in module._non_persistent_buffers_set
            module.register_buffer(key, fresh.get_buffer(key).to(device), persistent=persistent)


@torch.no_grad()
def _fill_random(model: torch.nn.Module, *, std: float = 0.02, seed: int = 0) -> None:
    """Small normal weights, unit norm scales and zero biases, so activations stay finite."""
    torch.manual_seed(seed)
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in type(module).__name__
        for name, parameter in module.named_parameters(recurse=False):
            # Also catches the vision attention's separate q_bias and v_bias.
            if name.endswith("bias"):
                parameter.zero_()
            elif is_norm:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, std)


def _check_no_meta_tensors(model: torch.nn.Module) -> None:
    """Fail if any tensor, even a plain attribute, still has no storage."""
    left = [name for name, t in model.named_parameters() if t.is_meta]
    left += [name for name, t in model.named_buffers() if t.is_meta]
    for module_name, module in model.named_modules():
        left += [
            f"{module_name}.{key}"
            for key, value in vars(module).items()
            if isinstance(value, torch.Tensor) and value.is_meta
        ]
    if left:
        raise RuntimeError(f"Tensors still on the meta device after building: {left}")


# --- 4-bit quantization -------------------------------------------------------------------------


def quantize_nf4(skingpt: SkinGPT, config: Any) -> dict[str, Any]:
    """Swap ``nn.Linear`` layers for bitsandbytes ``Linear4bit`` holding NF4 weights, in place.

    ``config`` is the ``BitsAndBytesConfig`` that serving passes to ``from_pretrained``, which
    quantizes while it loads a checkpoint; an in-memory random model has none, and transformers'
    hooks for quantizing otherwise are internal and change between releases. So the swap is done
    here with that config's settings, over the modules transformers would convert: every linear
    layer outside ``llm_int8_skip_modules`` (vision encoder, Q-Former, projection, lm_head),
    which leaves the Llama decoder layers.
    """
    bnb = importlib.import_module("bitsandbytes")
    keep = set(config.llm_int8_skip_modules or [])
    targets = [
        (name, module)
        for name, module in skingpt.model.named_modules()
        if isinstance(module, torch.nn.Linear) and not keep & set(name.split("."))
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = skingpt.model.get_submodule(parent_name)
        setattr(parent, child, _to_linear4bit(bnb, linear, config))
    return {
        "method": "nn.Linear -> bitsandbytes.nn.Linear4bit, in memory",
        "bitsandbytes": getattr(bnb, "__version__", None),
        "quant_type": config.bnb_4bit_quant_type,
        "compute_dtype": str(config.bnb_4bit_compute_dtype),
        "double_quant": config.bnb_4bit_use_double_quant,
        "kept_unquantized": sorted(keep),
        "layers_quantized": len(targets),
    }


def _to_linear4bit(bnb: Any, linear: torch.nn.Linear, config: Any) -> torch.nn.Module:
    device = linear.weight.device
    # Built on meta so that nn.Linear's own initialisation does not run over 13B parameters.
    with torch.device("meta"):
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=config.bnb_4bit_compute_dtype,
            compress_statistics=config.bnb_4bit_use_double_quant,
            quant_type=config.bnb_4bit_quant_type,
            quant_storage=config.bnb_4bit_quant_storage,
        )
    # Params4bit quantizes when moved to a device, even the one its data is already on.
    quantized.weight = bnb.nn.Params4bit(
        linear.weight.data,
        requires_grad=False,
        compress_statistics=config.bnb_4bit_use_double_quant,
        quant_type=config.bnb_4bit_quant_type,
        quant_storage=config.bnb_4bit_quant_storage,
    ).to(device)
    if linear.bias is not None:
        quantized.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return quantized  # type: ignore[no-any-return]


# --- measuring ----------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds ``fn`` takes, with the GPU's queued work included, and its result."""
    _synchronize(device)
    started = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - started, result


def _median_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernel selection and allocator growth are not what is measured
    runs = [_timed(fn, device)[0] for _ in range(repeats)]
    return round(statistics.median(runs) * 1000, 3)


def _vram(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    return {
        "allocated_gib": round(torch.cuda.memory_allocated(device) / GIB, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 3),
    }


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _weights_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@torch.inference_mode()
def measure_image_path(skingpt: SkinGPT, batch: int, repeats: int) -> dict[str, Any]:
    """Median latency of the vision encoder alone and of the whole image path."""
    size = skingpt.model.config.vision_config.image_size
    dtype = skingpt.model.vision_model.embeddings.patch_embedding.weight.dtype
    # Normalised pixels are roughly standard normal; their values do not change the work done.
    pixels = torch.randn(batch, 3, size, size, device=skingpt.device, dtype=dtype)
    return {
        "vision_encoder_ms": _median_ms(
            lambda: skingpt.model.vision_model(pixel_values=pixels), skingpt.device, repeats
        ),
        # EVA ViT-g, then Q-Former and projection: what a served request pays per image.
        "image_to_embeddings_ms": _median_ms(
            lambda: skingpt.encode_image(pixels), skingpt.device, repeats
        ),
        "repeats": repeats,
    }


@torch.inference_mode()
def finite_outputs(skingpt: SkinGPT) -> dict[str, bool]:
    """Whether the image embeddings and the logits of one random image's prompt are finite."""
    size = skingpt.model.config.vision_config.image_size
    image_embeds = skingpt.encode_image(torch.randn(1, 3, size, size))  # (1, 32, hidden)
    prompt = prompts.build_prompt([], prompts.DEFAULT_QUESTION)
    inputs_embeds = skingpt.embed_prompt(prompt, image_embeds[0])
    logits = skingpt.model.language_model(inputs_embeds=inputs_embeds).logits
    return {
        "image_embeds": bool(torch.isfinite(image_embeds).all()),
        "logits": bool(torch.isfinite(logits).all()),
    }


# Questions of different lengths, taken in turn, so that a batch mixes prompt lengths.
QUESTIONS = (
    prompts.DEFAULT_QUESTION,
    *(text for _, text in prompts.CLINICAL_QUESTIONS),
    "Is it contagious?",
)


def generation_requests(batch: int, new_tokens: int, size: int) -> list[Request]:
    """``batch`` different questions about different random photos, answered greedily."""
    generation = GenerationSettings(max_new_tokens=new_tokens, do_sample=False)
    rng = np.random.default_rng(0)
    return [
        Request(
            image=Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
            history=(),
            question=QUESTIONS[row % len(QUESTIONS)],
            generation=generation,
        )
        for row in range(batch)
    ]


def _answer(skingpt: SkinGPT, requests: list[Request]) -> list[Generated]:
    answers = skingpt.answer_many(requests)
    if len(answers) != len(requests):
        raise RuntimeError(f"answer_many gave {len(answers)} answers to {len(requests)} requests")
    return answers


@torch.inference_mode()
def measure_generation(skingpt: SkinGPT, *, batch: int, plan: Plan) -> dict[str, Any]:
    """Time to first token, then answers of up to ``plan.new_tokens``, for ``batch`` requests.

    Everything goes through ``answer_many``, as in serving: each row's photo is encoded, its
    prompt built and the rows decoded together. Rows stop on their own (end of sequence,
    ``###``) as served answers do; with random weights that is rare, and the tokens each row
    really produced are counted.
    """
    device = skingpt.device
    size = skingpt.model.config.vision_config.image_size
    _answer(skingpt, generation_requests(batch, 2, size))  # warm-up for this batch size
    first = generation_requests(batch, 1, size)
    first_token = [_timed(lambda: _answer(skingpt, first), device)[0] for _ in range(plan.repeats)]
    ttft = statistics.median(first_token)

    _reset_peak(device)
    requests = generation_requests(batch, plan.new_tokens, size)
    total, answers = _timed(lambda: _answer(skingpt, requests), device)
    tokens = [answer.new_tokens for answer in answers]
    # The batch runs as long as its longest row; a sequence's rate is that row's.
    steps = max(tokens)
    decode = total - ttft
    return {
        "batch": batch,
        "distinct_prompts": len({(r.question, r.image.tobytes()) for r in requests}),
        "prompt_positions": sorted({answer.prompt_positions for answer in answers}),
        "new_tokens": plan.new_tokens,
        "new_tokens_generated": sum(tokens),
        "rows_stopped_early": sum(1 for n in tokens if n < plan.new_tokens),
        "time_to_first_token_ms": round(ttft * 1000, 2),
        "total_s": round(total, 3),
        "answers_per_s": round(batch / total, 3),
        "tokens_per_s_per_sequence": round(steps / total, 2),
        "tokens_per_s_aggregate": round(sum(tokens) / total, 2),
        # Without the image encoding and prefill: the steady decoding rate that bandwidth limits.
        "decode_tokens_per_s_per_sequence": (
            round((steps - 1) / decode, 2) if decode > 0 and steps > 1 else None
        ),
        "vram": _vram(device),
    }


def _compare_with(batch_1: dict[str, Any] | None, timing: dict[str, Any]) -> None:
    """Add the aggregate tokens/s and answers/s against batch 1, when batch 1 was measured."""
    if batch_1 is None:
        return
    for key in ("tokens_per_s_aggregate", "answers_per_s"):
        timing[f"{key.removesuffix('_aggregate')}_vs_batch_1"] = round(
            timing[key] / batch_1[key], 2
        )


def peak_bandwidth_tb_s(gpu_name: str | None) -> float | None:
    """The data-sheet peak for a known GPU, else None."""
    if gpu_name is None:
        return None
    for words, tb_s in PEAK_BANDWIDTH_TB_S:
        if all(word.lower() in gpu_name.lower() for word in words):
            return tb_s
    return None


# --- stages -------------------------------------------------------------------------------------


def describe_environment() -> dict[str, Any]:
    """What this run ran on."""
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_runtime": torch.version.cuda,
        "cuda_available": cuda,
        "gpu_name": None,
        "gpu_total_memory_gib": None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
    }
    if cuda:
        properties = torch.cuda.get_device_properties(0)
        info["gpu_name"] = properties.name
        info["gpu_total_memory_gib"] = round(properties.total_memory / GIB, 2)
        info["gpu_compute_capability"] = f"{properties.major}.{properties.minor}"
    info["bitsandbytes"] = _bitsandbytes_status()
    return info


def _bitsandbytes_status() -> dict[str, Any]:
    try:
        bnb = importlib.import_module("bitsandbytes")
    except Exception as error:  # a broken CUDA setup raises more than ImportError
        return {"imports": False, "error": f"{type(error).__name__}: {error}"}
    return {"imports": True, "version": getattr(bnb, "__version__", None)}


class GpuCheck:
    """The stages, sharing the model built in ``bf16`` until ``nf4`` replaces it."""

    def __init__(self, plan: Plan, report: Report) -> None:
        self.plan = plan
        self.report = report
        self.skingpt: SkinGPT | None = None
        self.gpu_name: str | None = None

    def run(self) -> None:
        estimates = self.plan.estimates
        self.report.run_stage("environment", self.environment)
        self.report.run_stage("bf16", self.bf16, estimate_s=estimates["bf16"])
        self.report.run_stage("bandwidth", self.bandwidth)
        self.report.run_stage(
            "bf16_batch32", self.bf16_batch32, estimate_s=self._batch32_estimate()
        )
        self.release()
        self.report.run_stage("nf4", self.nf4, estimate_s=estimates["nf4"])

    def environment(self, result: dict[str, Any]) -> None:
        result.update(describe_environment())
        self.gpu_name = result["gpu_name"]

    def bf16(self, result: dict[str, Any]) -> None:
        # transformers imports a model's module on first use, which takes seconds; timed apart
        # so that build_s measures the build alone.
        started = time.perf_counter()
        _ = transformers.Blip2ForConditionalGeneration
        result["model_classes_import_s"] = round(time.perf_counter() - started, 2)
        self._build(result)
        assert self.skingpt is not None
        result["image_path"] = {}
        for batch in self.plan.batches:
            timing = measure_image_path(self.skingpt, batch, self.plan.repeats)
            result["image_path"][f"batch_{batch}"] = timing
            logger.info("Image path at batch %d: %s", batch, timing)
            self.report.save()
        self._generations(result)

    def bandwidth(self, result: dict[str, Any]) -> None:
        bf16 = self.report.stages.get("bf16", {})
        batch_1 = bf16.get("generation", {}).get("batch_1")
        if batch_1 is None:
            raise StageSkipped("needs the bf16 batch-1 generation, which did not finish")
        tokens_per_s = batch_1["tokens_per_s_per_sequence"]
        decode_per_s = batch_1["decode_tokens_per_s_per_sequence"]
        # Each decoded token reads every weight matrix of the language model once. The input
        # embedding table is only indexed (one row per token), so it is left out; the KV cache
        # read is not counted either, which makes these figures a lower bound.
        bytes_per_token = bf16["language_model_bytes"] - bf16["input_embedding_bytes"]
        peak = peak_bandwidth_tb_s(self.gpu_name)
        achieved = bytes_per_token * tokens_per_s / 1e9
        # The fastest one stream can decode: every weight read once per token at peak bandwidth.
        bound = peak * 1e12 / bytes_per_token if peak else None
        result.update(
            {
                "bytes_per_token": bytes_per_token,
                "tokens_per_s": tokens_per_s,
                "decode_tokens_per_s": decode_per_s,
                "achieved_gb_s": round(achieved, 3),
                "achieved_gb_s_decode_only": (
                    round(bytes_per_token * decode_per_s / 1e9, 3) if decode_per_s else None
                ),
                "gpu_name": self.gpu_name,
                "peak_gb_s": peak * 1000 if peak else None,
                "fraction_of_peak": round(achieved / (peak * 1000), 3) if peak else None,
                "bound_tokens_per_s": round(bound, 1) if bound else None,
                "decode_fraction_of_bound": (
                    round(decode_per_s / bound, 3) if bound and decode_per_s else None
                ),
                # What batching buys: aggregate tokens/s at each batch against batch 1.
                "tokens_per_s_vs_batch_1": {
                    name: run.get("tokens_per_s_vs_batch_1")
                    for name, run in bf16.get("generation", {}).items()
                },
            }
        )
        logger.info("Decoding reads weights at %.0f GB/s (peak %s)", achieved, result["peak_gb_s"])

    def bf16_batch32(self, result: dict[str, Any]) -> None:
        if self.skingpt is None:
            raise StageSkipped("needs the bf16 model, which was not built")
        timing = measure_generation(self.skingpt, batch=self.plan.big_batch, plan=self.plan)
        batch_1 = self.report.stages.get("bf16", {}).get("generation", {}).get("batch_1")
        _compare_with(batch_1, timing)
        result.update(timing)
        logger.info("bf16 generation at batch %d: %s", self.plan.big_batch, timing)

    def nf4(self, result: dict[str, Any]) -> None:
        self._build(result, quantization=self._nf4_config())
        self._generations(result)

    def _nf4_config(self) -> Any:
        """Serving's 4-bit settings; refused, as serving does, without CUDA or bitsandbytes."""
        try:
            return quantization_config("4bit", self.plan.device, torch.bfloat16)
        except ConfigError as error:
            raise StageSkipped(f"4-bit quantization is unavailable here: {error}") from None

    def release(self) -> None:
        """Free the model and its cached blocks, so the next build starts from an empty GPU."""
        self.skingpt = None
        self.release_cache()

    def release_cache(self) -> None:
        gc.collect()
        if self.plan.device.type == "cuda":
            torch.cuda.empty_cache()

    def _build(self, result: dict[str, Any], *, quantization: Any = None) -> None:
        device = self.plan.device
        _reset_peak(device)
        seconds, skingpt = _timed(
            lambda: build_random(self.plan.preset, device=device, dtype=torch.bfloat16), device
        )
        result.update({"preset": self.plan.preset.name, "dtype": "bfloat16"})
        result["build_s"] = round(seconds, 2)
        if quantization is not None:
            seconds, result["quantization"] = _timed(
                lambda: quantize_nf4(skingpt, quantization), device
            )
            result["quantize_s"] = round(seconds, 2)
            self.release_cache()
        else:
            self._record_sizes(result, skingpt)
        result["weights_bytes"] = _weights_bytes(skingpt.model)
        result["weights_gib"] = round(result["weights_bytes"] / GIB, 3)
        result["vram_after_build"] = _vram(device)
        self.skingpt = skingpt
        result["finite_outputs"] = finite_outputs(skingpt)
        logger.info(
            "Built %s in %.1f s: %.2f GiB of weights, VRAM %s, finite outputs %s",
            self.plan.preset.name,
            result["build_s"],
            result["weights_gib"],
            result["vram_after_build"],
            result["finite_outputs"],
        )
        self.report.save()

    def _record_sizes(self, result: dict[str, Any], skingpt: SkinGPT) -> None:
        counts = parameter_counts(skingpt.model)
        result["parameter_counts"] = counts
        result["parameters_total"] = sum(counts.values())
        language_model = skingpt.model.language_model
        result["language_model_bytes"] = sum(
            p.numel() * p.element_size() for p in language_model.parameters()
        )
        table = language_model.get_input_embeddings().weight
        result["input_embedding_bytes"] = table.numel() * table.element_size()

    def _generations(self, result: dict[str, Any]) -> None:
        assert self.skingpt is not None
        result["generation"] = {}
        for batch in self.plan.batches:
            timing = measure_generation(self.skingpt, batch=batch, plan=self.plan)
            _compare_with(result["generation"].get("batch_1", timing), timing)
            result["generation"][f"batch_{batch}"] = timing
            logger.info("Generation at batch %d: %s", batch, timing)
            self.report.save()

    def _batch32_estimate(self) -> float:
        """Twice the batch-8 time, plus what the nf4 stage needs if it is going to run."""
        batch_8 = self.report.stages.get("bf16", {}).get("generation", {}).get("batch_8")
        estimate = 2 * batch_8["total_s"] + 10 if batch_8 else self.plan.estimates["bf16_batch32"]
        if self.plan.device.type == "cuda" and _bitsandbytes_status()["imports"]:
            estimate += self.plan.estimates["nf4"]  # 4-bit results matter more than batch 32
        return float(estimate)


def skip_without_cuda(report: Report) -> None:
    """On a machine with no CUDA device, say so for every stage after ``environment``."""
    reason = "no CUDA device; run on a GPU machine, or add --smoke to test the code on CPU"
    for name in ("bf16", "bandwidth", "bf16_batch32", "nf4"):
        report.stages[name] = {"skipped": reason}
    logger.warning("No CUDA device: only the environment stage ran")
    report.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument(
        "--budget", type=float, default=270.0, help="seconds; stages that would not fit skip"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="test run on CPU with the tiny-random model"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plan = smoke_plan() if args.smoke else full_plan()
    report = Report(
        args.out,
        mode="smoke" if args.smoke else "full",
        preset=plan.preset.name,
        budget_s=args.budget,
    )
    check = GpuCheck(plan, report)
    if args.smoke or torch.cuda.is_available():
        check.run()
    else:
        report.run_stage("environment", check.environment)
        skip_without_cuda(report)
    report.data["finished"] = True
    report.save()
    print(json.dumps(report.data, indent=2))
    failed = [name for name, stage in report.stages.items() if "error" in stage]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
