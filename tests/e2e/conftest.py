"""The services fixture: real bot and worker processes against Redis and the Bot API stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.support import Launcher, Services


@pytest.fixture(scope="module")
def start_services(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Services]]:
    """Start a bot and workers with extra settings; everything stops with the module."""
    launcher = Launcher(redis_url, lambda: tmp_path_factory.mktemp("e2e-logs"))
    yield launcher.start
    launcher.close()
