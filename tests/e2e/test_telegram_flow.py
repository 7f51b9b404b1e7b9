"""The whole path, as users meet it: real bot and worker processes, Redis, and HTTP.

`skingpt bot` talks over HTTP to the package's Bot API stand-in; `skingpt worker` runs Celery's
prefork pool with the tiny-random model; both share a real Redis. The test acts as Telegram's
users: it sends the sample photos as photos and as files, asks follow-ups, and reads what the
bot sent back.
"""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import texts
from skingpt.i18n import gettext_for
from skingpt.prompts import DEFAULT_QUESTION, Turn
from skingpt.replies import DISCLAIMER, TEST_MODEL_BANNER, Outcome, to_messages
from skingpt.report import compose
from tests.e2e.support import Services, agree, containing, tap, wait_for

pytestmark = pytest.mark.e2e

FIRST_REPLY_TIMEOUT = 120.0
REPLY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> Services:
    return start_services(
        ["--allow-test-model"], model="tiny-random", max_new_tokens="24", seed="7"
    )


def _mime(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _replies(services: Services, chat_id: int) -> list[dict]:
    """The bot's answers in a chat (status, consent and other fixed messages left out)."""
    return [m for m in services.api.messages(chat_id) if DISCLAIMER in (m.get("text") or "")]


def _expected(job: dict[str, str]) -> str:
    """What the bot must send for a finished job: the structured reply, rendered plain."""
    history = [Turn(t["q"], t["a"]) for t in json.loads(job["history"])]
    blocks, _ = compose(
        kind=job["kind"],
        outcome=Outcome(job["outcome"]),
        answers=json.loads(job.get("answers") or "{}"),
        history=history,
        question=job["question"],
        language=job["language"],
        model_name=job["model"],
        untrained=job["untrained"] == "1",
    )
    return to_messages(blocks, gettext_for(job["language"]))[0].plain


def test_photos_and_files_each_get_one_reply_and_follow_ups_keep_context(
    services: Services, sample_photos: list[Path]
) -> None:
    api = services.api
    photos = sample_photos
    # Each photo goes out twice, from two users: once compressed, once as a file.
    first_messages: dict[int, dict] = {}
    users = [(1000 + index, 2000 + index) for index in range(len(photos))]
    for user in (u for pair in users for u in pair):
        agree(api, user)
    for (photo_user, file_user), path in zip(users, photos, strict=True):
        data = path.read_bytes()
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
        replies[user] = wait_for(api, user, containing(DISCLAIMER), timeout=deadline)
        deadline = REPLY_TIMEOUT
    services.assert_alive()

    for user, reply in replies.items():
        assert TEST_MODEL_BANNER.format(model="tiny-random") in reply["text"]
        assert reply["reply_to_message"]["message_id"] == first_messages[user]["message_id"]

    for user in first_messages:
        api.send_text(user, "Is it contagious?")
    for user in first_messages:
        wait_for(api, user, containing(DISCLAIMER), after=len(api.messages(user)) - 1)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while len(_replies(services, user)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

    # Nothing more arrives: exactly one reply per message.
    time.sleep(2.0)
    for user in first_messages:
        assert len(_replies(services, user)) == 2, api.messages(user)

    # Each follow-up job carried the first analysis's turns; each reply is the structured
    # rendering of its job.
    for user in first_messages:
        first, second = services.jobs(user)
        expected_question = DEFAULT_QUESTION if user < 2000 else "What is this rash?"
        assert (first["kind"], first["question"]) == ("analysis", expected_question)
        assert json.loads(first["history"]) == []
        assert (second["kind"], second["question"]) == ("followup", "Is it contagious?")
        history = json.loads(second["history"])
        answers = json.loads(first["answers"])
        assert [turn["a"] for turn in history] == list(answers.values())
        assert history[0]["q"].startswith("Could you describe")
        first_reply, second_reply = _replies(services, user)
        assert first_reply["text"] == _expected(first)
        assert second_reply["text"] == _expected(second)
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
    agree(api, user)
    api.send_photo(user, sample_photos[0].read_bytes(), caption="What is this?")
    api.send_text(user, "How long will it last?")
    api.send_text(user, "Should I see a doctor?")

    deadline = time.monotonic() + REPLY_TIMEOUT
    while len(_replies(services, user)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_replies(services, user)) == 3
    jobs = services.jobs(user)
    assert [j["question"] for j in jobs] == [
        "What is this?",
        "How long will it last?",
        "Should I see a doctor?",
    ]
    histories = [json.loads(j["history"]) for j in jobs]
    first_turns = len(json.loads(jobs[0]["answers"]))
    assert [len(h) for h in histories] == [0, first_turns, first_turns + 1]
    assert histories[2][-1] == {
        "q": "How long will it last?",
        "a": json.loads(jobs[1]["answers"])["answer"],
    }


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
    agree(services.api, 5001)
    services.api.send_photo(
        5001, (Path(__file__).parents[1] / "data" / "psoriasis_01.jpg").read_bytes()
    )
    wait_for(services.api, 5001, containing(DISCLAIMER), timeout=REPLY_TIMEOUT)
    assert any(maps_torch(child) for child in children)
    assert not maps_torch(parent)


def test_blurred_photo_is_held_until_the_user_asks_for_it_once(
    services: Services, sample_photos: list[Path]
) -> None:
    import io

    from PIL import Image, ImageFilter

    api = services.api
    user = 6001
    agree(api, user)
    seen = len(api.messages(user))
    sharp = Image.open(sample_photos[0]).convert("RGB")
    buffer = io.BytesIO()
    sharp.filter(ImageFilter.GaussianBlur(max(sharp.size) / 200)).save(buffer, "JPEG")
    api.send_photo(user, buffer.getvalue(), caption="What is this?")

    gate = wait_for(api, user, containing("The photo looks blurred."), after=seen)
    button = gate["reply_markup"]["inline_keyboard"][0][0]
    assert button["text"] == texts.ANALYSE_ANYWAY
    assert not [j for j in services.jobs(user) if j["status"] != "new"]

    tap(api, user, gate, button["callback_data"])
    answer = wait_for(api, user, containing(DISCLAIMER), timeout=REPLY_TIMEOUT)
    assert "TEST MODEL" in answer["text"]
    count = len(api.messages(user))
    tap(api, user, gate, button["callback_data"])  # a second tap must not analyse it again
    assert wait_for(api, user, containing(texts.STALE_BUTTON), after=count)
    time.sleep(1.0)
    assert len(_replies(services, user)) == 1
    assert len(services.jobs(user)) == 1
    assert api.messages(user)[seen].get("reply_markup") in (None, {})


def test_forget_deletes_the_users_data_at_once(
    services: Services, sample_photos: list[Path]
) -> None:
    api = services.api
    user = 7001
    agree(api, user)
    api.send_photo(user, sample_photos[1].read_bytes(), caption="What is this?")
    wait_for(api, user, containing(DISCLAIMER), timeout=REPLY_TIMEOUT)
    assert services.jobs(user)

    api.send_text(user, "/forget")
    wait_for(api, user, containing(texts.FORGOTTEN))
    assert not services.jobs(user)
    assert not [
        k
        for k in services.redis.scan_iter(match=f"{services.prefix}:case:*")
        if b"conv" in services.redis.type(k)
    ]
    # Consent went too: the next photo is not looked at before the person agrees again.
    seen = len(api.messages(user))
    api.send_photo(user, sample_photos[1].read_bytes())
    wait_for(api, user, containing(texts.CONSENT_FIRST.split(":")[0]), after=seen)
    api.send_text(user, "/forget")
    wait_for(api, user, containing(texts.NOTHING_TO_FORGET))
    assert not services.jobs(user)
