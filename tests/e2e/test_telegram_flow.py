"""The whole path, as users meet it: real bot and worker processes, Redis, and HTTP.

`skingpt bot` talks over HTTP to the package's Bot API stand-in; `skingpt worker` runs Celery's
prefork pool with the tiny-random model; both share a real Redis. The test acts as Telegram's
users: it sends the sample photos as photos and as files, asks follow-ups, and reads what the
bot sent back.
"""

from __future__ import annotations

import json
import mimetypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bot import texts
from bot.standin import BotAPIStandIn
from skingpt.prompts import DEFAULT_QUESTION
from skingpt.replies import DISCLAIMER, TEST_MODEL_BANNER, Outcome, format_reply

pytestmark = pytest.mark.e2e

TOKEN = "424242:e2e-secret-token"
FIRST_REPLY_TIMEOUT = 120.0
REPLY_TIMEOUT = 60.0


@dataclass
class Services:
    api: BotAPIStandIn
    redis: redis.Redis
    prefix: str
    bot: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "skingpt.cli", *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def services(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    prefix = f"skingpt-e2e-{os.getpid()}"
    api = BotAPIStandIn(token=TOKEN).start()
    env = {
        **os.environ,
        "SKINGPT_REDIS_URL": redis_url,
        "SKINGPT_KEY_PREFIX": prefix,
        "SKINGPT_QUEUE": f"{prefix}-gpu",
        "SKINGPT_MODEL": "tiny-random",
        "SKINGPT_TORCH_THREADS": "1",
        "SKINGPT_MAX_NEW_TOKENS": "24",
        "SKINGPT_SEED": "7",
        "SKINGPT_LOG_LEVEL": "INFO",
    }
    worker = _spawn(["worker", "--concurrency", "1"], env, logs / "worker.log")
    bot_env = {
        **env,
        "SKINGPT_TELEGRAM_TOKEN": TOKEN,
        "SKINGPT_TELEGRAM_API_URL": api.base_url,
        "SKINGPT_TELEGRAM_FILE_URL": api.base_file_url,
    }
    bot = _spawn(["bot", "--allow-test-model"], bot_env, logs / "bot.log")
    client = redis.Redis.from_url(redis_url)
    try:
        yield Services(api=api, redis=client, prefix=prefix, bot=bot, worker=worker, logs=logs)
    finally:
        _stop(bot)
        _stop(worker)
        api.stop()
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
        for name in ("bot.log", "worker.log"):
            sys.stderr.write(f"\n----- {name} -----\n{(logs / name).read_text(errors='replace')}")


def _jobs(services: Services) -> list[dict[str, str]]:
    jobs = []
    for key in services.redis.scan_iter(match=f"{services.prefix}:job:*", count=500):
        raw = services.redis.hgetall(key)
        jobs.append({k.decode(): v.decode() for k, v in raw.items()})
    return jobs


def _assert_alive(services: Services) -> None:
    for name, process in (("bot", services.bot), ("worker", services.worker)):
        assert process.poll() is None, f"the {name} process exited with {process.returncode}"


def _mime(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def test_photos_and_files_each_get_one_reply_and_follow_ups_keep_context(
    services: Services, sample_photos: list[Path]
) -> None:
    api = services.api
    photos = sample_photos
    # Each photo goes out twice, from two users: once compressed, once as a file.
    first_messages: dict[int, dict] = {}
    for index, path in enumerate(photos):
        data = path.read_bytes()
        photo_user, file_user = 1000 + index, 2000 + index
        first_messages[photo_user] = api.send_photo(photo_user, data)
        first_messages[file_user] = api.send_document(
            file_user,
            data,
            file_name=path.name,
            mime_type=_mime(path),
            caption="What is this rash?",
        )

    replies = {}
    deadline = FIRST_REPLY_TIMEOUT
    for user in first_messages:
        replies[user] = api.wait_for_messages(user, 1, timeout=deadline)[0]
        deadline = REPLY_TIMEOUT
    _assert_alive(services)

    for user, reply in replies.items():
        assert DISCLAIMER in reply["text"]
        assert TEST_MODEL_BANNER.format(model="tiny-random") in reply["text"]
        assert reply["reply_to_message"]["message_id"] == first_messages[user]["message_id"]

    for user in first_messages:
        api.send_text(user, "Is it contagious?")
    for user in first_messages:
        follow_up = api.wait_for_messages(user, 2, timeout=REPLY_TIMEOUT)[1]
        assert DISCLAIMER in follow_up["text"]

    # Nothing more arrives: exactly one reply per message.
    time.sleep(2.0)
    for user in first_messages:
        assert len(api.messages(user)) == 2, api.messages(user)

    # Each follow-up job carried the photo's turn, question and answer.
    jobs = _jobs(services)
    assert len(jobs) == 2 * len(first_messages)
    by_chat: dict[int, list[dict[str, str]]] = {}
    for job in jobs:
        by_chat.setdefault(int(job["chat_id"]), []).append(job)
    for user, (first, second) in (
        (u, sorted(j, key=lambda job: float(job["created"]))) for u, j in by_chat.items()
    ):
        expected_question = DEFAULT_QUESTION if user < 2000 else "What is this rash?"
        assert first["question"] == expected_question
        assert json.loads(first["history"]) == []
        assert second["question"] == "Is it contagious?"
        assert json.loads(second["history"]) == [{"q": expected_question, "a": first["answer"]}]
        assert replies[user]["text"] == format_reply(
            Outcome(first["outcome"]), first["answer"], model_name="tiny-random", untrained=True
        )
        assert first["delivered"] == second["delivered"] == "1"

    # "typing…" was shown while the answers were prepared.
    typing_chats = {
        int(p["chat_id"]) for m, p in api.calls("sendChatAction") if p.get("action") == "typing"
    }
    assert set(first_messages) <= typing_chats


def test_quick_follow_up_waits_for_the_first_answer(
    services: Services, sample_photos: list[Path]
) -> None:
    api = services.api
    user = 3001
    api.send_photo(user, sample_photos[0].read_bytes(), caption="What is this?")
    api.send_text(user, "How long will it last?")
    api.send_text(user, "Should I see a doctor?")

    sent = api.wait_for_messages(user, 3, timeout=REPLY_TIMEOUT)
    assert all(DISCLAIMER in message["text"] for message in sent)
    jobs = sorted(
        (j for j in _jobs(services) if int(j["chat_id"]) == user),
        key=lambda job: float(job["created"]),
    )
    assert [j["question"] for j in jobs] == [
        "What is this?",
        "How long will it last?",
        "Should I see a doctor?",
    ]
    histories = [json.loads(j["history"]) for j in jobs]
    assert [len(h) for h in histories] == [0, 1, 2]
    assert histories[2][1] == {"q": "How long will it last?", "a": jobs[1]["answer"]}


def test_messages_without_a_usable_photo_get_a_clear_reply(services: Services) -> None:
    api = services.api
    # An update the Telegram library cannot parse must not hold up the ones behind it.
    api.send_update(
        {
            "message": {
                "message_id": 1,
                "date": int(time.time()),
                "chat": {"id": 4005, "type": "private"},
                "from": {"id": 4005, "is_bot": False, "first_name": "Zed"},
                "poll": {"id": "p1"},
            }
        }
    )
    api.send_text(4001, "/start")
    api.send_text(400200137, "What is this rash on my arm?")
    api.send_document(
        4003, b"%PDF-1.4 not an image", file_name="scan.pdf", mime_type="application/pdf"
    )
    api.send_update(
        {
            "message": {
                "message_id": 1,
                "date": int(time.time()),
                "chat": {"id": 4004, "type": "private"},
                "from": {"id": 4004, "is_bot": False, "first_name": "Ana"},
                "sticker": {
                    "file_id": "s1",
                    "file_unique_id": "s1",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                    "type": "regular",
                },
            }
        }
    )

    assert DISCLAIMER in api.wait_for_messages(4001, 1)[0]["text"]
    assert api.wait_for_messages(400200137, 1)[0]["text"] == texts.SEND_PHOTO_FIRST
    assert "could not read this file as an image" in api.wait_for_messages(4003, 1)[0]["text"]
    assert api.wait_for_messages(4004, 1)[0]["text"] == texts.UNSUPPORTED
    _assert_alive(services)
    bot_log = (services.logs / "bot.log").read_text(errors="replace")
    assert "Skipped update" in bot_log
    for private in ("What is this rash on my arm?", "Zed", "400200137", TOKEN):
        assert private not in bot_log


def test_worker_parent_never_loads_torch(services: Services) -> None:
    """The model, and with it torch and CUDA, lives only in the worker's child processes."""
    parent = services.worker.pid
    children = [
        int(pid)
        for task in Path(f"/proc/{parent}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert children, "the worker has no child process"

    def maps_torch(pid: int) -> bool:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()

    # The child loads the model after start-up; wait until a job has surely run.
    services.api.send_photo(
        5001, (Path(__file__).parents[1] / "data" / "psoriasis_01.jpg").read_bytes()
    )
    services.api.wait_for_messages(5001, 1, timeout=REPLY_TIMEOUT)
    assert any(maps_torch(child) for child in children)
    assert not maps_torch(parent)


def test_blurred_photo_is_held_until_the_user_asks_for_it_once(
    services: Services, sample_photos: list[Path]
) -> None:
    import io

    from PIL import Image, ImageFilter

    api = services.api
    user = 6001
    sharp = Image.open(sample_photos[0]).convert("RGB")
    buffer = io.BytesIO()
    sharp.filter(ImageFilter.GaussianBlur(max(sharp.size) / 200)).save(buffer, "JPEG")
    api.send_photo(user, buffer.getvalue(), caption="What is this?")

    gate = api.wait_for_messages(user, 1)[0]
    assert "The photo looks blurred." in gate["text"]
    button = gate["reply_markup"]["inline_keyboard"][0][0]
    assert button["text"] == texts.ANALYSE_ANYWAY
    assert not [j for j in _jobs(services) if int(j["chat_id"]) == user and j["status"] != "new"]

    def tap(query_id: str) -> None:
        api.send_update(
            {
                "callback_query": {
                    "id": query_id,
                    "chat_instance": "c1",
                    "data": button["callback_data"],
                    "from": {"id": user, "is_bot": False, "first_name": "Ana"},
                    "message": gate,
                }
            }
        )

    tap("q1")
    answer = api.wait_for_messages(user, 2, timeout=REPLY_TIMEOUT)[1]
    assert DISCLAIMER in answer["text"] and "TEST MODEL" in answer["text"]
    tap("q2")  # a second tap must not analyse the photo again
    stale = api.wait_for_messages(user, 3)[2]
    assert stale["text"] == texts.STALE_BUTTON
    time.sleep(1.0)
    assert len(api.messages(user)) == 3
    assert len(api.calls("answerCallbackQuery")) >= 2
    assert api.messages(user)[0].get("reply_markup") in (None, {})


def test_forget_deletes_the_users_data_at_once(
    services: Services, sample_photos: list[Path]
) -> None:
    api = services.api
    user = 7001
    api.send_photo(user, sample_photos[1].read_bytes(), caption="What is this?")
    api.wait_for_messages(user, 1, timeout=REPLY_TIMEOUT)
    assert any(int(j["chat_id"]) == user for j in _jobs(services))

    api.send_text(user, "/forget")
    assert api.wait_for_messages(user, 2)[1]["text"] == texts.FORGOTTEN
    assert not any(int(j["chat_id"]) == user for j in _jobs(services))
    api.send_text(user, "And now?")
    assert api.wait_for_messages(user, 3)[2]["text"] == texts.SEND_PHOTO_FIRST
    api.send_text(user, "/forget")
    assert api.wait_for_messages(user, 4)[3]["text"] == texts.NOTHING_TO_FORGET


def test_commands_for_another_bot_in_a_group_are_left_alone(services: Services) -> None:
    api = services.api
    group, user = -8001, 8001
    api.send_text(user, "/start@someone_elses_bot", chat_id=group, chat_type="group")
    api.send_text(user, "/start@skingpt_test_bot", chat_id=group, chat_type="group")
    reply = api.wait_for_messages(group, 1)[0]
    assert DISCLAIMER in reply["text"]
    time.sleep(1.0)
    assert len(api.messages(group)) == 1
