"""What an attacker, a stranger or a leaked log would meet: real bot and worker processes.

The first bot serves a webhook (Telegram's way of pushing updates) behind a secret and an
allow-list; the tests post updates to it as Telegram would, with and without the secret. The
second bot and worker talk to a private Redis that wants a password and TLS, as a managed Redis
does.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot import texts
from bot.handlers import NOT_ALLOWED
from bot.webhook import MAX_BODY_BYTES, SECRET_HEADER
from skingpt.i18n import gettext_for
from skingpt.replies import DISCLAIMER
from tests.e2e.support import (
    DATA,
    TOKEN,
    Launcher,
    Services,
    agree,
    containing,
    spawn,
    stop,
    wait_for,
)
from tests.reliability.tally import Tally
from worker.app import redis_ssl_options

pytestmark = pytest.mark.e2e

REPLY_TIMEOUT = 90.0
SCRIPT = DATA / "scripted" / "samples.toml"
# Distinctive ids, so that finding one in a log cannot be a coincidence.
ALICE, BRUNO, CARMEN, STRANGER = 730_491_151, 730_491_262, 730_491_373, 730_491_484
SECRET = secrets.token_urlsafe(48)
PATH = "/telegram-updates"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _photo(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _is_reply(message: dict[str, Any]) -> bool:
    return DISCLAIMER in (message.get("text") or "")


@dataclass
class Hook:
    """Telegram's side of a webhook: posts updates to the bot, remembering what users wrote."""

    services: Services
    url: str
    health_url: str
    http: httpx.Client
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(5_000))
    written: list[str] = field(default_factory=list)
    file_ids: list[str] = field(default_factory=list)

    def post(self, body: bytes, headers: dict[str, Any]) -> int:
        return self.http.post(self.url, content=body, headers=headers).status_code

    def deliver(self, update: dict[str, Any], *, update_id: int | None = None) -> int:
        """Post ``update`` with the right secret, as Telegram does; returns its update id."""
        update_id = next(self.ids) if update_id is None else update_id
        body = json.dumps({"update_id": update_id, **update}).encode()
        status = self.post(body, {SECRET_HEADER: SECRET, "Content-Type": "application/json"})
        assert status == 200, status
        return update_id

    def text(self, user: int, text: str, *, language: str = "en") -> int:
        self.written.append(text)
        message = self.services.api.send_text(user, text, language_code=language)
        return self.deliver({"message": message})

    def photo(self, user: int, name: str, caption: str | None = None, **extra: Any) -> None:
        if caption is not None:
            self.written.append(caption)
        message = self.services.api.send_photo(user, _photo(name), caption=caption, **extra)
        self.file_ids += [size["file_id"] for size in message["photo"]]
        self.file_ids += [size["file_unique_id"] for size in message["photo"]]
        self.deliver({"message": message})

    def tap(self, user: int, message: dict[str, Any], data: str, *, language: str = "en") -> str:
        """Press the inline button with callback ``data`` under ``message``, as ``user``;
        returns the callback query's id."""
        query_id = f"hook-{next(self.ids)}"
        query = {
            "callback_query": {
                "id": query_id,
                "chat_instance": "c1",
                "data": data,
                "from": {
                    "id": user,
                    "is_bot": False,
                    "first_name": "A",
                    "language_code": language,
                },
                "message": message,
            }
        }
        self.services.api.send_update(query)  # makes the query id answerable
        self.deliver(query)
        return query_id

    def agree(self, user: int) -> None:
        api = self.services.api
        seen = len(api.messages(user))
        self.text(user, "/start")
        consent = wait_for(api, user, lambda m: bool(m.get("reply_markup")), after=seen)
        self.tap(user, consent, "consent")
        wait_for(api, user, lambda m: m["message_id"] > consent["message_id"], after=seen)

    def reply(self, user: int, *, after: int) -> str:
        found = wait_for(self.services.api, user, _is_reply, after=after, timeout=REPLY_TIMEOUT)
        return str(found["text"])


@pytest.fixture(scope="module")
def hook(start_services: Callable[..., Services]) -> Iterator[Hook]:
    port = _free_port()
    services = start_services(
        ["--allow-scripted-model"],
        model="scripted",
        script=str(SCRIPT),
        allow_scripted_model="true",
        encryption_key=Fernet.generate_key().decode(),
        webhook_url=f"https://127.0.0.1:{port}{PATH}",
        webhook_secret=SECRET,
        webhook_port=str(port),
        allowed_users=f"{ALICE},{BRUNO}, {CARMEN}",
    )
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        hook = Hook(
            services, f"http://127.0.0.1:{port}{PATH}", f"http://127.0.0.1:{port}/healthz", http
        )
        deadline = time.monotonic() + 60
        while not services.api.calls("setWebhook"):
            services.assert_alive()
            assert time.monotonic() < deadline, "the bot never registered its webhook"
            time.sleep(0.1)
        yield hook


