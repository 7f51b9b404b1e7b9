"""Webhook mode: Telegram posts each update to this process over HTTP instead of being polled.

The server is a small aiohttp application that feeds ``application.update_queue``, rather than
python-telegram-bot's own webhook server (tornado, the ``webhooks`` extra), because that one
falls short of what a public endpoint needs here:

- it compares the secret token with ``!=``, which can leak how much of a guess was right
  through timing; this server uses :func:`hmac.compare_digest`;
- tornado reads the whole body (up to 100 MB by default) before the handler checks the secret;
  here a request without the right secret is refused before its body is read, and a body over
  :data:`MAX_BODY_BYTES` is refused unread;
- it logs the raw update (message text, user ids) when an update cannot be parsed, and the
  wrong secret at debug level; this server logs neither;
- it does nothing about redelivery: Telegram posts an update again when it saw no 200 (a
  timeout, a restart behind a load balancer), and each update id is accepted here once, across
  every bot replica and restart, through ``SET NX`` in Redis.

A TLS-terminating reverse proxy sits in front (Telegram only posts to https:// on ports 443,
80, 88 or 8443); the bot listens on ``SKINGPT_WEBHOOK_HOST``, by default this machine only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from aiohttp import web
from telegram import Update
from telegram.ext import Application

from skingpt.health import REPLY_LOOP_SECONDS
from skingpt.settings import Settings

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram's updates are a few kilobytes: a 4096-character text, its entities and a quoted reply.
MAX_BODY_BYTES = 256 * 1024
# Telegram gives up redelivering an update after 24 hours.
SEEN_SECONDS = 25 * 3600

AnyApplication = Application[Any, Any, Any, Any, Any, Any]


class WebhookServer:
    """Accepts updates Telegram posts to ``path`` and hands each new one to the application."""

    def __init__(
        self,
        application: AnyApplication,
        client: redis.Redis,
        *,
        prefix: str,
        secret: str,
        path: str,
        host: str,
        port: int,
    ) -> None:
        self.application = application
        self.client = client
        self.prefix = prefix
        self.host = host
        self.port = port
        self._secret = secret.encode()
        self._path = path
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; returns once the socket is bound."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(self._path, self.receive)
        app.router.add_get("/healthz", self.health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        logger.info("Webhook server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting requests; those in progress finish first."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def health(self, request: web.Request) -> web.Response:
        """Answer a load balancer's or orchestrator's probe: 200 while replies go out, 503 when
        the reply loop has stopped turning (Redis unreachable, or the loop stuck)."""
        sender = self.application.bot_data.get("sender")
        if sender is not None and time.time() - sender.last_round > REPLY_LOOP_SECONDS:
            return web.Response(status=503, text="replies are not being sent")
        return web.Response(text="ok")

    async def receive(self, request: web.Request) -> web.Response:
        """Check the secret, then the size, then take the update once."""
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._secret):
            logger.warning("Webhook request refused: missing or wrong secret token")
            return web.Response(status=403)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return web.Response(status=413)
        try:
            data = json.loads(await request.read())
            update = Update.de_json(data, self.application.bot) if isinstance(data, dict) else None
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413)
        except (ValueError, TypeError, KeyError, AttributeError):
            update = None
        if not isinstance(update, Update):
            logger.warning("Webhook request refused: the body is not an update")
            return web.Response(status=400)
        try:
            first = await asyncio.to_thread(self._first_delivery, update.update_id)
        except redis.RedisError:
            # Telegram retries later; the update is not lost.
            logger.warning("Webhook update %d deferred: Redis does not answer", update.update_id)
            return web.Response(status=503)
        if first:
            await self.application.update_queue.put(update)
        else:
            logger.info("Webhook update %d was delivered before; dropped", update.update_id)
        return web.Response()

    def _first_delivery(self, update_id: int) -> bool:
        key = f"{self.prefix}:webhook-update:{update_id}"
        return bool(self.client.set(key, b"1", nx=True, ex=SEEN_SECONDS))


def run_webhook(application: AnyApplication, settings: Settings, client: redis.Redis) -> None:
    """Register the webhook with Telegram and serve it until SIGTERM or SIGINT."""
    asyncio.run(_serve(application, settings, client))


async def _serve(application: AnyApplication, settings: Settings, client: redis.Redis) -> None:
    assert settings.webhook_url and settings.webhook_secret, "checked by Settings"
    server = WebhookServer(
        application,
        client,
        prefix=settings.key_prefix,
        secret=settings.webhook_secret,
        path=urlsplit(settings.webhook_url).path or "/",
        host=settings.webhook_host,
        port=settings.webhook_port,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await application.initialize()
    try:
        if application.post_init is not None:
            await application.post_init(application)
        await application.start()
        await server.start()
        # Registered after the server listens, so the first update finds it. The webhook stays
        # set on the way out: other replicas may still serve it, and Telegram keeps updates
        # while none does.
        await application.bot.set_webhook(
            settings.webhook_url,
            secret_token=settings.webhook_secret,
            allowed_updates=Update.ALL_TYPES,
        )
        logger.info("Webhook registered; serving updates")
        await stopping.wait()
    finally:
        await server.stop()
        if application.running:
            await application.stop()
        if application.post_stop is not None:
            await application.post_stop(application)
        await application.shutdown()
