"""Shared fixtures: a real Redis, the sample photos, and a tiny model built once per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

# python-telegram-bot 22 warns on every RetryAfter unless the coming timedelta type is chosen.
os.environ.setdefault("PTB_TIMEDELTA", "1")
# Nothing in the tests may reach the real model hub: an accidental call fails fast on loopback.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

DATA = Path(__file__).parent / "data"
SAMPLE_PHOTOS = sorted(p for p in DATA.iterdir() if p.suffix in {".jpg", ".png"})
REDIS_URL = os.environ.get("SKINGPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.ConnectionError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the configured one, or else a private redis-server started for the run."""
    if _answers(REDIS_URL):
        yield REDIS_URL
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            f"Redis at {REDIS_URL} does not answer and redis-server is not installed. "
            "Install Redis, start it, or set SKINGPT_TEST_REDIS_URL.",
            pytrace=False,
        )
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _answers(url):
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server on port {port} did not start", pytrace=False)
        time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards, so tests never see each other."""
    prefix = f"skingpt-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """The tiny-random model, built once (building is deterministic)."""
    from skingpt.model.modeling import build_tiny_random

    return build_tiny_random()


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    assert len(SAMPLE_PHOTOS) >= 4, "tests/data must hold at least four sample photos"
    return SAMPLE_PHOTOS
