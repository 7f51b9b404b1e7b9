"""Open vision-language models that transformers loads natively (MedGemma, LLaVA, Qwen2.5-VL).

The model comes from ``AutoModelForImageTextToText`` and its prompt from the processor's own
chat template, so each model is asked in the format it was trained on. The photo stands in the
first user turn; earlier turns follow as user and assistant messages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from skingpt.errors import ModelUnavailable
from skingpt.model.base import Generated, Request, sampling_options, seeded
from skingpt.model.folders import loading_errors, placement, verify_files
from skingpt.prompts import Turn, clean_user_text, fit_to_context
from skingpt.settings import GenerationSettings

# End-of-turn markers of common chat templates; those the tokenizer knows also stop generation.
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>")


class NativeVLM:
    """A transformers image-text-to-text model with its processor.

    Args:
        model: from ``AutoModelForImageTextToText``.
        processor: from ``AutoProcessor``; must have a chat template.
        name: the folder name, for logs and replies.
        untrained: random weights (test models); answers must be labelled so.
    """

    def __init__(self, model: Any, processor: Any, *, name: str, untrained: bool = False) -> None:
        if not getattr(processor, "chat_template", None):
            raise ModelUnavailable(
                f"{name} has no chat template, so questions cannot be put to it in its format."
            )
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.untrained = untrained
        self.vision_encoder_runs = 0
        self.stop_token_ids = _stop_token_ids(model, processor.tokenizer)
        # The model's own markers (image slots, turn ends) must never come from user text.
        self._reserved = _reserved_strings(processor)

    def messages(self, history: Sequence[Turn], question: str) -> list[dict[str, Any]]:
        """Chat messages with the image in the first user turn."""
        turns = [*history, Turn(question=question, answer="")]
        messages: list[dict[str, Any]] = []
        for index, turn in enumerate(turns):
            content: list[dict[str, str]] = [{"type": "text", "text": self.clean(turn.question)}]
            if index == 0:
                content.insert(0, {"type": "image"})
            messages.append({"role": "user", "content": content})
            if index < len(turns) - 1:
                answer = self.clean(turn.answer)
                messages.append(
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}
                )
        return messages

    def clean(self, text: str) -> str:
        """Text with the model's special markers removed, so it cannot fake an image or a turn."""
        for marker in self._reserved:
            text = text.replace(marker, " ")
        return clean_user_text(text)

    def inputs(self, image: Image.Image, history: Sequence[Turn], question: str) -> Any:
        """Processor outputs (token ids, pixels) for one prompt."""
        text = self.processor.apply_chat_template(
            self.messages(history, question), add_generation_prompt=True, tokenize=False
        )
        return self.processor(text=text, images=[image], return_tensors="pt")

    @property
    def _pad_token_id(self) -> int:
        pad = self.processor.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.stop_token_ids[0]

    @torch.inference_mode()
    def answer(
        self,
        image: Image.Image,
        history: Sequence[Turn],
        question: str,
        generation: GenerationSettings,
        *,
        seed: int | None,
    ) -> Generated:
        """Answer ``question`` about ``image``; the oldest turns go first if space runs out."""
        started = time.monotonic()
        budget = generation.max_context_tokens - generation.max_new_tokens
        measured: dict[str, Any] = {}

        def length(turns: list[Turn], question: str) -> int:
            measured["inputs"] = self.inputs(image, turns, question)  # the last one is used
            return int(measured["inputs"]["input_ids"].shape[1])

        turns, _, _ = fit_to_context(history, question, length, budget)
        inputs = measured["inputs"].to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        self.vision_encoder_runs += 1
        with seeded(seed, self.model.device):
            output = self.model.generate(
                **inputs,
                eos_token_id=self.stop_token_ids,
                pad_token_id=self._pad_token_id,
                **sampling_options(generation),
            )
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_length:]
        text = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return Generated(
            text=text.strip(),
            new_tokens=int(new_tokens.shape[0]),
            seconds=time.monotonic() - started,
            prompt_positions=prompt_length,
            dropped_turns=len(history) - len(turns),
        )

    def answer_many(self, requests: Sequence[Request]) -> list[Generated]:
        """Answer the requests one after another, in order.

        Each model family lays out images and padding its own way, so these are not decoded
        together; the embedding cache does not apply either (``case`` is not used).
        """
        return [
            self.answer(r.image, r.history, r.question, r.generation, seed=r.seed)
            for r in requests
        ]


def load_native(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    quantization: Any = None,
    verify: bool = True,
) -> NativeVLM:
    """Load a transformers image-text-to-text model folder and its processor.

    With ``verify``, a folder that carries a checksum record is checked against it first.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if verify:
        verify_files(folder, required=False)
    with loading_errors(folder):
        model: Any = AutoModelForImageTextToText.from_pretrained(
            folder, dtype=dtype, **placement(device, quantization)
        )
        processors: Any = AutoProcessor  # untyped in transformers
        processor = processors.from_pretrained(folder)
    if quantization is None:
        model = model.to(device)
    untrained = bool(getattr(model.config, "skingpt_untrained", False))
    return NativeVLM(model, processor, name=folder.name, untrained=untrained)


def _reserved_strings(processor: Any) -> list[str]:
    tokenizer = processor.tokenizer
    markers = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    for name in ("image_token", "boi_token", "eoi_token", "video_token"):
        value = getattr(processor, name, None) or getattr(tokenizer, name, None)
        if isinstance(value, str):
            markers.add(value)
    markers |= set(END_OF_TURN) | {"<start_of_turn>", "<|im_start|>", "[INST]", "[/INST]"}
    return sorted((m for m in markers if m.strip()), key=len, reverse=True)


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = list(configured) if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    vocabulary = tokenizer.get_vocab()
    ids.extend(vocabulary[marker] for marker in END_OF_TURN if marker in vocabulary)
    return list(dict.fromkeys(i for i in ids if i is not None))
