"""What the bot does with photos and questions: store them, queue jobs, keep people informed.

Jobs of one (chat, user) pair run one at a time and in order: a follow-up written while the
previous answer is still being produced waits, and is queued with that answer in its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bot import texts
from skingpt.i18n import Translate, gettext_for, negotiate
from skingpt.imaging import decode_stored, encode_png, load_image, normalise
from skingpt.pipeline import ANALYSIS, FOLLOWUP
from skingpt.quality import QualityIssue, assess
from skingpt.settings import Settings
from skingpt.store import Prefs, Store
from worker.queues import JobQueue

logger = logging.getLogger(__name__)

TYPING_EVERY_SECONDS = 4.5
MEMORY_CHECK_SECONDS = 5.0
# "typing…" and the checks behind status messages stay within these rates in all, however many
# people wait: their work grows with the queue, and unbounded it took the bot's time (and
# Telegram's overall message limit) from sending answers just when the queue was long.
TYPING_PER_SECOND = 5.0
STATUS_CHECKS_PER_SECOND = 5.0
# How often, and how far down, status messages' estimates read the queue (see _read_line).
LINE_READ_EVERY_SECONDS = 1.0
LINE_LOOKED_AT = 2000


@dataclass(frozen=True)
class Asker:
    """Who asked and where to answer."""

    chat_id: int
    user_id: int
    message_id: int | None


@dataclass(frozen=True)
class Session:
    """One person in one chat: their pseudonymous id, choices and language."""

    conv: str
    prefs: Prefs
    language: str

    @property
    def _(self) -> Translate:
        return gettext_for(self.language)


@dataclass(frozen=True)
class Photo:
    """An upload, decoded, normalised and checked."""

    png: bytes
    issues: list[QualityIssue]


@dataclass
class _Album:
    asker: Asker
    session: Session
    caption: str
    photos: list[Photo] = field(default_factory=list)
    timer: asyncio.Task[None] | None = None


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
                await asyncio.sleep(
                    max(TYPING_EVERY_SECONDS, len(self._tasks) / TYPING_PER_SECOND)
                )
        finally:
            if self._tasks.get(chat_id) is asyncio.current_task():
                self._tasks.pop(chat_id, None)
                self._pending.pop(chat_id, None)


@dataclass(frozen=True)
class _Line:
    """The job queue as every status message's estimate sees it, read once for all of them."""

    medians: dict[str, float]  # recent median service time per job kind, in seconds
    workers: int  # workers busy now, at least 1
    kinds: list[str]  # the kinds of the jobs in line, first in line first
    read_at: float  # time.monotonic()


