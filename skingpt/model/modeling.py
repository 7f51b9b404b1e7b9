"""SkinGPT-4 composed from transformers' BLIP-2 classes.

The image path is EVA ViT-g/14 (``vision_model``, whose ``post_layernorm`` plays LAVIS's
``ln_vision``) → Q-Former with 32 learned queries → ``language_projection`` (SkinGPT-4's
``llama_proj``) → 32 embeddings in the language model's input space. The prompt is embedded
segment by segment around ``<ImageHere>`` and the image embeddings are spliced in between, as
the reference ``Chat.get_context_emb`` does; the Llama model then continues the text.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from skingpt import prompts
from skingpt.errors import ConfigError, ModelUnavailable
from skingpt.model import decoding
from skingpt.model.base import Generated, Request, VisionLanguageModel
from skingpt.model.folders import (
    is_native_backend,
    is_skingpt_folder,
    loading_errors,
    placement,
    read_config,
    record_files,
    verify_files,
)
from skingpt.model.native import NativeVLM, load_native
from skingpt.model.preprocess import pixel_values
from skingpt.model.presets import LN_VISION_EPS, TINY_RANDOM, Preset, get_preset
from skingpt.model.tokenizer import build_tiny_tokenizer
from skingpt.settings import GenerationSettings, Settings

if TYPE_CHECKING:
    from skingpt.model.embeddings import EmbeddingCache

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SkinGPT:
    """A loaded SkinGPT-4 model with its tokenizer, ready to answer about photos in batches.

    Args:
        model: a ``Blip2ForConditionalGeneration`` whose language model is a Llama.
        tokenizer: the language model's tokenizer.
        name: the preset or folder name, for logs and replies.
        untrained: random weights; answers are noise and must be labelled so.
        embedding_cache: where the image embeddings of a case's photos are kept between
            calls and workers; None encodes the photo on every call.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        untrained: bool,
        embedding_cache: EmbeddingCache | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.untrained = untrained
        self.embedding_cache = embedding_cache
        self.vision_encoder_runs = 0
        _set_ln_vision_eps(model)

    def answer(
        self,
        image: Image.Image,
        history: Sequence[prompts.Turn],
        question: str,
        generation: GenerationSettings,
        *,
        seed: int | None,
    ) -> Generated:
        """Answer ``question`` about ``image`` after the earlier turns."""
        request = Request(image, history, question, generation, seed=seed)
        return self.answer_many([request])[0]

    def answer_many(self, requests: Sequence[Request]) -> list[Generated]:
        """Answer every request in one batch (see :mod:`skingpt.model.decoding`); same order.

        Each answer is what the request would get alone: greedy answers in fp32 token for
        token, sampled ones from the request's own seed. Each ``seconds`` counts from the start
        of this call, image encoding included, to the step where that answer stopped.
        """
        started = time.monotonic()
        rows, dropped = [], []
        for request in requests:
            image_embeds = self.image_embeddings(request.image, case=request.case)
            prompt, left_out = self.fit_prompt(
                request.history, request.question, request.generation
            )
            inputs_embeds = self.embed_prompt(prompt, image_embeds)[0]
            rows.append(decoding.Prompt(inputs_embeds, request.generation, request.seed))
            dropped.append(left_out)
        continuations = decoding.decode(
            self.model.language_model,
            rows,
            tokenizer=self.tokenizer,
            eos_token_ids=[self.tokenizer.eos_token_id],
            started=started,
        )
        return [
            dataclasses.replace(
                self._generated(continuation),
                prompt_positions=row.inputs_embeds.shape[0],
                dropped_turns=left_out,
            )
            for row, continuation, left_out in zip(rows, continuations, dropped, strict=True)
        ]

    def fit_prompt(
        self, history: Sequence[prompts.Turn], question: str, generation: GenerationSettings
    ) -> tuple[str, int]:
        """The prompt, shortened (see :func:`prompts.fit_to_context`) to leave room for the answer.

        Returns:
            The prompt and how many earlier turns were left out.
        """
        budget = generation.max_context_tokens - generation.max_new_tokens
        turns, question, used = prompts.fit_to_context(
            history,
            question,
            lambda turns, question: self.prompt_length(prompts.build_prompt(turns, question)),
            budget,
        )
        if used > budget:
            raise ValueError(f"max_context_tokens leaves no room for a prompt ({budget}).")
        return prompts.build_prompt(turns, question), len(history) - len(turns)

    @property
    def device(self) -> torch.device:
        device: torch.device = self.model.language_projection.weight.device
        return device

    def image_embeddings(self, image: Image.Image, *, case: str | None = None) -> torch.Tensor:
        """The 32 image embeddings of one photo, (32, text hidden size), for the prompt.

        With a cache and the photo's case, the vision encoder runs once per photo: later calls,
        in this process or any other worker, reuse what it computed.
        """
        if self.embedding_cache is None or case is None:
            return self.encode_image(pixel_values(image))[0]
        from skingpt.model.embeddings import embedding_key

        key = embedding_key(self.name, self._text_dtype, image)
        cached = self.embedding_cache.get(case, key, self.device)
        if cached is not None:
            return cached
        image_embeds = self.encode_image(pixel_values(image))[0]  # (32, hidden)
        self.embedding_cache.put(case, key, image_embeds)
        logger.info("Vision encoder runs in this process: %d", self.vision_encoder_runs)
        return image_embeds

    @torch.inference_mode()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings for the language model.

        Args:
            pixel_values: (batch, 3, 224, 224) from :func:`skingpt.model.preprocess.pixel_values`.

        Returns:
            (batch, 32, text hidden size) in the language model's dtype.
        """
        self.vision_encoder_runs += pixel_values.shape[0]
        vision_dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        pixel_values = pixel_values.to(self.device, dtype=vision_dtype)

        # Vision encoder; post_layernorm is ln_vision.  (batch, 257, 1408)
        patches = self.model.vision_model(pixel_values=pixel_values).last_hidden_state

        # Q-Former: 32 learned queries cross-attend to the patches.  (batch, 32, 768)
        queries = self.model.query_tokens.expand(patches.shape[0], -1, -1)
        patch_mask = torch.ones(patches.shape[:-1], dtype=torch.long, device=patches.device)
        query_output = self.model.qformer(
            query_embeds=queries.to(self.model.query_tokens.dtype),
            encoder_hidden_states=patches.to(self.model.query_tokens.dtype),
            encoder_attention_mask=patch_mask,
        ).last_hidden_state

        # Projection into the language model's embedding space.  (batch, 32, 5120)
        projection = self.model.language_projection
        image_embeds: torch.Tensor = projection(query_output.to(projection.weight.dtype))
        return image_embeds.to(self._text_dtype)

    def prompt_token_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the image; BOS only at the start, as the reference does."""
        before, after = prompts.split_at_image(prompt)
        ids_before = self.tokenizer(before, add_special_tokens=False).input_ids
        ids_after = self.tokenizer(after, add_special_tokens=False).input_ids
        return [self.tokenizer.bos_token_id, *ids_before], list(ids_after)

    def prompt_length(self, prompt: str) -> int:
        """Positions the prompt takes in the context, image embeddings included."""
        before, after = self.prompt_token_ids(prompt)
        queries: int = self.model.config.num_query_tokens
        return len(before) + queries + len(after)

    @torch.inference_mode()
    def embed_prompt(self, prompt: str, image_embeds: torch.Tensor) -> torch.Tensor:
        """The prompt as input embeddings with the image spliced in.

        Args:
            prompt: text holding one ``<ImageHere>``.
            image_embeds: (32, hidden) for one image.

        Returns:
            (1, sequence, hidden).
        """
        ids_before, ids_after = self.prompt_token_ids(prompt)
        embed_tokens = self.model.get_input_embeddings()
        pieces = [
            embed_tokens(torch.tensor(ids_before, device=self.device)),
            image_embeds.to(self.device, dtype=self._text_dtype),
            embed_tokens(torch.tensor(ids_after, device=self.device)),
        ]
        return torch.cat(pieces, dim=0).unsqueeze(0)

    def generate(
        self, inputs_embeds: torch.Tensor, generation: GenerationSettings, *, seed: int | None
    ) -> Generated:
        """Continue one embedded prompt, (1, sequence, hidden), until it stops."""
        prompt = decoding.Prompt(inputs_embeds[0], generation, seed)
        continuation = decoding.decode(
            self.model.language_model,
            [prompt],
            tokenizer=self.tokenizer,
            eos_token_ids=[self.tokenizer.eos_token_id],
        )[0]
        return self._generated(continuation)

    def _generated(self, continuation: decoding.Continuation) -> Generated:
        text = self.tokenizer.decode(continuation.token_ids, skip_special_tokens=True)
        return Generated(
            text=prompts.extract_answer(text),
            new_tokens=len(continuation.token_ids),
            seconds=continuation.seconds,
        )

    @property
    def _text_dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype  # type: ignore[no-any-return]


