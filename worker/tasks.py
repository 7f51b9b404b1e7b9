"""The answering task and the per-process model that runs it.

The worker's parent process never imports the model code (and so never touches CUDA). Each
prefork child starts loading the model in a background thread as soon as it is up, so the child
reports ready within Celery's start-up limit however long the weights take; a job that arrives
first waits for the load to finish.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.exceptions import Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_process_init

from skingpt.errors import ModelUnavailable
from skingpt.imaging import decode_stored
from skingpt.replies import Outcome
from skingpt.settings import Settings
from skingpt.store import Job, Store
from worker.app import ANSWER_TASK

if TYPE_CHECKING:
    from skingpt.pipeline import Analyzer

logger = logging.getLogger(__name__)


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

    def get(self, timeout: float) -> Analyzer | None:
        """The loaded model, or None while it is still loading after ``timeout`` seconds.

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
            logger.critical("Loading the model failed: %s", error, exc_info=True)
            self._error = error
            if self._stop_worker_on_failure:
                logger.critical("Stopping this worker: it cannot answer jobs without a model")
                os.kill(os.getppid(), signal.SIGTERM)
        finally:
            self._ready.set()


def register_tasks(app: Celery, settings: Settings, store: Store) -> ModelHolder:
    """Add the answering task to ``app`` and load the model in every child process."""
    holder = ModelHolder(settings)
    # Wait for a loading model only as long as the soft time limit allows; then come back later.
    model_wait = max(1.0, settings.task_soft_time_limit - 10.0)

    def load_in_child(**_: Any) -> None:
        holder.start_loading(stop_worker_on_failure=True)

    worker_process_init.connect(load_in_child, weak=False)

    class AnswerTask(Task):  # type: ignore[misc]
        def on_failure(
            self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            """A job that failed outside its own handling (hard time limit) still gets a reply."""
            outcome = Outcome.TIMED_OUT if isinstance(exc, TimeLimitExceeded) else Outcome.FAILED
            job_id = args[0] if args else task_id
            if store.complete_job(job_id, outcome):
                logger.error("Job %s ended with %s: %s", job_id, outcome, type(exc).__name__)

    @app.task(name=ANSWER_TASK, bind=True, base=AnswerTask, max_retries=5, shared=False)  # type: ignore[untyped-decorator]
    def answer_turn(self: Task, job_id: str) -> str:
        """Answer one queued question and put the reply in the outbox, whatever happens."""
        job = store.load_job(job_id)
        if job is None:
            logger.warning("Job %s expired before it ran", job_id)
            return "expired"
        if job.status == "done":
            logger.info("Job %s was already answered; not running it again", job_id)
            return "duplicate"
        attempts = store.mark_running(job_id)
        if attempts == 0:
            logger.info("Job %s was deleted before it ran", job_id)
            return "expired"
        if attempts > settings.max_deliveries:
            logger.error("Job %s reached a worker %d times without finishing", job_id, attempts)
            store.complete_job(job_id, Outcome.FAILED)
            return Outcome.FAILED.value
        try:
            return _answer(self, job)
        except Retry:
            raise
        except SoftTimeLimitExceeded:
            logger.warning("Job %s hit the soft time limit (attempt %d)", job_id, attempts)
            store.complete_job(job_id, Outcome.TIMED_OUT)
            return Outcome.TIMED_OUT.value
        except Exception:
            logger.exception("Job %s failed (attempt %d)", job_id, attempts)
            store.complete_job(job_id, Outcome.FAILED)
            return Outcome.FAILED.value

    def _answer(task: Task, job: Job) -> str:
        try:
            analyzer = holder.get(timeout=model_wait)
        except ModelUnavailable as error:
            if task.request.retries >= task.max_retries:
                raise
            logger.error("Job %s waits for a working model: %s", job.job_id, error)
            raise task.retry(countdown=30) from error
        if analyzer is None:
            # The model is still loading: this delivery does not count as an attempt.
            store.forget_attempt(job.job_id)
            logger.info("Job %s waits for the model to finish loading", job.job_id)
            raise task.retry(countdown=5, max_retries=None)
        image = store.load_image(job.case)
        if image is None:
            store.complete_job(job.job_id, Outcome.PHOTO_EXPIRED)
            return Outcome.PHOTO_EXPIRED.value
        answer = analyzer.answer(decode_stored(image), job.history, job.question)
        outcome = Outcome.ANSWERED if answer.text else Outcome.EMPTY
        store.complete_job(
            job.job_id,
            outcome,
            answer.text,
            model_name=answer.model_name,
            untrained=answer.untrained,
        )
        return outcome.value

    return holder
