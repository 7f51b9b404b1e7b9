"""What end-to-end tests need to drive real bot and worker processes and act as Telegram's
users: start them, agree, tap buttons, wait for the reply they expect."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bot.standin import BotAPIStandIn

TOKEN = "424242:e2e-secret-token"
DATA = Path(__file__).parents[1] / "data"
_query_ids = itertools.count(1)


@dataclass
class Services:
    """One bot and its workers, with the stand-in they talk to and the Redis they share."""

    api: BotAPIStandIn
    redis: redis.Redis
    prefix: str
    bot: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    logs: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def worker(self) -> subprocess.Popen[bytes]:
        return self.workers[0]

    def jobs(self, chat_id: int | None = None) -> list[dict[str, str]]:
        """Every job hash in Redis (of one chat), oldest first."""
        jobs = []
        for key in self.redis.scan_iter(match=f"{self.prefix}:job:*", count=500):
            raw = self.redis.hgetall(key)
            job = {k.decode(): v.decode() for k, v in raw.items()}
            if job and (chat_id is None or int(job["chat_id"]) == chat_id):
                jobs.append(job)
        return sorted(jobs, key=lambda job: float(job["created"]))

    def assert_alive(self) -> None:
        for name, process in (("bot", self.bot), *(("worker", w) for w in self.workers)):
            assert process.poll() is None, f"the {name} process exited with {process.returncode}"

    def log_text(self) -> str:
        """Everything the bot and the workers logged so far (restarted ones included)."""
        logs = sorted(self.logs.glob("*.log"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def restart_bot(self, bot_args: list[str] | None = None) -> None:
        """Stop the bot with SIGTERM, as a deployment does, and start a new one in its place."""
        stop(self.bot)
        runs = len(list(self.logs.glob("bot*.log")))
        self.bot = spawn(["bot", *(bot_args or [])], self.env, self.logs / f"bot-{runs}.log")


class Launcher:
    """Starts bots and workers as separate processes, and stops and cleans up after them.

    Each start gets its own stand-in, key prefix and queue, so tests sharing a Redis never see
    each other's jobs.
    """

    def __init__(self, redis_url: str, logs: Callable[[], Path]) -> None:
        self.redis_url = redis_url
        self._logs = logs
        self._started: list[Services] = []

    def start(
        self,
        bot_args: list[str],
        *,
        workers: int = 1,
        worker_args: tuple[str, ...] = ("--concurrency", "1"),
        redis_url: str | None = None,
        **settings: str,
    ) -> Services:
        """A bot and ``workers`` worker processes with extra ``SKINGPT_*`` settings."""
        logs = self._logs()
        url = redis_url or self.redis_url
        prefix = f"skingpt-e2e-{os.getpid()}-{len(self._started)}"
        api = BotAPIStandIn(token=TOKEN).start()
        env = {
            **os.environ,
            "SKINGPT_REDIS_URL": url,
            "SKINGPT_KEY_PREFIX": prefix,
            "SKINGPT_QUEUE": f"{prefix}-gpu",
            "SKINGPT_TORCH_THREADS": "1",
            "SKINGPT_LOG_LEVEL": "INFO",
            "SKINGPT_ALBUM_WAIT_SECONDS": "1.5",
            "SKINGPT_STATUS_INTERVAL_SECONDS": "3",
            **{f"SKINGPT_{name.upper()}": value for name, value in settings.items()},
        }
        started = [
            spawn(["worker", *worker_args], env, logs / f"worker{n}.log") for n in range(workers)
        ]
        bot_env = {
            **env,
            "SKINGPT_TELEGRAM_TOKEN": TOKEN,
            "SKINGPT_TELEGRAM_API_URL": api.base_url,
            "SKINGPT_TELEGRAM_FILE_URL": api.base_file_url,
        }
        bot = spawn(["bot", *bot_args], bot_env, logs / "bot.log")
        client = redis.Redis.from_url(url)
        services = Services(api, client, prefix, bot, started, logs, bot_env)
        self._started.append(services)
        return services

    def close(self, *, show_logs: bool = True) -> None:
        """Stop everything started, delete its keys, and show its logs on stderr."""
        for services in self._started:
            stop(services.bot)
            for worker in services.workers:
                stop(worker)
            services.api.stop()
            with contextlib.suppress(redis.RedisError):
                for key in services.redis.scan_iter(match=f"{services.prefix}*", count=500):
                    services.redis.delete(key)
                # Celery's record of the queue's binding, named after the queue.
                services.redis.delete(f"_kombu.binding.{services.prefix}-gpu")
            if show_logs:
                for path in sorted(services.logs.glob("*.log")):
                    text = path.read_text(errors="replace")
                    sys.stderr.write(f"\n----- {path.name} -----\n{text}")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "skingpt.cli", *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(
    api: BotAPIStandIn,
    chat_id: int,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    after: int = 0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """The first bot message in the chat, from index ``after`` on, that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        messages = api.messages(chat_id)
        for message in messages[after:]:
            if predicate(message):
                return message
        if time.monotonic() > deadline:
            shown = [m.get("text") for m in messages]
            raise AssertionError(f"no matching message in chat {chat_id}: {shown!r}")
        time.sleep(0.05)


def containing(fragment: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: fragment in (message.get("text") or "")


def tap(
    api: BotAPIStandIn, user: int, message: dict[str, Any], data: str, *, language: str = "en"
) -> None:
    """Press the inline button with callback ``data`` under ``message``, as ``user``."""
    buttons = [b for row in message["reply_markup"]["inline_keyboard"] for b in row]
    assert data in [b["callback_data"] for b in buttons], buttons
    api.send_update(
        {
            "callback_query": {
                "id": f"q{next(_query_ids)}",
                "chat_instance": "c1",
                "data": data,
                "from": {
                    "id": user,
                    "is_bot": False,
                    "first_name": "Ana",
                    "language_code": language,
                },
                "message": message,
            }
        }
    )


def agree(
    api: BotAPIStandIn, user: int, *, language: str = "en", chat_id: int | None = None
) -> None:
    """Send /start and tap "I agree", as a new user does."""
    chat = user if chat_id is None else chat_id
    chat_type = "private" if chat_id is None else "group"
    seen = len(api.messages(chat))
    api.send_text(user, "/start", language_code=language, chat_id=chat_id, chat_type=chat_type)
    consent = wait_for(api, chat, lambda m: bool(m.get("reply_markup")), after=seen)
    tap(api, user, consent, "consent", language=language)
    wait_for(api, chat, lambda m: m["message_id"] > consent["message_id"], after=seen)
