"""Keeps one unreadable update from stopping the bot.

When python-telegram-bot cannot parse an update (a field a newer Bot API added, or one an
older self-hosted Bot API server leaves out), it logs the whole batch, user data included, and
fetches the same batch again, for ever: every user waits. This request class checks each update
of a ``getUpdates`` answer first and replaces one that does not parse with an empty update of
the same id, so the offset moves on and nothing personal is logged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from telegram import Update
from telegram.request import HTTPXRequest

logger = logging.getLogger(__name__)


class TolerantUpdatesRequest(HTTPXRequest):
    """The HTTP client for ``getUpdates`` that drops updates the library cannot read.

    It also remembers when Telegram last answered a poll (``last_answer``, Unix time, None
    before the first), which the health check reads.
    """

    last_answer: float | None = None

    async def do_request(
        self, url: str, method: str, *args: Any, **kwargs: Any
    ) -> tuple[int, bytes]:
        status, payload = await super().do_request(url, method, *args, **kwargs)
        if status != 200 or not url.endswith("/getUpdates"):
            return status, payload
        self.last_answer = time.time()
        return status, readable_updates(payload)


def readable_updates(payload: bytes) -> bytes:
    """The ``getUpdates`` answer with each unparseable update replaced by ``{update_id}``."""
    try:
        answer = json.loads(payload)
        updates = answer["result"]
    except (ValueError, KeyError, TypeError):
        return payload
    if not isinstance(updates, list):
        return payload
    kept = []
    for update in updates:
        try:
            Update.de_json(update, None)
            kept.append(update)
        except Exception as error:  # any parse failure: skip it, never stall on it
            update_id = update.get("update_id") if isinstance(update, dict) else None
            logger.warning(
                "Skipped update %s that could not be read (%s)", update_id, type(error).__name__
            )
            if isinstance(update_id, int):
                kept.append({"update_id": update_id})
    answer["result"] = kept
    return json.dumps(answer).encode()
