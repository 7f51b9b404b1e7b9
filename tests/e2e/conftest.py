"""The services fixture: real bot and worker processes against Redis and the Bot API stand-in."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest
import redis

from bot.standin import BotAPIStandIn
from tests.e2e.support import TOKEN, Services, spawn, stop


@pytest.fixture(scope="module")
def start_services(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Services]]:
    """Start a bot and a worker with extra settings; everything stops with the module."""
    started: list[Services] = []

    def start(bot_args: list[str], **settings: str) -> Services:
        logs = tmp_path_factory.mktemp("e2e-logs")
        prefix = f"skingpt-e2e-{os.getpid()}-{len(started)}"
        api = BotAPIStandIn(token=TOKEN).start()
        env = {
            **os.environ,
            "SKINGPT_REDIS_URL": redis_url,
            "SKINGPT_KEY_PREFIX": prefix,
            "SKINGPT_QUEUE": f"{prefix}-gpu",
            "SKINGPT_TORCH_THREADS": "1",
            "SKINGPT_LOG_LEVEL": "INFO",
            "SKINGPT_ALBUM_WAIT_SECONDS": "1.5",
            "SKINGPT_STATUS_INTERVAL_SECONDS": "3",
            **{f"SKINGPT_{name.upper()}": value for name, value in settings.items()},
        }
        worker = spawn(["worker", "--concurrency", "1"], env, logs / "worker.log")
        bot_env = {
            **env,
            "SKINGPT_TELEGRAM_TOKEN": TOKEN,
            "SKINGPT_TELEGRAM_API_URL": api.base_url,
            "SKINGPT_TELEGRAM_FILE_URL": api.base_file_url,
        }
        bot = spawn(["bot", *bot_args], bot_env, logs / "bot.log")
        client = redis.Redis.from_url(redis_url)
        services = Services(api, client, prefix, bot, worker, logs)
        started.append(services)
        return services

    yield start
    for services in started:
        stop(services.bot)
        stop(services.worker)
        services.api.stop()
        for key in services.redis.scan_iter(match=f"{services.prefix}*", count=500):
            services.redis.delete(key)
        for name in ("bot.log", "worker.log"):
            text = (services.logs / name).read_text(errors="replace")
            sys.stderr.write(f"\n----- {name} -----\n{text}")