class StatusMessages:
    """One message per queued job that shows its place in line, then the step being run.

    It is edited only when its text changes and at most once every ``interval`` seconds
    (Telegram limits edits), and deleted once the reply is out.
    """

    def __init__(self, bot: Bot, store: Store, settings: Settings) -> None:
        self._bot = bot
        self._store = store
        self._interval = settings.status_interval_seconds
        self._max_age = float(settings.visibility_timeout)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._line: _Line | None = None
        self._line_lock = threading.Lock()

    async def show(self, asker: Asker, job_id: str, language: str, *, always: bool) -> None:
        """Post the job's status (only when it has to wait, unless ``always``) and follow it."""
        text = await asyncio.to_thread(self.describe, job_id, language)
        if text is None:
            return
        place = await asyncio.to_thread(self._store.place_in_line, job_id, max_age=self._max_age)
        if not always and (place or 0) <= 1:
            return
        reply = reply_to(asker.message_id)
        try:
            message = await self._bot.send_message(asker.chat_id, text, reply_parameters=reply)
        except TelegramError as error:
            logger.warning("Could not post a status message: %s", type(error).__name__)
            return
        await asyncio.to_thread(self._store.set_status_message, job_id, message.message_id)
        if await asyncio.to_thread(self.describe, job_id, language) is None:
            # The answer went out while this message was on its way: it has nothing to show.
            await self.finish(job_id, asker.chat_id, message.message_id)
            return
        self._tasks[job_id] = asyncio.create_task(self._follow(message, job_id, language, text))

    def describe(self, job_id: str, language: str) -> str | None:
        """The status text of a job, or None once it is answered or gone."""
        _ = gettext_for(language)
        job = self._store.load_job(job_id)
        if job is None or job.status == "done":
            return None
        if job.status == "running" and job.steps:
            if job.kind != ANALYSIS:
                return _(texts.WORKING_ON_QUESTION)
            return _(texts.WORKING).format(step=job.step, steps=job.steps)
        place = self._store.place_in_line(job_id, max_age=self._max_age)
        if place is None:
            return None
        intro = texts.QUEUED if job.kind == ANALYSIS else texts.QUEUED_QUESTION
        seconds = self.estimate(job_id, place)
        wait = (
            _(texts.ESTIMATE).format(minutes=max(1, round(seconds / 60)))
            if seconds is not None
            else _(texts.NO_ESTIMATE)
        )
        return _(intro).format(place=place) + " " + wait

    def estimate(self, job_id: str, place: int) -> float | None:
        """Seconds until the job's answer: the recent median service time of each job in line
        up to this one, shared among the workers busy now; None before any job finished."""
        line = self._read_line()
        if not line.medians:
            return None
        fallback = max(line.medians.values())
        ahead = line.kinds[:place]
        # Jobs that joined after the line was read stand behind the ones it holds; their kind
        # is not known, so they count as the slower kind.
        seconds = sum(line.medians.get(kind, fallback) for kind in ahead)
        return (seconds + fallback * (place - len(ahead))) / line.workers

    def _read_line(self) -> _Line:
        """The queue's service times, busy workers and kinds, read at most every
        ``LINE_READ_EVERY_SECONDS`` and shared: read by each status message on its own, the
        Redis work grows with the square of the queue (each job looks at every job ahead of
        it) and, with hundreds of people waiting, slows the bot for everyone."""
        with self._line_lock:
            now = time.monotonic()
            if self._line is not None and now - self._line.read_at < LINE_READ_EVERY_SECONDS:
                return self._line
            medians = {}
            for kind in (ANALYSIS, FOLLOWUP):
                recent = self._store.recent_seconds(kind)
                if recent:
                    medians[kind] = statistics.median(recent)
            workers = max(1, self._store.running_jobs())
            kinds = self._store.kinds_in_line(LINE_LOOKED_AT)
            self._line = _Line(medians, workers, kinds, now)
            return self._line

    async def finish(self, job_id: str, chat_id: int, message_id: int | None) -> None:
        """Stop following a job and delete its status message."""
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
        if message_id is not None:
            with contextlib.suppress(TelegramError):
                await self._bot.delete_message(chat_id, message_id)

    def stop_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _follow(self, message: Message, job_id: str, language: str, shown: str) -> None:
        try:
            while True:
                await asyncio.sleep(
                    max(self._interval, len(self._tasks) / STATUS_CHECKS_PER_SECOND)
                )
                text = await asyncio.to_thread(self.describe, job_id, language)
                if text is None:
                    if await asyncio.to_thread(self._store.load_job, job_id) is None:
                        # Deleted (/forget) or expired: no answer will come to remove this.
                        with contextlib.suppress(TelegramError):
                            await message.delete()
                    return
                if text != shown:
                    with contextlib.suppress(BadRequest):
                        await message.edit_text(text)
                    shown = text
        except TelegramError as error:
            logger.debug("Status updates stopped: %s", type(error).__name__)
        finally:
            if self._tasks.get(job_id) is asyncio.current_task():
                self._tasks.pop(job_id, None)


