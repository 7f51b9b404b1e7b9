"""Faults injected into a running bot and Celery worker, judged by what the person sees.

Each test breaks something while real jobs are in flight: a worker child or the whole worker is
killed, a photo crashes the model every time, the model runs out of memory or meets NaN, the bot
or Redis restarts, Telegram answers 429, 502 or too late, a job runs twice. Whatever happens,
every message gets exactly one reply (an answer, or an apology when no answer can come), the
model runs no more often than the fault forces, and the processes keep serving the next photo.

The worker runs the scripted model with ``tests/data/scripted/faults.toml``: most photos are
answered at once; one is slow (to stop a worker mid-job), and others crash the worker child, run
out of memory or fail on NaN. A person blocking the bot (Telegram's 403) is covered by
``tests/e2e/test_conversation.py::test_a_person_who_blocked_the_bot_has_their_data_deleted``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from skingpt.replies import DISCLAIMER, OUTCOME_TEXT, Outcome
from skingpt.settings import Settings
from tests.e2e.support import DATA, Services, spawn, stop, tap, wait_for
from tests.reliability.tally import Tally
from worker.app import ANSWER_TASK, create_celery

pytestmark = pytest.mark.e2e

SCRIPT = DATA / "scripted" / "faults.toml"
REPLY_TIMEOUT = 90.0
# After a reply arrives, how long a second copy is given to show up before the count is final.
GRACE = 1.0

PLAIN = ("psoriasis_01.jpg", "eczema_02.jpg", "tinea_corporis_01.jpg", "nevus_01.jpg")
SLOW = "herpes_zoster_01.png"  # about 2.5 seconds: long enough to stop a worker mid-job
CRASH = "melanoma_01.jpg"  # the worker child exits on every answer
OUT_OF_MEMORY = "melanoma_02.jpg"
NOT_A_NUMBER = "acanthosis_nigricans_01.jpg"

APOLOGY = OUTCOME_TEXT[Outcome.FAILED]
SETTINGS = {
    "model": "scripted",
    "script": str(SCRIPT),
    "allow_scripted_model": "true",
    "max_deliveries": "2",
    "task_soft_time_limit": "20",
    "task_time_limit": "30",
    "max_queue_wait_seconds": "60",
    "visibility_timeout": "120",
}
# A worker that takes over a dead one's job soon: about the shortest limits Settings accepts.
SHORT_VISIBILITY = {
    "SKINGPT_TASK_SOFT_TIME_LIMIT": "4",
    "SKINGPT_TASK_TIME_LIMIT": "5",
    "SKINGPT_MAX_QUEUE_WAIT_SECONDS": "10",
    "SKINGPT_VISIBILITY_TIMEOUT": "16",
}
# The person whose fresh photo shows, after each fault, that everything still serves.
PROBE = 30_000


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> Services:
    """A bot and two single-process workers, so that one can take a job while the other is
    busy, restarting its child, or running the same job."""
    return start_services(["--allow-scripted-model"], workers=2, **SETTINGS)


# --- what the person sees --------------------------------------------------------------------


def _photo(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _is_reply(message: dict[str, Any]) -> bool:
    """An answer (it carries the disclaimer) or an apology for a job that got none."""
    text = message.get("text") or ""
    return DISCLAIMER in text or any(apology in text for apology in OUTCOME_TEXT.values())


def _replies(services: Services, chat: int) -> list[str]:
    return [str(m["text"]) for m in services.api.messages(chat) if _is_reply(m)]


def _expect_replies(
    services: Services,
    tally: Tally,
    new: dict[int, int],
    *,
    seen: dict[int, int] | None = None,
    timeout: float = REPLY_TIMEOUT,
) -> dict[int, list[str]]:
    """Wait for ``new[chat]`` more replies in each chat than the ``seen`` ones, count them into
    the tally, and require exactly that many; returns every reply of each chat."""
    before = {chat: (seen or {}).get(chat, 0) for chat in new}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        len(_replies(services, chat)) < before[chat] + n for chat, n in new.items()
    ):
        time.sleep(0.05)
    time.sleep(GRACE)
    replies = {chat: _replies(services, chat) for chat in new}
    came = {chat: len(replies[chat]) - before[chat] for chat in new}
    tally.messages(
        expected=sum(new.values()),
        delivered=sum(min(came[c], n) for c, n in new.items()),
        lost=sum(max(0, n - came[c]) for c, n in new.items()),
        duplicated=sum(max(0, came[c] - n) for c, n in new.items()),
    )
    assert came == new, replies
    return replies


def _expect_one_reply_each(
    services: Services, tally: Tally, chats: list[int], *, timeout: float = REPLY_TIMEOUT
) -> dict[int, str]:
    """The one reply of each chat (see :func:`_expect_replies`)."""
    replies = _expect_replies(services, tally, dict.fromkeys(chats, 1), timeout=timeout)
    return {chat: texts[0] for chat, texts in replies.items()}


def _answered(text: str) -> bool:
    return DISCLAIMER in text and not any(a in text for a in OUTCOME_TEXT.values())


def _agree(services: Services, *users: int) -> None:
    """Every user sends /start and taps "I agree", all at once (each chat is paced on its own)."""
    api = services.api
    for user in users:
        api.send_text(user, "/start")
    consents = {}
    for user in users:
        consents[user] = wait_for(api, user, lambda m: bool(m.get("reply_markup")))
        tap(api, user, consents[user], "consent")
    for user in users:
        newer = consents[user]["message_id"]
        wait_for(api, user, lambda m, newer=newer: m["message_id"] > newer)


def _still_serving(services: Services, tally: Tally) -> None:
    """All processes are up and a fresh photo still gets its answer."""
    services.assert_alive()
    seen = len(_replies(services, PROBE))
    if not services.api.messages(PROBE):
        _agree(services, PROBE)
    services.api.send_text(PROBE, "/new")  # a new case: no question about which case it is
    services.api.send_photo(PROBE, _photo(PLAIN[0]))
    replies = _expect_replies(services, tally, {PROBE: 1}, seen={PROBE: seen})
    assert _answered(replies[PROBE][-1]), replies[PROBE][-1]


# --- what the store and the logs say ---------------------------------------------------------


def _job_ids(services: Services, chat: int) -> list[str]:
    """The chat's job ids, oldest first."""
    found = []
    keys: Any = services.redis.scan_iter(match=f"{services.prefix}:job:*", count=500)
    for key in keys:
        raw: Any = services.redis.hmget(key, ["chat_id", "created"])
        if raw[0] is not None and int(raw[0]) == chat:
            found.append((float(raw[1] or 0), key.decode().rsplit(":", 1)[1]))
    return [job for _, job in sorted(found)]


