"""Bad inputs, sent as Telegram delivers them, each get a clear reply in the sender's language.

One bot and one worker (the scripted model) serve the whole module. Every input goes out from a
user of its own, all at once, so that the waits overlap; each row of the tables below is then
checked as a test of its own. The scripted model tells the sample photos apart by a perceptual
fingerprint, so an answer about psoriasis proves the bot analysed the psoriasis picture, upright,
and, for an animation, its first frame rather than the melanoma on the second. At the end, a good
photo must still be answered, both processes must be alive, every expected reply must have come
exactly once, and neither a chat nor a log may show a traceback.
"""

from __future__ import annotations

import functools
import io
import itertools
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bot import texts
from bot.handlers import DOWNLOAD_LIMIT_BYTES, MAX_QUESTION_CHARS
from skingpt import imaging, report
from skingpt.i18n import gettext_for
from skingpt.model.scripted import MAX_DISTANCE, fingerprint
from skingpt.replies import DISCLAIMER
from tests.e2e.support import DATA, TOKEN, Services, containing, tap, wait_for
from tests.reliability.tally import Tally

pytestmark = pytest.mark.e2e

SCRIPT = DATA / "scripted" / "samples.toml"
REPLY_TIMEOUT = 90.0
BOT_NAME = "skingpt_test_bot"
# The scripted model's answer about the psoriasis sample in each language (its script has no
# French text, so French gets the English one).
PSORIASIS = {
    "en": "plaque psoriasis",
    "es": "psoriasis en placas",
    "fr": "plaque psoriasis",
    "ar": "الصدفية اللويحية",
}
NAME = "Zainab"  # the senders' name: it may never appear in a log, nor may their ids
# Ids nobody else uses: none of them may ever appear in a log.
FIRST_USER = 470_100_000
UPLOADER = 470_099_999  # only puts files on the stand-in; never agrees to anything
_message_ids = itertools.count(50_000)


# --- what is sent ----------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@functools.cache
def _psoriasis() -> Image.Image:
    return Image.open(DATA / "psoriasis_01.jpg").convert("RGB")


@functools.cache
def _melanoma() -> Image.Image:
    return Image.open(DATA / "melanoma_01.jpg").convert("RGB").resize(_psoriasis().size)


def _animated(fmt: str) -> bytes:
    """Two frames: the psoriasis photo first, the melanoma photo second."""
    return _encode(_psoriasis(), fmt, save_all=True, append_images=[_melanoma()], duration=200)


def _with_alpha(mode: str) -> bytes:
    """Opaque except a transparent 40-pixel band at the top."""
    image = _psoriasis().convert(mode)
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, image.width, 40))
    image.putalpha(alpha)
    return _encode(image, "PNG")


def _sixteen_bit() -> bytes:
    grey = np.asarray(_psoriasis().convert("L"), dtype=np.uint16) * 257  # (height, width)
    return _encode(Image.fromarray(grey), "PNG")


