"""Telegram flood control shared through Redis by every process that sends with one token.

python-telegram-bot's own ``AIORateLimiter`` counts in one process only. This limiter keeps its
schedule in Redis (a generic cell rate algorithm, one cell per bucket), so two bot processes,
or a bot and a broadcast script, stay inside the same limits together: about 30 messages a
second overall, one a second per private chat and 20 a minute per group. A 429 answer pauses
every process for its ``retry_after`` and the request is sent again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import redis
from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter
from telegram.warnings import PTBDeprecationWarning

logger = logging.getLogger(__name__)

# KEYS: buckets. ARGV: interval and burst per bucket, in pairs. Returns the wait in microseconds
# before this request may go, having booked its place in every bucket.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = now
local pause = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
if pause > start then start = pause end
for i = 1, #KEYS - 1 do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local earliest = tat - interval * (burst - 1)
  if earliest > start then start = earliest end
end
for i = 1, #KEYS - 1 do
  local interval = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < start then tat = start end
  tat = tat + interval
  redis.call('SET', KEYS[i], tat, 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return start - now
"""

_PAUSE = """
local t = redis.call('TIME')
local until_us = (tonumber(t[1]) + tonumber(ARGV[1])) * 1000000 + tonumber(t[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], until_us, 'PX', tonumber(ARGV[1]) * 1000 + 1000)
end
return 1
"""

# Methods that put something into a chat count against the chat's limit.
_UNLIMITED = frozenset(
    {
        "getUpdates",
        "getMe",
        "getFile",
        "deleteWebhook",
        "setWebhook",
        "getWebhookInfo",
        "setMyCommands",
        "getMyCommands",
        "close",
        "logOut",
        "answerCallbackQuery",
    }
)

# Methods that show something without adding a message to the chat: only the overall budget.
# "typing…" taking a chat slot would delay the very reply it announces.
_NOT_A_MESSAGE = frozenset({"sendChatAction"})


class RedisRateLimiter(BaseRateLimiter[int]):
    """Throttles every outgoing request against limits kept in Redis.

    Args:
        client: a synchronous Redis client (calls run in a thread).
        prefix: key prefix, shared by all processes using the same bot token.
        overall_per_second: messages per second across all chats.
        chat_per_second: messages per second in one private chat.
        group_per_minute: messages per minute in one group.
        max_retries: how often one request is sent again after a 429.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        overall_per_second: float,
        chat_per_second: float,
        group_per_minute: float,
        max_retries: int = 3,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._overall = (1_000_000 / overall_per_second, max(1, int(overall_per_second)))
        self._chat = (1_000_000 / chat_per_second, 3)
        self._group = (60_000_000 / group_per_minute, 3)
        self._max_retries = max_retries
        self._reserve = client.register_script(_RESERVE)
        self._pause = client.register_script(_PAUSE)

    async def initialize(self) -> None:
        await asyncio.to_thread(self._client.ping)

    async def shutdown(self) -> None:
        return None

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        """Wait for a free slot, send, and on a 429 pause everyone and send again."""
        retries = self._max_retries if rate_limit_args is None else rate_limit_args
        for attempt in range(retries + 1):
            if endpoint in _NOT_A_MESSAGE:
                await self._wait_for_slot(None)
            elif endpoint not in _UNLIMITED:
                await self._wait_for_slot(data.get("chat_id"))
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as error:
                seconds = _retry_after_seconds(error)
                if attempt == retries:
                    raise
                logger.warning("Telegram asked to wait %.0f s before %s", seconds, endpoint)
                await asyncio.to_thread(
                    self._pause, keys=[self._key("pause")], args=[max(1, round(seconds))]
                )
        raise AssertionError("unreachable")

    async def _wait_for_slot(self, chat_id: object) -> None:
        keys = [self._key("overall")]
        argv: list[float] = list(self._overall)
        if chat_id is not None:
            bucket = self._group if str(chat_id).startswith("-") else self._chat
            chat_hash = hashlib.sha256(str(chat_id).encode()).hexdigest()[:20]
            keys.append(self._key("chat", chat_hash))
            argv.extend(bucket)
        keys.append(self._key("pause"))
        wait_us = await asyncio.to_thread(self._reserve, keys=keys, args=argv)
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, "ratelimit", *parts))


def _retry_after_seconds(error: RetryAfter) -> float:
    # python-telegram-bot 22 warns that retry_after becomes a timedelta; accept either.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: float | dt.timedelta = error.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
