"""Answering one job, whatever queue delivered it: Celery in a GPU worker, or a thread in
``skingpt run``.

A job is answered at most once (a second delivery finds it done), every job ends with a reply in
the outbox (answered, timed out, failed or photo expired), and a job that keeps killing its
worker stops after ``max_deliveries`` attempts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from skingpt.errors import ConfigError, ModelUnavailable
from skingpt.imaging import decode_stored
from skingpt.replies import Outcome
from skingpt.settings import Settings
from skingpt.store import Job, Store

if TYPE_CHECKING:
    from skingpt.pipeline import Analyzer

logger = logging.getLogger(__name__)


class ModelLoading(Exception):
    """The model is still loading; the job should come back shortly (not counted as an attempt)."""


class ModelHolder:
    """The model of one worker process, loaded once, in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._analyzer: Analyzer | None = None
        self._error: Exception | None = None
        self._stop_worker_on_failure = False

    def start_loading(self, *, stop_worker_on_failure: bool = False) -> None:
        """Load in a background thread.

        Args:
            stop_worker_on_failure: in a Celery child, a model that cannot load stops the whole
                worker (its parent), so that it takes no more jobs it cannot answer.
        """
        self._stop_worker_on_failure = stop_worker_on_failure
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def get(self, timeout: float | None) -> Analyzer | None:
        """The loaded model, or None while it is still loading after ``timeout`` seconds
        (None: wait as long as loading takes).

        Raises:
            ModelUnavailable: loading failed.
        """
        if not self._ready.wait(timeout):
            return None
        if self._analyzer is None:
            raise ModelUnavailable(f"The model failed to load: {self._error}")
        return self._analyzer

    def _load(self) -> None:
        try:
            from skingpt.model.modeling import load_model
            from skingpt.pipeline import Analyzer

            self._analyzer = Analyzer(load_model(self.settings), self.settings.generation)
        except Exception as error:
            # A setting or file to fix needs no traceback; anything else does.
            expected = isinstance(error, ConfigError | ModelUnavailable)
            logger.critical("Loading the model failed: %s", error, exc_info=not expected)
            self._error = error
            if self._stop_worker_on_failure:
                logger.critical("Stopping this worker: it cannot answer jobs without a model")
                os.kill(os.getppid(), signal.SIGTERM)
        finally:
            self._ready.set()


class JobRunner:
    """Runs jobs from the store with one model holder.

    Args:
        store: where jobs, photos and the outbox live.
        holder: the model of this process.
        max_deliveries: attempts after which a job that never finished is answered as failed.
        model_wait: seconds to wait for a loading model before :class:`ModelLoading`.
        max_queue_wait: seconds a job may wait in the queue before it is answered, with an
            apology, without running.
        timeouts: exceptions that mean the job ran out of time (Celery's soft time limit).
    """

    def __init__(
        self,
        store: Store,
        holder: ModelHolder,
        *,
        max_deliveries: int,
        model_wait: float,
        max_queue_wait: float = float("inf"),
        timeouts: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.store = store
        self.max_queue_wait = max_queue_wait
        self.holder = holder
        self.max_deliveries = max_deliveries
        self.model_wait = model_wait
        self.timeouts = timeouts

    def run(self, job_id: str) -> str:
        """Answer one job and put the reply in the outbox; returns how it ended.

        Raises:
            ModelLoading: the model is not loaded yet; deliver the job again shortly.
            ModelUnavailable: the model failed to load; retry later or fail the job.
        """
        job = self.store.load_job(job_id)
        if job is None:
            logger.warning("Job %s expired before it ran", job_id)
            return "expired"
        if job.status == "done":
            logger.info("Job %s was already answered; not running it again", job_id)
            return "duplicate"
        waited = time.time() - (job.queued_at or time.time())
        if waited > self.max_queue_wait:
            # Answering now would be too late to be useful, and the queue is clearly too long.
            logger.warning("Job %s waited %.0f s in the queue; not running it", job_id, waited)
            self.store.complete_job(job_id, Outcome.WAITED_TOO_LONG)
            return Outcome.WAITED_TOO_LONG.value
        attempts = self.store.mark_running(job_id)
        if attempts == 0:
            logger.info("Job %s was deleted before it ran", job_id)
            return "expired"
        if attempts > self.max_deliveries:
            logger.error("Job %s reached a worker %d times without finishing", job_id, attempts)
            self.store.complete_job(job_id, Outcome.FAILED)
            return Outcome.FAILED.value
        try:
            return self._answer(job)
        except (ModelLoading, ModelUnavailable):
            raise
        except Exception as error:
            if isinstance(error, self.timeouts):
                logger.warning("Job %s hit the time limit (attempt %d)", job_id, attempts)
                self.store.complete_job(job_id, Outcome.TIMED_OUT)
                return Outcome.TIMED_OUT.value
            logger.exception("Job %s failed (attempt %d)", job_id, attempts)
            self.store.complete_job(job_id, Outcome.FAILED)
            return Outcome.FAILED.value

    def fail(self, job_id: str, outcome: Outcome) -> bool:
        """Answer a job that cannot run with ``outcome``; False if it was answered before."""
        return self.store.complete_job(job_id, outcome)

    def _answer(self, job: Job) -> str:
        analyzer = self.holder.get(timeout=self.model_wait)
        if analyzer is None:
            self.store.forget_attempt(job.job_id)
            logger.info("Job %s waits for the model to finish loading", job.job_id)
            raise ModelLoading(job.job_id)
        image = self.store.load_image(job.case)
        if image is None:
            self.store.complete_job(job.job_id, Outcome.PHOTO_EXPIRED)
            return Outcome.PHOTO_EXPIRED.value
        analysis = analyzer.analyse(
            decode_stored(image),
            job.history,
            job.question,
            kind=job.kind,
            language=job.language,
            on_step=lambda step, steps: self.store.set_step(job.job_id, step, steps),
        )
        outcome = Outcome.ANSWERED if any(analysis.answers.values()) else Outcome.EMPTY
        self.store.complete_job(
            job.job_id,
            outcome,
            analysis.answers,
            turns=analysis.turns,
            model_name=analysis.model_name,
            untrained=analysis.untrained,
            seconds=analysis.seconds,
        )
        return outcome.value
