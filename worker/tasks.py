"""The Celery task that answers a job, and the model each worker child loads for it.

The worker's parent process never imports the model code (and so never touches CUDA). Each
prefork child starts loading the model in a background thread as soon as it is up, so the child
reports ready within Celery's start-up limit however long the weights take; a job that arrives
first waits for the load to finish. What answering a job means is in :mod:`worker.runner`.

With ``SKINGPT_BATCH_SIZE`` above 1 the worker is instead one process running that many jobs in
threads (Celery's threads pool), sharing one model through a :class:`~skingpt.batching.Batcher`;
it loads the model when the worker starts. Celery cannot stop a thread at its time limits, so
each job checks its own deadline (the soft limit) and a watchdog ends the process when one
batch runs past the hard limit.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from skingpt.errors import ModelUnavailable
from skingpt.health import Heartbeat, JobActivity
from skingpt.replies import Outcome
from skingpt.settings import Settings
from skingpt.store import Store
from worker.app import ANSWER_TASK
from worker.runner import JobRunner, ModelHolder, ModelLoading

logger = logging.getLogger(__name__)


def register_tasks(app: Celery, settings: Settings, store: Store) -> ModelHolder:
    """Add the answering task to ``app`` and load the model in every child process (in the
    worker process itself when batched)."""
    batched = settings.batch_size > 1
    holder = ModelHolder(
        settings, store=store, batch_time_limit=settings.task_time_limit if batched else None
    )
    # Wait for a loading model only as long as the soft time limit allows; then come back later.
    model_wait = max(1.0, settings.task_soft_time_limit - 10.0)

    activity = JobActivity()

    heartbeats: list[Heartbeat] = []

    def load_and_beat(**_: Any) -> None:
        holder.start_loading(stop_on_failure=os.getpid() if batched else os.getppid())
        beat = Heartbeat(store, "worker", lambda: {"model": holder.state, **activity.fields()})
        heartbeats.append(beat.start())

    def leave(**_: Any) -> None:
        """A child that stops takes its beat with it, so health checks stop counting it."""
        for beat in heartbeats:
            beat.stop()

    if batched:
        worker_init.connect(load_and_beat, weak=False)
        worker_shutdown.connect(leave, weak=False)
    else:
        worker_process_init.connect(load_and_beat, weak=False)
        worker_process_shutdown.connect(leave, weak=False)

    class AnswerTask(Task):  # type: ignore[misc]
        def on_failure(
            self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            """A job that failed outside its own handling (hard time limit) still gets a reply."""
            outcome = Outcome.TIMED_OUT if isinstance(exc, TimeLimitExceeded) else Outcome.FAILED
            job_id = args[0] if args else task_id
            if store.complete_job(job_id, outcome):
                logger.error("Job %s ended with %s: %s", job_id, outcome, type(exc).__name__)

    runner = JobRunner(
        store,
        holder,
        max_deliveries=settings.max_deliveries,
        model_wait=model_wait,
        max_queue_wait=settings.max_queue_wait_seconds,
        timeouts=(SoftTimeLimitExceeded,),
        time_limit=settings.task_soft_time_limit if batched else None,
    )

    @app.task(name=ANSWER_TASK, bind=True, base=AnswerTask, max_retries=5, shared=False)  # type: ignore[untyped-decorator]
    def answer_turn(self: Task, job_id: str) -> str:
        """Answer one queued job and put the reply in the outbox, whatever happens."""
        activity.started()
        try:
            return runner.run(job_id)
        except ModelLoading as loading:
            # The model is still loading: this delivery does not count as an attempt.
            raise self.retry(countdown=5, max_retries=None) from loading
        except ModelUnavailable as error:
            if self.request.retries >= self.max_retries:
                runner.fail(job_id, Outcome.FAILED)
                return Outcome.FAILED.value
            logger.error("Job %s waits for a working model: %s", job_id, error)
            raise self.retry(countdown=30) from error
        finally:
            activity.finished()

    return holder
