"""Batched answering on CPU: answers/s and tokens/s at 1, 2, 4 and 8 requests decoded together.

Decoding one token reads every weight of the language model, whatever the batch; answering
several conversations in the same step therefore shares that cost. This measures how much,
through ``model.answer_many`` (what the worker's batcher calls), on a model scaled up from the
``tiny-random`` preset so that the weights, not Python, dominate a step. Random weights make the
text noise but do not change the work done per token.

Every concurrency answers the same requests (different sample photos and different questions,
so prompts have different lengths), greedily, with the same ``max_new_tokens``; they run one
after another in one process, so the ratios against one-at-a-time compare like with like.
An answer can still stop early at ``###`` or end of sequence, so tokens/s counts the tokens
each answer really produced.

Usage, from the repository root::

    python benchmarks/throughput.py --out /tmp/throughput           # about three minutes
    python benchmarks/throughput.py --smoke --out /tmp/throughput   # tiny model, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runs as ``python benchmarks/throughput.py`` from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import logging
import platform
import resource
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import torch
from PIL import Image

from benchmarks.output import log_progress, publish
from skingpt import prompts
from skingpt.model.base import Request
from skingpt.model.modeling import SkinGPT, build_random, parameter_counts
from skingpt.model.presets import TINY_RANDOM, Preset
from skingpt.settings import GenerationSettings

logger = logging.getLogger("throughput")

RESULT_FILE = "throughput.json"
PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data"
CONCURRENCIES = (1, 2, 4, 8)

# The tiny preset's architecture at sizes where a decoding step costs milliseconds of matrix
# work on a CPU core: a 6-layer, 512-wide Llama (about 25 M parameters in its decoder). The
# image path stays small, as it runs once per request and is not what batching speeds up.
SCALED = dataclasses.replace(
    TINY_RANDOM,
    name="cpu-scaled",
    vision={**TINY_RANDOM.vision, "hidden_size": 64, "intermediate_size": 128},
    qformer={
        **TINY_RANDOM.qformer,
        "hidden_size": 64,
        "intermediate_size": 128,
        "encoder_hidden_size": 64,
    },
    text={
        **TINY_RANDOM.text,
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
)

# Questions of different lengths, asked in turn, so that a batch mixes prompt lengths.
QUESTIONS = (
    *(text for _, text in prompts.CLINICAL_QUESTIONS),
    "Is it contagious?",
    "How long will it take to go away, and should I keep it covered while it heals?",
)


def build_requests(count: int, generation: GenerationSettings) -> list[Request]:
    """``count`` first questions about the sample photos, photos and questions taken in turn."""
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in {".jpg", ".png"})
    images = [Image.open(path).convert("RGB") for path in photos]
    return [
        Request(
            image=images[n % len(images)],
            history=(),
            question=QUESTIONS[n % len(QUESTIONS)],
            generation=generation,
            seed=n,
        )
        for n in range(count)
    ]


def measure(skingpt: SkinGPT, requests: Sequence[Request], concurrency: int) -> dict[str, Any]:
    """Answer ``requests`` in groups of ``concurrency``, each group by one ``answer_many`` call."""
    started = time.perf_counter()
    tokens = 0
    answers = 0
    for start in range(0, len(requests), concurrency):
        group = requests[start : start + concurrency]
        generated = skingpt.answer_many(group)
        if len(generated) != len(group):
            raise RuntimeError(f"answer_many returned {len(generated)} answers for {len(group)}")
        answers += len(generated)
        tokens += sum(g.new_tokens for g in generated)
    seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "answers": answers,
        "new_tokens": tokens,
        "seconds": round(seconds, 3),
        "answers_per_s": round(answers / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
    }


def run(
    preset: Preset, *, requests: int, new_tokens: int, threads: int, rounds: int
) -> dict[str, Any]:
    """Every concurrency in :data:`CONCURRENCIES` on the same requests, and the ratios.

    Each round measures every concurrency once, in turn, so that a slow spell on a shared
    machine falls on all of them alike; each figure is the round with the median time.
    """
    torch.set_num_threads(threads)
    started = time.perf_counter()
    skingpt = build_random(preset)
    build_s = time.perf_counter() - started
    generation = GenerationSettings(max_new_tokens=new_tokens, do_sample=False)
    work = build_requests(requests, generation)
    # Warm-up at the largest batch: allocator growth and first-call costs are not measured.
    skingpt.answer_many(work[: max(CONCURRENCIES)])
    measured: dict[int, list[dict[str, Any]]] = {c: [] for c in CONCURRENCIES}
    for round_number in range(rounds):
        for concurrency in CONCURRENCIES:
            result = measure(skingpt, work, concurrency)
            logger.info("Round %d, concurrency %d: %s", round_number + 1, concurrency, result)
            measured[concurrency].append(result)
    results = []
    for runs in measured.values():
        median = sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
        results.append({**median, "seconds_each_round": [run["seconds"] for run in runs]})
    alone = results[0]
    for result in results:
        result["answers_per_s_vs_one_at_a_time"] = round(
            result["answers_per_s"] / alone["answers_per_s"], 2
        )
        result["tokens_per_s_vs_one_at_a_time"] = round(
            result["tokens_per_s"] / alone["tokens_per_s"], 2
        )
    counts = parameter_counts(skingpt.model)
    return {
        "benchmark": "throughput",
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": threads,
            "processor": platform.processor() or platform.machine(),
        },
        "model": {
            "preset": preset.name,
            "based_on": TINY_RANDOM.name,
            "text": {k: preset.text[k] for k in _SIZE_KEYS},
            "vision_hidden_size": preset.vision["hidden_size"],
            "qformer_hidden_size": preset.qformer["hidden_size"],
            "vocab_size": len(skingpt.tokenizer),
            "parameters": counts,
            "dtype": "float32",
            "device": "cpu",
            "build_s": round(build_s, 2),
        },
        "requests": requests,
        "max_new_tokens": new_tokens,
        "greedy": True,
        "rounds": rounds,
        "results": results,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


_SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for throughput.json")
    parser.add_argument("--requests", type=int, default=8, help="answered at each concurrency")
    parser.add_argument("--new-tokens", type=int, default=256, help="max_new_tokens per answer")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (more oversubscribe shared cores)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each concurrency")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny-random model, 8 requests of 4 tokens, one round"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_progress()
    if args.smoke:
        report = run(TINY_RANDOM, requests=8, new_tokens=4, threads=1, rounds=1)
    else:
        report = run(
            SCALED,
            requests=args.requests,
            new_tokens=args.new_tokens,
            threads=args.threads,
            rounds=args.rounds,
        )
    publish(args.out, RESULT_FILE, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
