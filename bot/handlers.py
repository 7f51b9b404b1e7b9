"""One handler per command or kind of message; :mod:`bot.app` registers them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.service import Asker, TriageService
from skingpt.errors import ImageRejected
from skingpt.prompts import DEFAULT_QUESTION

logger = logging.getLogger(__name__)

DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024
ANALYSE = "analyse"  # callback data prefix of the "analyse anyway" button
MAX_QUESTION_CHARS = 2000


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot is and is not, with the disclaimer."""
    await _reply(update, texts.START)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to send a photo and ask questions."""
    await _reply(update, texts.HELP)


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Delete every photo, question and answer stored about the user, at once, and confirm."""
    deleted = await _service(context).forget(_asker(update))
    await _reply(update, texts.FORGOTTEN if deleted else texts.NOTHING_TO_FORGET)


async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Analyse a photo, taking its largest size."""
    message = _message(update)
    largest = message.photo[-1]
    await _analyse_upload(update, context, largest.file_id, largest.file_size)


async def document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Analyse an image sent as a file, whatever its name or MIME type says."""
    message = _message(update)
    assert message.document is not None
    await _analyse_upload(update, context, message.document.file_id, message.document.file_size)


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask a follow-up question about the photo of the open case."""
    message = _message(update)
    service = _service(context)
    asker = _asker(update)
    opened = await service.open_case(asker)
    if opened is None:
        await _reply(update, texts.SEND_PHOTO_FIRST)
        return
    conv, case = opened
    question = (message.text or "").strip()[:MAX_QUESTION_CHARS]
    if not question:
        await _reply(update, texts.WRITE_A_QUESTION)
        return
    await service.ask(asker, conv, case, question)


async def analyse_anyway(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Analyse a photo the quality check warned about, once, for the person who sent it."""
    query = update.callback_query
    assert query is not None and query.data is not None
    await query.answer()
    job_id = query.data.partition(":")[2]
    chat_id = query.message.chat.id if query.message else query.from_user.id
    asker = Asker(chat_id=chat_id, user_id=query.from_user.id, message_id=None)
    released = await _service(context).release_held(asker, job_id)
    if query.message is not None:
        with contextlib.suppress(TelegramError):
            await query.edit_message_reply_markup(reply_markup=None)
    if not released:
        await context.bot.send_message(chat_id, texts.STALE_BUTTON)


async def stale_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a button this version of the bot no longer knows."""
    query = update.callback_query
    assert query is not None
    await query.answer(texts.STALE_BUTTON)


async def edited(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask for a new message instead of an edit."""
    await _reply(update, texts.EDITED)


async def unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot can read (a command meant for another bot in a group gets no reply)."""
    command = (_message(update).text or "").split(maxsplit=1)[0] if _message(update).text else ""
    addressee = command.partition("@")[2]
    if command.startswith("/") and addressee and addressee.lower() != context.bot.username.lower():
        return
    await _reply(update, texts.UNSUPPORTED)


async def error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the failure with its traceback and tell the user, briefly, what to do."""
    logger.error("Handling an update failed", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message is not None:
        try:
            await update.effective_message.reply_text(texts.SOMETHING_WENT_WRONG)
        except TelegramError:
            logger.warning("Could not tell the user about the failure")


async def _analyse_upload(
    update: Update, context: ContextTypes.DEFAULT_TYPE, file_id: str, size: int | None
) -> None:
    message = _message(update)
    service = _service(context)
    if size is not None and size > DOWNLOAD_LIMIT_BYTES:
        await _reply(update, texts.FILE_TOO_BIG)
        return
    try:
        telegram_file = await context.bot.get_file(file_id)
        data = bytes(await telegram_file.download_as_bytearray())
    except BadRequest as failure:
        too_big = "too big" in failure.message.lower()
        await _reply(update, texts.FILE_TOO_BIG if too_big else texts.DOWNLOAD_FAILED)
        return
    try:
        image_png, issues = await asyncio.to_thread(service.prepare_photo, data)
    except ImageRejected as rejected:
        logger.info("Upload refused: %s", rejected.reason)
        await _reply(update, rejected.user_message)
        return
    question = (message.caption or "").strip()[:MAX_QUESTION_CHARS] or DEFAULT_QUESTION
    if not issues:
        await service.new_case(_asker(update), image_png, question)
        return
    logger.info("Photo held by the quality check: %s", ", ".join(i.code for i in issues))
    job_id = await service.new_case(_asker(update), image_png, question, hold=True)
    button = InlineKeyboardButton(texts.ANALYSE_ANYWAY, callback_data=f"{ANALYSE}:{job_id}")
    await message.reply_text(
        texts.quality_report(issues), reply_markup=InlineKeyboardMarkup([[button]])
    )


def _service(context: ContextTypes.DEFAULT_TYPE) -> TriageService:
    service: TriageService = context.bot_data["service"]
    return service


def _message(update: Update) -> Message:
    message = update.effective_message
    assert message is not None, "message handlers only run for updates with a message"
    return message


def _asker(update: Update) -> Asker:
    message = _message(update)
    user = update.effective_user
    user_id = user.id if user is not None else message.chat.id
    return Asker(chat_id=message.chat.id, user_id=user_id, message_id=message.message_id)


async def _reply(update: Update, reply: str) -> None:
    message = update.effective_message
    if message is not None:
        await message.reply_text(reply)
