"""Fixtures for the web chat: a stand-in, a small real bot that replies, and headless Chromium.

The Chromium fixture and the `ChatPage` driver are meant for any browser test of the web chat;
move them up to ``tests/conftest.py`` when tests outside ``tests/bot`` need them.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
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

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"


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


# --- headless Chromium -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver; Selenium never downloads anything."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed; "
            "run: apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--window-size=430,900",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--no-pings",
        # Only loopback can be reached: every other host name fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root; only then is it turned off.
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class ChatPage:
    """Drives the web chat page in Chromium the way a person in the clinic would."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, url: str, *, language: str = "en-US") -> None:
        """Opens the page as a new visitor whose browser prefers `language`."""
        self.driver.execute_cdp_cmd(
            "Network.setUserAgentOverride",
            {
                "userAgent": self.driver.execute_script("return navigator.userAgent"),
                "acceptLanguage": language,
            },
        )
        self.driver.get("about:blank")
        self.driver.delete_all_cookies()
        self.driver.get(url)
        self.wait(lambda _: self.driver.execute_script("return document.readyState") == "complete")

    def wait(self, condition: Any, timeout: float = 10) -> Any:
        """Waits until `condition(driver)` holds, looking again at messages re-drawn meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        waiting = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        )
        return waiting.until(condition)

    def element(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def choose_photo(self, path: Path) -> None:
        self.element("#photo").send_keys(str(path.resolve()))

    def write(self, text: str) -> None:
        box = self.element("#question")
        box.clear()
        box.send_keys(text)

    def send(self) -> None:
        self.element("#send").click()

    def messages(self, sender: str = "") -> list[Any]:
        from selenium.webdriver.common.by import By

        selector = f"#conversation > li.message{'.' + sender if sender else ''}"
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def texts(self) -> list[str]:
        """The text of every message on the page, in order (without quotes or buttons)."""
        return [
            str(
                self.driver.execute_script(
                    "const t = arguments[0].querySelector(':scope > .text');"
                    "return t ? t.textContent : '';",
                    message,
                )
            )
            for message in self.messages()
        ]

    def wait_for_message(self, text: str, sender: str = "bot", timeout: float = 10) -> Any:
        """The first message from `sender` containing `text`, once it is on the page."""

        def found(_: Any) -> Any:
            for message in self.messages(sender):
                if text in message.text:
                    return message
            return False

        return self.wait(found, timeout)

    def press(self, message_text: str, label: str) -> None:
        """Presses the inline button `label` under the bot message containing `message_text`."""
        from selenium.webdriver.common.by import By

        def click(_: Any) -> bool:
            message = self.wait_for_message(message_text)
            for button in message.find_elements(By.CSS_SELECTOR, ".keyboard button"):
                if button.text == label:
                    button.click()
                    return True
            raise AssertionError(f"no button {label!r} under the message")

        self.wait(click)

    def style(self, element: Any, name: str) -> str:
        return str(
            self.driver.execute_script(
                "return getComputedStyle(arguments[0]).getPropertyValue(arguments[1])",
                element,
                name,
            )
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        return path


@pytest.fixture
def chat_page(chromium: Any) -> ChatPage:
    """A `ChatPage` on the shared Chromium; `open` starts each test as a new visitor."""
    return ChatPage(chromium)
