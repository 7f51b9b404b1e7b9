"""A Celery app with one task that does nothing, to time a bare round trip through Redis.

Configured like the workers' app (``worker.app.create_celery``: JSON, late acknowledgement,
prefetch of one, a prefork pool of one) but with a Redis result backend, so the caller learns
the task finished the way plain Celery does. ``benchmarks/overhead.py`` starts a worker of it::

    python -m celery -A benchmarks.noop_celery worker --pool=prefork --concurrency=1

Broker and queue come from ``SKINGPT_REDIS_URL`` and ``SKINGPT_QUEUE``.
"""

from __future__ import annotations

import os

from celery import Celery

NOOP_TASK = "benchmarks.noop"


def create_app(redis_url: str, queue: str) -> Celery:
    """The app on ``redis_url``, sending to and serving ``queue``."""
    app = Celery("noop", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    app.task(name=NOOP_TASK)(noop)
    return app


def noop() -> None:
    """Nothing: what is timed is the trip to a worker and back."""


# What ``celery -A benchmarks.noop_celery worker`` serves.
app = create_app(
    os.environ.get("SKINGPT_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("SKINGPT_QUEUE", "skingpt-noop"),
)