def test_the_webhook_is_registered_with_its_secret_and_answers_health_checks(hook: Hook) -> None:
    ((_, registered),) = hook.services.api.calls("setWebhook")
    assert registered["url"].endswith(PATH)
    assert registered["secret_token"] == SECRET
    assert "callback_query" in registered["allowed_updates"]
    assert hook.http.get(hook.health_url).status_code == 200


def test_updates_without_the_right_secret_are_refused_and_never_handled(
    hook: Hook, tally: Tally
) -> None:
    api, user = hook.services.api, ALICE
    message = api.send_text(user, "/about")
    body = json.dumps({"update_id": next(hook.ids), "message": message}).encode()
    json_type = {"Content-Type": "application/json"}
    refused: dict[str, dict[str, str | bytes]] = {
        "no secret header": {},
        "a wrong secret of the right length": {SECRET_HEADER: secrets.token_urlsafe(48)},
        "the secret less its last character": {SECRET_HEADER: SECRET[:-1]},
        "the secret with one character more": {SECRET_HEADER: SECRET + "x"},
        "an empty secret": {SECRET_HEADER: ""},
        "a secret with non-ASCII bytes": {SECRET_HEADER: SECRET[:-1].encode() + b"\xc3\xa9"},
    }
    for name, headers in refused.items():
        with tally.bad_input(f"webhook request with {name}"):
            assert hook.post(body, {**json_type, **headers}) == 403
    right = {**json_type, SECRET_HEADER: SECRET}
    with tally.bad_input("webhook body over the size limit"):
        assert hook.post(b" " * (MAX_BODY_BYTES + 1), right) == 413
    with tally.bad_input("webhook body that is not an update"):
        assert hook.post(b'{"update_id": "x", "message": 3', right) == 400
        assert hook.post(b"[1, 2]", right) == 400

    # Updates of one person are handled in order, so a refused one would be answered first.
    hook.text(user, "/help")
    wait_for(api, user, lambda m: True, timeout=REPLY_TIMEOUT)
    time.sleep(0.5)
    assert len(api.messages(user)) == 1
    hook.services.assert_alive()


def test_an_update_telegram_posts_again_is_answered_once(hook: Hook, tally: Tally) -> None:
    api, user = hook.services.api, BRUNO
    hook.written.append("/help")
    message = api.send_text(user, "/help")
    update_id = next(hook.ids)
    with tally.fault("Telegram posts the same update three times, two of them at once"):
        hook.deliver({"message": message}, update_id=update_id)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            statuses = list(
                pool.map(
                    lambda _: hook.deliver({"message": message}, update_id=update_id), range(2)
                )
            )
        assert statuses == [update_id, update_id]
        hook.text(user, "/new")
        wait_for(api, user, lambda m: "case" in (m.get("text") or ""), timeout=REPLY_TIMEOUT)
        helps = [m for m in api.messages(user) if (m.get("text") or "") == texts.HELP]
        tally.messages(
            expected=1,
            delivered=min(len(helps), 1),
            lost=1 - min(len(helps), 1),
            duplicated=max(len(helps) - 1, 0),
        )
        assert len(helps) == 1


def test_someone_not_on_the_allow_list_is_refused_and_nothing_of_theirs_is_kept(
    hook: Hook, tally: Tally
) -> None:
    services, api = hook.services, hook.services.api
    kept = _personal_keys(services)
    queued = services.redis.llen(services.env["SKINGPT_QUEUE"])
    files_before = len(hook.file_ids)
    with tally.bad_input("messages, a photo and a button from someone not allowed"):
        hook.text(STRANGER, "/start", language="es")
        hook.photo(STRANGER, "psoriasis_01.jpg", caption="Stranger's caption", language_code="es")
        hook.text(STRANGER, "Stranger's question", language="es")
        button = api.send_text(STRANGER, "/x", language_code="es")
        answered = _answer_to(api, hook.tap(STRANGER, button, "consent", language="es"))
        refusals = api.wait_for_messages(STRANGER, 3, timeout=REPLY_TIMEOUT)
        spanish = gettext_for("es")(NOT_ALLOWED)
        assert spanish != NOT_ALLOWED
        assert [m["text"] for m in refusals] == [spanish] * 3
        assert answered["text"] == spanish
        assert _personal_keys(services) == kept
        assert services.redis.llen(services.env["SKINGPT_QUEUE"]) == queued
        theirs = hook.file_ids[files_before:]
        assert theirs and not [p for _, p in api.calls("getFile") if p["file_id"] in theirs]
        assert services.jobs(STRANGER) == []