def _job(services: Services, job_id: str) -> dict[str, str]:
    raw: Any = services.redis.hgetall(f"{services.prefix}:job:{job_id}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def _wait_for_job(
    services: Services, chat: int, statuses: tuple[str, ...], *, timeout: float = 30.0
) -> str:
    """The chat's latest job once its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = _job_ids(services, chat)
        if jobs and _job(services, jobs[-1]).get("status") in statuses:
            return jobs[-1]
        assert time.monotonic() < deadline, f"no job of chat {chat} reached {statuses}"
        time.sleep(0.02)


def _settled(services: Services, job_id: str, timeout: float = 30.0) -> None:
    """The job was sent, and soon nothing is left that could send it again: its outbox entry
    is acknowledged (after the status message is removed, which the flood limits may delay)."""
    job = _job(services, job_id)
    assert job.get("status") == "done" and job.get("delivered") == "1", job
    deadline = time.monotonic() + timeout
    while True:
        entries: Any = services.redis.xrange(f"{services.prefix}:outbox")
        if job_id not in [fields[b"job"].decode() for _, fields in entries]:
            return
        assert time.monotonic() < deadline, f"the outbox entry of job {job_id} stays"
        time.sleep(0.05)


def _wait_idle(services: Services, timeout: float = REPLY_TIMEOUT) -> None:
    """Wait until every job so far was delivered, so a fault meets the job it is meant for."""
    deadline = time.monotonic() + timeout
    while any(j["status"] != "new" and j.get("delivered") != "1" for j in services.jobs()):
        assert time.monotonic() < deadline, "earlier jobs are still unanswered"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


def _wait_for_log(services: Services, line: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while services.log_text().count(line) < count:
        assert time.monotonic() < deadline, f"{line!r} logged fewer than {count} times"
        time.sleep(0.1)


# --- worker faults ---------------------------------------------------------------------------


def test_a_worker_child_killed_mid_job_is_redelivered_and_answered_once(
    services: Services, tally: Tally
) -> None:
    api, user = services.api, 30_001
    _wait_idle(services)
    _agree(services, user)
    with tally.fault("worker child killed (SIGKILL) mid-job"):
        api.send_photo(user, _photo(SLOW))
        job = _wait_for_job(services, user, ("running",))
        worker = _worker_running(services, job)
        (child,) = _children(worker.pid)
        os.kill(child, signal.SIGKILL)
        killed = time.monotonic()
        (reply,) = _expect_one_reply_each(services, tally, [user]).values()
        tally.note(f"worker child killed: answered {time.monotonic() - killed:.1f} s later")
        assert _answered(reply), reply
        # The killed run, and one more: Celery put the job back at once.
        assert _job(services, job)["attempts"] == "2"
        _settled(services, job)
    assert child not in _children(worker.pid)
    _still_serving(services, tally)


def _worker_running(services: Services, job_id: str) -> subprocess.Popen[bytes]:
    """The worker process that received the job (each worker logs to its own file)."""
    deadline = time.monotonic() + 10
    while True:
        for index, worker in enumerate(services.workers):
            log = (services.logs / f"worker{index}.log").read_text(errors="replace")
            if f"[{job_id}] received" in log:
                return worker
        assert time.monotonic() < deadline, f"no worker logged receiving job {job_id}"
        time.sleep(0.02)


def test_a_photo_that_crashes_its_worker_every_time_gets_an_apology_after_max_deliveries(
    services: Services, tally: Tally
) -> None:
    api, poisoned, bystander = services.api, 30_011, 30_012
    _wait_idle(services)
    _agree(services, poisoned, bystander)
    with tally.fault("poison photo: the model crashes its worker child on every delivery"):
        api.send_photo(poisoned, _photo(CRASH))
        api.send_photo(bystander, _photo(PLAIN[1]))
        replies = _expect_one_reply_each(services, tally, [poisoned, bystander])
        assert APOLOGY in replies[poisoned], replies[poisoned]
        assert _answered(replies[bystander]), replies[bystander]
        (job,) = _job_ids(services, poisoned)
        # Two runs crashed; the third delivery found the limit reached and did not run.
        assert services.log_text().count("Scripted fault exit in case crash") == 2
        assert _job(services, job)["attempts"] == "3"
        assert _job(services, job)["outcome"] == Outcome.FAILED.value
        _settled(services, job)
    _still_serving(services, tally)


@pytest.mark.parametrize(
    ("user", "photo", "fault", "logged"),
    [
        (30_021, OUT_OF_MEMORY, "the model runs out of GPU memory", "ran out of memory"),
        (30_022, NOT_A_NUMBER, "NaN in the logits", "probability tensor contains"),
    ],
)
def test_a_model_error_gets_an_apology_once_and_is_not_retried(
    services: Services, tally: Tally, user: int, photo: str, fault: str, logged: str
) -> None:
    api = services.api
    _wait_idle(services)
    _agree(services, user)
    with tally.fault(fault):
        api.send_photo(user, _photo(photo))
        (reply,) = _expect_one_reply_each(services, tally, [user]).values()
        assert APOLOGY in reply, reply
        (job,) = _job_ids(services, user)
        assert _job(services, job)["attempts"] == "1"
        assert _job(services, job)["outcome"] == Outcome.FAILED.value
        assert f"Job {job}" in services.log_text() and logged in services.log_text()
        if photo == OUT_OF_MEMORY:
            assert f"Job {job}: released the memory of the failed job" in services.log_text()
        _settled(services, job)
    _still_serving(services, tally)


def test_a_job_queued_again_or_run_twice_at_once_is_answered_once(
    services: Services, tally: Tally
) -> None:
    api, again, twice = services.api, 30_031, 30_032
    _wait_idle(services)
    celery = create_celery(Settings.from_env(services.env))
    queue = services.env["SKINGPT_QUEUE"]
    _agree(services, again, twice)

    with tally.fault("the same job queued again after it was answered"):
        api.send_photo(again, _photo(PLAIN[2]))
        wait_for(api, again, _is_reply, timeout=REPLY_TIMEOUT)
        (job,) = _job_ids(services, again)
        _settled(services, job)
        for _ in range(2):
            celery.send_task(ANSWER_TASK, args=[job], task_id=job, queue=queue)
        _wait_for_log(services, f"Job {job} was already answered", 2)
        _expect_one_reply_each(services, tally, [again])
        assert _job(services, job)["attempts"] == "1"  # the model did not run again
        _settled(services, job)

    with tally.fault("the same job run by two workers at once"):
        api.send_photo(twice, _photo(SLOW))
        job = _wait_for_job(services, twice, ("running",))
        celery.send_task(ANSWER_TASK, args=[job], task_id=job, queue=queue)  # to the idle one
        (reply,) = _expect_one_reply_each(services, tally, [twice]).values()
        assert _answered(reply), reply
        # Both workers ran the model; only the first to finish recorded an answer.
        assert _job(services, job)["attempts"] == "2"
        _settled(services, job)
    _still_serving(services, tally)


# --- Telegram faults -------------------------------------------------------------------------
# Each fault meets the reply to a follow-up question, the only message the bot sends for it
# (there is no status message when nothing waits).


@pytest.fixture(scope="module")
def asker(services: Services, tally: Tally) -> int:
    """A person whose photo was answered; the faults below meet replies to their questions."""
    user = 30_040
    _wait_idle(services)
    _agree(services, user)
    services.api.send_photo(user, _photo(PLAIN[3]))
    _expect_replies(services, tally, {user: 1})
    return user


def _sends(services: Services, chat: int) -> int:
    """sendMessage calls to ``chat`` so far, refused ones included."""
    return sum(1 for _, p in services.api.calls("sendMessage") if int(p["chat_id"]) == chat)


def _ask(services: Services, user: int) -> tuple[int, int]:
    """Once nothing else is on its way, ask a follow-up; returns the replies and the sends
    to the chat made before it."""
    _wait_idle(services)
    before = (len(_replies(services, user)), _sends(services, user))
    services.api.send_text(user, "Is it contagious?")
    return before


def _new_job(services: Services, user: int, known: int, timeout: float = 30.0) -> str:
    """The id of the user's job after the ``known`` first ones, once it exists."""
    deadline = time.monotonic() + timeout
    while len(jobs := _job_ids(services, user)) <= known:
        assert time.monotonic() < deadline, f"no new job in chat {user}"
        time.sleep(0.02)
    return jobs[known]


