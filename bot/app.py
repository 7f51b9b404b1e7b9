"""Builds the Telegram application: every handler is registered here, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from telegram import BotCommand, Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot import handlers
from bot.delivery import ReplySender
from bot.ratelimit import RedisRateLimiter
from bot.service import TriageService
from bot.updates import TolerantUpdatesRequest
from skingpt.errors import ConfigError
from skingpt.health import Heartbeat
from skingpt.i18n import N_, SUPPORTED, gettext_for
from skingpt.settings import Settings
from skingpt.store import Store
from worker.queues import JobQueue

logger = logging.getLogger(__name__)

COMMANDS = [
    ("start", N_("What this bot does and does not do")),
    ("help", N_("How to send photos and ask questions")),
    ("new", N_("Start a new case")),
    ("language", N_("Change the language")),
    ("mode", N_("Patient or health worker mode")),
    ("referral", N_("Summary of the case for a clinic")),
    ("about", N_("Which model answers; where your data goes")),
    ("forget", N_("Delete your photos, questions and answers now")),
]


class PerUserOrder(BaseUpdateProcessor):
    """Handles updates concurrently, but one at a time for each (chat, user) pair.

    A caption-less photo followed at once by a question must be read in that order, or the
    question would arrive before its photo is stored. An update takes one of the
    ``max_concurrent_updates`` places only once its pair's turn has come: one person sending
    sixty messages at once waits in their own line instead of holding sixty places that
    everyone else's messages need.
    """

    # Updates accepted at once, most of them waiting for their pair's turn.
    PENDING_PER_PLACE = 64

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates * self.PENDING_PER_PLACE)
        self._places = asyncio.Semaphore(max_concurrent_updates)
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}
        self._waiting: Counter[tuple[int, int]] = Counter()

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = _pair(update)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] += 1
        try:
            async with lock, self._places:
                await coroutine
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                self._locks.pop(key, None)

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


def build_application(
    settings: Settings, store: Store, jobs: JobQueue
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The bot, wired to the store, the job queue and the configured Bot API server."""
    if not settings.telegram_token:
        raise ConfigError(
            "SKINGPT_TELEGRAM_TOKEN is not set. Create a bot with @BotFather and put its token "
            "in that variable."
        )
    service = TriageService(settings, store, jobs)
    sender = ReplySender(service)
    polls = TolerantUpdatesRequest(connection_pool_size=1)
    heartbeat = Heartbeat(
        store,
        "bot",
        lambda: {
            "looped": f"{sender.last_round:.3f}",
            "polled": f"{polls.last_answer:.3f}" if polls.last_answer else "",
        },
    )
    tasks: list[asyncio.Task[None]] = []

    async def on_start(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        service.bind(application.bot)
        for language in SUPPORTED:
            _ = gettext_for(language)
            commands = [BotCommand(name, _(about)) for name, about in COMMANDS]
            await application.bot.set_my_commands(
                commands, language_code=None if language == "en" else language
            )
        tasks.append(asyncio.create_task(sender.run(application.bot), name="reply-sender"))
        heartbeat.start()

    async def on_stop(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        service.stop()
        await asyncio.to_thread(heartbeat.stop)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    application = (
        ApplicationBuilder()
        .token(settings.telegram_token)
        .base_url(settings.telegram_api_url)
        .base_file_url(settings.telegram_file_url)
        .get_updates_request(polls)
        .rate_limiter(
            RedisRateLimiter(
                store.client,
                prefix=settings.key_prefix,
                overall_per_second=settings.global_messages_per_second,
                chat_per_second=settings.chat_messages_per_second,
                group_per_minute=settings.group_messages_per_minute,
            )
        )
        .concurrent_updates(PerUserOrder(64))
        .post_init(on_start)
        .post_stop(on_stop)
        .build()
    )
    application.bot_data["service"] = service
    application.bot_data["sender"] = sender

    if settings.allowed_users:
        # A group before all others: someone not allowed reaches no handler that stores.
        application.add_handler(TypeHandler(Update, handlers.outsider), group=-1)
    new_message = filters.UpdateType.MESSAGE
    application.add_handler(CommandHandler("start", handlers.start))
    application.add_handler(CommandHandler("help", handlers.help_command))
    application.add_handler(CommandHandler("about", handlers.about))
    application.add_handler(CommandHandler("language", handlers.language))
    application.add_handler(CommandHandler("mode", handlers.mode))
    application.add_handler(CommandHandler("new", handlers.new_case))
    application.add_handler(CommandHandler("referral", handlers.referral))
    application.add_handler(CommandHandler("forget", handlers.forget))
    application.add_handler(CallbackQueryHandler(handlers.consent, pattern=r"^consent$"))
    application.add_handler(CallbackQueryHandler(handlers.choose_language, pattern=r"^lang:"))
    application.add_handler(CallbackQueryHandler(handlers.choose_mode, pattern=r"^mode:"))
    application.add_handler(CallbackQueryHandler(handlers.analyse_anyway, pattern=r"^analyse:"))
    application.add_handler(CallbackQueryHandler(handlers.which_case, pattern=r"^(same|other):"))
    application.add_handler(CallbackQueryHandler(handlers.stale_button))
    application.add_handler(MessageHandler(filters.UpdateType.EDITED, handlers.edited))
    application.add_handler(MessageHandler(new_message & filters.PHOTO, handlers.photo))
    application.add_handler(MessageHandler(new_message & filters.Document.ALL, handlers.document))
    application.add_handler(
        MessageHandler(new_message & filters.TEXT & ~filters.COMMAND, handlers.text)
    )
    application.add_handler(MessageHandler(new_message, handlers.unsupported))
    application.add_error_handler(handlers.error)
    return application


def _pair(update: object) -> tuple[int, int]:
    if isinstance(update, Update):
        chat = update.effective_chat
        user = update.effective_user
        return (chat.id if chat else 0, user.id if user else 0)
    return (0, 0)