def test_a_queued_task_carries_only_the_job_id_and_the_job_no_secret(hook: Hook) -> None:
    services, api, user = hook.services, hook.services.api, CARMEN
    hook.agree(user)
    seen = len(api.messages(user))
    hook.photo(user, "eczema_02.jpg", caption="Carmen's rash question")
    message = _celery_message(services.redis, services.env["SKINGPT_QUEUE"])
    hook.reply(user, after=seen)
    body = json.loads(base64.b64decode(message["body"]))
    (job_id,) = body[0]
    assert body[1] == {} and message["headers"]["id"] == job_id
    job = services.redis.hgetall(f"{services.prefix}:job:{job_id}")
    assert int(job[b"chat_id"]) == user
    raw = json.dumps(message) + json.dumps(body)
    for private in ("Carmen's rash", str(user), TOKEN.split(":")[1], SECRET, *hook.file_ids):
        assert private not in raw
    stored = repr(job)
    for secret in (TOKEN.split(":")[1], SECRET, *hook.file_ids):
        assert secret not in stored


def test_logs_of_a_whole_conversation_hold_nothing_personal_or_secret(
    hook: Hook, tally: Tally
) -> None:
    services, api, user = hook.services, hook.services.api, ALICE
    hook.agree(user)
    seen = len(api.messages(user))
    hook.photo(user, "nevus_01.jpg", caption="Alice wonders whether this dark spot grew")
    hook.reply(user, after=seen)
    seen = len(api.messages(user))
    hook.text(user, "Alice asks: does it itch at night?")
    hook.reply(user, after=seen)
    seen = len(api.messages(user))
    hook.text(user, "/mode")
    choice = wait_for(api, user, lambda m: bool(m.get("reply_markup")), after=seen)
    hook.tap(user, choice, "mode:health_worker")
    wait_for(api, user, containing("Health worker mode"), after=seen)
    seen = len(api.messages(user))
    with tally.fault("Telegram answers 429 Too Many Requests to a reply"):
        api.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
        hook.text(user, "/referral")
        wait_for(api, user, containing("Referral summary"), after=seen, timeout=REPLY_TIMEOUT)
    seen = len(api.messages(user))
    hook.text(user, "/new")
    wait_for(api, user, lambda m: True, after=seen)
    seen = len(api.messages(user))
    for name in ("tinea_corporis_01.jpg", "acanthosis_nigricans_01.jpg"):
        hook.photo(user, name, media_group_id="alice-album")
    wait_for(api, user, containing("2 photos"), after=seen, timeout=REPLY_TIMEOUT)
    with tally.fault("Telegram refuses a reply's HTML with 400 Bad Request"):
        api.fail_next("sendMessage", 400, "Bad Request: can't parse entities: unsupported tag")
        hook.reply(user, after=seen)
    seen = len(api.messages(user))
    hook.text(user, "Alice's follow-up: should I keep it covered?")
    hook.reply(user, after=seen)
    seen = len(api.messages(user))
    hook.text(user, "/forget")
    wait_for(api, user, lambda m: True, after=seen)
    services.assert_alive()

    logs = services.log_text()
    assert "Webhook request refused" in logs  # the logs are those of this bot
    photos = [_photo(name) for name in ("nevus_01.jpg", "psoriasis_01.jpg", "eczema_02.jpg")]
    forbidden = {
        "the bot token": TOKEN,
        "the token's secret half": TOKEN.split(":")[1],
        "the webhook secret": SECRET,
        **{f"user id {n}": str(n) for n in (ALICE, BRUNO, CARMEN, STRANGER)},
        **{f"text {text!r}": text for text in hook.written},
        **{f"file id {file_id}": file_id for file_id in hook.file_ids},
        **{f"photo bytes at {i}": fragment for i, fragment in enumerate(_fragments(photos))},
    }
    found = [name for name, value in forbidden.items() if value in logs]
    tally.note(f"log scan: {len(forbidden)} secrets and personal strings, {len(found)} found")
    assert not found


def _personal_keys(services: Services) -> set[bytes]:
    """Every key of this bot except the shared flood-control schedule and seen update ids."""
    keys = services.redis.scan_iter(match=f"{services.prefix}:*", count=500)
    return {k for k in keys if b":ratelimit:" not in k and b":webhook-update:" not in k}


