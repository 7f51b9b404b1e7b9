"""Decoding the model calls of concurrent jobs together, on one model, from one thread.

A GPU spends a decoding step mostly reading weights, so a step over several conversations costs
little more than a step over one. A batched worker runs several jobs in threads; each job's
model calls go to one :class:`Batcher`, which gathers calls waiting at the same time (up to
``batch_size``, for at most ``batch_wait`` seconds after the first) and decodes them with one
``answer_many``. Calls are taken in the order they came; a caller stops waiting at its deadline,
and a call that had not started by then is never run.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from skingpt.errors import DeadlinePassed

if TYPE_CHECKING:
    # Not imported at run time: a Celery worker's parent process must not import torch.
    from skingpt.model.base import Generated, Request

logger = logging.getLogger(__name__)


class AnswersMany(Protocol):
    """What the batcher needs of a model: answer several requests in one call, in order."""

    def answer_many(self, requests: Sequence[Request]) -> list[Generated]: ...


@dataclass(eq=False)
class _Call:
    """One caller's request while it waits, runs and is answered."""

    request: Request
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Generated | None = None
    error: BaseException | None = None


class Batcher:
    """Owns one model and the one thread that calls it; any number of threads ask through it.

    Args:
        model: what answers the batches (the loaded model, or anything with ``answer_many``).
        batch_size: the most requests decoded together.
        batch_wait: seconds a batch that is not full waits for more requests after its first.
        time_limit: seconds one batch may run before ``on_overrun`` is called (None: no limit).
        on_overrun: called once, from a watchdog thread, with the seconds the batch has run;
            by default the process ends, so that its supervisor restarts it and the broker hands
            its jobs to a worker that is not stuck.
    """

    def __init__(
        self,
        model: AnswersMany,
        *,
        batch_size: int,
        batch_wait: float,
        time_limit: float | None = None,
        on_overrun: Callable[[float], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.time_limit = time_limit
        self.on_overrun = on_overrun or _end_process
        self.batches = 0
        self.answered = 0
        self.sizes: collections.Counter[int] = collections.Counter()
        self._waiting: collections.deque[_Call] = collections.deque()
        self._changed = threading.Condition()
        self._batch_started: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="batcher", daemon=True)
        self._thread.start()
        if time_limit is not None:
            threading.Thread(target=self._watch, name="batch-watchdog", daemon=True).start()

    def answer(self, request: Request, deadline: float | None = None) -> Generated:
        """Answer one request, decoded together with whatever else is waiting.

        Args:
            deadline: ``time.monotonic()`` after which the caller stops waiting (None: never).

        Raises:
            DeadlinePassed: the deadline came first; the request is dropped if it had not
                started, and its answer is never handed to anyone.
            Exception: whatever the model raised for the batch this request was in.
        """
        call = _Call(request)
        with self._changed:
            if self._closed:
                raise RuntimeError("The batcher is closed")
            if deadline is not None and call.arrived >= deadline:
                raise DeadlinePassed("The deadline passed before the request was queued")
            self._waiting.append(call)
            self._changed.notify_all()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not call.done.wait(timeout):
            with self._changed:
                if call in self._waiting:  # not started: it never will be
                    self._waiting.remove(call)
                    self._changed.notify_all()
            raise DeadlinePassed("The deadline passed while the request waited for the model")
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    @property
    def waiting(self) -> int:
        """How many requests wait for a batch now."""
        with self._changed:
            return len(self._waiting)

    def close(self) -> None:
        """Stop taking requests; those still waiting get an error, a running batch finishes."""
        with self._changed:
            self._closed = True
            for call in self._waiting:
                call.error = RuntimeError("The batcher closed before this request ran")
                call.done.set()
            self._waiting.clear()
            self._changed.notify_all()
        self._thread.join()

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Call] | None:
        """Wait for a full batch, or for ``batch_wait`` after the oldest waiting request."""
        with self._changed:
            while not self._closed:
                if self._waiting:
                    ready_at = self._waiting[0].arrived + self.batch_wait
                    left = ready_at - time.monotonic()
                    if len(self._waiting) >= self.batch_size or left <= 0:
                        break
                    self._changed.wait(left)
                else:
                    self._changed.wait()
            if self._closed:
                return None
            batch = [
                self._waiting.popleft() for _ in range(min(self.batch_size, len(self._waiting)))
            ]
            self._batch_started = time.monotonic()
            return batch

    def _run(self, batch: list[_Call]) -> None:
        started = time.monotonic()
        try:
            results = self.model.answer_many([call.request for call in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"The model gave {len(results)} answers for {len(batch)}")
        except Exception as error:
            logger.warning("A batch of %d failed: %s", len(batch), type(error).__name__)
            for call in batch:
                call.error = _own_copy(error)
                call.done.set()
        else:
            for call, result in zip(batch, results, strict=True):
                call.result = result
                call.done.set()
        seconds = time.monotonic() - started
        with self._changed:
            self._batch_started = None
            self.batches += 1
            self.answered += len(batch)
            self.sizes[len(batch)] += 1
        logger.info(
            "Batch of %d answered in %.2f s; %d waiting", len(batch), seconds, self.waiting
        )

    def _watch(self) -> None:
        """Call ``on_overrun`` once when one batch runs past ``time_limit``."""
        assert self.time_limit is not None
        interval = min(1.0, self.time_limit / 10)
        while not self._closed:
            time.sleep(interval)
            with self._changed:
                started = self._batch_started
            if started is not None and time.monotonic() - started > self.time_limit:
                self.on_overrun(time.monotonic() - started)
                return


def _own_copy(error: Exception) -> BaseException:
    """A copy of ``error`` for one caller, caused by the original (whose traceback shows where
    the model failed): threads raising one instance would tangle its traceback. Exceptions that
    cannot be copied are shared."""
    try:
        mine = copy.copy(error)
    except Exception:
        return error
    mine.__cause__ = error
    return mine


def _end_process(seconds: float) -> None:
    """End this process now: a batch stuck in the model holds every job of the worker."""
    logger.critical(
        "A batch has run for %.0f s, past the time limit; ending this worker so that its "
        "supervisor restarts it and its jobs are delivered again",
        seconds,
    )
    logging.shutdown()
    os._exit(70)
