"""Real bot and worker processes for the pipeline benchmarks, driven as Telegram users.

The end-to-end tests' launcher (``tests/e2e/support.py``) starts the Bot API stand-in and a bot
with its own key prefix and queue; workers are started here separately, so that a benchmark can
time a worker from the moment its process starts.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from skingpt.replies import DISCLAIMER
from tests.e2e.support import DATA, Launcher, Services, agree, spawn

REDIS_URL = os.environ.get("SKINGPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PHOTO = DATA / "psoriasis_01.jpg"
REPLY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Answered:
    """One job from the moment the bot queued it to the moment the stand-in recorded its reply.

    All three are ``time.time()`` seconds (the stand-in's ``time.monotonic()`` is converted), so
    they compare across the bot, worker and benchmark processes of one machine.
    """

    queued: float  # the bot handed the job to Celery (the job's ``queued`` field)
    finished: float  # the worker wrote the answer to the outbox (the job's ``finished`` field)
    recorded: float  # the stand-in recorded the reply message

    @property
    def total(self) -> float:
        return self.recorded - self.queued


class Pipeline:
    """A bot and its workers: start workers, ask questions, and time each job."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.api = services.api
        self.seen = 0  # messages to any chat already read through ``api.sent``
        # time.time() minus time.monotonic(): both clocks are the machine's, in every process.
        self._wall_offset = time.time() - time.monotonic()

    def start_worker(self, *, concurrency: int = 1) -> subprocess.Popen[bytes]:
        """A worker process, added to the services so that closing them stops it too."""
        env = {k: v for k, v in self.services.env.items() if not k.startswith("SKINGPT_TELEGRAM")}
        log = self.services.logs / f"worker{len(self.services.workers)}.log"
        worker = spawn(["worker", "--concurrency", str(concurrency)], env, log)
        self.services.workers.append(worker)
        return worker

    def agree(self, user: int) -> None:
        agree(self.api, user)
        self.seen = len(self.api.sent())

    def send_photo(self, user: int) -> Answered:
        self.api.send_photo(user, PHOTO.read_bytes())
        return self._answered(user)

    def ask(self, user: int, question: str) -> Answered:
        self.api.send_text(user, question)
        return self._answered(user)

    def _answered(self, user: int) -> Answered:
        """Wait for the reply (the message with the disclaimer) and time the user's newest job."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            for sent in self.api.sent(self.seen, timeout=1.0):
                self.seen = sent.position
                text = sent.message.get("text") or ""
                if sent.chat_id == user and DISCLAIMER in text:
                    return self._timing(user, sent.received)
        raise TimeoutError(f"no reply in chat {user} within {REPLY_TIMEOUT:.0f} s")

    def _timing(self, user: int, received: float) -> Answered:
        job = self.services.jobs(user)[-1]
        return Answered(
            queued=float(job["queued"]),
            finished=float(job["finished"]),
            recorded=received + self._wall_offset,
        )


@contextmanager
def bot_without_workers(bot_args: list[str], **settings: str) -> Iterator[Pipeline]:
    """The stand-in and a bot with extra ``SKINGPT_*`` settings; everything is stopped after."""
    with TemporaryDirectory(prefix="skingpt-bench-") as folder:
        runs = iter(range(1000))

        def logs() -> Path:
            path = Path(folder) / f"run{next(runs)}"
            path.mkdir()
            return path

        launcher = Launcher(REDIS_URL, logs)
        try:
            services = launcher.start(
                bot_args, workers=0, worker_args=(), redis_url=REDIS_URL, **settings
            )
            yield Pipeline(services)
        finally:
            launcher.close(show_logs=False)