class TriageService:
    """The bot's side of the pipeline; handlers call it, the reply sender reports back to it."""

    def __init__(self, settings: Settings, store: Store, jobs: JobQueue) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.typing: TypingIndicator | None = None
        self.status: StatusMessages | None = None
        self._bot: Bot | None = None
        self._albums: dict[tuple[str, str], _Album] = {}
        self._memory_checked = (float("-inf"), True)

    def bind(self, bot: Bot) -> None:
        """Attach the running bot (for "typing…" and status messages)."""
        self._bot = bot
        self.typing = TypingIndicator(bot, max_seconds=self.settings.task_time_limit * 2)
        self.status = StatusMessages(bot, self.store, self.settings)

    def stop(self) -> None:
        if self.typing is not None:
            self.typing.stop_all()
        if self.status is not None:
            self.status.stop_all()
        for album in self._albums.values():
            if album.timer is not None:
                album.timer.cancel()

    # --- who is asking -----------------------------------------------------------------

    async def session(self, asker: Asker, telegram_language: str | None) -> Session:
        """The asker's pseudonym, choices and language (their choice, else Telegram's)."""

        def read() -> Session:
            conv = self.store.pseudonym(asker.chat_id, asker.user_id)
            prefs = self.store.prefs(conv)
            return Session(conv, prefs, prefs.language or negotiate(telegram_language))

        return await asyncio.to_thread(read)

    async def set_prefs(self, session: Session, **choices: bool | str) -> None:
        await asyncio.to_thread(lambda: self.store.set_prefs(session.conv, **choices))  # type: ignore[arg-type]

    def prepare_photo(self, data: bytes) -> Photo:
        """Decode, normalise and check an upload (raises ImageRejected for unusable files)."""
        side = self.settings.stored_image_side
        image = load_image(data, max_pixels=self.settings.max_image_pixels, max_side=side)
        image = normalise(image, max_side=side)
        return Photo(encode_png(image), assess(image))

    # --- photos ---------------------------------------------------------------------------

    async def photo(
        self, asker: Asker, session: Session, photo: Photo, caption: str, album: str | None
    ) -> None:
        """A photo arrived: gather an album, ask about an open case, or open a new case."""
        if album is None:
            await self._submit(asker, session, [photo], caption)
            return
        key = (session.conv, album)
        gathered = self._albums.get(key)
        if gathered is None:
            gathered = self._albums[key] = _Album(asker, session, caption)
        gathered.photos.append(photo)
        gathered.caption = gathered.caption or caption
        if gathered.timer is not None:
            gathered.timer.cancel()
        gathered.timer = asyncio.create_task(self._close_album(key))

    async def _close_album(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self.settings.album_wait_seconds)
        album = self._albums.pop(key)
        try:
            await self._submit(album.asker, album.session, album.photos, album.caption)
        except Exception:
            logger.exception("Handling an album failed")
            await self._say(album.asker, album.session._(texts.SOMETHING_WENT_WRONG))

    async def _submit(
        self, asker: Asker, session: Session, photos: Sequence[Photo], caption: str
    ) -> None:
        _ = session._
        if not await self.room_for_a_job(asker, session):
            return
        if not await self.room_for_photos():
            logger.warning("A photo was refused: Redis is over the memory budget for photos")
            await self._say(asker, _(texts.STORE_FULL))
            return
        if len(photos) > 1:
            await self._say(asker, _(texts.ALBUM_RECEIVED).format(count=len(photos)))
        ordered = sorted(photos, key=lambda p: len(p.issues))  # the clearest first
        if await asyncio.to_thread(self.store.open_case, session.conv):
            pngs = [p.png for p in ordered]
            token = await asyncio.to_thread(self.store.hold_photos, session.conv, pngs, caption)
            buttons = [[(_(texts.SAME), f"same:{token}"), (_(texts.DIFFERENT), f"other:{token}")]]
            await self._say(asker, _(texts.SAME_PROBLEM), buttons)
            return
        await self.open_case(asker, session, ordered, caption)

    async def open_case(
        self, asker: Asker, session: Session, photos: Sequence[Photo], caption: str
    ) -> None:
        """Start a case with the photos (the first is the one the model reads)."""

        def start() -> str:
            case = self.store.start_case(session.conv, photos[0].png)
            for extra in photos[1:]:
                self.store.add_photo(case, extra.png, primary=False)
            return case

        case = await asyncio.to_thread(start)
        logger.info("Case %s opened with %d photos", case[:8], len(photos))
        await self.analyse(asker, session, case, photos[0].issues, caption)

    async def add_to_case(self, asker: Asker, session: Session, token: str, same: bool) -> bool:
        """Put held photos in the open case (``same``) or in a new one; False if they are gone."""
        held = await asyncio.to_thread(self.store.take_photos, token, session.conv)
        if held is None:
            return False
        if held.again:
            return True  # a second tap: the photos are already on their way
        caption = held.caption
        photos = [Photo(png, assess(decode_stored(png))) for png in held.images]
        case = await asyncio.to_thread(self.store.open_case, session.conv) if same else None
        if case is None:
            await self.open_case(asker, session, photos, caption)
            return True

        def add() -> None:
            for index, photo in enumerate(photos):
                self.store.add_photo(case, photo.png, primary=index == 0)

        await asyncio.to_thread(add)
        await self._say(asker, session._(texts.ADDED_TO_CASE))
        await self.analyse(asker, session, case, photos[0].issues, caption)
        return True

    async def analyse(
        self,
        asker: Asker,
        session: Session,
        case: str,
        issues: Sequence[QualityIssue],
        caption: str,
    ) -> None:
        """Queue the first analysis of a case's photo, or hold it behind the quality check."""
        from skingpt.prompts import DEFAULT_QUESTION

        question = caption or DEFAULT_QUESTION
        job_id = await self.create_job(asker, session, case, question, kind=ANALYSIS)
        if not issues:
            await self.queue(asker, session, job_id)
            return
        _ = session._
        logger.info("Photo held by the quality check: %s", ", ".join(i.code for i in issues))
        buttons = [[(_(texts.ANALYSE_ANYWAY), f"analyse:{job_id}")]]
        await self._say(asker, texts.quality_report(issues, _), buttons)

    # --- questions and jobs ----------------------------------------------------------------

    async def open_case_of(self, session: Session) -> str | None:
        """The session's open case, if its photo is still stored."""
        return await asyncio.to_thread(self.store.open_case, session.conv)

    async def ask(self, asker: Asker, session: Session, case: str, question: str) -> str | None:
        """Queue a follow-up about a case, behind any earlier job of the same pair; None when
        the person has too many jobs waiting already."""
        if not await self.room_for_a_job(asker, session):
            return None
        job_id = await self.create_job(asker, session, case, question, kind=FOLLOWUP)
        await self.queue(asker, session, job_id)
        return job_id

    async def room_for_a_job(self, asker: Asker, session: Session) -> bool:
        """False, after telling the person, when they already have as many jobs waiting as one
        person may: one user cannot fill the queue for everyone else."""
        waiting = await asyncio.to_thread(self.store.jobs_in_flight, session.conv)
        if waiting < self.settings.max_jobs_per_user:
            return True
        logger.info("A person reached the limit of %d jobs in flight", waiting)
        await self._say(asker, session._(texts.TOO_MANY_WAITING).format(count=waiting))
        return False

    async def room_for_photos(self) -> bool:
        """False when Redis holds more than the memory budget for photos and conversations.

        The budget is ``SKINGPT_STORE_MEMORY_BUDGET_MB``, or 80% of Redis's ``maxmemory``: the
        rest stays free for the job queue, so the broker, which must never evict, never runs
        out of memory because of photos. Read at most every few seconds.
        """
        now = time.monotonic()
        if now - self._memory_checked[0] > MEMORY_CHECK_SECONDS:
            used, limit = await asyncio.to_thread(self.store.memory_use)
            budget = self.settings.store_memory_budget_mb * 1024 * 1024 or int(limit * 0.8)
            self._memory_checked = (now, not budget or used < budget)
        return self._memory_checked[1]

    async def create_job(
        self, asker: Asker, session: Session, case: str, question: str, *, kind: str
    ) -> str:
        """Record a job; it runs only once queued."""
        return await asyncio.to_thread(
            lambda: self.store.new_job(
                conv=session.conv,
                case=case,
                chat_id=asker.chat_id,
                reply_to=asker.message_id,
                question=question,
                kind=kind,
                language=session.language,
            )
        )

    async def release_held(self, asker: Asker, session: Session, job_id: str) -> bool:
        """Queue a held job if it is the asker's, still waiting, and its photo still open."""
        job = await asyncio.to_thread(self.store.load_job, job_id)
        if job is None or job.conv != session.conv or job.status != "new":
            return False
        if await asyncio.to_thread(self.store.open_case, session.conv) != job.case:
            return False
        if not await asyncio.to_thread(self.store.take_held, job_id):
            return False  # a second tap on the same button
        await self.queue(asker, session, job_id)
        return True

    async def queue(self, asker: Asker, session: Session, job_id: str) -> None:
        """Hand the job to the workers now, or line it up behind the pair's running job."""
        if self.typing is not None:
            self.typing.start(asker.chat_id, job_id)
        await asyncio.to_thread(self.store.enqueue, job_id)
        if await asyncio.to_thread(self.store.claim_turn, session.conv, job_id):
            await self.dispatch(job_id)
        else:
            logger.info("Job %s waits for the previous answer in its conversation", job_id)
        if self.status is not None:
            job = await asyncio.to_thread(self.store.load_job, job_id)
            always = job is not None and job.kind == ANALYSIS
            await self.status.show(asker, job_id, session.language, always=always)

    async def dispatch(self, job_id: str) -> None:
        """Copy the finished turns into the job and hand it to the workers."""

        def send() -> None:
            self.store.snapshot_history(job_id)
            self.jobs.submit(job_id)

        await asyncio.to_thread(send)
        logger.info("Job %s queued", job_id)

    async def forget(self, session: Session, chat_id: int) -> int:
        """Delete everything stored about the asker in this chat; returns the keys deleted."""
        deleted = await asyncio.to_thread(self.store.forget, session.conv)
        self._drop_pending(session.conv, chat_id)
        logger.info("Forgot %s: %d keys deleted", session.conv[:8], deleted)
        return deleted

    async def new_case(self, session: Session, chat_id: int) -> tuple[bool, int]:
        """Close the open case and cancel the answers still coming for it.

        Returns whether a case was open and how many jobs were cancelled: the person asked to
        start again, so an answer about the old photo arriving later would only confuse.
        """
        cancelled = await asyncio.to_thread(self.store.cancel_jobs, session.conv)
        closed = await asyncio.to_thread(self.store.close_case, session.conv)
        if cancelled:
            self._drop_pending(session.conv, chat_id)
            logger.info("New case for %s: %d jobs cancelled", session.conv[:8], cancelled)
        return closed, cancelled

    def _drop_pending(self, conv: str, chat_id: int) -> None:
        """Stop "typing…" in the chat and drop the pair's albums still being collected."""
        if self.typing is not None:
            self.typing.stop_chat(chat_id)
        for key in [key for key in self._albums if key[0] == conv]:
            album = self._albums.pop(key)
            if album.timer is not None:
                album.timer.cancel()

    async def _say(
        self, asker: Asker, text: str, buttons: list[list[tuple[str, str]]] | None = None
    ) -> None:
        """Send a fixed text (plain, so nothing in it can break parsing), as a reply to the
        person's message, so that in a group it is clear whose photo it is about."""
        assert self._bot is not None, "bind() the running bot first"
        markup = _keyboard(buttons) if buttons else None
        reply = reply_to(asker.message_id)
        await self._bot.send_message(
            asker.chat_id, text, reply_markup=markup, reply_parameters=reply
        )


def reply_to(message_id: int | None) -> ReplyParameters | None:
    """Answer as a reply to ``message_id`` (so a group sees whose photo it is about), and
    still answer when that message was deleted meanwhile."""
    if message_id is None:
        return None
    return ReplyParameters(message_id, allow_sending_without_reply=True)


def _keyboard(rows: list[list[tuple[str, str]]]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(label, callback_data=data) for label, data in row] for row in rows]
    )
