"""Flood control shared through Redis: two limiters on one prefix share one schedule."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from telegram.error import RetryAfter

from bot.ratelimit import RedisRateLimiter


def _limiter(redis_url: str, prefix: str, **limits: float) -> RedisRateLimiter:
    settings: dict[str, Any] = {
        "overall_per_second": 1000.0,
        "chat_per_second": 1000.0,
        "group_per_minute": 60_000.0,
        **limits,
    }
    return RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=prefix, **settings)


async def _send(limiter: RedisRateLimiter, chat_id: int, sent: list[float]) -> None:
    async def callback() -> bool:
        sent.append(time.monotonic())
        return True

    await limiter.process_request(callback, (), {}, "sendMessage", {"chat_id": chat_id}, None)


def test_two_processes_share_one_chat_limit(redis_url: str, key_prefix: str) -> None:
    # 10 messages a second per chat with a burst of 3: 9 messages need at least 0.6 s.
    first = _limiter(redis_url, key_prefix, chat_per_second=10.0)
    second = _limiter(redis_url, key_prefix, chat_per_second=10.0)
    sent: list[float] = []

    async def run() -> float:
        started = time.monotonic()
        await asyncio.gather(
            *(_send(limiter, 77, sent) for limiter in [first, second] * 4), _send(first, 77, sent)
        )
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.55
    assert len(sent) == 9


def test_other_chats_are_not_held_up(redis_url: str, key_prefix: str) -> None:
    limiter = _limiter(redis_url, key_prefix, chat_per_second=0.5)
    sent: list[float] = []

    async def run() -> float:
        started = time.monotonic()
        await asyncio.gather(*(_send(limiter, chat, sent) for chat in range(1, 9)))
        return time.monotonic() - started

    assert asyncio.run(run()) < 1.5  # eight chats, one message each, no wait between chats


def test_retry_after_pauses_and_sends_again(redis_url: str, key_prefix: str) -> None:
    limiter = _limiter(redis_url, key_prefix)
    calls: list[float] = []

    async def flaky() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RetryAfter(1)
        return True

    async def run() -> object:
        return await limiter.process_request(flaky, (), {}, "sendMessage", {"chat_id": 5}, None)

    assert asyncio.run(run()) is True
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.9


def test_updates_and_downloads_are_not_throttled(redis_url: str, key_prefix: str) -> None:
    limiter = _limiter(redis_url, key_prefix, overall_per_second=1.0)
    sent: list[float] = []

    async def callback() -> bool:
        sent.append(time.monotonic())
        return True

    async def run() -> float:
        started = time.monotonic()
        for _ in range(5):
            await limiter.process_request(callback, (), {}, "getUpdates", {}, None)
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.5


def test_typing_does_not_take_the_chat_slot_of_the_reply(redis_url: str, key_prefix: str) -> None:
    # One message a second per chat, burst 3: after three "typing…" the reply still goes at once.
    limiter = _limiter(redis_url, key_prefix, chat_per_second=1.0)

    async def typing() -> bool:
        return True

    async def run() -> float:
        for _ in range(3):
            await limiter.process_request(
                typing, (), {}, "sendChatAction", {"chat_id": 78, "action": "typing"}, None
            )
        started = time.monotonic()
        await _send(limiter, 78, [])
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.5
