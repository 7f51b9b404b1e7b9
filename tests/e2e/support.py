"""What end-to-end tests need to drive real bot and worker processes and act as Telegram's
users: start them, agree, tap buttons, wait for the reply they expect."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bot.standin import BotAPIStandIn

TOKEN = "424242:e2e-secret-token"
DATA = Path(__file__).parents[1] / "data"
_query_ids = itertools.count(1)


@dataclass
class Services:
    api: BotAPIStandIn
    redis: redis.Redis
    prefix: str
    bot: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path

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
        for name, process in (("bot", self.bot), ("worker", self.worker)):
            assert process.poll() is None, f"the {name} process exited with {process.returncode}"

    def log_text(self) -> str:
        return "".join(
            (self.logs / name).read_text(errors="replace") for name in ("bot.log", "worker.log")
        )


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