def _turned_with_exif() -> bytes:
    """The photo stored turned a quarter, with the EXIF orientation that turns it back."""
    turned = _psoriasis().transpose(Image.Transpose.ROTATE_90)
    distance = bin(fingerprint(turned) ^ fingerprint(_psoriasis())).count("1")
    assert distance > MAX_DISTANCE, "the turned photo must not pass for the upright one"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return _encode(turned, "JPEG", exif=exif)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge size, with no pixels behind it."""
    header = struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


def _gif_claiming(width: int, height: int) -> bytes:
    gif = bytearray(_encode(Image.new("P", (64, 64)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)  # the logical screen size
    return bytes(gif)


def _corrupt_png() -> bytes:
    data = bytearray(_encode(_psoriasis(), "PNG"))
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the compressed pixels: a bad checksum
    return bytes(data)


def _blurred() -> bytes:
    sharp = _psoriasis()
    return _encode(sharp.filter(ImageFilter.GaussianBlur(max(sharp.size) / 200)), "JPEG")


@dataclass(frozen=True)
class Upload:
    """An image or other file sent as a document, and what the sender must be told."""

    name: str
    build: Callable[[], bytes]
    file_name: str | None
    mime_type: str | None
    language: str = "en"
    # The exact reply for a refused file (a catalog text and its values); None: it is analysed.
    refusal: str | None = None
    values: dict[str, object] = field(default_factory=dict)

    def expected(self) -> str | None:
        if self.refusal is None:
            return None
        return gettext_for(self.language)(self.refusal).format(**self.values)


UPLOADS = [
    Upload(
        "JPEG named IMG_0001.JPG",
        lambda: _encode(_psoriasis(), "JPEG"),
        "IMG_0001.JPG",
        "image/jpeg",
    ),
    Upload(
        "PNG named photo.jpg, claiming image/jpeg",
        lambda: _encode(_psoriasis(), "PNG"),
        "photo.jpg",
        "image/jpeg",
        "es",
    ),
    Upload(
        "WEBP with no file name and no MIME type",
        lambda: _encode(_psoriasis(), "WEBP"),
        None,
        None,
        "fr",
    ),
    Upload(
        "HEIC from an iPhone",
        lambda: _encode(_psoriasis(), "HEIF"),
        "IMG_2024.HEIC",
        "image/heic",
        "ar",
    ),
    Upload("AVIF", lambda: _encode(_psoriasis(), "AVIF"), "skin.avif", "image/avif", "ar"),
    Upload(
        "BMP named scan.pdf, claiming application/pdf",
        lambda: _encode(_psoriasis(), "BMP"),
        "scan.pdf",
        "application/pdf",
    ),
    Upload("TIFF", lambda: _encode(_psoriasis(), "TIFF"), "skin.tiff", "image/tiff", "es"),
    Upload(
        "animated GIF (first frame analysed)", lambda: _animated("GIF"), "rash.gif", "image/gif"
    ),
    Upload(
        "animated WEBP (first frame analysed)",
        lambda: _animated("WEBP"),
        "rash.webp",
        "image/webp",
        "fr",
    ),
    Upload(
        "grayscale PNG", lambda: _encode(_psoriasis().convert("L"), "PNG"), "grey.png", "image/png"
    ),
    Upload(
        "palette PNG",
        lambda: _encode(_psoriasis().convert("P"), "PNG"),
        "palette.png",
        "image/png",
        "ar",
    ),
    Upload(
        "RGBA PNG with a transparent band", lambda: _with_alpha("RGB"), "alpha.png", "image/png"
    ),
    Upload(
        "LA PNG with a transparent band",
        lambda: _with_alpha("L"),
        "grey-alpha.png",
        "image/png",
        "es",
    ),
    Upload(
        "CMYK JPEG",
        lambda: _encode(_psoriasis().convert("CMYK"), "JPEG"),
        "print.jpg",
        "image/jpeg",
    ),
    Upload("16-bit grayscale PNG", _sixteen_bit, "sixteen.png", "image/png", "fr"),
    Upload("JPEG turned by its EXIF orientation", _turned_with_exif, "turned.jpg", "image/jpeg"),
    Upload(
        "JPEG with a broken EXIF block",
        lambda: _encode(_psoriasis(), "JPEG", exif=b"Exif\x00\x00garbage"),
        "broken-exif.jpg",
        "image/jpeg",
        "ar",
    ),
    Upload("zero-byte file", lambda: b"", "empty.jpg", "image/jpeg", "es", imaging._EMPTY),
    Upload(
        "JPEG cut off after a third",
        lambda: (jpeg := _encode(_psoriasis(), "JPEG"))[: len(jpeg) // 3],
        "cut.jpg",
        "image/jpeg",
        refusal=imaging._DAMAGED,
    ),
    Upload(
        "PNG with a corrupt byte", _corrupt_png, "corrupt.png", "image/png", "fr", imaging._DAMAGED
    ),
    Upload(
        "HEIC cut off",
        lambda: _encode(_psoriasis(), "HEIF")[:20_000],
        "cut.heic",
        "image/heic",
        "ar",
        imaging._DAMAGED,
    ),
    Upload(
        "AVIF with its second half zeroed",
        lambda: (avif := _encode(_psoriasis(), "AVIF"))[: len(avif) // 2] + bytes(len(avif) // 2),
        "damaged.avif",
        "image/avif",
        "es",
        imaging._DAMAGED,
    ),
    Upload(
        "PDF named rash.jpg",
        lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "rash.jpg",
        "image/jpeg",
        refusal=imaging._NOT_AN_IMAGE,
    ),
    Upload(
        "SVG drawing",
        lambda: b"<svg xmlns='http://www.w3.org/2000/svg' width='400' height='400'/>",
        "skin.svg",
        "image/svg+xml",
        "es",
        imaging._NOT_AN_IMAGE,
    ),
    Upload(
        "image 20 pixels wide",
        lambda: _encode(_psoriasis().resize((20, 400)), "PNG"),
        "strip.png",
        "image/png",
        refusal=imaging._TOO_SMALL,
        values={"width": 20, "height": 400, "minimum": imaging.MIN_SIDE},
    ),
]


def _message(user: int, language: str, chat: dict[str, Any] | None = None, **content: Any) -> dict:
    """A raw message from ``user`` (in their private chat unless ``chat`` is given)."""
    return {
        "message_id": next(_message_ids),
        "date": int(time.time()),
        "chat": chat or {"id": user, "type": "private", "first_name": NAME},
        "from": {"id": user, "is_bot": False, "first_name": NAME, "language_code": language},
        **content,
    }


def _file(file_id: str, **extra: Any) -> dict[str, Any]:
    return {"file_id": file_id, "file_unique_id": file_id[-8:], **extra}


@dataclass(frozen=True)
class Kind:
    """A kind of message, and the exact reply it must get (None: the photo's analysis)."""

    name: str
    content: Callable[[Services], dict[str, Any]]
    language: str
    reply: str | None
    update: str = "message"  # or "edited_message"
    group: bool = False  # sent in a group chat of its own instead of the private chat


def _uploaded(services: Services, data: bytes, file_name: str, mime_type: str) -> str:
    """Put a file on the stand-in, as another user's upload, and return its file id."""
    sent = services.api.send_document(UPLOADER, data, file_name=file_name, mime_type=mime_type)
    return str(sent["document"]["file_id"])


def _animation(services: Services) -> dict[str, Any]:
    """A GIF as Telegram delivers it: converted to MP4, both as animation and as document."""
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(2000)
    file_id = _uploaded(services, mp4, "rash.gif.mp4", "video/mp4")
    details = {"width": 320, "height": 240, "duration": 2, "mime_type": "video/mp4"}
    return {
        "animation": _file(file_id, **details),
        "document": _file(file_id, file_name="rash.gif.mp4", mime_type="video/mp4"),
    }


def _forwarded_photo(services: Services) -> dict[str, Any]:
    """Someone else's photo, forwarded: Telegram keeps its file ids."""
    sent = services.api.send_photo(UPLOADER, _encode(_psoriasis(), "JPEG"))
    return {"photo": sent["photo"], "forward_origin": _FORWARD_ORIGIN}


def _media(kind: str, **details: Any) -> Callable[[Services], dict[str, Any]]:
    return lambda services: {kind: _file(f"F-{kind}-0000000001", **details)}


def _static(content: dict[str, Any]) -> Callable[[Services], dict[str, Any]]:
    return lambda services: content


_UNSUPPORTED = texts.UNSUPPORTED
_NOT_AN_IMAGE = imaging._NOT_AN_IMAGE
_STICKER = {
    "width": 512,
    "height": 512,
    "is_animated": False,
    "is_video": False,
    "type": "regular",
}
_POLL = {
    "id": "5000",
    "question": "Which cream works best?",
    "options": [
        {"text": "A", "voter_count": 0, "persistent_id": "a"},
        {"text": "B", "voter_count": 0, "persistent_id": "b"},
    ],
    "total_voter_count": 0,
    "is_closed": False,
    "is_anonymous": True,
    "type": "regular",
    "allows_multiple_answers": False,
    "allows_revoting": False,
    "members_only": False,
}

_FORWARD_ORIGIN = {
    "type": "user",
    "date": 1_700_000_000,
    "sender_user": {"id": UPLOADER, "is_bot": False, "first_name": "Sister"},
}


def _command(text: str) -> Callable[[Services], dict[str, Any]]:
    command = text.split()[0]
    entity = {"type": "bot_command", "offset": 0, "length": len(command)}
    return _static({"text": text, "entities": [entity]})


KINDS = [
    Kind("animation (a GIF Telegram turned into MP4)", _animation, "en", _NOT_AN_IMAGE),
    Kind("sticker", _media("sticker", **_STICKER), "es", _UNSUPPORTED),
    Kind("video", _media("video", width=640, height=480, duration=3), "fr", _UNSUPPORTED),
    Kind("video note", _media("video_note", length=240, duration=3), "ar", _UNSUPPORTED),
    Kind("voice message", _media("voice", duration=4), "en", _UNSUPPORTED),
    Kind("audio file", _media("audio", duration=120), "es", _UNSUPPORTED),
    Kind(
        "location",
        _static({"location": {"latitude": 9.03, "longitude": 38.74}}),
        "fr",
        _UNSUPPORTED,
    ),
    Kind(
        "contact",
        _static({"contact": {"phone_number": "+100000", "first_name": "Nurse"}}),
        "ar",
        _UNSUPPORTED,
    ),
    Kind("poll", _static({"poll": _POLL}), "en", _UNSUPPORTED),
    Kind("dice", _static({"dice": {"emoji": "🎲", "value": 4}}), "es", _UNSUPPORTED),
    Kind(
        "text before any photo",
        _static({"text": "What is this rash on my arm?"}),
        "fr",
        texts.SEND_PHOTO_FIRST,
    ),
    Kind("unknown command", _command("/diagnose"), "ar", _UNSUPPORTED),
    Kind(f"/help@{BOT_NAME}", _command(f"/help@{BOT_NAME}"), "fr", texts.HELP),
    Kind(
        f"/start@{BOT_NAME} in a group",
        _command(f"/start@{BOT_NAME}"),
        "es",
        texts.START,
        group=True,
    ),
    Kind(
        "edited message",
        _static({"text": "It is bigger now", "edit_date": 1_700_000_100}),
        "es",
        texts.EDITED,
        update="edited_message",
    ),
    Kind(
        "forwarded text before any photo",
        _static({"text": "Look at this", "forward_origin": _FORWARD_ORIGIN}),
        "ar",
        texts.SEND_PHOTO_FIRST,
    ),
    Kind("forwarded photo", _forwarded_photo, "fr", None),
]


# --- sending and waiting ---------------------------------------------------------------------


@dataclass
class Sent:
    """A user's input: who sent it where, the bot messages there before it, and the message."""

    user: int
    language: str
    seen: int
    message: dict[str, Any]
    chat: int = 0

    def __post_init__(self) -> None:
        self.chat = self.chat or self.user


@dataclass
class Sweep:
    """Everything sent at the start of the module, by table row name."""

    uploads: dict[str, Sent] = field(default_factory=dict)
    kinds: dict[str, Sent] = field(default_factory=dict)
    # (chat, what a reply must satisfy) for every reply the module expects exactly once.
    expected: list[tuple[int, Callable[[dict[str, Any]], bool]]] = field(default_factory=list)


def _agree_all(services: Services, users: dict[int, str]) -> None:
    """/start and "I agree" for many users at once (one user at a time takes far longer)."""
    api = services.api
    for user, language in users.items():
        api.send_text(user, "/start", language_code=language)
    for user, language in users.items():
        consent = wait_for(api, user, lambda m: bool(m.get("reply_markup")), timeout=REPLY_TIMEOUT)
        tap(api, user, consent, "consent", language=language)
    for user, language in users.items():
        wait_for(api, user, containing(gettext_for(language)(texts.THANKS_FOR_CONSENT)))


def _exactly(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("text") == text


def _analysis(language: str) -> Callable[[dict[str, Any]], bool]:
    """The answer about the psoriasis sample, in ``language``."""
    disclaimer = gettext_for(language)(DISCLAIMER)
    marker = PSORIASIS[language]
    return lambda message: disclaimer in (message.get("text") or "") and marker in message["text"]


def _follow_up(language: str) -> Callable[[dict[str, Any]], bool]:
    """An answer to a follow-up question: the disclaimer without the analysis's headings."""
    _ = gettext_for(language)
    return lambda message: (
        _(DISCLAIMER) in (text := message.get("text") or "") and (_(report.SEES) not in text)
    )


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> Services:
    return start_services(
        ["--allow-scripted-model"],
        model="scripted",
        script=str(SCRIPT),
        allow_scripted_model="true",
        worker_args=("--concurrency", "2"),
        # The stand-in has no flood limits: the per-chat pause would only make consent slow.
        chat_messages_per_second="50",
        global_messages_per_second="500",
        group_messages_per_minute="600",
    )


@pytest.fixture(scope="module")
def sweep(services: Services, tally: Tally) -> Sweep:
    """Agree for every user of the tables, then send each row's input at once."""
    users = itertools.count(FIRST_USER)
    upload_users = {next(users): row.language for row in UPLOADS}
    kind_users = {next(users): row.language for row in KINDS}
    started = time.monotonic()
    _agree_all(services, {**upload_users, **kind_users})
    tally.note(
        f"bad inputs: {len(upload_users) + len(kind_users)} users agreed in "
        f"{time.monotonic() - started:.1f} s"
    )
    api = services.api
    swept = Sweep()
    for (user, language), row in zip(upload_users.items(), UPLOADS, strict=True):
        seen = len(api.messages(user))
        message = api.send_document(
            user,
            row.build(),
            file_name=row.file_name,
            mime_type=row.mime_type,
            language_code=language,
        )
        swept.uploads[row.name] = Sent(user, language, seen, message)
    for (user, language), kind in zip(kind_users.items(), KINDS, strict=True):
        content = kind.content(services)
        group = {"id": -user, "type": "group", "title": "Clinic team"} if kind.group else None
        seen = len(api.messages(-user if kind.group else user))
        raw = _message(user, language, group, **content)
        api.send_update({kind.update: raw})
        swept.kinds[kind.name] = Sent(user, language, seen, raw, raw["chat"]["id"])
    return swept


def _reply_to(services: Services, sent: Sent, predicate: Callable[[dict[str, Any]], bool]) -> dict:
    return wait_for(services.api, sent.chat, predicate, after=sent.seen, timeout=REPLY_TIMEOUT)


# --- the tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("row", UPLOADS, ids=[row.name for row in UPLOADS])
def test_file_is_analysed_or_refused_with_a_clear_reply(
    row: Upload, sweep: Sweep, services: Services, tally: Tally
) -> None:
    sent = sweep.uploads[row.name]
    with tally.bad_input(f"file: {row.name}"):
        expected = row.expected()
        predicate = _analysis(sent.language) if expected is None else _exactly(expected)
        sweep.expected.append((sent.user, predicate))
        reply = _reply_to(services, sent, predicate)
        if expected is None:
            assert reply["reply_to_message"]["message_id"] == sent.message["message_id"]
            # Analysed straight away: not held back by the photo quality check.
            held = texts.ANALYSE_ANYWAY
            assert not [m for m in services.api.messages(sent.user) if held in str(m)]
        services.assert_alive()


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_message_the_bot_cannot_analyse_gets_a_clear_reply(
    kind: Kind, sweep: Sweep, services: Services, tally: Tally
) -> None:
    sent = sweep.kinds[kind.name]
    with tally.bad_input(f"message: {kind.name}"):
        if kind.reply is None:
            predicate = _analysis(sent.language)
        else:
            predicate = _exactly(gettext_for(sent.language)(kind.reply))
        sweep.expected.append((sent.chat, predicate))
        _reply_to(services, sent, predicate)
        services.assert_alive()


# --- inputs that must get no reply -----------------------------------------------------------


def _channel(post_id: int, text: str) -> dict[str, Any]:
    channel = {"id": -1_004_701_000, "type": "channel", "title": "Clinic news"}
    return {
        "message_id": post_id,
        "date": int(time.time()),
        "chat": channel,
        "sender_chat": channel,
        "text": text,
    }


def test_channel_posts_service_messages_and_commands_for_other_bots_get_no_reply(
    services: Services, tally: Tally
) -> None:
    """Replying to these would speak to a whole channel or group, or for another bot; each is
    followed by a message of the same person that does get its reply, so none held it up."""
    api = services.api
    user, group = FIRST_USER + 900, -(FIRST_USER + 900)
    bot = {"id": int(TOKEN.split(":")[0]), "is_bot": True, "first_name": "SkinGPT"}
    chat = {"id": group, "type": "group", "title": "Village health team"}
    silent = {
        "channel post": {"channel_post": _channel(7, "Clinic opens at 9 tomorrow")},
        "edited channel post": {"edited_channel_post": _channel(7, "Clinic opens at 10")},
        "bot added to a group": {"message": _message(user, "fr", chat, new_chat_members=[bot])},
        "group photo changed": {"message": _message(user, "fr", chat, delete_chat_photo=True)},
        "/start@someone_elses_bot in a group": {
            "message": _message(user, "fr", chat, **_command("/start@someone_elses_bot")(services))
        },
        "/help@someone_elses_bot in a private chat": {
            "message": _message(user, "fr", **_command("/help@someone_elses_bot")(services))
        },
        # python-telegram-bot cannot read this poll; it must not stall the updates behind it.
        "update the Telegram library cannot read": {
            "message": _message(user, "fr", chat, poll={"id": "p1"})
        },
    }
    sentinel = gettext_for("fr")(texts.HELP)
    answered = []
    for name, update in silent.items():
        try:
            with tally.bad_input(name):
                where = group if "private" not in name else user
                seen = len(api.messages(where))
                api.send_update(update)
                help_command = _command(f"/help@{BOT_NAME}")(services)
                in_group = chat if where == group else None
                api.send_update({"message": _message(user, "fr", in_group, **help_command)})
                wait_for(api, where, _exactly(sentinel), after=seen, timeout=REPLY_TIMEOUT)
                time.sleep(0.3)
                new = [m.get("text") for m in api.messages(where)[seen:]]
                assert new == [sentinel], new
                assert api.messages(-1_004_701_000) == [], "the bot wrote in the channel"
        except AssertionError as failure:
            answered.append(f"{name}: {failure}")
    assert answered == []
    assert "Skipped update" in services.log_text()
    services.assert_alive()


# --- buttons and follow-ups ------------------------------------------------------------------


def _buttons(message: dict[str, Any]) -> list[str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return [button["callback_data"] for row in rows for button in row]


def test_buttons_from_a_forgotten_case_and_unknown_buttons_are_refused(
    services: Services, sweep: Sweep, tally: Tally
) -> None:
    api = services.api
    held, asked, unknown = FIRST_USER + 910, FIRST_USER + 911, FIRST_USER + 912
    _agree_all(services, {held: "es", asked: "ar"})
    api.send_document(
        held, _blurred(), file_name="blur.jpg", mime_type="image/jpeg", language_code="es"
    )
    api.send_photo(asked, _encode(_psoriasis(), "JPEG"), language_code="ar")
    es, ar = gettext_for("es"), gettext_for("ar")
    gate = wait_for(api, held, containing(es(texts.QUALITY_INTRO)), timeout=REPLY_TIMEOUT)
    wait_for(api, asked, _analysis("ar"), timeout=REPLY_TIMEOUT)
    sweep.expected.append((asked, _analysis("ar")))
    seen = len(api.messages(asked))
    api.send_photo(asked, _encode(_psoriasis(), "JPEG"), language_code="ar")
    which = wait_for(api, asked, _exactly(ar(texts.SAME_PROBLEM)), after=seen)

    for user, language in ((held, "es"), (asked, "ar")):
        seen = len(api.messages(user))
        api.send_text(user, "/forget", language_code=language)
        wait_for(api, user, _exactly(gettext_for(language)(texts.FORGOTTEN)), after=seen)
    with tally.bad_input('"Analyse anyway" pressed after /forget'):
        seen = len(api.messages(held))
        tap(api, held, gate, _buttons(gate)[0], language="es")
        wait_for(api, held, _exactly(es(texts.STALE_BUTTON)), after=seen)
        sweep.expected.append((held, _exactly(es(texts.STALE_BUTTON))))
    with tally.bad_input('"Same problem" pressed after /forget'):
        seen = len(api.messages(asked))
        same = next(data for data in _buttons(which) if data.startswith("same:"))
        tap(api, asked, which, same, language="ar")
        wait_for(api, asked, _exactly(ar(texts.STALE_BUTTON)), after=seen)
        sweep.expected.append((asked, _exactly(ar(texts.STALE_BUTTON))))
    with tally.bad_input("button this version of the bot does not know"):
        api.send_text(unknown, "/help", language_code="fr")
        help_message = wait_for(api, unknown, containing("/forget"))
        help_message["reply_markup"] = {
            "inline_keyboard": [[{"text": "Old", "callback_data": "v1:diagnose"}]]
        }
        tap(api, unknown, help_message, "v1:diagnose", language="fr")
        expected = gettext_for("fr")(texts.STALE_BUTTON)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while not any(
            params.get("text") == expected for _, params in api.calls("answerCallbackQuery")
        ):
            assert time.monotonic() < deadline, "the unknown button was never answered"
            time.sleep(0.05)
    # Nothing was analysed for anyone after /forget.
    assert not services.jobs(held) and not services.jobs(asked)
    services.assert_alive()


def test_long_right_to_left_and_markup_texts_are_answered_or_refused_clearly(
    services: Services, sweep: Sweep, tally: Tally
) -> None:
    api = services.api
    long_text, rtl, markup = FIRST_USER + 920, FIRST_USER + 921, FIRST_USER + 922
    _agree_all(services, {long_text: "en", rtl: "ar", markup: "es"})
    caption = "<b>itchy</b> & <i>red</i> since *monday* _2_ [days] `x` </p> &amp; <script>"
    api.send_photo(long_text, _encode(_psoriasis(), "JPEG"))
    api.send_photo(rtl, _encode(_psoriasis(), "JPEG"), language_code="ar")
    api.send_photo(markup, _encode(_psoriasis(), "JPEG"), caption=caption, language_code="es")
    for user, language in ((long_text, "en"), (rtl, "ar"), (markup, "es")):
        wait_for(api, user, _analysis(language), timeout=REPLY_TIMEOUT)
        sweep.expected.append((user, _analysis(language)))

    with tally.bad_input("caption full of HTML and Markdown characters"):
        (job,) = services.jobs(markup)
        assert job["question"] == caption
        answers = [
            params
            for _, params in api.calls("sendMessage")
            if int(params["chat_id"]) == markup
            and gettext_for("es")(DISCLAIMER) in str(params.get("text"))
        ]
        assert answers and answers[-1].get("parse_mode") == "HTML"

    seen = {user: len(api.messages(user)) for user in (long_text, rtl)}
    question = "هل هذا معدٍ؟ 😟🙏 \u200fمنذ أسبوع\u200f"
    api.send_text(rtl, question, language_code="ar")
    too_long = "Is it serious?" + " It itches at night and spreads a little." * 250
    api.send_text(long_text, too_long)
    with tally.bad_input("right-to-left question with emoji"):
        wait_for(api, rtl, _follow_up("ar"), after=seen[rtl])
        assert services.jobs(rtl)[-1]["question"] == question
    with tally.bad_input(f"text of {len(too_long)} characters"):
        expected = texts.TEXT_TOO_LONG.format(length=len(too_long), limit=MAX_QUESTION_CHARS)
        wait_for(api, long_text, _exactly(expected), after=seen[long_text])
        assert len(services.jobs(long_text)) == 1, "the cut-off text must not be analysed"
    sweep.expected += [(long_text, _exactly(expected)), (rtl, _follow_up("ar"))]
    services.assert_alive()


# --- files too big to open or to download ---------------------------------------------------

HUGE = [
    Upload(
        "PNG header claiming 60000x60000 pixels",
        lambda: _png_claiming(60_000, 60_000),
        "huge.png",
        "image/png",
        "fr",
        imaging._BOMB,
    ),
    Upload(
        "decompression bomb: 8000x8000 PNG of 60 kB",
        lambda: _encode(Image.new("L", (8000, 8000)), "PNG"),
        "bomb.png",
        "image/png",
        refusal=imaging._TOO_LARGE,
        values={"width": 8000, "height": 8000},
    ),
    Upload(
        "GIF header claiming 65535x65535 pixels",
        lambda: _gif_claiming(65_535, 65_535),
        "huge.gif",
        "image/gif",
        "ar",
        imaging._BOMB,
    ),
]


def test_images_too_large_to_open_are_refused_from_their_header(
    services: Services, sweep: Sweep, tally: Tally
) -> None:
    """Sent one at a time, so that the time to each refusal is the bot's alone (the unit tests
    show that no pixel is decoded)."""
    api = services.api
    users = {FIRST_USER + 940 + index: row.language for index, row in enumerate(HUGE)}
    _agree_all(services, users)
    took = []
    for (user, language), row in zip(users.items(), HUGE, strict=True):
        with tally.bad_input(f"file: {row.name}"):
            data, expected = row.build(), _exactly(str(row.expected()))
            started = time.monotonic()
            api.send_document(
                user,
                data,
                file_name=row.file_name,
                mime_type=row.mime_type,
                language_code=language,
            )
            wait_for(api, user, expected, timeout=REPLY_TIMEOUT)
            took.append(time.monotonic() - started)
            sweep.expected.append((user, expected))
    tally.note(f"huge images refused in {max(took) * 1000:.0f} ms at most (send to reply)")
    services.assert_alive()


def test_files_over_the_download_limit_are_refused_without_downloading(
    services: Services, sweep: Sweep, tally: Tally
) -> None:
    api = services.api
    sized, unsized = FIRST_USER + 930, FIRST_USER + 931
    _agree_all(services, {sized: "fr", unsized: "ar"})
    big = _encode(_psoriasis(), "JPEG") + bytes(DOWNLOAD_LIMIT_BYTES)
    with tally.bad_input("21 MB file"):
        sent = api.send_document(
            sized, big, file_name="big.jpg", mime_type="image/jpeg", language_code="fr"
        )
        expected = gettext_for("fr")(texts.FILE_TOO_BIG)
        wait_for(api, sized, _exactly(expected))
        sweep.expected.append((sized, _exactly(expected)))
        file_id = sent["document"]["file_id"]
        # Refused from the size in the message, before asking Telegram for the file.
        assert not [p for _, p in api.calls("getFile") if p.get("file_id") == file_id]
    with tally.bad_input("21 MB file whose message does not say its size"):
        document = {key: value for key, value in sent["document"].items() if key != "file_size"}
        api.send_update({"message": _message(unsized, "ar", document=document)})
        expected = gettext_for("ar")(texts.FILE_TOO_BIG)
        wait_for(api, unsized, _exactly(expected))
        sweep.expected.append((unsized, _exactly(expected)))
    services.assert_alive()


# --- after all of it -------------------------------------------------------------------------


def test_afterwards_a_good_photo_is_answered_and_nothing_was_lost_or_shown_broken(
    services: Services, sweep: Sweep, tally: Tally
) -> None:
    api = services.api
    user = FIRST_USER + 999
    _agree_all(services, {user: "en"})
    sent = api.send_photo(user, _encode(_psoriasis(), "JPEG"), caption="What is this?")
    reply = wait_for(api, user, _analysis("en"), timeout=REPLY_TIMEOUT)
    assert reply["reply_to_message"]["message_id"] == sent["message_id"]
    sweep.expected.append((user, _analysis("en")))
    time.sleep(1.0)  # anything sent twice would be out by now

    counts = [sum(map(predicate, api.messages(chat))) for chat, predicate in sweep.expected]
    tally.messages(
        expected=len(counts),
        delivered=sum(1 for count in counts if count),
        lost=counts.count(0),
        duplicated=sum(count - 1 for count in counts if count > 1),
    )
    wrong = [(chat, count) for (chat, _), count in zip(sweep.expected, counts, strict=True)]
    assert [entry for entry in wrong if entry[1] != 1] == []

    sorry = {gettext_for(language)(texts.SOMETHING_WENT_WRONG) for language in PSORIASIS}
    chats = {chat for chat, _ in sweep.expected} | {-1_004_701_000}
    for chat in chats:
        for message in api.messages(chat):
            shown = message.get("text") or ""
            assert "Traceback" not in shown and shown not in sorry, shown
    logs = services.log_text()
    assert "Traceback" not in logs and "Handling an update failed" not in logs
    for private in (TOKEN, NAME, "It itches", "Clinic opens", "Village health", "+100000"):
        assert private not in logs
    assert not re.search(r"\b4701\d{5}\b", logs), "a user id was logged"
    services.assert_alive()