def _answer_to(api: Any, query_id: str) -> dict[str, Any]:
    """How the bot answered the button press ``query_id``."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        for _, params in api.calls("answerCallbackQuery"):
            if params.get("callback_query_id") == query_id:
                return dict(params)
        assert time.monotonic() < deadline, f"the button press {query_id} was never answered"
        time.sleep(0.05)


def _celery_message(client: redis.Redis, queue: str) -> dict[str, Any]:
    """The raw message Celery keeps in Redis for the next job of ``queue``, waiting or running."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < deadline:
        for raw in client.lrange(queue, 0, -1):
            return dict(json.loads(raw))
        for raw in client.hvals("unacked"):
            message, _exchange, routing_key = json.loads(raw)
            if routing_key == queue:
                return dict(message)
        time.sleep(0.01)
    raise AssertionError("the job never showed up in Celery's queue")


def _fragments(photos: list[bytes]) -> Iterator[str]:
    """Base64 pieces of each photo, at every alignment a log could have cut it."""
    for data in photos:
        for start in (200, 1201, 5002):
            yield base64.b64encode(data[start : start + 24]).decode()


# --- Redis with a password and TLS -----------------------------------------------------------


@dataclass
class PrivateRedis:
    url: str
    password: str
    port: int
    ca: Path


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway certificate authority and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skingpt test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A redis-server of this module only, reachable only over TLS and only with a password."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed"
    folder = tmp_path_factory.mktemp("tls-redis")
    ca, cert, key = _certificates(folder)
    password, port = secrets.token_urlsafe(24), _free_port()
    process = subprocess.Popen(
        [
            server,
            *("--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
            *("--requirepass", password, "--save", "", "--appendonly", "no"),
            *("--dir", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert process.poll() is None, "redis-server with TLS did not start"
            assert time.monotonic() < deadline, "redis-server with TLS does not answer"
            time.sleep(0.05)
    client.close()
    yield PrivateRedis(url, password, port, ca)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_launcher(
    private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    launcher = Launcher(private_redis.url, lambda: tmp_path_factory.mktemp("tls-logs"))
    yield launcher
    launcher.close()


def test_a_photo_is_answered_over_redis_with_a_password_and_tls(
    tls_launcher: Launcher, private_redis: PrivateRedis
) -> None:
    services = tls_launcher.start(
        ["--allow-scripted-model"],
        model="scripted",
        script=str(SCRIPT),
        allow_scripted_model="true",
    )
    api, user = services.api, 4_242
    agree(api, user)
    api.send_photo(user, _photo("psoriasis_01.jpg"), caption="Over TLS?")
    text = wait_for(api, user, _is_reply, timeout=REPLY_TIMEOUT)["text"]
    assert text.startswith("⚠️ TEST MODEL")
    assert len(services.jobs(user)) == 1
    # The jobs above were read from the private Redis; Celery's queue was there too.
    logs = services.log_text()
    assert f"Connected to rediss://:**@127.0.0.1:{private_redis.port}/0" in logs
    assert private_redis.password not in logs
    services.assert_alive()


def test_a_wrong_redis_password_stops_bot_and_worker_with_one_clear_message(
    private_redis: PrivateRedis, tally: Tally, tmp_path: Path
) -> None:
    wrong = private_redis.url.replace(private_redis.password, "not-the-password")
    missing = private_redis.url.replace(f":{private_redis.password}@", "")
    runs = {
        "bot, wrong Redis password": (["bot", "--allow-test-model"], wrong),
        "worker, wrong Redis password": (["worker"], wrong),
        "bot, no Redis password": (["bot", "--allow-test-model"], missing),
    }
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name, (args, url) in runs.items():
        env = {
            **_environ(),
            "SKINGPT_REDIS_URL": url,
            "SKINGPT_TELEGRAM_TOKEN": TOKEN,
            "SKINGPT_TORCH_THREADS": "1",
        }
        started[name] = spawn(args, env, tmp_path / f"{len(started)}.log")
    for n, (name, process) in enumerate(started.items()):
        with tally.bad_input(name):
            try:
                process.wait(timeout=60)
            finally:
                stop(process)
            output = (tmp_path / f"{n}.log").read_text()
            assert process.returncode == 2, output
            assert "SKINGPT_REDIS_URL" in output and "password" in output
            assert "Traceback" not in output
            assert private_redis.password not in output and "not-the-password" not in output
            assert len([line for line in output.splitlines() if "Redis" in line]) == 1, output


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SKINGPT_")}


def test_celery_verifies_the_redis_certificate_unless_the_url_says_otherwise() -> None:
    plain = redis_ssl_options("rediss://:pw@redis.internal:6380/0")
    assert plain == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    named = redis_ssl_options("rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none")
    assert named == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}
    unknown = redis_ssl_options("rediss://h:6380/0?ssl_cert_reqs=maybe")
    assert unknown["ssl_cert_reqs"] == ssl.CERT_REQUIRED
