"""Fixtures for the web chat: a stand-in and a small real bot that replies.

Headless Chromium and the `ChatPage` driver are in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.standin import BotAPIStandIn
from bot.webchat import WebChat

# --- a small bot that answers everything -----------------------------------------------------


def _arabic(update: Update) -> bool:
    user = update.effective_user
    return bool(user and (user.language_code or "").startswith("ar"))


async def _start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet with formatted text and two buttons."""
    assert update.effective_message is not None
    keyboard = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("Yes", callback_data="consent:yes"),
                InlineKeyboardButton("No", callback_data="consent:no"),
            ]
        ]
    )
    await update.effective_message.reply_html(
        "<b>Welcome</b> to the <i>clinic</i> chat. Do you agree?", reply_markup=keyboard
    )


async def _photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show a status, say 'typing', download the photo, then edit the status into the result."""
    message = update.effective_message
    assert message is not None and message.photo
    status = await message.reply_text("Checking your photo…", do_quote=True)
    await context.bot.send_chat_action(message.chat_id, "typing")
    working = await context.bot.send_message(message.chat_id, "Working on it")
    file = await message.photo[-1].get_file()
    with Image.open(io.BytesIO(await file.download_as_bytearray())) as picture:
        width, height = picture.size
    await working.delete()
    button = InlineKeyboardButton("Analyse anyway", callback_data="analyse:1")
    await status.edit_text(
        f"Photo received: {width}×{height}. Question: {message.caption or '-'}",
        reply_markup=InlineKeyboardMarkup([[button]]),
    )


async def _document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Describe the file that arrived."""
    message = update.effective_message
    assert message is not None and message.document is not None
    document = message.document
    await message.reply_text(
        f"File received: {document.file_name}, {document.mime_type}, {document.file_size} bytes"
    )


async def _text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a question, in Arabic for Arabic-speaking users."""
    message = update.effective_message
    assert message is not None and message.text is not None
    if _arabic(update):
        await message.reply_text(f"وصل سؤالك: {message.text}")
    else:
        await message.reply_text(f"Question received: {message.text}")


async def _button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Acknowledge a button, remove the keyboard and confirm the choice."""
    query = update.callback_query
    assert query is not None and query.message is not None
    await query.answer(f"Chosen: {query.data}")
    await query.edit_message_reply_markup(reply_markup=None)
    text = f"اخترت: {query.data}" if _arabic(update) else f"You chose {query.data}"
    await context.bot.send_message(query.message.chat.id, text)


@dataclass
class ReplyBot:
    """A python-telegram-bot application polling the stand-in over HTTP, in its own thread."""

    api: BotAPIStandIn
    updates: list[Update] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    # /progress waits for one release of this before each step, so a test sees every state.
    step: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReplyBot:
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"the test bot did not start: {self.errors!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    async def _next_step(self) -> None:
        if not await asyncio.to_thread(self.step.acquire, True, 10):
            raise TimeoutError("the test did not release the next /progress step")

    async def _progress(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Edit a status message twice and show a note that is deleted again, step by step."""
        message = update.effective_message
        assert message is not None
        status = await message.reply_text("Queued…")
        await self._next_step()
        await status.edit_text("Analysing…")
        note = await context.bot.send_message(message.chat_id, "Temporary note")
        await self._next_step()
        await note.delete()
        await status.edit_text("Done")

    async def _record(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        self.updates.append(update)

    async def _error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if context.error is not None:
            self.errors.append(context.error)

    async def _run(self) -> None:
        builder = ApplicationBuilder().token(self.api.token).base_url(self.api.base_url)
        app: Application[Any, Any, Any, Any, Any, Any] = builder.base_file_url(
            self.api.base_file_url
        ).build()
        app.add_handler(MessageHandler(filters.ALL, self._record), group=-1)
        app.add_handler(CallbackQueryHandler(self._record), group=-1)
        app.add_handler(CommandHandler("start", _start))
        app.add_handler(CommandHandler("progress", self._progress))
        app.add_handler(MessageHandler(filters.PHOTO, _photo))
        app.add_handler(MessageHandler(filters.Document.ALL, _document))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, _text))
        app.add_handler(CallbackQueryHandler(_button))
        app.add_error_handler(self._error)
        try:
            async with app:
                await app.start()
                assert app.updater is not None
                await app.updater.start_polling(poll_interval=0, timeout=1)
                self._ready.set()
                await asyncio.to_thread(self._stop.wait)
                await app.updater.stop()
                await app.stop()
        except Exception as failure:
            self.errors.append(failure)
            raise


@pytest.fixture
def chat_api() -> Iterator[BotAPIStandIn]:
    """A running Bot API stand-in for the web chat."""
    with BotAPIStandIn() as api:
        yield api


@pytest.fixture
def reply_bot(chat_api: BotAPIStandIn) -> Iterator[ReplyBot]:
    """The small bot, polling `chat_api`; fails the test if one of its handlers failed."""
    bot = ReplyBot(chat_api).start()
    yield bot
    bot.stop()
    assert bot.errors == []


@pytest.fixture
def webchat(chat_api: BotAPIStandIn) -> Iterator[WebChat]:
    """The web chat on a free loopback port, in front of `chat_api`."""
    with WebChat(chat_api, port=0) as chat:
        yield chat
