"""Answering one job, whatever queue delivered it: Celery in a GPU worker, or a thread in
``skingpt run``.

A job is answered at most once (a second delivery finds it done), every job ends with a reply in
the outbox (answered, timed out, failed or photo expired), and a job that keeps killing its
worker stops after ``max_deliveries`` attempts.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from PIL import Image

from skingpt.errors import ConfigError, DeadlinePassed, ModelUnavailable
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
    """The model of one worker process, loaded once, in the background.

    With ``SKINGPT_BATCH_SIZE`` above 1 the model answers through a
    :class:`~skingpt.batching.Batcher`, which the threads running jobs in this process share.

    Args:
        settings: which model, where and how.
        store: where the model keeps each case's image embeddings, so that a photo is encoded
            once for all its calls on every worker; None encodes it at every call.
        batch_time_limit: seconds one batch may run before the batcher ends this process
            (None: no limit, as in ``skingpt run``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        batch_time_limit: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.batch_time_limit = batch_time_limit
        self._ready = threading.Event()
        self._analyzer: Analyzer | None = None
        self._error: Exception | None = None
        self._stop_on_failure: int | None = None

    def start_loading(self, *, stop_on_failure: int | None = None) -> None:
        """Load in a background thread.

        Args:
            stop_on_failure: the process id of the Celery worker (the parent of a prefork
                child, or this process in a batched worker): a model that cannot load stops
                it, so that it takes no more jobs it cannot answer.
        """
        self._stop_on_failure = stop_on_failure
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    @property
    def state(self) -> str:
        """``loading``, ``loaded`` or ``failed``, as the health check reports it."""
        if not self._ready.is_set():
            return "loading"
        return "loaded" if self._analyzer is not None else "failed"

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
            from skingpt.batching import Batcher
            from skingpt.model.embeddings import EmbeddingCache
            from skingpt.model.modeling import load_model
            from skingpt.pipeline import Analyzer

            cache = EmbeddingCache(self.store) if self.store is not None else None
            model = load_model(self.settings, embedding_cache=cache)
            batcher = None
            if self.settings.batch_size > 1:
                batcher = Batcher(
                    model,
                    batch_size=self.settings.batch_size,
                    batch_wait=self.settings.batch_wait_ms / 1000,
                    time_limit=self.batch_time_limit,
                )
            self._analyzer = Analyzer(model, self.settings.generation, batcher=batcher)
        except Exception as error:
            # A setting or file to fix needs no traceback; anything else does.
            expected = isinstance(error, ConfigError | ModelUnavailable)
            logger.critical("Loading the model failed: %s", error, exc_info=not expected)
            self._error = error
            if self._stop_on_failure is not None:
                logger.critical("Stopping this worker: it cannot answer jobs without a model")
                os.kill(self._stop_on_failure, signal.SIGTERM)
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
        timeouts: exceptions that mean the job ran out of time (Celery's soft time limit);
            :class:`~skingpt.errors.DeadlinePassed` always does.
        time_limit: seconds a job may run before it is answered as timed out, checked between
            its model calls and while it waits for the batcher: the limit of a batched worker,
            whose threads Celery cannot interrupt (None: no limit of its own).
        store_wait: seconds to keep trying to save a job's end while Redis does not answer.
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
        time_limit: float | None = None,
        store_wait: float = 60.0,
    ) -> None:
        self.store = store
        self.max_queue_wait = max_queue_wait
        self.holder = holder
        self.max_deliveries = max_deliveries
        self.model_wait = model_wait
        self.timeouts = (*timeouts, DeadlinePassed)
        self.time_limit = time_limit
        self.store_wait = store_wait
        self._photos = RecentPhotos()

    def run(self, job_id: str) -> str:
        """Answer one job and put the reply in the outbox; returns how it ended.

        Raises:
            ModelLoading: the model is not loaded yet; deliver the job again shortly.
            ModelUnavailable: the model failed to load; retry later or fail the job.
        """
        deadline = None if self.time_limit is None else time.monotonic() + self.time_limit
        job = self.store.load_job(job_id)
        if job is None:
            logger.warning("Job %s expired before it ran", job_id)
            return "expired"
        if job.status == "done":
            logger.info("Job %s was already answered; not running it again", job_id)
            return "duplicate"
        waited = time.time() - (job.queued_at or time.time())
        if job.attempts == 0 and waited > self.max_queue_wait:
            # Answering now would be too late to be useful, and the queue is clearly too long.
            # A job that already started passed this check; when its worker died, it comes back
            # only after the visibility timeout (longer than this wait), and is answered then.
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
        out_of_memory = False
        try:
            return self._answer(job, deadline)
        except (ModelLoading, ModelUnavailable):
            raise
        except Exception as error:
            if isinstance(error, self.timeouts):
                logger.warning("Job %s hit the time limit (attempt %d)", job_id, attempts)
                self._save(job_id, Outcome.TIMED_OUT)
                return Outcome.TIMED_OUT.value
            # Not retried: the same photo and history would fail the same way (a NaN in the
            # logits, or a prompt too large for this GPU); the person gets an apology at once.
            out_of_memory = _is_out_of_memory(error)
            if out_of_memory:
                logger.error("Job %s ran out of memory (attempt %d): %s", job_id, attempts, error)
            else:
                logger.exception("Job %s failed (attempt %d)", job_id, attempts)
            self._save(job_id, Outcome.FAILED)
            return Outcome.FAILED.value
        finally:
            if out_of_memory:
                # Only now, with the error and its frames gone, are the job's tensors free.
                _free_memory(job_id)

    def fail(self, job_id: str, outcome: Outcome) -> bool:
        """Answer a job that cannot run with ``outcome``; False if it was answered before."""
        return self.store.complete_job(job_id, outcome)

    def _answer(self, job: Job, deadline: float | None) -> str:
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
            self._photos.decode(image),
            job.history,
            job.question,
            kind=job.kind,
            language=job.language,
            on_step=lambda step, steps: self._show_step(job.job_id, step, steps),
            case=job.case,
            deadline=deadline,
        )
        outcome = Outcome.ANSWERED if any(analysis.answers.values()) else Outcome.EMPTY
        self._save(
            job.job_id,
            outcome,
            analysis.answers,
            turns=analysis.turns,
            model_name=analysis.model_name,
            untrained=analysis.untrained,
            seconds=analysis.seconds,
        )
        return outcome.value

    def _show_step(self, job_id: str, step: int, steps: int) -> None:
        """Record the running step for the status message; without Redis the job goes on."""
        try:
            self.store.set_step(job_id, step, steps)
        except redis.RedisError as error:
            logger.warning("Job %s: step %d not recorded: %s", job_id, step, type(error).__name__)

    def _save(self, job_id: str, outcome: Outcome, *args: Any, **fields: Any) -> bool:
        """Record how the job ended and queue its reply (see :meth:`Store.complete_job`).

        While Redis is restarting this waits for it, up to ``store_wait`` seconds: the answer
        cost the model its time, and a job whose end is not recorded gets no reply until its
        delivery times out, long after.
        """
        deadline = time.monotonic() + self.store_wait
        pause = 0.25
        while True:
            try:
                return self.store.complete_job(job_id, outcome, *args, **fields)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "Job %s: Redis did not answer (%s); saving again in %.1f s",
                    job_id,
                    type(error).__name__,
                    pause,
                )
                time.sleep(pause)
                pause = min(2 * pause, 5.0)