# First names of parameters in BLIP-2 and in transformers' LLaVA-style models, by part.
_PART_OF = {
    "vision_model": "vision_encoder",
    "vision_tower": "vision_encoder",
    "qformer": "qformer",
    "query_tokens": "qformer",
    "language_projection": "projection",
    "multi_modal_projector": "projection",
    "language_model": "language_model",
    "lm_head": "language_model",
}


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters per part, named as in the SkinGPT-4 paper (``other`` for anything else)."""
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        first = name.removeprefix("model.").split(".", 1)[0]
        part = _PART_OF.get(first, "other")
        counts[part] = counts.get(part, 0) + parameter.numel()
    return counts


def build_on_meta(preset: Preset) -> Any:
    """The full architecture with no memory behind it, to check shapes and parameter counts."""
    from transformers import Blip2ForConditionalGeneration

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(preset.blip2_config())
    _set_ln_vision_eps(model)
    return model


def build_random(preset: Preset, *, seed: int = 0) -> SkinGPT:
    """``preset`` with deterministic random weights, in float32 on CPU, and the locally trained
    tiny tokenizer (its vocabulary replaces the preset's): test and benchmark models."""
    from transformers import Blip2ForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    config = preset.blip2_config(vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config)
    return SkinGPT(model, tokenizer, name=preset.name, untrained=True)


def build_tiny_random(*, seed: int = 0) -> SkinGPT:
    """The ``tiny-random`` preset: deterministic random weights and a locally trained tokenizer."""
    return build_random(TINY_RANDOM, seed=seed)


def load_pretrained(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    verify: bool = True,
    quantization: Any = None,
) -> SkinGPT:
    """Load a saved SkinGPT-4 folder (``config.json``, safetensors weights and tokenizer).

    Every tensor must match: a missing, unexpected or mis-shaped key is an error that names it.
    With ``verify``, every file is first checked against the SHA-256 sums recorded when the
    folder was written, and a folder without that record is refused.
    """
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    if not is_skingpt_folder(folder):
        raise ModelUnavailable(
            f"{folder} holds a {read_config(folder)['model_type']} model, not SkinGPT-4: use "
            "SKINGPT_BACKEND=auto or transformers for it."
        )
    if verify:
        verify_files(folder, required=True)
    with loading_errors(folder):
        loaded: Any = Blip2ForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, output_loading_info=True, **placement(device, quantization)
        )
        model, info = loaded
        tokenizer = AutoTokenizer.from_pretrained(folder)
    problems = {k: sorted(v)[:5] for k, v in info.items() if v and k != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ModelUnavailable(f"The weights in {folder} do not fit the model: {problems}")
    if tokenizer.bos_token_id is None or not tokenizer("skin").input_ids:
        raise ModelUnavailable(f"{folder} holds no usable tokenizer; convert the weights again.")
    untrained = bool(getattr(model.config, "skingpt_untrained", False))
    if quantization is None:
        model = model.to(device)
    return SkinGPT(model, tokenizer, name=folder.name, untrained=untrained)


def save_pretrained(skingpt: SkinGPT, folder: Path) -> None:
    """Write the model and tokenizer so :func:`load_pretrained` reads them back unchanged."""
    skingpt.model.config.skingpt_untrained = skingpt.untrained
    skingpt.model.save_pretrained(folder)
    skingpt.tokenizer.save_pretrained(folder)
    record_files(folder, {"format": 1, "written_by": "save_pretrained", "model": skingpt.name})


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when present. Call only where CUDA may be initialised."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("SKINGPT_DEVICE=cuda but no CUDA device is visible to this process.")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` means bf16 on CUDA and fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("SKINGPT_DTYPE=fp16 needs a CUDA device; use fp32 or bf16 on CPU.")
    return _DTYPES[name]


def quantization_config(mode: str, device: torch.device, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings for the language model only, or None for ``none``.

    The vision encoder, Q-Former, projection and output head stay unquantized: they are small,
    and the image path is where precision matters most.
    """
    if mode == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(
            f"SKINGPT_QUANTIZE={mode} needs a CUDA GPU, and this process sees none. "
            "On CPU use SKINGPT_QUANTIZE=none with fp32 or bf16."
        )
    try:
        import bitsandbytes  # noqa: F401  (imported only to fail early and clearly)
    except ImportError:
        raise ConfigError(
            f"SKINGPT_QUANTIZE={mode} needs bitsandbytes: pip install -c constraints.txt '.[gpu]'"
        ) from None
    from transformers import BitsAndBytesConfig

    config: Any = BitsAndBytesConfig  # untyped in transformers
    keep = ["vision_model", "qformer", "language_projection", "lm_head"]
    if mode == "8bit":
        return config(load_in_8bit=True, llm_int8_skip_modules=keep)
    return config(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=keep,
    )


def load_model(
    settings: Settings, *, embedding_cache: EmbeddingCache | None = None
) -> VisionLanguageModel:
    """Build or load the model that ``settings`` names, on its device and dtype.

    A SkinGPT-4 folder is loaded with :func:`load_pretrained`; any other image-text-to-text
    folder (MedGemma, LLaVA, Qwen2.5-VL) through transformers' auto classes.
    ``SKINGPT_BACKEND`` can force either. ``embedding_cache`` serves SkinGPT-4's image
    embeddings (the other models' image paths are their own and encode every call).
    """
    if settings.model == "scripted":
        # Canned answers for tests; Settings has already required a script and the opt-in flag.
        from skingpt.model.scripted import load_scripted

        return load_scripted(Path(settings.script or ""))
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    quantization = quantization_config(settings.quantize, device, dtype)
    started = time.monotonic()
    skingpt: SkinGPT | NativeVLM
    if settings.weights:
        folder = Path(settings.weights)
        loader = load_native if is_native_backend(folder, settings.backend) else load_pretrained
        skingpt = loader(
            folder,
            device=device,
            dtype=dtype,
            quantization=quantization,
            verify=settings.verify_weights,
        )
    elif quantization is not None:
        raise ConfigError(
            "Quantization applies to a model loaded from SKINGPT_WEIGHTS, not to tiny-random."
        )
    elif settings.model == TINY_RANDOM.name:
        skingpt = build_tiny_random()
        skingpt.model.to(device=device, dtype=dtype)
    else:
        preset = get_preset(settings.model)
        raise ModelUnavailable(
            f"The {preset.name} model needs its weights: set SKINGPT_WEIGHTS to a converted "
            "model folder."
        )
    counts = parameter_counts(skingpt.model)
    footprint = sum(p.numel() * p.element_size() for p in skingpt.model.parameters())
    logger.info(
        "Loaded model %s on %s as %s (quantization: %s) in %.1f s: %s parameters (%s), "
        "%.2f GiB of weights",
        skingpt.name,
        device,
        dtype,
        settings.quantize,
        time.monotonic() - started,
        f"{sum(counts.values()):,}",
        ", ".join(f"{part} {n:,}" for part, n in counts.items()),
        footprint / 2**30,
    )
    if isinstance(skingpt, SkinGPT):
        skingpt.embedding_cache = embedding_cache
    return skingpt


def _set_ln_vision_eps(model: Any) -> None:
    model.vision_model.post_layernorm.eps = getattr(model.config, "ln_vision_eps", LN_VISION_EPS)
