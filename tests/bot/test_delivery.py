"""The reply sender: one slow chat must not hold up the answers to everyone else."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from telegram import Bot

from bot.delivery import ReplySender
from bot.service import TriageService


class _Outbox:
    """Hands out one batch of entries, as the outbox stream would."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self.entries = entries

    def read_outbox(self, consumer: str, **_: Any) -> list[tuple[str, str]]:
        entries, self.entries = self.entries, []
        return entries

    def claim_stale_outbox(self, consumer: str, **_: Any) -> list[tuple[str, str]]:
        return []


def _sender(entries: list[tuple[str, str]]) -> ReplySender:
    service = cast(TriageService, type("Service", (), {"store": _Outbox(entries)})())
    return ReplySender(service)


def test_a_slow_chat_does_not_hold_up_the_others_and_each_entry_goes_once() -> None:
    # The slow entry is also claimed as stale: it must still go out only once.
    entries = [("1-0", "slow"), ("2-0", "fast-a"), ("3-0", "fast-b"), ("1-0", "slow")]
    sender = _sender(entries)
    finished: list[str] = []

    async def deliver(bot: Bot, entry_id: str, job_id: str) -> None:
        await asyncio.sleep(0.5 if job_id == "slow" else 0.01)
        finished.append(job_id)

    sender.deliver = deliver  # type: ignore[method-assign]
    asyncio.run(sender._deliver_batch(cast(Bot, object()), pending=True))

    assert finished == ["fast-a", "fast-b", "slow"]


def test_a_failed_entry_is_reported_after_the_others_went_out() -> None:
    sender = _sender([("1-0", "broken"), ("2-0", "fine")])
    finished: list[str] = []

    async def deliver(bot: Bot, entry_id: str, job_id: str) -> None:
        if job_id == "broken":
            raise ConnectionError("Redis went away")
        await asyncio.sleep(0.01)
        finished.append(job_id)

    sender.deliver = deliver  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        asyncio.run(sender._deliver_batch(cast(Bot, object()), pending=False))
    assert finished == ["fine"]
