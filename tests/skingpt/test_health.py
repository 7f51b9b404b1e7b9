"""Health checks judge the heartbeats that bots and workers leave in Redis."""

from __future__ import annotations

import os
import socket
import time

from skingpt.health import Heartbeat, JobActivity, Verdict, check
from skingpt.store import Store

HOST = socket.gethostname()


def _store(redis_url: str, prefix: str) -> Store:
    return Store.from_url(redis_url, prefix=prefix, retention_seconds=600, turn_hold_seconds=900)


def _beat(store: Store, role: str, pid: int, **fields: object) -> None:
    key = store.key("health", role, HOST, str(pid))
    values = {"beat": time.time(), "started": time.time() - 100, **fields}
    store.client.hset(key, mapping={k: str(v) for k, v in values.items()})
    store.client.expire(key, 60)


def _by_name(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {verdict.name: verdict for verdict in verdicts}


def _queue_job(store: Store, queued_at: float) -> str:
    job = store.new_job(conv="c", case="k", chat_id=1, reply_to=None, question="q")
    store.client.hset(store.key("job", job), "status", "queued")
    store.client.zadd(store.key("queue"), {job: queued_at})
    return job


def test_nothing_beating_is_not_alive(redis_url: str, key_prefix: str) -> None:
    verdicts = check(_store(redis_url, key_prefix), "worker", host=HOST)
    silent = f"no worker process on {HOST} has beaten recently"
    assert verdicts == [Verdict("alive", False, silent)]


def test_a_stale_beat_does_not_count(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    _beat(store, "worker", 11, beat=time.time() - 60, model="loaded", idle_since=time.time())
    assert not check(store, "worker", host=HOST)[0].ok


def test_an_idle_worker_with_its_model_is_healthy(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    _beat(store, "worker", 11, model="loaded", job_since="", idle_since=time.time() - 30)
    verdicts = _by_name(check(store, "worker", host=HOST))
    assert all(verdict.ok for verdict in verdicts.values()), verdicts
    assert verdicts["consuming"].detail == "0 busy, 1 idle"


def test_a_worker_still_loading_or_failed_has_no_model(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    _beat(store, "worker", 11, model="loaded", idle_since=time.time())
    _beat(store, "worker", 12, model="failed", idle_since=time.time())
    verdict = _by_name(check(store, "worker", host=HOST))["model loaded"]
    assert not verdict.ok
    assert "12: failed" in verdict.detail and "11: loaded" in verdict.detail


def test_a_job_waiting_while_a_worker_idles_means_it_stopped_consuming(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    now = time.time()
    _beat(store, "worker", 11, model="loaded", job_since="", idle_since=now - 300)
    _queue_job(store, now - 90)
    consuming = _by_name(check(store, "worker", host=HOST, stall_seconds=60))["consuming"]
    assert not consuming.ok
    assert "waited 90 s" in consuming.detail
    # A shorter wait is just a job about to be taken.
    assert _by_name(check(store, "worker", host=HOST, stall_seconds=120))["consuming"].ok


def test_a_busy_worker_with_jobs_waiting_is_still_consuming(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    now = time.time()
    _beat(store, "worker", 11, model="loaded", job_since=now - 20, idle_since=now - 300)
    _queue_job(store, now - 90)
    assert _by_name(check(store, "worker", host=HOST, time_limit=300))["consuming"].ok


def test_a_job_running_past_the_time_limit_is_stuck(redis_url: str, key_prefix: str) -> None:
    store = _store(redis_url, key_prefix)
    _beat(store, "worker", 11, model="loaded", job_since=time.time() - 400)
    consuming = _by_name(check(store, "worker", host=HOST, time_limit=300))["consuming"]
    assert not consuming.ok and "past the time limit" in consuming.detail


def test_a_bot_whose_reply_loop_or_polling_stopped_is_not_consuming(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    now = time.time()
    _beat(store, "bot", 21, looped=now - 1, polled=now - 2)
    assert all(verdict.ok for verdict in check(store, "bot", host=HOST))
    _beat(store, "bot", 21, looped=now - 120, polled=now - 2)
    assert "reply loop" in _by_name(check(store, "bot", host=HOST))["consuming"].detail
    _beat(store, "bot", 21, looped=now - 1, polled=now - 200)
    assert "getUpdates" in _by_name(check(store, "bot", host=HOST))["consuming"].detail
    # In webhook mode nothing polls, and that is fine.
    _beat(store, "bot", 21, looped=now - 1, polled="")
    assert _by_name(check(store, "bot", host=HOST))["consuming"].ok


def test_heartbeat_writes_its_fields_and_removes_them_when_stopped(
    redis_url: str, key_prefix: str
) -> None:
    store = _store(redis_url, key_prefix)
    activity = JobActivity()
    beat = Heartbeat(store, "worker", lambda: {"model": "loaded", **activity.fields()})
    beat.beat()
    activity.started()
    beat.beat()
    key = store.key("health", "worker", HOST, str(os.getpid()))
    assert float(store.client.hget(key, "job_since") or 0) > 0
    assert 0 < store.client.ttl(key) <= 16
    verdicts = _by_name(check(store, "worker", host=HOST))
    assert verdicts["consuming"].detail == "1 busy, 0 idle"
    beat.stop()
    assert not store.client.exists(key)
