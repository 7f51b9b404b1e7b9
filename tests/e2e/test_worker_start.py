"""A worker whose model is still loading when jobs arrive answers them once it is ready.

The soft time limit here (2 s) is shorter than the model's load (several seconds, mostly
imports), as it can be with real weights: jobs must neither fail nor wait past their limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skingpt.imaging import encode_png, load_image
from skingpt.replies import Outcome
from skingpt.settings import Settings
from skingpt.store import Store
from worker.app import ANSWER_TASK, create_celery

pytestmark = pytest.mark.e2e


def test_jobs_sent_while_the_model_loads_are_answered_once(
    redis_url: str, key_prefix: str, sample_photos: list[Path], tmp_path: Path
) -> None:
    queue = f"{key_prefix}-gpu"
    env = {
        **os.environ,
        "SKINGPT_REDIS_URL": redis_url,
        "SKINGPT_KEY_PREFIX": key_prefix,
        "SKINGPT_QUEUE": queue,
        "SKINGPT_TORCH_THREADS": "1",
        "SKINGPT_MAX_NEW_TOKENS": "8",
        "SKINGPT_TASK_SOFT_TIME_LIMIT": "2",
        "SKINGPT_TASK_TIME_LIMIT": "4",
    }
    store = Store.from_url(
        redis_url, prefix=key_prefix, retention_seconds=600, turn_hold_seconds=900
    )
    store.ensure_outbox_group()
    image = encode_png(load_image(sample_photos[0].read_bytes(), max_pixels=10**8))
    jobs = []
    for user in range(3):
        conv = store.pseudonym(user, user)
        case = store.start_case(conv, image)
        job = store.new_job(conv=conv, case=case, chat_id=user, reply_to=None, question="Q?")
        store.snapshot_history(job)
        jobs.append(job)
    celery = create_celery(Settings.from_env({}, redis_url=redis_url, queue=queue))
    for job in jobs:
        celery.send_task(ANSWER_TASK, args=[job], task_id=job, queue=queue)

    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "skingpt.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            loaded = [store.load_job(job) for job in jobs]
            if all(j is not None and j.status == "done" for j in loaded):
                break
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    output = (tmp_path / "worker.log").read_text(errors="replace")
    for job in jobs:
        loaded_job = store.load_job(job)
        assert loaded_job is not None and loaded_job.status == "done", output[-3000:]
        assert loaded_job.outcome in {Outcome.ANSWERED, Outcome.EMPTY}
        assert loaded_job.attempts == 1
    assert "waits for the model to finish loading" in output
    outbox = store.read_outbox("test", block_ms=10, count=10)
    assert sorted(job for _, job in outbox) == sorted(jobs)
