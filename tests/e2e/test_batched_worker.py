"""A batched worker: one process, one model, several people's jobs decoded together.

The worker runs with ``SKINGPT_BATCH_SIZE=4`` (Celery's threads pool, four jobs at once) and the
scripted model, whose ``answer_many`` takes 0.25 s per request. Several people send photos at
the same moment: each gets exactly one answer, and the model is called with batches of more than
one request. A second batched worker has a one-second soft time limit, which Celery cannot
enforce on threads: the job past it gets the timeout apology from the worker's own deadline.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from skingpt.replies import DISCLAIMER, OUTCOME_TEXT, Outcome
from tests.e2e.support import DATA, Services, agree, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = DATA / "scripted" / "samples.toml"
SCRIPTED = {"model": "scripted", "script": str(SCRIPT), "allow_scripted_model": "true"}
REPLY_TIMEOUT = 60.0
# After the replies arrive, how long a second copy is given to show up.
GRACE = 1.0
PHOTOS = ("psoriasis_01.jpg", "eczema_02.jpg", "tinea_corporis_01.jpg", "nevus_01.jpg")
TIMED_OUT = OUTCOME_TEXT[Outcome.TIMED_OUT]
BATCH_LINE = re.compile(r"Batch of (\d+) answered in")


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> tuple[Services, Services]:
    """A roomy batched worker, and one whose jobs have a one-second soft time limit; both
    start together so that their model loads overlap."""
    roomy = start_services(
        ["--allow-scripted-model"],
        worker_args=(),
        batch_size="4",
        # Jobs start a few milliseconds apart; a wider window lets their first calls meet.
        batch_wait_ms="300",
        **SCRIPTED,
    )
    hurried = start_services(
        ["--allow-scripted-model"],
        worker_args=(),
        batch_size="4",
        task_soft_time_limit="1",
        task_time_limit="20",
        max_queue_wait_seconds="10",
        visibility_timeout="40",
        **SCRIPTED,
    )
    return roomy, hurried


def _is_reply(message: dict[str, Any]) -> bool:
    text = message.get("text") or ""
    return DISCLAIMER in text or any(apology in text for apology in OUTCOME_TEXT.values())


def _replies(services: Services, user: int) -> list[str]:
    return [str(m["text"]) for m in services.api.messages(user) if _is_reply(m)]


def test_photos_sent_at_once_are_answered_once_each_in_shared_batches(
    services: tuple[Services, Services],
) -> None:
    roomy, _ = services
    users = [61_001 + n for n in range(len(PHOTOS))]
    for user in users:
        agree(roomy.api, user)
    for user, photo in zip(users, PHOTOS, strict=True):
        roomy.api.send_photo(user, (DATA / photo).read_bytes())
    for user in users:
        wait_for(roomy.api, user, _is_reply, timeout=REPLY_TIMEOUT)
    time.sleep(GRACE)

    for user in users:
        (reply,) = _replies(roomy, user)
        assert DISCLAIMER in reply, reply
    jobs = roomy.jobs()
    assert len(jobs) == len(users)
    assert all(job["outcome"] == Outcome.ANSWERED.value for job in jobs), jobs
    assert all(job["attempts"] == "1" for job in jobs), jobs

    log = roomy.log_text()
    sizes = [int(size) for size in BATCH_LINE.findall(log)]
    # Four analyses of four model calls each: sixteen requests in all, several per batch.
    assert sum(sizes) == 4 * len(users), sizes
    assert max(sizes) > 1 and len(sizes) < 4 * len(users), sizes
    assert "(thread)" in log  # Celery's banner: one process running jobs in threads
    roomy.assert_alive()


def test_a_batched_job_past_its_soft_time_limit_gets_the_timeout_apology(
    services: tuple[Services, Services],
) -> None:
    _, hurried = services
    user = 62_001
    agree(hurried.api, user)
    # An analysis with a question of its own: five calls of 0.25 s each, past one second.
    hurried.api.send_photo(
        user, (DATA / "psoriasis_01.jpg").read_bytes(), caption="Does it spread to others?"
    )
    wait_for(hurried.api, user, _is_reply, timeout=REPLY_TIMEOUT)
    time.sleep(GRACE)
    (reply,) = _replies(hurried, user)
    assert TIMED_OUT in reply
    (job,) = hurried.jobs(user)
    assert job["outcome"] == Outcome.TIMED_OUT.value
    assert "hit the time limit" in hurried.log_text()
    hurried.assert_alive()
