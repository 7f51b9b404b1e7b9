"""The web chat's HTTP API, against a real stand-in and a small python-telegram-bot replying."""

from __future__ import annotations

import io
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.standin import BotAPIStandIn
from bot.webchat import MAX_UPLOAD_BYTES, WebChat

PHOTO = Path(__file__).parents[1] / "data" / "psoriasis_01.jpg"
POST = {"X-Web-Chat": "1"}
JsonDict = dict[str, Any]


class Visitor:
    """One browser's worth of HTTP: its own cookie jar and language."""

    def __init__(self, chat: WebChat, language: str = "en-US,en;q=0.9") -> None:
        self.client = httpx.Client(
            base_url=chat.url, headers={"Accept-Language": language}, timeout=10
        )
        self.notices: list[JsonDict] = []
        page = self.client.get("/")
        assert page.status_code == 200

    def text(self, text: str) -> httpx.Response:
        return self.client.post("/api/text", json={"text": text}, headers=POST)

    def upload(
        self, data: bytes, name: str, mime: str, caption: str | None = None
    ) -> httpx.Response:
        fields = {"caption": caption} if caption is not None else None
        files = {"file": (name, data, mime)}
        return self.client.post("/api/upload", files=files, data=fields, headers=POST)

    def press(self, message_id: int, data: str) -> httpx.Response:
        body = {"message_id": message_id, "data": data}
        return self.client.post("/api/button", json=body, headers=POST)

    def poll(self) -> JsonDict:
        response = self.client.get("/api/messages")
        assert response.status_code == 200, response.text
        body: JsonDict = response.json()
        self.notices += body["notices"]
        return body

    def wait_for(self, predicate: Callable[[JsonDict], bool], timeout: float = 10) -> JsonDict:
        """Polls like the page does until `predicate` holds for a poll's answer."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.poll()
            if predicate(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout}s; last poll: {body!r}")
            time.sleep(0.05)

    def wait_for_text(self, fragment: str, timeout: float = 10) -> JsonDict:
        body = self.wait_for(lambda b: any(fragment in m.get("text", "") for m in b["messages"]))
        return next(m for m in body["messages"] if fragment in m.get("text", ""))


@pytest.fixture
def new_visitor(webchat: WebChat) -> Iterator[Callable[..., Visitor]]:
    """Makes visitors of the web chat (each a new browser); closes their connections after."""
    made: list[Visitor] = []

    def make(language: str = "en-US,en;q=0.9") -> Visitor:
        made.append(Visitor(webchat, language))
        return made[-1]

    yield make
    for person in made:
        person.client.close()


@pytest.fixture
def visitor(new_visitor: Callable[..., Visitor]) -> Visitor:
    return new_visitor()


def _texts(body: JsonDict) -> list[tuple[str, str]]:
    return [(m["from"], m.get("text", "")) for m in body["messages"]]


def _error(response: httpx.Response) -> JsonDict:
    assert response.headers["content-type"] == "application/json"
    body: JsonDict = response.json()
    assert body["ok"] is False and body["description"]
    assert "Traceback" not in response.text
    return body


@pytest.mark.timeout(10)
def test_webchat_page_works_offline_and_sets_private_cookie(webchat: WebChat) -> None:
    page = httpx.get(webchat.url, timeout=5)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'type="file"' in html and 'accept="image/*"' in html
    assert 'aria-live="polite"' in html and '<label for="question"' in html
    assert 'type="submit"' in html
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!/)""", html), "an external resource"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    for asset in ("/static/app.js", "/static/style.css"):
        response = httpx.get(webchat.url.rstrip("/") + asset, timeout=5)
        assert response.status_code == 200 and response.content
        assert "http://" not in response.text.replace("`http://${covered}`", "")
        assert "https://" not in response.text
    shipped = {item.name for item in resources.files("bot").joinpath("static").iterdir()}
    assert {"index.html", "app.js", "style.css"} <= shipped


