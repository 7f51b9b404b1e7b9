"""`skingpt health` tells a supervisor whether the bot and the workers are alive, have their
model and still consume jobs, from real processes' heartbeats."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.e2e.support import DATA, Services, agree, containing, stop, wait_for
from tests.reliability.tally import Tally

pytestmark = pytest.mark.e2e

SCRIPT = DATA / "scripted" / "samples.toml"
ANSWER = "Possible conditions"


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> Services:
    return start_services(
        [],
        model="scripted",
        script=str(SCRIPT),
        allow_scripted_model="true",
    )


def health(services: Services, role: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skingpt.cli", "health", role, *extra],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def until_healthy(services: Services, role: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = health(services, role)
        if result.returncode == 0:
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"{role} never became healthy: {result.stdout}{result.stderr}")
        time.sleep(0.5)


def test_bot_and_worker_report_alive_loaded_and_consuming(services: Services) -> None:
    worker = until_healthy(services, "worker")
    assert "worker alive: ok" in worker
    assert "worker model loaded: ok" in worker
    assert "worker consuming: ok" in worker
    bot = until_healthy(services, "bot")
    assert "bot alive: ok" in bot and "bot consuming: ok" in bot


def test_a_worker_that_stops_taking_jobs_fails_its_check_and_recovers(
    services: Services, tally: Tally
) -> None:
    until_healthy(services, "worker")
    user = 7101
    agree(services.api, user)
    # Freeze the worker's parent, which takes jobs from Redis; its child keeps beating.
    os.kill(services.worker.pid, signal.SIGSTOP)
    with tally.fault("worker frozen while a job waits (health check must notice)"):
        try:
            seen = len(services.api.messages(user))
            services.api.send_photo(user, (DATA / "psoriasis_01.jpg").read_bytes())
            time.sleep(5)
            frozen = health(services, "worker", "--stall-seconds", "3")
            assert frozen.returncode == 1, frozen.stdout
            assert "worker consuming: FAIL" in frozen.stdout
            assert "waited" in frozen.stdout
        finally:
            os.kill(services.worker.pid, signal.SIGCONT)
        wait_for(services.api, user, containing(ANSWER), after=seen, timeout=60)
        until_healthy(services, "worker")
        tally.messages(expected=1, delivered=1, lost=0, duplicated=0)


def test_a_stopped_worker_leaves_no_beat_behind(services: Services) -> None:
    until_healthy(services, "worker")
    stop(services.worker)
    result = health(services, "worker")
    assert result.returncode == 1
    assert "worker alive: FAIL" in result.stdout
    # The bot is still healthy: it keeps taking photos for when a worker comes back.
    assert health(services, "bot").returncode == 0


def test_without_redis_the_check_fails_with_one_clear_line(services: Services) -> None:
    env = {**services.env, "SKINGPT_REDIS_URL": "redis://127.0.0.1:9/0"}
    result = subprocess.run(
        [sys.executable, "-m", "skingpt.cli", "health", "bot"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "skingpt health: Redis at redis://127.0.0.1:9/0 does not answer"
    )
    assert "Traceback" not in result.stderr
