"""A photo is encoded once: its first analysis and every follow-up, on any worker, reuse the
image embeddings kept with the case in Redis.

Two worker processes with the tiny-random model share one Redis. The worker that ran the
vision encoder for the analysis is stopped after one follow-up, so the next follow-up has to
be answered by the other one, which has never seen the photo.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from skingpt.replies import DISCLAIMER
from tests.e2e.support import DATA, Services, agree, containing, stop, wait_for

pytestmark = pytest.mark.e2e

REPLY_TIMEOUT = 120.0
ENCODED = "Vision encoder runs in this process"
REUSED = "reused from Redis"


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> Services:
    return start_services(
        ["--allow-test-model"], workers=2, model="tiny-random", max_new_tokens="16", seed="7"
    )


def _worker_logs(services: Services) -> list[str]:
    return [
        (services.logs / f"worker{n}.log").read_text(errors="replace")
        for n in range(len(services.workers))
    ]


def _ask(services: Services, user: int, question: str) -> None:
    seen = len(services.api.messages(user))
    services.api.send_text(user, question)
    wait_for(services.api, user, containing(DISCLAIMER), after=seen, timeout=REPLY_TIMEOUT)


def test_follow_ups_on_another_worker_reuse_the_photos_embeddings(services: Services) -> None:
    api, user = services.api, 30_001
    agree(api, user)
    api.send_photo(user, (DATA / "psoriasis_01.jpg").read_bytes())
    wait_for(api, user, containing(DISCLAIMER), timeout=REPLY_TIMEOUT)
    (analysis,) = services.jobs(user)
    assert json.loads(analysis["answers"]), "the analysis was answered by the model"

    encoded_by = [n for n, log in enumerate(_worker_logs(services)) if ENCODED in log]
    assert len(encoded_by) == 1, "one worker encoded the photo for every call of the analysis"
    _ask(services, user, "Is it contagious?")

    stop(services.workers[encoded_by[0]])
    _ask(services, user, "Should I see a doctor?")

    logs = _worker_logs(services)
    other = logs[1 - encoded_by[0]]
    assert sum(log.count(ENCODED) for log in logs) == 1, "the vision encoder ran once in all"
    assert REUSED in other, "the other worker took the embeddings from Redis"
    assert len(services.jobs(user)) == 3
    assert all(job["status"] == "done" for job in services.jobs(user))
