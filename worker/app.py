"""The Celery application shared by the bot (which only queues) and the workers."""

from __future__ import annotations

from celery import Celery

from skingpt.settings import Settings

ANSWER_TASK = "skingpt.answer_turn"


def create_celery(settings: Settings) -> Celery:
    """A Celery app on Redis, configured for long GPU jobs.

    Late acknowledgement with ``reject_on_worker_lost`` puts a job back when its worker dies;
    a prefetch of one keeps queued jobs available to idle workers; the visibility timeout is
    longer than the hard time limit (checked by :class:`Settings`), so Redis does not hand a
    running job to a second worker.
    """
    app = Celery("skingpt", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_routes={ANSWER_TASK: {"queue": settings.queue}},
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_soft_time_limit,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
    )
    return app
