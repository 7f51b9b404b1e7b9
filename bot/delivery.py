"""Sends finished answers: reads the outbox stream in Redis and replies in Telegram.

Workers never talk to Telegram. Each answer is read from a Redis stream through a consumer
group and acknowledged only after the message went out (or cannot ever go out), so a bot that
stops mid-way leaves it for the next reader; a job already marked delivered is not sent again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

import httpx
from telegram import Bot, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, TimedOut

from bot.service import TriageService
from skingpt.i18n import gettext_for
from skingpt.replies import Message, Outcome, outcome_blocks, to_messages
from skingpt.report import compose
from skingpt.store import Job, case_code

logger = logging.getLogger(__name__)

STALE_AFTER_MS = 30_000
# How long a stopping bot may take to send the replies it has already read.
STOP_GRACE_SECONDS = 10.0


class ReplySender:
    """The loop that turns outbox entries into Telegram messages."""

    def __init__(self, service: TriageService, *, block_ms: int = 2000) -> None:
        self.service = service
        self.store = service.store
        self.block_ms = block_ms
        self.consumer = f"bot-{socket.gethostname()}-{os.getpid()}"
        self.last_round = time.time()
        """When the loop last read the outbox without failing (Unix time), for the health check."""

    async def run(self, bot: Bot) -> None:
        """Deliver until cancelled; failures are retried with a growing pause."""
        await asyncio.to_thread(self.store.ensure_outbox_group)
        failures = 0
        rounds = 0
        while True:
            try:
                pending = rounds % 15 == 0 or failures > 0
                await _finish_when_stopped(self._deliver_batch(bot, pending=pending))
                self.last_round = time.time()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception("Delivering replies failed (%d in a row)", failures)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
            rounds += 1

    async def _deliver_batch(self, bot: Bot, *, pending: bool) -> None:
        entries = []
        if pending:
            entries += await asyncio.to_thread(
                self.store.read_outbox, self.consumer, block_ms=0, pending=True
            )
            entries += await asyncio.to_thread(
                self.store.claim_stale_outbox, self.consumer, min_idle_ms=STALE_AFTER_MS
            )
        if not entries:
            entries = await asyncio.to_thread(
                self.store.read_outbox, self.consumer, block_ms=self.block_ms
            )
        # The batch goes out side by side: one at a time, each answer waited for every Redis
        # and HTTP round trip of the one before, and a chat held back by Telegram's per-chat
        # limit held back every other chat too. Answers of one person still arrive in order:
        # their next job runs only after this answer went out, so a conversation has at most
        # one entry in a batch. An entry both pending and claimed as stale is sent once.
        unique = dict(entries)
        results = await asyncio.gather(
            *(self.deliver(bot, entry_id, job_id) for entry_id, job_id in unique.items()),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            # The others went out; the failed ones stay unacknowledged for the next round.
            raise failures[0]

    async def deliver(self, bot: Bot, entry_id: str, job_id: str) -> None:
        """Send one job's reply unless it was sent before, then pass the turn on."""
        job = await asyncio.to_thread(self.store.load_job, job_id)
        if job is None:
            logger.warning("Job %s expired before its reply was sent", job_id)
            await asyncio.to_thread(self.store.ack_outbox, entry_id)
            return
        if not job.delivered:
            try:
                await self._send_parts(bot, job)
            except Forbidden:
                # Blocked: nothing can reach the person again, so nothing of theirs is kept.
                deleted = await asyncio.to_thread(self.store.forget, job.conv)
                logger.info("Job %s: the user blocked the bot; %d keys deleted", job_id, deleted)
            except BadRequest as error:
                logger.warning("Job %s: Telegram refused the reply: %s", job_id, error.message)
                await self._send_apology(bot, job)
            await asyncio.to_thread(self.store.mark_delivered, job_id)
            logger.info("Job %s answered (%s)", job_id, job.outcome)
        if self.service.typing is not None:
            self.service.typing.done(job.chat_id, job_id)
        if self.service.status is not None:
            # Read again: the status message may have been posted while the reply was sent.
            latest = await asyncio.to_thread(self.store.load_job, job_id)
            status_message = latest.status_message if latest else job.status_message
            await self.service.status.finish(job_id, job.chat_id, status_message)
        await asyncio.to_thread(self.store.ack_outbox, entry_id)
        next_job = await asyncio.to_thread(self.store.release_turn, job.conv, job_id)
        if next_job is not None:
            await self.service.dispatch(next_job)

    def messages(self, job: Job) -> list[Message]:
        """The job's reply, structured, translated and split to Telegram's length."""
        prefs = self.store.prefs(job.conv)
        blocks, findings = compose(
            kind=job.kind,
            outcome=job.outcome or Outcome.FAILED,
            answers=job.answers,
            history=job.history,
            question=job.question,
            language=job.language,
            model_name=job.model_name,
            untrained=job.untrained,
            case_code=case_code(job.case) if prefs.health_worker else None,
        )
        if findings.red_flags:
            logger.info("Job %s: urgent-care advice given (%s)", job.job_id, findings.urgency)
        if findings.abstention is not None:
            logger.info(
                "Job %s: the model's answer was unusable (%s)", job.job_id, findings.abstention
            )
        return to_messages(blocks, gettext_for(job.language))

    async def _send_parts(self, bot: Bot, job: Job) -> None:
        """Send the reply, skipping parts a retry already sent; plain text if HTML is refused."""
        parts = await asyncio.to_thread(self.messages, job)
        for index, part in enumerate(parts):
            if index < job.parts_sent:
                continue
            reply_to = (
                ReplyParameters(job.reply_to, allow_sending_without_reply=True)
                if job.reply_to and index == 0
                else None
            )
            try:
                await self._send_part(bot, job, part, reply_to)
            except TimedOut as error:
                if not _reached_telegram(error):
                    raise
                # Telegram most likely showed it: the request went out, only the answer was
                # late. The Bot API cannot say whether a message was sent, and a resend would
                # show the person the same reply twice; so the part counts as sent.
                logger.warning(
                    "Job %s: part %d was not confirmed in time; not sending it again",
                    job.job_id,
                    index + 1,
                )
            await asyncio.to_thread(self.store.mark_part_sent, job.job_id, index + 1)

    async def _send_part(
        self, bot: Bot, job: Job, part: Message, reply_to: ReplyParameters | None
    ) -> None:
        try:
            await bot.send_message(
                job.chat_id, part.html, parse_mode=ParseMode.HTML, reply_parameters=reply_to
            )
        except BadRequest as error:
            logger.warning("Job %s: HTML refused (%s); sending plain text", job.job_id, error)
            await bot.send_message(job.chat_id, part.plain, reply_parameters=reply_to)

    async def _send_apology(self, bot: Bot, job: Job) -> None:
        """After Telegram refused a reply, tell the user rather than leave them waiting."""
        _ = gettext_for(job.language)
        text = to_messages(outcome_blocks(Outcome.FAILED, _), _)[0].plain
        try:
            await bot.send_message(job.chat_id, text)
        except (BadRequest, Forbidden) as error:
            logger.warning("Job %s: the apology was refused too: %s", job.job_id, error.message)


def _reached_telegram(error: TimedOut) -> bool:
    """Whether a timed-out request was sent (its answer was late) rather than never sent
    (no connection in time), going by the HTTP client's error behind it."""
    return isinstance(error.__cause__, httpx.ReadTimeout | httpx.WriteTimeout)


async def _finish_when_stopped(batch: Coroutine[Any, Any, None]) -> None:
    """Run one batch to its end even if the bot stops meanwhile.

    Entries read from the outbox belong to this process until acknowledged; left half-done,
    they would wait ``STALE_AFTER_MS`` for another reader, and a reply sent but not yet
    recorded would be sent again. So a cancelled loop first finishes its batch (for at most
    ``STOP_GRACE_SECONDS``), then stops.
    """
    task = asyncio.ensure_future(batch)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(task, STOP_GRACE_SECONDS)
        except Exception:
            logger.warning("Stopping before the last replies were sent", exc_info=True)
        raise
