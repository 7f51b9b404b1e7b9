"""Bounds: a job still in flight after /new or /forget stays cancelled, and photos stop being
taken before Redis runs out of memory for the job queue."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from bot import texts
from tests.e2e.support import DATA, Services, agree, containing, wait_for
from tests.reliability.tally import Tally

pytestmark = pytest.mark.e2e

SCRIPTED = {
    "model": "scripted",
    "script": str(DATA / "scripted" / "samples.toml"),
    "allow_scripted_model": "true",
}


def _answer(message: dict[str, Any]) -> bool:
    return "Possible conditions" in (message.get("text") or "")


def _photo(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _wait_running(services: Services, chat: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(job["status"] == "running" for job in services.jobs(chat)):
        assert time.monotonic() < deadline, f"no job of chat {chat} started"
        time.sleep(0.05)


def _freeze(services: Services) -> None:
    os.killpg(services.worker.pid, signal.SIGSTOP)


def _thaw(services: Services) -> None:
    os.killpg(services.worker.pid, signal.SIGCONT)


def test_new_and_forget_cancel_jobs_queued_or_running(
    start_services: Callable[..., Services], tally: Tally
) -> None:
    services = start_services([], worker_args=("--concurrency", "2"), **SCRIPTED)
    api = services.api
    restarts, forgets, queued = 11_001, 11_002, 11_003
    for user in (restarts, forgets, queued):
        agree(api, user)
    with tally.fault("/new and /forget while jobs run or wait"):
        api.send_photo(restarts, _photo("psoriasis_01.jpg"))
        api.send_photo(forgets, _photo("eczema_02.jpg"))
        _wait_running(services, restarts)
        _wait_running(services, forgets)
        # Both worker children are mid-analysis; freeze them so the next photo has to wait.
        _freeze(services)
        try:
            api.send_photo(queued, _photo("nevus_01.jpg"))
            wait_for(api, queued, containing("in line"))
            forgotten_jobs = [job["case"] for job in services.jobs(forgets)]
            api.send_text(restarts, "/new")
            api.send_text(queued, "/new")
            api.send_text(forgets, "/forget")
            for user in (restarts, queued):
                wait_for(api, user, containing("is cancelled"))
            wait_for(api, forgets, containing(texts.FORGOTTEN))
        finally:
            _thaw(services)
        # The children finish their model calls; nothing of it may reach anyone or come back.
        time.sleep(3)
        for user in (restarts, forgets, queued):
            assert not any(_answer(m) for m in api.messages(user)), user
            assert not services.jobs(user)
        leftovers = [
            key
            for case in forgotten_jobs
            for key in services.redis.scan_iter(match=f"{services.prefix}:case:{case}*")
        ]
        assert not leftovers, leftovers
        # The cancelled turn is free: the next photo is answered.
        seen = len(api.messages(restarts))
        api.send_photo(restarts, _photo("tinea_corporis_01.jpg"))
        wait_for(api, restarts, _answer, after=seen, timeout=60)
        services.assert_alive()
    tally.messages(expected=1, delivered=1, lost=0, duplicated=0)


def test_photos_are_refused_clearly_once_redis_is_over_its_memory_budget(
    start_services: Callable[..., Services], tally: Tally
) -> None:
    # Any Redis in use holds more than 1 MB, so every photo is over this budget.
    services = start_services([], store_memory_budget_mb="1", **SCRIPTED)
    api, user = services.api, 11_010
    agree(api, user)
    with tally.bad_input("photo while Redis is over the memory budget"):
        api.send_photo(user, _photo("psoriasis_01.jpg"))
        wait_for(api, user, containing("the service is full"))
        api.send_text(user, "Is it contagious?")
        wait_for(api, user, containing("send a photo of the skin first"))
        assert not services.jobs(user)
        assert not list(services.redis.scan_iter(match=f"{services.prefix}:case:*"))
        services.assert_alive()