@pytest.mark.timeout(15)
def test_webchat_text_and_command_reach_the_bot_and_replies_come_back(
    new_visitor: Callable[..., Visitor], reply_bot: Any
) -> None:
    person = new_visitor("de-DE,de;q=0.9,en;q=0.5")

    sent = person.text("  What is this rash?  ")
    person.wait_for_text("Question received")
    assert person.text("/start").status_code == 200
    welcome = person.wait_for_text("Welcome")

    assert sent.status_code == 200
    assert sent.json()["message"] == {
        "id": 1,
        "from": "user",
        "text": "What is this rash?",
        "entities": [],
    }
    assert _texts(person.poll())[:3] == [
        ("user", "What is this rash?"),
        ("bot", "Question received: What is this rash?"),
        ("user", "/start"),
    ]
    assert welcome["text"] == "Welcome to the clinic chat. Do you agree?"
    assert welcome["entities"] == [
        {"type": "bold", "offset": 0, "length": 7},
        {"type": "italic", "offset": 15, "length": 6},
    ]
    assert welcome["buttons"] == [
        [{"text": "Yes", "data": "consent:yes"}, {"text": "No", "data": "consent:no"}]
    ]
    first = reply_bot.updates[0].effective_user
    assert first.language_code == "de-de"
    assert reply_bot.updates[1].effective_message.text == "/start"


@pytest.mark.timeout(20)
def test_webchat_photo_upload_arrives_as_photo_with_edits_and_deletions_shown(
    webchat: WebChat, reply_bot: Any, visitor: Visitor
) -> None:
    response = visitor.upload(PHOTO.read_bytes(), "psoriasis_01.jpg", "image/jpeg", "Itchy?")
    result = visitor.wait_for_text("Photo received")

    assert response.status_code == 200
    sent = response.json()["message"]
    assert sent["from"] == "user" and sent["text"] == "Itchy?"
    update = reply_bot.updates[0]
    assert update.message.caption == "Itchy?"
    assert (update.message.photo[-1].width, update.message.photo[-1].height) == (1280, 960)
    # The status message was edited in place and the "Working on it" message deleted.
    body = visitor.poll()
    assert _texts(body) == [
        ("user", "Itchy?"),
        ("bot", "Photo received: 1280×960. Question: Itchy?"),
    ]
    assert result["id"] == 2 and result["edited"] is True
    assert result["reply_to"] == {"id": 1, "kind": "photo", "text": "Itchy?"}
    assert result["buttons"] == [[{"text": "Analyse anyway", "data": "analyse:1"}]]
    thumbnail = visitor.client.get(sent["photo"])
    assert thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as picture:
        assert max(picture.size) == 480


@pytest.mark.timeout(15)
def test_webchat_other_files_arrive_as_documents(
    webchat: WebChat, reply_bot: Any, visitor: Visitor
) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 10
    response = visitor.upload(pdf, "referral letter.pdf", "application/pdf")
    reply = visitor.wait_for_text("File received")

    assert response.status_code == 200
    assert response.json()["message"]["document"] == {
        "name": "referral letter.pdf",
        "size": len(pdf),
    }
    assert (
        reply["text"] == f"File received: referral letter.pdf, application/pdf, {len(pdf)} bytes"
    )
    assert reply_bot.updates[0].message.document is not None
    assert reply_bot.updates[0].message.photo == ()


@pytest.mark.timeout(15)
def test_webchat_button_press_sends_a_callback_query(
    webchat: WebChat, reply_bot: Any, visitor: Visitor
) -> None:
    visitor.text("/start")
    welcome = visitor.wait_for_text("Welcome")

    pressed = visitor.press(welcome["id"], "consent:yes")
    visitor.wait_for_text("You chose consent:yes")
    visitor.wait_for(lambda b: not any("buttons" in m for m in b["messages"]))
    visitor.wait_for(lambda b: bool(visitor.notices))
    visitor.poll()
    again = visitor.press(welcome["id"], "consent:yes")
    forged = visitor.press(welcome["id"], "admin:1")

    assert pressed.status_code == 200
    query = next(u.callback_query for u in reply_bot.updates if u.callback_query)
    user_id = reply_bot.updates[0].effective_user.id
    assert query.data == "consent:yes"
    assert query.id and query.chat_instance
    assert query.from_user.id == user_id and query.from_user.language_code == "en-us"
    assert query.message.message_id == welcome["id"]
    assert query.message.chat.id == user_id
    # The bot's answer to the press shows once, like Telegram's toast; the keyboard is gone.
    assert visitor.notices == [{"text": "Chosen: consent:yes", "alert": False}]
    assert again.status_code == 409 and _error(again)["error"] == "stale_button"
    assert forged.status_code == 409
    assert len([u for u in reply_bot.updates if u.callback_query]) == 1


