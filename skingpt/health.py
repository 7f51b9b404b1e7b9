"""Is the bot or a worker alive, is its model loaded, and is it still consuming?

Every bot process and every worker child writes a heartbeat to Redis every few seconds, a hash
that expires when three beats are missed (``P`` is the key prefix)::

    P:health:<role>:<host>:<pid>
        beat       when this beat was written (Unix time)
        started    when the process started
        model      loading | loaded | failed            (workers)
        job_since  when the job running now started, "" when idle   (workers)
        idle_since when the worker last became idle     (workers)
        looped     when the bot's reply loop last turned            (bot)
        polled     when getUpdates last answered, "" in webhook mode (bot)

:func:`check` reads the beats of one host and judges them; ``skingpt health bot|worker`` runs it
inside a container (Docker's healthcheck) and exits 0 only when every check passes. Beats hold
no ids of people and no text.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from skingpt.store import Store

logger = logging.getLogger(__name__)

BEAT_SECONDS = 5.0
MISSED_BEATS = 3
STALL_SECONDS = 60.0
"""A job waiting this long while a worker sits idle means that worker no longer consumes."""
REPLY_LOOP_SECONDS = 60.0
"""The bot's reply loop turns every few seconds; this long without a turn means it is stuck."""
POLL_SECONDS = 90.0
"""Long polling answers at least every 10 s; this long without an answer means it is stuck."""


class Heartbeat:
    """Writes this process's beat every ``interval`` seconds from a daemon thread.

    Args:
        store: the shared Redis store (its prefix names the key).
        role: ``bot`` or ``worker``.
        fields: called at each beat for the role's own fields.
    """

    def __init__(
        self,
        store: Store,
        role: str,
        fields: Callable[[], Mapping[str, str]],
        *,
        interval: float = BEAT_SECONDS,
    ) -> None:
        self.store = store
        self.key = store.key("health", role, socket.gethostname(), str(os.getpid()))
        self.fields = fields
        self.interval = interval
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and remove the beat, so a stopped process is not counted as alive."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1)
        with contextlib.suppress(redis.RedisError):
            self.store.client.delete(self.key)

    def beat(self) -> None:
        values: dict[Any, Any] = {
            "beat": f"{time.time():.3f}",
            "started": f"{self.started:.3f}",
            **self.fields(),
        }
        with self.store.client.pipeline() as pipe:
            pipe.hset(self.key, mapping=values)
            pipe.expire(self.key, int(self.interval * MISSED_BEATS) + 1)
            pipe.execute()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                if failing:
                    logger.info("Heartbeats reach Redis again")
                failing = False
            except redis.RedisError as error:
                if not failing:
                    logger.warning("A heartbeat could not be written: %s", type(error).__name__)
                failing = True
            self._stop.wait(self.interval)


class JobActivity:
    """What a worker process is doing: the jobs it runs, or since when it has been idle.

    Each job runs in its own thread from :meth:`started` to :meth:`finished` (one thread in a
    prefork child, several in a batched worker). ``job_since`` is when the oldest running job
    started, so that one stuck job shows however many others come and go beside it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}  # thread id -> when its job started
        self._idle_since = time.time()

    def started(self) -> None:
        with self._lock:
            self._running[threading.get_ident()] = time.time()

    def finished(self) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)
            if not self._running:
                self._idle_since = time.time()

    def fields(self) -> dict[str, str]:
        with self._lock:
            oldest = min(self._running.values(), default=None)
            since = "" if oldest is None else f"{oldest:.3f}"
            return {"job_since": since, "idle_since": f"{self._idle_since:.3f}"}


@dataclass(frozen=True)
class Verdict:
    """One check: its name, whether it passed, and why, in words."""

    name: str
    ok: bool
    detail: str


def beats(store: Store, role: str, host: str | None) -> list[dict[str, str]]:
    """The live beats of ``role`` on ``host`` (every host with None), each with its ``pid``."""
    pattern = store.key("health", role, host or "*", "*")
    found = []
    for key in store.client.scan_iter(match=pattern, count=200):
        raw: Any = store.client.hgetall(key)
        if raw:
            beat = {_text(k): _text(v) for k, v in raw.items()}
            beat["pid"] = _text(key).rsplit(":", 1)[1]
            found.append(beat)
    return found


def check(
    store: Store,
    role: str,
    *,
    host: str | None = None,
    time_limit: float = float("inf"),
    stall_seconds: float = STALL_SECONDS,
    now: float | None = None,
) -> list[Verdict]:
    """Judge the beats of ``role`` on ``host``: alive, model loaded (workers), consuming.

    Args:
        time_limit: the workers' hard time limit; a job running longer is stuck.
        stall_seconds: how long a job may wait while a worker sits idle.
    """
    now = time.time() if now is None else now
    found = [b for b in beats(store, role, host) if now - _float(b, "beat") < _max_age()]
    where = host or "any host"
    if not found:
        return [Verdict("alive", False, f"no {role} process on {where} has beaten recently")]
    verdicts = [Verdict("alive", True, f"{len(found)} {role} process(es) on {where}")]
    if role == "worker":
        verdicts += _worker_verdicts(store, found, time_limit, stall_seconds, now)
    else:
        verdicts += _bot_verdicts(found, now)
    return verdicts


def _worker_verdicts(
    store: Store,
    found: list[dict[str, str]],
    time_limit: float,
    stall_seconds: float,
    now: float,
) -> list[Verdict]:
    states = [b.get("model", "loading") for b in found]
    model = Verdict(
        "model loaded",
        all(state == "loaded" for state in states),
        ", ".join(f"{b['pid']}: {b.get('model', 'loading')}" for b in found),
    )
    stuck = [
        b["pid"]
        for b in found
        if b.get("job_since") and now - _float(b, "job_since") > time_limit + 30
    ]
    waiting = store.oldest_waiting()
    idle = [
        b["pid"]
        for b in found
        if not b.get("job_since") and waiting is not None and _float(b, "idle_since") < waiting
    ]
    stalled = bool(idle) and waiting is not None and now - waiting > stall_seconds
    if stuck:
        consuming = Verdict("consuming", False, f"a job has run past the time limit in {stuck}")
    elif stalled:
        consuming = Verdict(
            "consuming",
            False,
            f"a job has waited {now - (waiting or now):.0f} s while {idle} sat idle",
        )
    else:
        busy = sum(1 for b in found if b.get("job_since"))
        consuming = Verdict("consuming", True, f"{busy} busy, {len(found) - busy} idle")
    return [model, consuming]


def _bot_verdicts(found: list[dict[str, str]], now: float) -> list[Verdict]:
    problems = []
    for beat in found:
        if now - _float(beat, "looped") > REPLY_LOOP_SECONDS:
            problems.append(f"{beat['pid']}: the reply loop has not turned for a while")
        if beat.get("polled") and now - _float(beat, "polled") > POLL_SECONDS:
            problems.append(f"{beat['pid']}: Telegram has not answered getUpdates for a while")
    if problems:
        return [Verdict("consuming", False, "; ".join(problems))]
    return [Verdict("consuming", True, "replies are sent and updates arrive")]


def _max_age() -> float:
    return BEAT_SECONDS * MISSED_BEATS


def _float(beat: Mapping[str, str], name: str) -> float:
    try:
        return float(beat.get(name) or 0.0)
    except ValueError:
        return 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
