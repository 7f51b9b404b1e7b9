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

from telegram import Bot, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden

from bot.service import TriageService
from skingpt.i18n import gettext_for
from skingpt.replies import Message, Outcome, outcome_blocks, to_messages
from skingpt.report import compose
from skingpt.store import Job, case_code

logger = logging.getLogger(__name__)

STALE_AFTER_MS = 30_000


class ReplySender:
    """The loop that turns outbox entries into Telegram messages."""

    def __init__(self, service: TriageService, *, block_ms: int = 2000) -> None:
        self.service = service
        self.store = service.store
        self.block_ms = block_ms
        self.consumer = f"bot-{socket.gethostname()}-{os.getpid()}"

    async def run(self, bot: Bot) -> None:
        """Deliver until cancelled; failures are retried with a growing pause."""
        await asyncio.to_thread(self.store.ensure_outbox_group)
        failures = 0
        rounds = 0
        while True:
            try:
                pending = rounds % 15 == 0 or failures > 0
                await self._deliver_batch(bot, pending=pending)
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
        for entry_id, job_id in entries:
            await self.deliver(bot, entry_id, job_id)

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
                await bot.send_message(
                    job.chat_id, part.html, parse_mode=ParseMode.HTML, reply_parameters=reply_to
                )
            except BadRequest as error:
                logger.warning("Job %s: HTML refused (%s); sending plain text", job.job_id, error)
                await bot.send_message(job.chat_id, part.plain, reply_parameters=reply_to)
            await asyncio.to_thread(self.store.mark_part_sent, job.job_id, index + 1)

    async def _send_apology(self, bot: Bot, job: Job) -> None:
        """After Telegram refused a reply, tell the user rather than leave them waiting."""
        _ = gettext_for(job.language)
        text = to_messages(outcome_blocks(Outcome.FAILED, _), _)[0].plain
        try:
            await bot.send_message(job.chat_id, text)
        except (BadRequest, Forbidden) as error:
            logger.warning("Job %s: the apology was refused too: %s", job.job_id, error.message)
