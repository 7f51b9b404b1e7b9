"""Status messages and "typing…" under a long queue: their cost must not grow with it."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from telegram import Bot

from bot import service
from bot.service import StatusMessages, TypingIndicator
from skingpt.replies import Outcome
from skingpt.settings import Settings
from skingpt.store import Store


def _store(redis_url: str, prefix: str) -> Store:
    return Store.from_url(redis_url, prefix=prefix, retention_seconds=600, turn_hold_seconds=900)


def _queued(store: Store, user: int, kind: str) -> str:
    conv = store.pseudonym(user, user)
    case = store.start_case(conv, b"png")
    job = store.new_job(conv=conv, case=case, chat_id=user, reply_to=None, question="Q", kind=kind)
    store.enqueue(job)
    return job


def test_estimate_reads_the_line_once_for_every_status_message(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(redis_url, key_prefix)
    store.ensure_outbox_group()
    for seconds, kind in ((40.0, "analysis"), (10.0, "followup")):
        done = _queued(store, 1 if kind == "analysis" else 2, kind)
        store.complete_job(done, Outcome.ANSWERED, {"q": "a"}, seconds=seconds)
    kinds = ["analysis", "followup", "followup", "analysis"]
    jobs = [_queued(store, 10 + n, kind) for n, kind in enumerate(kinds)]
    reads = 0
    kinds_in_line = store.kinds_in_line

    def counted(count: int) -> list[str]:
        nonlocal reads
        reads += 1
        return kinds_in_line(count)

    monkeypatch.setattr(store, "kinds_in_line", counted)
    monkeypatch.setattr(service, "LINE_READ_EVERY_SECONDS", 600.0)
    status = StatusMessages(cast(Bot, object()), store, Settings())

    # No worker is busy, so one is assumed: the medians of the kinds in line up to each job.
    assert [status.estimate(job, place) for place, job in enumerate(jobs, 1)] == [
        40.0,
        50.0,
        60.0,
        100.0,
    ]
    # A job that joined after the line was read counts as the slower kind.
    late = _queued(store, 99, "followup")
    assert status.estimate(late, 5) == 140.0
    assert reads == 1


def test_estimate_is_none_before_any_job_finished(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    job = _queued(store, 5, "analysis")
    assert StatusMessages(cast(Bot, object()), store, Settings()).estimate(job, 1) is None


class _QuietBot:
    async def send_chat_action(self, chat_id: int, action: str) -> bool:
        return True


def test_typing_slows_down_when_many_chats_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    yield_once = asyncio.sleep

    async def main() -> None:
        forever = asyncio.Event()

        async def pause(seconds: float) -> None:
            pauses.append(seconds)
            await forever.wait()

        monkeypatch.setattr(asyncio, "sleep", pause)
        typing = TypingIndicator(cast(Bot, _QuietBot()), max_seconds=60)
        for chat in range(100):
            typing.start(chat, f"job{chat}")
        while len(pauses) < 100:
            await yield_once(0)
        typing.stop_all()

    asyncio.run(main())
    # 100 chats at 5 a second in all: each one every 20 s rather than every 4.5 s.
    assert set(pauses) == {100 / service.TYPING_PER_SECOND}
