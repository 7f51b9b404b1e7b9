"""Pipeline overhead: bot → Celery queue → worker → outbox → bot → Telegram, with an instant model.

Real processes on one machine: the Bot API stand-in (``bot/standin.py``), a bot and one worker
(``python -m skingpt.cli bot|worker``, prefork pool of one) on the local Redis, the worker
running the scripted model with ``seconds_per_answer = 0`` (``benchmarks/overhead.toml``), so
what is timed is everything around the model.

For each job, the interval runs from the job's ``queued`` time, written by the bot just before
it hands the job to Celery, to the moment the stand-in records the reply message. It includes:
Celery's trip through Redis to the worker, the worker loading the job, photo and history from
Redis, the model calls (instant here; a follow-up is one call, a photo's first analysis four),
the safety checks and report, writing the answer to the outbox stream, the bot reading the
outbox, composing the reply and its ``sendMessage`` HTTP call to the stand-in. It leaves out
the user's side (the update reaching the bot, the photo download) and the delivery to the
phone. Each job is split at the worker's ``finished`` time (answer written to the outbox).
Jobs are asked one after another, so no job waits behind another.

Beside it, in the same run, a bare Celery round trip: a no-op task sent to a worker with the
same Celery settings (``benchmarks/noop_celery.py``) and its result awaited from the Redis
result backend.

The run also times a worker from its process start to its first job answered (the job queued
at that start), and reads the worker processes' peak memory.

Usage, from the repository root, with Redis on 127.0.0.1:6379 (``SKINGPT_TEST_REDIS_URL``
chooses another)::

    python benchmarks/overhead.py --out /tmp/overhead
    python benchmarks/overhead.py --smoke --out /tmp/overhead
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runs as ``python benchmarks/overhead.py`` from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from tempfile import TemporaryFile
from typing import Any

import redis

from benchmarks.memory import peak_rss_mib
from benchmarks.noop_celery import NOOP_TASK, create_app
from benchmarks.output import log_progress, publish
from benchmarks.processes import REDIS_URL, Answered, bot_without_workers
from tests.e2e.support import stop

logger = logging.getLogger("overhead")

REPO = Path(__file__).resolve().parents[1]
RESULT_FILE = "overhead.json"
SCRIPT = Path(__file__).resolve().with_name("overhead.toml")
FOLLOW_UP = "Is it contagious?"
FIRST_USER = 70_001


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95, min and max of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    # The nearest-rank 95th percentile: a value that was measured, even with few samples.
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1)]
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def describe_jobs(jobs: Sequence[Answered]) -> dict[str, Any]:
    return {
        "queued_to_reply_recorded": summary_ms([job.total for job in jobs]),
        "queued_to_outbox": summary_ms([job.finished - job.queued for job in jobs]),
        "outbox_to_reply_recorded": summary_ms([job.recorded - job.finished for job in jobs]),
    }


def celery_round_trips(count: int) -> dict[str, Any]:
    """A no-op task sent and its result awaited ``count`` times, after the worker is up."""
    queue = f"skingpt-bench-{os.getpid()}-noop"
    env = {**os.environ, "SKINGPT_REDIS_URL": REDIS_URL, "SKINGPT_QUEUE": queue}
    app = create_app(REDIS_URL, queue)
    command = [sys.executable, "-m", "celery", "-A", "benchmarks.noop_celery", "worker"]
    options = ["--pool=prefork", "--concurrency=1", f"--queues={queue}", "--loglevel=WARNING"]
    with TemporaryFile() as log:
        started = time.monotonic()
        worker = subprocess.Popen(
            [*command, *options],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _round_trip(app, timeout=60.0)
            first_s = time.monotonic() - started
            for _ in range(5):  # warm-up: connections and the pool's first tasks
                _round_trip(app)
            trips = [_round_trip(app) for _ in range(count)]
        finally:
            stop(worker)
            _forget_queue(queue)
            app.close()
    return {
        "round_trip": summary_ms(trips),
        "worker_start_to_first_result_s": round(first_s, 2),
    }


def _round_trip(app: Any, *, timeout: float = 10.0) -> float:
    started = time.perf_counter()
    result = app.send_task(NOOP_TASK)
    result.get(timeout=timeout)
    seconds = time.perf_counter() - started
    result.forget()
    return seconds


def _forget_queue(queue: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    client.close()


def pipeline_jobs(follow_ups: int, users: int) -> dict[str, Any]:
    """Time a worker's start, then one photo analysis per user and follow-ups taking turns."""
    settings = {
        "model": "scripted",
        "script": str(SCRIPT),
        "allow_scripted_model": "true",
        # The bot paces messages as Telegram requires (1 a second per chat, 25 a second in all);
        # asked back to back, jobs would wait for that pacing, which is not what is measured.
        "chat_messages_per_second": "1000",
        "global_messages_per_second": "1000",
    }
    with bot_without_workers(["--allow-scripted-model"], **settings) as pipeline:
        people = [FIRST_USER + n for n in range(users)]
        for user in people:
            pipeline.agree(user)
        # The worker starts at the moment the first photo is sent: that job waits for it.
        started = time.time()
        worker = pipeline.start_worker()
        first = pipeline.send_photo(people[0])
        startup = {
            "worker_start_to_first_reply_s": round(first.recorded - started, 2),
            "first_job_queued_to_reply_s": round(first.total, 2),
        }
        photos = [pipeline.send_photo(user) for user in people[1:]]
        for user in people[:3]:  # warm-up: the first follow-ups of the bot and the worker
            pipeline.ask(user, FOLLOW_UP)
        answered = [pipeline.ask(people[n % users], FOLLOW_UP) for n in range(follow_ups)]
        memory = peak_rss_mib(worker.pid)
        pipeline.services.assert_alive()
    return {
        "startup": startup,
        "follow_up_jobs": describe_jobs(answered),
        "photo_analysis_jobs": describe_jobs(photos),
        "worker_peak_rss_mib": memory,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for overhead.json")
    parser.add_argument("--jobs", type=int, default=60, help="follow-up jobs timed")
    parser.add_argument("--users", type=int, default=10, help="users; each sends one photo")
    parser.add_argument("--round-trips", type=int, default=200, help="bare Celery round trips")
    parser.add_argument("--smoke", action="store_true", help="3 jobs, 2 users, 5 trips")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_progress()
    if args.smoke:
        args.jobs, args.users, args.round_trips = 3, 2, 5
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    celery = celery_round_trips(args.round_trips)
    logger.info("Bare Celery: %s", celery)
    pipeline = pipeline_jobs(args.jobs, args.users)
    logger.info("Pipeline: %s", pipeline)
    overhead_p50 = pipeline["follow_up_jobs"]["queued_to_reply_recorded"]["p50_ms"]
    celery_p50 = celery["round_trip"]["p50_ms"]
    report = {
        "benchmark": "overhead",
        "started_utc": started_utc,
        "redis": "loopback",
        "model": "scripted, seconds_per_answer = 0",
        "bare_celery": celery,
        "pipeline": pipeline,
        "follow_up_p50_vs_celery_p50": round(overhead_p50 / celery_p50, 2),
    }
    publish(args.out, RESULT_FILE, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
