"""Where the bot hands jobs: Celery workers on the GPU machines, or threads in this process.

Both take a job id and nothing else; the job itself is in the store. ``skingpt run`` (offline
clinic mode) uses :class:`LocalQueue`, so it needs neither Redis nor a separate worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

from celery import Celery

from skingpt.errors import ModelUnavailable
from skingpt.replies import Outcome
from worker.app import ANSWER_TASK
from worker.runner import JobRunner, ModelLoading

logger = logging.getLogger(__name__)


class JobQueue(Protocol):
    """Accepts job ids for the model to answer, in order."""

    def submit(self, job_id: str) -> None:
        """Queue the job; returns at once."""
        ...


class CeleryQueue:
    """Sends each job to the Celery workers listening on one queue."""

    def __init__(self, celery: Celery, queue_name: str) -> None:
        self.celery = celery
        self.queue_name = queue_name

    def submit(self, job_id: str) -> None:
        self.celery.send_task(ANSWER_TASK, args=[job_id], task_id=job_id, queue=self.queue_name)


class LocalQueue:
    """Answers jobs in background threads of this process, one job per thread at a time.

    A job that finds the model still loading waits for it; if the model failed to load, every
    job is answered as failed instead of waiting for ever.
    """

    def __init__(self, runner: JobRunner, *, threads: int = 1) -> None:
        self.runner = runner
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"local-worker-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job_id: str) -> None:
        self._jobs.put(job_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then stop the threads (waiting at most ``timeout``
        seconds for each)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while (job_id := self._jobs.get()) is not None:
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        while True:
            try:
                self.runner.run(job_id)
                return
            except ModelLoading:
                time.sleep(1.0)
            except ModelUnavailable as error:
                logger.error("Job %s cannot run: %s", job_id, error)
                self.runner.fail(job_id, Outcome.FAILED)
                return
            except Exception:
                logger.exception("Job %s failed outside its own handling", job_id)
                self.runner.fail(job_id, Outcome.FAILED)
                return
