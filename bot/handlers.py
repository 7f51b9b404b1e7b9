"""One handler per command or kind of message; :mod:`bot.app` registers them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, TelegramError
from telegram.ext import ApplicationHandlerStop, ContextTypes, filters

from bot import texts
from bot.service import Asker, Session, TriageService
from skingpt.errors import ImageRejected
from skingpt.i18n import N_, NATIVE_NAMES, SUPPORTED, gettext_for, negotiate
from skingpt.referral import referral_text

logger = logging.getLogger(__name__)

DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024
MAX_QUESTION_CHARS = 2000

NOT_ALLOWED = N_(
    "Sorry, this service is open only to the people it was set up for, and it has not kept "
    "anything you sent. Please ask the clinic or health worker who runs it for help."
)


# --- commands --------------------------------------------------------------------------------


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot is and is not, and ask for consent until it is given."""
    session = await _session(update, context)
    _ = session._
    await _reply(update, _(texts.START))
    if session.prefs.consented:
        await _reply(update, _(texts.ALREADY_AGREED))
    else:
        await _ask_consent(update, context, session)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to send photos, ask questions and use the commands."""
    session = await _session(update, context)
    await _reply(update, session._(texts.HELP))


async def about(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Which model answers, its limits, and where data goes."""
    session = await _session(update, context)
    _ = session._
    settings = _service(context).settings
    model = settings.weights.rstrip("/").rsplit("/", 1)[-1] if settings.weights else settings.model
    encryption = _(texts.ENCRYPTED if settings.encryption_key else texts.NOT_ENCRYPTED)
    hours = max(1, round(settings.retention_seconds / 3600))
    await _reply(update, _(texts.ABOUT).format(model=model, hours=hours, encryption=encryption))