@pytest.mark.timeout(15)
def test_webchat_arabic_browser_gets_arabic_replies(
    new_visitor: Callable[..., Visitor], reply_bot: Any
) -> None:
    person = new_visitor("ar-EG,ar;q=0.9,en;q=0.3")

    person.text("هل هذا معدٍ؟")
    reply = person.wait_for_text("وصل سؤالك")

    assert reply["text"] == "وصل سؤالك: هل هذا معدٍ؟"
    assert reply_bot.updates[0].effective_user.language_code == "ar-eg"


@pytest.mark.timeout(15)
def test_webchat_sessions_are_isolated(
    new_visitor: Callable[..., Visitor], reply_bot: Any
) -> None:
    alice, bob = new_visitor(), new_visitor()

    photo = alice.upload(PHOTO.read_bytes(), "a.jpg", "image/jpeg").json()["message"]
    alice.text("alpha")
    bob.text("beta")
    alice.wait_for_text("Question received: alpha")
    bob.wait_for_text("Question received: beta")

    alice_texts = [text for _, text in _texts(alice.poll())]
    bob_texts = [text for _, text in _texts(bob.poll())]
    assert "Question received: alpha" in alice_texts and "alpha" in alice_texts
    assert not any("alpha" in text for text in bob_texts)
    assert not any("beta" in text for text in alice_texts)
    assert bob.client.get(photo["photo"]).status_code == 404
    assert alice.client.get(photo["photo"]).status_code == 200
    assert len({u.effective_user.id for u in reply_bot.updates}) == 2
    assert len({u.effective_chat.id for u in reply_bot.updates}) == 2


@pytest.mark.timeout(10)
def test_webchat_without_session_cookie_is_refused(webchat: WebChat) -> None:
    with (
        httpx.Client(base_url=webchat.url, timeout=5) as stranger,
        httpx.Client(base_url=webchat.url, cookies={"skingpt_webchat": "x"}, timeout=5) as forged,
    ):
        responses = [
            stranger.get("/api/messages"),
            stranger.post("/api/text", json={"text": "hello"}, headers=POST),
            forged.get("/api/messages"),
            forged.post("/api/text", json={"text": "hello"}, headers=POST),
        ]

    assert [r.status_code for r in responses] == [401, 401, 401, 401]
    assert {_error(r)["error"] for r in responses} == {"no_session"}


@pytest.mark.timeout(10)
def test_webchat_refuses_other_host_names(webchat: WebChat, visitor: Visitor) -> None:
    port = webchat.port

    rebound = visitor.client.get("/", headers={"Host": f"attacker.example:{port}"})
    rebound_api = visitor.client.get("/api/messages", headers={"Host": f"attacker.example:{port}"})
    wrong_port = visitor.client.get("/", headers={"Host": f"127.0.0.1:{port + 1}"})
    localhost = visitor.client.get("/api/messages", headers={"Host": f"localhost:{port}"})

    for response in (rebound, rebound_api, wrong_port):
        assert response.status_code == 403
        assert _error(response)["error"] == "bad_host"
    assert "set-cookie" not in rebound.headers
    assert localhost.status_code == 200


@pytest.mark.timeout(10)
def test_webchat_posts_need_the_custom_header_and_same_origin(
    webchat: WebChat, chat_api: BotAPIStandIn, visitor: Visitor
) -> None:
    plain_form = visitor.client.post("/api/text", data={"text": "from another site"})
    cross_site = visitor.client.post(
        "/api/text",
        json={"text": "from another site"},
        headers={**POST, "Origin": "http://attacker.example"},
    )
    same_site = visitor.client.post(
        "/api/text", json={"text": "mine"}, headers={**POST, "Origin": webchat.url.rstrip("/")}
    )

    assert plain_form.status_code == 403 and _error(plain_form)["error"] == "missing_header"
    assert cross_site.status_code == 403 and _error(cross_site)["error"] == "bad_origin"
    assert same_site.status_code == 200
    assert _texts(visitor.poll()) == [("user", "mine")]