def test_telegram_flood_control_is_honoured_without_sending_twice(
    services: Services, tally: Tally, asker: int
) -> None:
    api = services.api
    with tally.fault("Telegram answers 429 with retry_after=2"):
        api.fail_next("sendMessage", 429, "Too Many Requests: retry after 2", retry_after=2)
        replied, sends = _ask(services, asker)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while _sends(services, asker) == sends:
            assert time.monotonic() < deadline, "the reply was never sent"
            time.sleep(0.01)
        refused = time.monotonic()
        replies = _expect_replies(services, tally, {asker: 1}, seen={asker: replied})
        sent = [m.received for m in api.sent() if m.chat_id == asker][-1]
        tally.note(f"429 with retry_after=2: sent again {sent - refused:.1f} s after the refusal")
        assert sent - refused >= 1.5  # the pause Telegram asked for, less the polling slack
        assert _sends(services, asker) == sends + 2  # refused once, sent once
        assert _answered(replies[asker][-1])
        job = _job_ids(services, asker)[-1]
        assert _job(services, job)["attempts"] == "1"
        _settled(services, job)


def test_telegram_bad_gateway_is_retried_and_delivered_once(
    services: Services, tally: Tally, asker: int
) -> None:
    with tally.fault("Telegram answers 502 Bad Gateway"):
        services.api.fail_next("sendMessage", 502, "Bad Gateway")
        replied, sends = _ask(services, asker)
        replies = _expect_replies(services, tally, {asker: 1}, seen={asker: replied})
        assert _answered(replies[asker][-1])
        assert _sends(services, asker) == sends + 2
        job = _job_ids(services, asker)[-1]
        assert _job(services, job)["attempts"] == "1"
        _settled(services, job)


