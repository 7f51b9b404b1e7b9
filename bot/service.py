"""What the bot does with a photo or a question: store it, queue a job, keep the user informed.

Jobs of one (chat, user) pair run one at a time and in order: a follow-up written while the
previous answer is still being produced waits, and is queued with that answer in its history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from celery import Celery
from telegram import Bot
from telegram.constants import ChatAction
from telegram.error import TelegramError

from skingpt.imaging import encode_png, load_image, normalise
from skingpt.quality import QualityIssue, assess
from skingpt.settings import Settings
from skingpt.store import Store
from worker.app import ANSWER_TASK

logger = logging.getLogger(__name__)

TYPING_EVERY_SECONDS = 4.5


@dataclass(frozen=True)
class Asker:
    """Who asked and where to answer."""

    chat_id: int
    user_id: int
    message_id: int | None


class TypingIndicator:
    """Keeps "typing…" showing in a chat while any of its jobs is pending."""

    def __init__(self, bot: Bot, *, max_seconds: float) -> None:
        self._bot = bot
        self._max_seconds = max_seconds
        self._pending: dict[int, set[str]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, chat_id: int, job_id: str) -> None:
        self._pending.setdefault(chat_id, set()).add(job_id)
        if chat_id not in self._tasks:
            self._tasks[chat_id] = asyncio.create_task(self._keep_typing(chat_id))

    def done(self, chat_id: int, job_id: str) -> None:
        jobs = self._pending.get(chat_id)
        if jobs is None:
            return
        jobs.discard(job_id)
        if not jobs:
            self._stop(chat_id)

    def stop_chat(self, chat_id: int) -> None:
        self._stop(chat_id)

    def stop_all(self) -> None:
        for chat_id in list(self._tasks):
            self._stop(chat_id)

    def _stop(self, chat_id: int) -> None:
        self._pending.pop(chat_id, None)
        task = self._tasks.pop(chat_id, None)
        if task is not None:
            task.cancel()

    async def _keep_typing(self, chat_id: int) -> None:
        deadline = time.monotonic() + self._max_seconds
        try:
            while self._pending.get(chat_id) and time.monotonic() < deadline:
                try:
                    await self._bot.send_chat_action(chat_id, ChatAction.TYPING)
                except TelegramError as error:
                    logger.debug("Could not show typing: %s", type(error).__name__)
                await asyncio.sleep(TYPING_EVERY_SECONDS)
        finally:
            if self._tasks.get(chat_id) is asyncio.current_task():
                self._tasks.pop(chat_id, None)
                self._pending.pop(chat_id, None)


class TriageService:
    """The bot's side of the pipeline; handlers call it, the reply sender reports back to it."""

    def __init__(self, settings: Settings, store: Store, celery: Celery) -> None:
        self.settings = settings
        self.store = store
        self.celery = celery
        self.typing: TypingIndicator | None = None

    def bind(self, bot: Bot) -> None:
        """Attach the running bot (for "typing…")."""
        self.typing = TypingIndicator(bot, max_seconds=self.settings.task_time_limit * 2)

    def prepare_photo(self, data: bytes) -> tuple[bytes, list[QualityIssue]]:
        """Decode, normalise and check an upload: the PNG to store and its quality issues."""
        image = load_image(data, max_pixels=self.settings.max_image_pixels)
        image = normalise(image, max_side=self.settings.stored_image_side)
        return encode_png(image), assess(image)

    async def new_case(
        self, asker: Asker, image_png: bytes, question: str, *, hold: bool = False
    ) -> str:
        """Open a case for a new photo with its first question; returns the job id.

        With ``hold``, the job waits until :meth:`release_held` (the person chose to have a
        photo analysed despite its quality issues).
        """
        conv = await asyncio.to_thread(self.store.pseudonym, asker.chat_id, asker.user_id)
        case = await asyncio.to_thread(self.store.start_case, conv, image_png)
        logger.info("Case %s opened for %s", case[:8], conv[:8])
        if hold:
            return await self.create_job(asker, conv, case, question)
        return await self.ask(asker, conv, case, question)

    async def forget(self, asker: Asker) -> int:
        """Delete everything stored about the asker in this chat; returns the keys deleted."""
        conv = await asyncio.to_thread(self.store.pseudonym, asker.chat_id, asker.user_id)
        deleted = await asyncio.to_thread(self.store.forget, conv)
        if self.typing is not None:
            self.typing.stop_chat(asker.chat_id)
        logger.info("Forgot %s: %d keys deleted", conv[:8], deleted)
        return deleted

    async def release_held(self, asker: Asker, job_id: str) -> bool:
        """Queue a held job if it is the asker's, still waiting, and its photo still open."""
        conv = await asyncio.to_thread(self.store.pseudonym, asker.chat_id, asker.user_id)
        job = await asyncio.to_thread(self.store.load_job, job_id)
        if job is None or job.conv != conv or job.status != "new":
            return False
        if await asyncio.to_thread(self.store.open_case, conv) != job.case:
            return False
        if not await asyncio.to_thread(self.store.take_held, job_id):
            return False  # a second tap on the same button
        await self.queue(asker.chat_id, conv, job_id)
        return True

    async def open_case(self, asker: Asker) -> tuple[str, str] | None:
        """The asker's conversation id and open case, if a photo is still stored."""
        conv = await asyncio.to_thread(self.store.pseudonym, asker.chat_id, asker.user_id)
        case = await asyncio.to_thread(self.store.open_case, conv)
        return (conv, case) if case else None

    async def ask(self, asker: Asker, conv: str, case: str, question: str) -> str:
        """Queue a question about a case, behind any earlier job of the same pair."""
        job_id = await self.create_job(asker, conv, case, question)
        await self.queue(asker.chat_id, conv, job_id)
        return job_id

    async def create_job(self, asker: Asker, conv: str, case: str, question: str) -> str:
        """Record a question; it runs only once queued."""
        return await asyncio.to_thread(
            lambda: self.store.new_job(
                conv=conv,
                case=case,
                chat_id=asker.chat_id,
                reply_to=asker.message_id,
                question=question,
            )
        )

    async def queue(self, chat_id: int, conv: str, job_id: str) -> None:
        """Hand the job to the workers now, or line it up behind the pair's running job."""
        if self.typing is not None:
            self.typing.start(chat_id, job_id)
        if await asyncio.to_thread(self.store.claim_turn, conv, job_id):
            await self.dispatch(job_id)
        else:
            logger.info("Job %s waits for the previous answer in its conversation", job_id)

    async def dispatch(self, job_id: str) -> None:
        """Copy the finished turns into the job and hand it to the workers."""

        def send() -> None:
            self.store.snapshot_history(job_id)
            self.celery.send_task(
                ANSWER_TASK, args=[job_id], task_id=job_id, queue=self.settings.queue
            )

        await asyncio.to_thread(send)
        logger.info("Job %s queued", job_id)