@pytest.mark.timeout(20)
def test_webchat_upload_size_is_capped_at_20_mb(
    webchat: WebChat, reply_bot: Any, visitor: Visitor
) -> None:
    too_big = visitor.upload(bytes(MAX_UPLOAD_BYTES + 1), "scan.bin", "application/octet-stream")
    after = visitor.text("still here")
    at_limit = visitor.upload(bytes(MAX_UPLOAD_BYTES), "scan.bin", "application/octet-stream")
    visitor.wait_for_text("File received")

    assert too_big.status_code == 413
    error = _error(too_big)
    assert error["error"] == "too_large" and "20 MB" in error["description"]
    assert after.status_code == 200, "the connection stays usable after a refused upload"
    assert at_limit.status_code == 200
    mine = [m for m in visitor.poll()["messages"] if m["from"] == "user"]
    assert [(m.get("text"), m.get("document", {}).get("size")) for m in mine] == [
        ("still here", None),
        (None, MAX_UPLOAD_BYTES),
    ]


@pytest.mark.timeout(10)
def test_webchat_bad_requests_get_json_errors(webchat: WebChat, visitor: Visitor) -> None:
    cases = {
        "unknown path": visitor.client.get("/etc/passwd"),
        "unknown api": visitor.client.post("/api/nothing", json={}, headers=POST),
        "wrong method": visitor.client.put("/api/text", json={"text": "x"}, headers=POST),
        "not json": visitor.client.post(
            "/api/text", content=b"{", headers={**POST, "Content-Type": "application/json"}
        ),
        "empty text": visitor.text("   "),
        "too long": visitor.text("😀" * 2049),
        "no file": visitor.client.post("/api/upload", data={"caption": "x"}, headers=POST),
        "bad button": visitor.client.post("/api/button", json={"data": 1}, headers=POST),
        "unknown photo": visitor.client.get("/api/photo/99"),
    }

    statuses = {name: response.status_code for name, response in cases.items()}
    assert statuses == {
        "unknown path": 404,
        "unknown api": 404,
        "wrong method": 405,
        "not json": 400,
        "empty text": 400,
        "too long": 400,
        "no file": 400,
        "bad button": 400,
        "unknown photo": 404,
    }
    for response in cases.values():
        _error(response)
    assert visitor.poll()["messages"] == []


def _raw_exchange(port: int, request: bytes) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.decode().rpartition("\r\n\r\n")
    return head, body


@pytest.mark.timeout(10)
def test_webchat_malformed_http_gets_json(webchat: WebChat) -> None:
    long_header = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n"

    head, body = _raw_exchange(webchat.port, long_header)
    _, garbage = _raw_exchange(webchat.port, b"GARBAGE\r\n\r\n")

    assert head.startswith("HTTP/1.1 431")
    assert "Content-Type: application/json" in head
    assert '"ok": false' in body
    assert '"ok": false' in garbage and "Traceback" not in garbage


@pytest.mark.timeout(15)
def test_webchat_logs_no_message_text_or_user_ids(
    webchat: WebChat, reply_bot: Any, visitor: Visitor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.webchat")
    secret = "zebra-unicorn-question"

    visitor.upload(PHOTO.read_bytes(), "p.jpg", "image/jpeg", caption=secret)
    visitor.text(secret)
    visitor.wait_for_text(f"Question received: {secret}")
    visitor.client.get("/", headers={"Host": "attacker.example"})

    user_id = str(reply_bot.updates[0].effective_user.id)
    records = [r for r in caplog.records if r.name.startswith("bot.webchat")]
    assert records, "the web chat logs its requests at debug level"
    for record in records:
        line = record.getMessage()
        assert secret not in line and user_id not in line and "attacker" not in line


@pytest.mark.timeout(10)
def test_webchat_stop_closes_the_port_and_url_names_it(chat_api: BotAPIStandIn) -> None:
    chat = WebChat(chat_api, port=0)
    with pytest.raises(RuntimeError, match="start"):
        _ = chat.url
    chat.start()
    url, port = chat.url, chat.port
    with httpx.Client(timeout=5) as keep_alive:
        assert keep_alive.get(url).status_code == 200
        chat.stop()
        chat.stop()
        with pytest.raises(httpx.TransportError):
            keep_alive.get(url)

    assert url == f"http://127.0.0.1:{port}/"
    with pytest.raises(RuntimeError, match="already"):
        chat.start()