def test_a_send_that_telegram_answers_too_late_is_not_sent_again(
    services: Services, tally: Tally, asker: int
) -> None:
    with tally.fault("Telegram applies sendMessage but answers after the bot's read timeout"):
        services.api.delay_next("sendMessage", 6.0)  # python-telegram-bot reads for 5 s
        replied, sends = _ask(services, asker)
        job = _new_job(services, asker, replied)
        _wait_for_log(services, f"Job {job}: part 1 was not confirmed in time", 1)
        _settled(services, job)  # acknowledged: nothing will send it again
        replies = _expect_replies(services, tally, {asker: 1}, seen={asker: replied})
        assert _answered(replies[asker][-1]) and _sends(services, asker) == sends + 1
        assert _job(services, job)["attempts"] == "1"
    _still_serving(services, tally)


# --- restarts --------------------------------------------------------------------------------


def test_replies_in_flight_while_the_bot_restarts_arrive_once(
    services: Services, tally: Tally
) -> None:
    api = services.api
    users = list(range(30_071, 30_075))
    _wait_idle(services)
    _agree(services, *users)
    with tally.fault("bot restarted (SIGTERM) with jobs in flight"):
        for user, name in zip(users, (SLOW, *PLAIN[:3]), strict=True):
            api.send_photo(user, _photo(name))
        _wait_for_job(services, users[0], ("running",))
        restarted = time.monotonic()
        services.restart_bot(["--allow-scripted-model"])
        _expect_one_reply_each(services, tally, users)
        tally.note(f"bot restart: all replies {time.monotonic() - restarted:.1f} s after it")
        for user in users:
            (job,) = _job_ids(services, user)
            assert _job(services, job)["attempts"] == "1"
            _settled(services, job)
    _still_serving(services, tally)