class RecentPhotos:
    """The last few photos this process decoded, by the digest of their stored bytes.

    Decoding a stored 1024-pixel PNG takes about 25 ms, most of a job's time outside the model
    when answers are quick; a follow-up about the same photo on this worker skips it. Stored
    bytes never change for a photo, so their digest identifies the decoded pixels.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._decoded: collections.OrderedDict[bytes, Image.Image] = collections.OrderedDict()
        self._lock = threading.Lock()

    def decode(self, data: bytes) -> Image.Image:
        digest = hashlib.blake2b(data, digest_size=16).digest()
        with self._lock:
            if digest in self._decoded:
                self._decoded.move_to_end(digest)
                return self._decoded[digest]
        image = decode_stored(data)
        with self._lock:
            self._decoded[digest] = image
            while len(self._decoded) > self._size:
                self._decoded.popitem(last=False)
        return image


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether the model ran out of GPU (or host) memory; torch is never imported for this."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


def _free_memory(job_id: str) -> None:
    """Give back what the failed job held, so that the next job fits.

    The caching allocator keeps freed blocks reserved; after an out-of-memory error they are
    fragmented around the failed allocation, so they go back to the driver.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        logger.warning(
            "Job %s: freed cached GPU memory; %.0f MiB still reserved",
            job_id,
            torch.cuda.memory_reserved() / 2**20,
        )
    else:
        logger.warning("Job %s: released the memory of the failed job", job_id)