async def language(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Offer the supported languages as buttons."""
    session = await _session(update, context)
    buttons = [
        [InlineKeyboardButton(NATIVE_NAMES[code], callback_data=f"lang:{code}")]
        for code in SUPPORTED
    ]
    await _message(update).reply_text(
        session._(texts.CHOOSE_LANGUAGE), reply_markup=InlineKeyboardMarkup(buttons)
    )


async def mode(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Offer patient mode or community health worker mode."""
    session = await _session(update, context)
    _ = session._
    buttons = [
        [InlineKeyboardButton(_(texts.PATIENT), callback_data="mode:patient")],
        [InlineKeyboardButton(_(texts.HEALTH_WORKER), callback_data="mode:health_worker")],
    ]
    await _message(update).reply_text(
        _(texts.CHOOSE_MODE), reply_markup=InlineKeyboardMarkup(buttons)
    )


async def new_case(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Close the open case, so that the next photo starts a new one, and cancel the answers
    still coming for it."""
    session = await _session(update, context)
    closed, cancelled = await _service(context).new_case(session, _message(update).chat.id)
    if cancelled:
        await _reply(update, session._(texts.NEW_CASE_CANCELLED))
    else:
        await _reply(update, session._(texts.NEW_CASE if closed else texts.NO_OPEN_CASE))


async def referral(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Write a short summary of the open case to forward to a clinic."""
    session = await _session(update, context)
    service = _service(context)
    case = await service.open_case_of(session)
    if case is None:
        await _reply(update, session._(texts.NO_OPEN_CASE))
        return
    summary = await asyncio.to_thread(referral_text, service.store, case, session.language)
    await _reply(update, summary)


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Delete every photo, question, answer and setting stored about the user, and confirm."""
    session = await _session(update, context)
    deleted = await _service(context).forget(session, _message(update).chat.id)
    await _reply(update, session._(texts.FORGOTTEN if deleted else texts.NOTHING_TO_FORGET))


# --- messages --------------------------------------------------------------------------------


async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Analyse a photo, taking its largest size."""
    largest = _message(update).photo[-1]
    await _analyse_upload(update, context, largest.file_id, largest.file_size)


async def document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Analyse an image sent as a file, whatever its name or MIME type says."""
    document = _message(update).document
    assert document is not None
    await _analyse_upload(update, context, document.file_id, document.file_size)


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask a follow-up question about the open case."""
    message = _message(update)
    service = _service(context)
    session = await _session(update, context)
    if not session.prefs.consented:
        await _ask_consent(update, context, session)
        return
    case = await service.open_case_of(session)
    if case is None:
        await _reply(update, session._(texts.SEND_PHOTO_FIRST))
        return
    question = (message.text or "").strip()
    if not question:
        await _reply(update, session._(texts.WRITE_A_QUESTION))
        return
    if len(question) > MAX_QUESTION_CHARS:
        # Cutting it would drop what the person asked without their knowing: ask again instead.
        too_long = session._(texts.TEXT_TOO_LONG)
        await _reply(update, too_long.format(length=len(question), limit=MAX_QUESTION_CHARS))
        return
    await service.ask(_asker(update), session, case, question)


async def edited(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask for a new message instead of an edit (an edited channel post gets no reply: it
    would go out to everyone reading the channel)."""
    if _message(update).chat.type == ChatType.CHANNEL:
        return
    session = await _session(update, context)
    await _reply(update, session._(texts.EDITED))


async def unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot can read (a command meant for another bot in a group gets no reply)."""
    if filters.StatusUpdate.ALL.check_update(update):
        return  # someone joined, left, renamed the group...: nobody asked the bot anything
    command = (_message(update).text or "").split(maxsplit=1)[0] if _message(update).text else ""
    addressee = command.partition("@")[2]
    if command.startswith("/") and addressee and addressee.lower() != context.bot.username.lower():
        return
    session = await _session(update, context)
    await _reply(update, session._(texts.UNSUPPORTED))


# --- access ----------------------------------------------------------------------------------


async def outsider(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Refuse anyone not in SKINGPT_ALLOWED_USERS before any other handler stores a thing."""
    allowed = _service(context).settings.allowed_users
    user = update.effective_user
    if not allowed or (user is not None and user.id in allowed):
        return
    if user is not None:
        logger.info("Refused an update from someone not on the allow-list")
        refusal = gettext_for(negotiate(user.language_code))(NOT_ALLOWED)
        with contextlib.suppress(TelegramError):
            if update.callback_query is not None:
                await update.callback_query.answer(refusal, show_alert=True)
            elif update.message is not None:
                await update.message.reply_text(refusal)
    raise ApplicationHandlerStop


# --- buttons ---------------------------------------------------------------------------------


async def consent(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Record the person's consent."""
    session = await _button_session(update, context)
    already = session.prefs.consented
    await _service(context).set_prefs(session, consented=True)
    await _drop_buttons(update)
    await _button_reply(
        update, session._(texts.ALREADY_AGREED if already else texts.THANKS_FOR_CONSENT)
    )


async def choose_language(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Switch the interface language."""
    session = await _button_session(update, context)
    chosen = negotiate(_button_value(update))
    await _service(context).set_prefs(session, language=chosen)
    await _drop_buttons(update)
    await _button_reply(update, gettext_for(chosen)(texts.LANGUAGE_SET))


async def choose_mode(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Switch between patient and community health worker mode."""
    session = await _button_session(update, context)
    health_worker = _button_value(update) == "health_worker"
    await _service(context).set_prefs(session, health_worker=health_worker)
    await _drop_buttons(update)
    reply = texts.MODE_HEALTH_WORKER if health_worker else texts.MODE_PATIENT
    await _button_reply(update, session._(reply))


async def analyse_anyway(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Analyse a photo the quality check warned about, once, for the person who sent it."""
    session = await _button_session(update, context)
    released = await _service(context).release_held(
        _button_asker(update), session, _button_value(update)
    )
    await _drop_buttons(update)
    if not released:
        await _button_reply(update, session._(texts.STALE_BUTTON))


async def which_case(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """File held photos in the open case ("same problem") or in a new case."""
    session = await _button_session(update, context)
    query = update.callback_query
    assert query is not None and query.data is not None
    same = query.data.startswith("same:")
    done = await _service(context).add_to_case(
        _button_asker(update), session, _button_value(update), same
    )
    await _drop_buttons(update)
    if not done:
        await _button_reply(update, session._(texts.STALE_BUTTON))


async def stale_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a button this version of the bot no longer knows."""
    query = update.callback_query
    assert query is not None
    language = negotiate(query.from_user.language_code)
    with contextlib.suppress(TelegramError):
        await query.answer(gettext_for(language)(texts.STALE_BUTTON))


async def error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the failure with its traceback and tell the user, briefly, what to do."""
    logger.error("Handling an update failed", exc_info=context.error)
    if isinstance(update, Update) and update.effective_chat is not None:
        user = update.effective_user
        _ = gettext_for(negotiate(user.language_code if user else None))
        try:
            await context.bot.send_message(update.effective_chat.id, _(texts.SOMETHING_WENT_WRONG))
        except TelegramError:
            logger.warning("Could not tell the user about the failure")


# --- helpers ---------------------------------------------------------------------------------


async def _analyse_upload(
    update: Update, context: ContextTypes.DEFAULT_TYPE, file_id: str, size: int | None
) -> None:
    message = _message(update)
    service = _service(context)
    session = await _session(update, context)
    _ = session._
    if not session.prefs.consented:
        await _reply(update, _(texts.CONSENT_FIRST))
        await _ask_consent(update, context, session)
        return
    if size is not None and size > DOWNLOAD_LIMIT_BYTES:
        await _reply(update, _(texts.FILE_TOO_BIG))
        return
    # Refuse before downloading and decoding: a flood of photos would otherwise cost the bot
    # time on each. An album is checked once, when it is complete.
    if message.media_group_id is None and not await service.room_for_a_job(
        _asker(update), session
    ):
        return
    if not await service.room_for_photos():
        await _reply(update, _(texts.STORE_FULL))
        return
    try:
        telegram_file = await context.bot.get_file(file_id)
        data = bytes(await telegram_file.download_as_bytearray())
    except BadRequest as failure:
        too_big = "too big" in failure.message.lower()
        await _reply(update, _(texts.FILE_TOO_BIG if too_big else texts.DOWNLOAD_FAILED))
        return
    try:
        prepared = await asyncio.to_thread(service.prepare_photo, data)
    except ImageRejected as rejected:
        logger.info("Upload refused: %s", rejected.reason)
        await _reply(update, rejected.tell(_))
        return
    caption = (message.caption or "").strip()[:MAX_QUESTION_CHARS]
    await service.photo(_asker(update), session, prepared, caption, message.media_group_id)


async def _ask_consent(
    update: Update, context: ContextTypes.DEFAULT_TYPE, session: Session
) -> None:
    _ = session._
    hours = max(1, round(_service(context).settings.retention_seconds / 3600))
    button = InlineKeyboardButton(_(texts.AGREE), callback_data="consent")
    consent = _(texts.CONSENT).format(hours=hours)
    if _message(update).chat.type != ChatType.PRIVATE:
        consent += " " + _(texts.CONSENT_GROUP)
    await _message(update).reply_text(consent, reply_markup=InlineKeyboardMarkup([[button]]))


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


async def _session(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Session:
    user = update.effective_user
    return await _service(context).session(_asker(update), user.language_code if user else None)


def _button_asker(update: Update) -> Asker:
    query = update.callback_query
    assert query is not None
    chat_id = query.message.chat.id if query.message else query.from_user.id
    return Asker(chat_id=chat_id, user_id=query.from_user.id, message_id=None)


async def _button_session(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Session:
    query = update.callback_query
    assert query is not None
    with contextlib.suppress(TelegramError):
        await query.answer()
    return await _service(context).session(_button_asker(update), query.from_user.language_code)


def _button_value(update: Update) -> str:
    query = update.callback_query
    assert query is not None and query.data is not None
    return query.data.partition(":")[2]


async def _drop_buttons(update: Update) -> None:
    query = update.callback_query
    if query is not None and query.message is not None:
        with contextlib.suppress(TelegramError):
            await query.edit_message_reply_markup(reply_markup=None)


async def _button_reply(update: Update, reply: str) -> None:
    query = update.callback_query
    assert query is not None
    await query.get_bot().send_message(_button_asker(update).chat_id, reply)


async def _reply(update: Update, reply: str) -> None:
    message = update.effective_message
    if message is not None:
        await message.reply_text(reply)