def test_a_whole_worker_killed_mid_job_is_taken_over_after_the_visibility_timeout(
    services: Services, tally: Tally
) -> None:
    """Both workers die, as when their machine fails. Runs last on these services: the
    replacement worker has a short visibility timeout."""
    api, user = services.api, 30_081
    _wait_idle(services)
    _agree(services, user)
    with tally.fault("whole worker killed (SIGKILL to its process group) mid-job"):
        api.send_photo(user, _photo(SLOW))
        job = _wait_for_job(services, user, ("running",))
        for worker in services.workers:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        killed = time.monotonic()
        env = {**services.env, **SHORT_VISIBILITY}
        services.workers = [spawn(["worker", "--concurrency", "1"], env, services.logs / "w2.log")]
        (reply,) = _expect_one_reply_each(services, tally, [user]).values()
        tally.note(
            f"whole worker killed: answered {time.monotonic() - killed:.1f} s later "
            f"(visibility timeout {SHORT_VISIBILITY['SKINGPT_VISIBILITY_TIMEOUT']} s)"
        )
        assert _answered(reply), reply
        assert _job(services, job)["attempts"] == "2"
        _settled(services, job)
    _still_serving(services, tally)


# --- Redis restarts --------------------------------------------------------------------------


class _PrivateRedis:
    """A redis-server of this module's own, with an append-only file, that can be restarted."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed; the Redis restart test needs it")
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.command = [
            server,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(folder)),
            *("--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    return
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_PrivateRedis]:
    server = _PrivateRedis(tmp_path_factory.mktemp("redis-restarts"))
    server.start()
    yield server
    server.stop()


def test_bot_and_worker_reconnect_after_redis_restarts(
    start_services: Callable[..., Services], private_redis: _PrivateRedis, tally: Tally
) -> None:
    services = start_services(["--allow-scripted-model"], redis_url=private_redis.url, **SETTINGS)
    try:
        _survive_redis_restart(services, private_redis, tally)
    finally:
        # Stopped here, while their Redis still runs, so that they shut down cleanly.
        for process in (services.bot, *services.workers):
            stop(process)


def _survive_redis_restart(services: Services, private_redis: _PrivateRedis, tally: Tally) -> None:
    api = services.api
    before, during, after = 30_091, 30_092, 30_093
    _agree(services, before, during, after)
    api.send_photo(before, _photo(PLAIN[0]))
    _expect_one_reply_each(services, tally, [before])
    with tally.fault("Redis restarted (SIGTERM, same port and data) with a job in flight"):
        api.send_photo(during, _photo(SLOW))
        _wait_for_job(services, during, ("running",))
        private_redis.stop()
        down = time.monotonic()
        time.sleep(1.0)
        private_redis.start()
        api.send_photo(after, _photo(PLAIN[1]))
        replies = _expect_one_reply_each(services, tally, [during, after], timeout=120)
        tally.note(f"Redis restart: replies {time.monotonic() - down:.1f} s after it went down")
        assert all(_answered(text) for text in replies.values()), replies
        for user in (during, after):
            (job,) = _job_ids(services, user)
            _settled(services, job)
    _still_serving(services, tally)
