"""Several prompts continued together, one token per step, each with its own limits and dice.

A GPU spends a decoding step mostly reading the weights, so continuing eight conversations in
one step costs little more than continuing one. The prompts differ in length: they are padded
on the left (padding is masked out and gets position ids from the mask), run through the
language model once to fill a KV cache, and then advanced one token per step. Each row stops on
its own (end of sequence, ``###``, its token or time limit); transformers' ``generate`` stops a
batch only as a whole and draws every row's samples from one random state, so a row's answer
would depend on its batch-mates. Here every sampling row draws from its own ``torch.Generator``,
seeded from the request, and greedy rows in fp32 give the same tokens as when run alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from skingpt.prompts import SEPARATOR
from skingpt.settings import GenerationSettings

# A row stops as soon as its text holds ``###``, so a new one ends in the latest token, and its
# three characters come from at most three tokens; the rest of the window leaves room for tokens
# that decode to nothing. Decoding only this tail keeps the check cheap on long answers.
_SEPARATOR_WINDOW = 8


@dataclass(frozen=True)
class Prompt:
    """One embedded prompt to continue.

    Attributes:
        inputs_embeds: (sequence, hidden) on the language model's device and in its dtype.
        generation: this row's limits and sampling settings.
        seed: seeds this row's random generator; None draws a fresh seed.
    """

    inputs_embeds: torch.Tensor
    generation: GenerationSettings
    seed: int | None = None


@dataclass(frozen=True)
class Continuation:
    """What one row produced.

    Attributes:
        token_ids: the new tokens, up to and including the one that stopped the row.
        seconds: from the start of the batch to the step this row stopped.
        stopped_by: ``eos``, ``separator``, ``max_new_tokens`` or ``max_seconds``.
    """

    token_ids: list[int]
    seconds: float
    stopped_by: str


@dataclass
class _Row:
    prompt: Prompt
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    finished: Continuation | None = None


@torch.inference_mode()
def decode(
    language_model: Any,
    prompts: Sequence[Prompt],
    *,
    tokenizer: Any,
    eos_token_ids: Sequence[int],
    started: float | None = None,
) -> list[Continuation]:
    """Continue every prompt until it stops; results in the order of ``prompts``.

    Args:
        language_model: a transformers causal language model (a Llama here).
        prompts: the rows; their embeddings must share device, dtype and hidden size.
        tokenizer: decodes a row's tokens to look for ``###``.
        eos_token_ids: tokens that end a row.
        started: ``time.monotonic()`` when the batch began (e.g. before its images were
            encoded); ``max_seconds`` and each row's seconds count from it. Defaults to now.
    """
    started = time.monotonic() if started is None else started
    if not prompts:
        return []
    device = prompts[0].inputs_embeds.device
    rows = [_Row(prompt, _generator(prompt, device)) for prompt in prompts]
    embeds, mask = _left_padded([prompt.inputs_embeds for prompt in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (rows, width); padding is masked anyway
    cache = _new_cache(language_model)

    # Prefill: the whole prompts at once; only the last position's logits are needed.
    output = language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    active = rows  # the rows still running, in the order of the cache's batch dimension
    generated = torch.empty(len(rows), 0, dtype=torch.long, device=device)  # (active, steps)
    while True:
        logits = output.logits[:, -1].to(torch.float32)  # (active, vocab)
        next_tokens = _choose(logits, generated, active)  # (active,)
        generated = torch.cat([generated, next_tokens[:, None]], dim=1)
        now = time.monotonic()
        # One transfer per step: the host needs the tokens to check each row's stop conditions.
        for row, token in zip(active, next_tokens.tolist(), strict=True):
            row.token_ids.append(token)
            reason = _stop_reason(row, tokenizer, eos_token_ids, now - started)
            if reason is not None:
                row.finished = Continuation(row.token_ids, now - started, reason)
        running = [slot for slot, row in enumerate(active) if row.finished is None]
        if not running:
            break
        if len(running) < len(active):
            # A finished row leaves the batch with its part of the cache. Keeping it masked
            # would cost attention over its whole cache (and compute, on CPU) at every later
            # step; dropping it costs one copy of the cache, at most once per row.
            keep = torch.tensor(running, device=device)
            cache.batch_select_indices(keep)
            mask, generated, next_tokens = mask[keep], generated[keep], next_tokens[keep]
            active = [active[slot] for slot in running]

        # One step: the token each running row just chose, at the next position.
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        output = language_model(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1,
            past_key_values=cache,
            use_cache=True,
        )
    return [row.finished for row in rows if row.finished is not None]


def contains_separator(tokenizer: Any, token_ids: Sequence[int]) -> bool:
    """Whether the decoded tokens hold ``###``, which may be spread over several tokens."""
    return SEPARATOR in tokenizer.decode(token_ids, skip_special_tokens=True)


