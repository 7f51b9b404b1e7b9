"""The Celery application shared by the bot (which only queues) and the workers."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery

from skingpt.settings import Settings

ANSWER_TASK = "skingpt.answer_turn"


def create_celery(settings: Settings) -> Celery:
    """A Celery app on Redis, configured for long GPU jobs.

    Late acknowledgement with ``reject_on_worker_lost`` puts a job back when its worker dies;
    a prefetch of one keeps queued jobs available to idle workers; the visibility timeout is
    longer than the hard time limit (checked by :class:`Settings`), so Redis does not hand a
    running job to a second worker. A job whose whole worker died waits in Redis for the
    visibility timeout; every worker then looks for such jobs about every tenth of it (at most
    every ten seconds), where kombu would by default look only every hundred seconds.
    """
    sweep = max(1, min(10, settings.visibility_timeout // 10))
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
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": sweep,
            "unacked_restore_throttle": 1,
        },
    )
    if urlsplit(settings.redis_url).scheme == "rediss":
        app.conf.broker_use_ssl = redis_ssl_options(settings.redis_url)
    return app


def redis_ssl_options(url: str) -> dict[str, Any]:
    """The TLS options of a ``rediss://`` URL, for Celery, verifying the server by default.

    redis-py reads ``ssl_*`` options from the URL's query and verifies the certificate unless
    told not to; kombu would instead connect without any verification (and only warn) when
    the URL names no options. This gives Celery the same options and the same default as the
    bot's and the workers' own Redis client.
    """
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    levels = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "ssl_cert_reqs":
            options[name] = levels.get(value.lower().removeprefix("cert_"), ssl.CERT_REQUIRED)
        elif name in {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}:
            options[name] = value
    return options
