"""The webhook server's probe says whether replies still go out."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from bot.webhook import WebhookServer
from skingpt.health import REPLY_LOOP_SECONDS


def _status(last_round: float) -> int:
    application: Any = SimpleNamespace(bot_data={"sender": SimpleNamespace(last_round=last_round)})
    server = WebhookServer(
        application, None, prefix="p", secret="s", path="/hook", host="127.0.0.1", port=0
    )
    response = asyncio.run(server.health(None))
    return int(response.status)


def test_healthz_is_ok_while_replies_go_out_and_503_once_the_loop_stalls() -> None:
    assert _status(time.time() - 1) == 200
    assert _status(time.time() - REPLY_LOOP_SECONDS - 5) == 503