def _generator(prompt: Prompt, device: torch.device) -> torch.Generator | None:
    """The row's own random state: its samples then never depend on the other rows."""
    if not prompt.generation.do_sample:
        return None
    generator = torch.Generator(device=device)
    if prompt.seed is None:
        generator.seed()
    else:
        generator.manual_seed(prompt.seed)
    return generator


def _left_padded(embeddings: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded on the left with zero embeddings, and the mask that hides the padding.

    Returns:
        (rows, width, hidden) embeddings and a (rows, width) mask, 1 where a prompt stands.
    """
    first = embeddings[0]
    width = max(embeds.shape[0] for embeds in embeddings)
    padded = first.new_zeros(len(embeddings), width, first.shape[-1])
    mask = torch.zeros(len(embeddings), width, dtype=torch.long, device=first.device)
    for index, embeds in enumerate(embeddings):
        padded[index, width - embeds.shape[0] :] = embeds
        mask[index, width - embeds.shape[0] :] = 1
    return padded, mask


def _new_cache(language_model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=language_model.config)


def _choose(logits: torch.Tensor, generated: torch.Tensor, rows: Sequence[_Row]) -> torch.Tensor:
    """Each row's next token: repetition penalty, then argmax, or temperature, top-p and a draw.

    Args:
        logits: (rows, vocab) in fp32.
        generated: (rows, steps), the tokens each row has chosen so far.

    Returns:
        (rows,) token ids.
    """
    settings = [row.prompt.generation for row in rows]
    scores = _penalize_repetition(logits, generated, settings)
    temperature = scores.new_tensor([s.temperature if s.do_sample else 1.0 for s in settings])
    top_p = scores.new_tensor([s.top_p if s.do_sample else 1.0 for s in settings])
    scores = _keep_top_p(scores / temperature[:, None], top_p)
    probabilities = scores.softmax(dim=-1)
    chosen = []
    for slot, row in enumerate(rows):
        if row.generator is None:
            # Greedy, as transformers: no temperature or top-p, ties go to the lowest id.
            chosen.append(torch.argmax(scores[slot]))
        else:
            draw = torch.multinomial(probabilities[slot], 1, generator=row.generator)
            chosen.append(draw[0])
    return torch.stack(chosen)


def _penalize_repetition(
    logits: torch.Tensor, generated: torch.Tensor, settings: Sequence[GenerationSettings]
) -> torch.Tensor:
    """Make tokens already generated less likely, as transformers' repetition penalty does.

    Only the new tokens count: the prompt reaches the model as embeddings, not token ids,
    exactly as when ``generate`` is called with ``inputs_embeds``.
    """
    penalty = logits.new_tensor([s.repetition_penalty for s in settings])[:, None]
    if generated.shape[1] == 0 or bool((penalty == 1.0).all()):
        return logits
    seen = logits.gather(1, generated)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, generated, seen)


def _keep_top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Hide all but the most likely tokens whose probabilities add up to ``top_p``, per row.

    As in transformers, the most likely token always stays, and a row with ``top_p`` 1 keeps
    every token.
    """
    if bool((top_p >= 1.0).all()):
        return scores
    ascending, order = torch.sort(scores, dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)[:, None]
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


def _stop_reason(
    row: _Row, tokenizer: Any, eos_token_ids: Sequence[int], elapsed: float
) -> str | None:
    generation = row.prompt.generation
    if row.token_ids[-1] in eos_token_ids:
        return "eos"
    if contains_separator(tokenizer, row.token_ids[-_SEPARATOR_WINDOW:]):
        return "separator"
    if len(row.token_ids) >= generation.max_new_tokens:
        return "max_new_tokens"
    if elapsed >= generation.max_seconds:
        return "max_seconds"
    return None
