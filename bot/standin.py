"""A local stand-in for the Telegram Bot API.

`BotAPIStandIn` serves the Bot API's HTTP interface on a loopback port, so the real bot code
(python-telegram-bot pointed at `base_url` / `base_file_url`) runs against it over real HTTP in
tests, in the offline web chat and in load tests. The user side of the conversation is driven
through plain, thread-safe method calls (`send_text`, `send_photo`, ...), and everything the bot
did can be inspected afterwards (`messages`, `calls`).

Only the methods the bot uses are implemented; their answers and error descriptions follow the
real Bot API as closely as is useful for testing.

Run standalone with ``python -m bot.standin --port 8081 --token 123456:TEST-TOKEN``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import email.message
import email.parser
import email.utils
import hashlib
import html
import io
import itertools
import json
import logging
import mimetypes
import re
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

MAX_MESSAGE_LENGTH = 4096
"""Longest message text, in UTF-16 code units, that sendMessage accepts."""

MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024
"""Largest file, in bytes, that getFile hands out for download."""

MAX_REQUEST_BODY = 64 * 1024 * 1024
PHOTO_SIDES = (90, 320, 800, 1280)
JPEG_QUALITY = 87
CONFLICT_POLL = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
CALLBACK_INVALID = "query is too old and response timeout expired or query ID is invalid"
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
CHAT_ACTIONS = frozenset(
    [
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    ]
)
GROUP_CHAT_TYPES = frozenset({"group", "supergroup"})

_TOKEN_RE = re.compile(r"\d+:[A-Za-z0-9_-]+")
_INT_RE = re.compile(r"[+-]?\d+")
# Telegram marks "/command" and "/command@botname" at the start of a word as bot commands.
_BOT_COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![^\s])")
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")
_JSON_PARAMS = frozenset(
    [
        "reply_markup",
        "entities",
        "caption_entities",
        "allowed_updates",
        "commands",
        "scope",
        "link_preview_options",
        "reply_parameters",
        "media",
    ]
)
_INT_PARAMS = frozenset(
    [
        "message_id",
        "offset",
        "limit",
        "timeout",
        "reply_to_message_id",
        "message_thread_id",
        "cache_time",
        "max_connections",
    ]
)
_BOOL_PARAMS = frozenset(
    [
        "disable_notification",
        "protect_content",
        "show_alert",
        "drop_pending_updates",
        "disable_web_page_preview",
        "allow_sending_without_reply",
    ]
)


class _ApiError(Exception):
    """An error answer of the Bot API: HTTP status, description and optional parameters."""

    def __init__(self, code: int, description: str, parameters: JsonDict | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def payload(self) -> JsonDict:
        body: JsonDict = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad_request(detail: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {detail}")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _command_entities(text: str) -> list[JsonDict]:
    """The ``bot_command`` entities Telegram would attach, with UTF-16 offsets."""
    return [
        {
            "type": "bot_command",
            "offset": _utf16_len(text[: match.start()]),
            "length": _utf16_len(match.group()),
        }
        for match in _BOT_COMMAND_RE.finditer(text)
    ]


# --- HTML parse mode -------------------------------------------------------------------------

_TAG_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_SPECIAL_RE = re.compile(r"[<&]")
_ENTITY_RE = re.compile(r"&(?:#([0-9]{1,8})|#[xX]([0-9a-fA-F]{1,8})|([A-Za-z][A-Za-z0-9]*));")
_ATTR = r"[A-Za-z][A-Za-z0-9-]*(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?"
_START_TAG_RE = re.compile(rf"<([A-Za-z][A-Za-z0-9-]*)((?:\s+{_ATTR})*)\s*>")
_ATTR_RE = re.compile(r"([A-Za-z][A-Za-z0-9-]*)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?")
_END_TAG_RE = re.compile(r"</([A-Za-z][A-Za-z0-9-]*)\s*>")
_TAG_NAME_RE = re.compile(r"</?([^\s>]*)")


@dataclass
class _OpenTag:
    name: str
    offset: int
    attrs: dict[str, str]


class _HtmlParser:
    """Parses Bot API HTML into plain text and MessageEntity dicts, rejecting what Telegram does.

    Stricter than the server in one way: a bare ``&`` is an error, as the Bot API documentation
    demands escaping it, so a bot that passes these tests is safe either way.
    """

    def __init__(self, source: str) -> None:
        self._src = source
        self._pos = 0
        self._parts: list[str] = []
        self._units = 0
        self._stack: list[_OpenTag] = []
        self._entities: list[JsonDict] = []

    def parse(self) -> tuple[str, list[JsonDict]]:
        while self._pos < len(self._src):
            match = _SPECIAL_RE.search(self._src, self._pos)
            end = match.start() if match else len(self._src)
            self._emit(self._src[self._pos : end])
            self._pos = end
            if match is None:
                break
            if match.group() == "&":
                self._entity()
            elif self._src.startswith("</", end):
                self._end_tag()
            else:
                self._start_tag()
        if self._stack:
            name = self._stack[-1].name
            detail = f'Can\'t find end tag corresponding to start tag "{name}"'
            raise _bad_request(f"can't parse entities: {detail}")
        entities = sorted(self._entities, key=lambda item: (item["offset"], -item["length"]))
        return "".join(self._parts), entities

    def _error(self, detail: str, suffix: str = "") -> _ApiError:
        offset = len(self._src[: self._pos].encode("utf-8"))
        return _bad_request(f"can't parse entities: {detail} at byte offset {offset}{suffix}")

    def _emit(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._units += _utf16_len(text)

    def _entity(self) -> None:
        match = _ENTITY_RE.match(self._src, self._pos)
        if match is None:
            raise self._error('Character "&" must be escaped as "&amp;"')
        decimal, hexadecimal, name = match.groups()
        if name is not None:
            char = _NAMED_ENTITIES.get(name)
            if char is None:
                raise self._error(f'Unsupported HTML entity "&{name};"')
        else:
            code = int(decimal) if decimal is not None else int(hexadecimal, 16)
            if not 0 < code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self._error("Invalid numeric HTML entity")
            char = chr(code)
        self._emit(char)
        self._pos = match.end()

    def _start_tag(self) -> None:
        match = _START_TAG_RE.match(self._src, self._pos)
        if match is None:
            raise self._malformed_tag("start")
        name = match.group(1).lower()
        if name not in _TAG_TYPES:
            raise self._error(f'Unsupported start tag "{name}"')
        attrs = {key.lower(): _attr_value(value) for key, value in _ATTR_RE.findall(match[2])}
        self._check_attrs(name, attrs)
        self._stack.append(_OpenTag(name, self._units, attrs))
        self._pos = match.end()

    def _malformed_tag(self, kind: str) -> _ApiError:
        if self._src.find(">", self._pos) < 0:
            return self._error(f"Unclosed {kind} tag")
        name_match = _TAG_NAME_RE.match(self._src, self._pos)
        name = name_match.group(1) if name_match else ""
        return self._error(f'Unsupported {kind} tag "{name}"')

    def _check_attrs(self, name: str, attrs: dict[str, str]) -> None:
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise self._error('Tag "span" must have class "tg-spoiler"')
        if name == "tg-emoji" and not attrs.get("emoji-id", "").isdigit():
            raise self._error('Tag "tg-emoji" must have a numeric attribute "emoji-id"')

    def _end_tag(self) -> None:
        match = _END_TAG_RE.match(self._src, self._pos)
        if match is None:
            raise self._malformed_tag("end")
        name = match.group(1).lower()
        if not self._stack:
            raise self._error("Unexpected end tag")
        top = self._stack[-1]
        if name != top.name:
            raise self._error(
                "Unmatched end tag", f', expected "</{top.name}>", found "</{name}>"'
            )
        self._stack.pop()
        self._close(top)
        self._pos = match.end()

    def _close(self, tag: _OpenTag) -> None:
        parent = self._stack[-1] if self._stack else None
        if tag.name == "code" and parent is not None and parent.name == "pre":
            language = tag.attrs.get("class", "")
            if language.startswith("language-"):
                parent.attrs["language"] = language.removeprefix("language-")
            return
        entity = _entity_for(tag, self._units - tag.offset)
        if entity is not None:
            self._entities.append(entity)


def _attr_value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]
    return html.unescape(raw)


def _entity_for(tag: _OpenTag, length: int) -> JsonDict | None:
    kind = _TAG_TYPES[tag.name]
    entity: JsonDict = {"type": kind, "offset": tag.offset, "length": length}
    if kind == "text_link":
        if not tag.attrs.get("href"):
            return None
        entity["url"] = tag.attrs["href"]
    elif kind == "pre" and "language" in tag.attrs:
        entity["language"] = tag.attrs["language"]
    elif kind == "blockquote" and "expandable" in tag.attrs:
        entity["type"] = "expandable_blockquote"
    elif kind == "custom_emoji":
        entity["custom_emoji_id"] = tag.attrs["emoji-id"]
    return entity if length > 0 else None


def _strip_text(text: str, entities: list[JsonDict]) -> tuple[str, list[JsonDict]]:
    """Strips surrounding whitespace like Telegram, moving and clipping the entities along."""
    stripped = text.strip()
    if not stripped:
        return "", []
    lead = _utf16_len(text[: len(text) - len(text.lstrip())])
    size = _utf16_len(stripped)
    kept = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, size)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


# --- request parameters ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Upload:
    """A file part of a multipart/form-data request."""

    file_name: str | None
    mime_type: str | None
    data: bytes

    def describe(self) -> JsonDict:
        return {"file_name": self.file_name, "mime_type": self.mime_type, "size": len(self.data)}


def _header_message(name: str, value: str) -> email.message.Message:
    message = email.message.Message()
    message[name] = value
    return message


def _collect_params(query: str, content_type: str, body: bytes) -> JsonDict:
    """Merges query string and body parameters; body values win, as with Telegram."""
    params: JsonDict = dict(parse_qsl(query, keep_blank_values=True))
    if not body:
        return params
    header = _header_message("Content-Type", content_type or "application/octet-stream")
    mime = header.get_content_type()
    if mime == "application/json":
        params.update(_json_body(body))
    elif mime == "application/x-www-form-urlencoded":
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif mime == "multipart/form-data":
        boundary = header.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise _bad_request("multipart boundary is missing")
        params.update(_parse_multipart(body, boundary))
    return params


def _json_body(body: bytes) -> JsonDict:
    try:
        decoded = json.loads(body)
    except ValueError as error:
        raise _bad_request("can't parse JSON object") from error
    if not isinstance(decoded, dict):
        raise _bad_request("JSON object expected")
    return decoded


def _parse_multipart(body: bytes, boundary: str) -> JsonDict:
    fields: JsonDict = {}
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = email.parser.BytesHeaderParser().parsebytes(head.lstrip(b" \t\r\n"))
        name = headers.get_param("name", header="content-disposition")
        if not name:
            continue
        file_name = headers.get_filename()
        if file_name is None:
            fields[email.utils.collapse_rfc2231_value(name)] = content.decode("utf-8", "replace")
        else:
            mime = headers.get_content_type() if headers.get("Content-Type") else None
            fields[email.utils.collapse_rfc2231_value(name)] = _Upload(file_name, mime, content)
    return fields


def _coerce_params(raw: JsonDict) -> JsonDict:
    """Types string parameters the way the Bot API reads them (JSON, integer, boolean fields)."""
    return {name: _coerce_value(name, value) for name, value in raw.items()}


def _coerce_value(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if name in _JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError as error:
            what = "reply keyboard markup" if name == "reply_markup" else name
            raise _bad_request(f"can't parse {what} JSON object") from error
    if name == "chat_id":
        return int(value) if _INT_RE.fullmatch(value) else value
    if name in _INT_PARAMS:
        if not _INT_RE.fullmatch(value.strip()):
            raise _bad_request(f'parameter "{name}" must be an integer')
        return int(value)
    if name in _BOOL_PARAMS:
        if value.lower() not in ("true", "false", "1", "0", ""):
            raise _bad_request(f'parameter "{name}" must be a boolean')
        return value.lower() in ("true", "1")
    return value


def _recordable(params: JsonDict) -> JsonDict:
    return {
        name: value.describe() if isinstance(value, _Upload) else copy.deepcopy(value)
        for name, value in params.items()
    }


def _inline_markup(markup: Any) -> JsonDict | None:
    """Validates reply_markup; returns it when it is an inline keyboard (kept on the message)."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _bad_request("can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad_request('field "inline_keyboard" must be an Array of Arrays')
    for button in itertools.chain.from_iterable(rows):
        _check_button(button)
    return copy.deepcopy(markup)


def _check_button(button: Any) -> None:
    if not isinstance(button, dict) or not isinstance(button.get("text"), str):
        raise _bad_request('can\'t parse inline keyboard button: Field "text" must be a String')
    if not set(button) - {"text"}:
        raise _bad_request(
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
        )
    data = button.get("callback_data")
    if data is not None and not 1 <= len(str(data).encode("utf-8")) <= 64:
        raise _bad_request("BUTTON_DATA_INVALID")


# --- files -----------------------------------------------------------------------------------


@dataclass
class _StoredFile:
    number: int
    file_id: str
    file_unique_id: str
    data: bytes
    folder: str
    extension: str
    path: str | None = None

    def summary(self) -> JsonDict:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": len(self.data),
        }


def _photo_renditions(image: bytes) -> list[tuple[int, int, bytes]]:
    """Re-encodes an image as Telegram's JPEG PhotoSize renditions, smallest first."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            picture = _flatten_rgb(ImageOps.exif_transpose(opened))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError("send_photo needs image bytes that Pillow can decode") from error
    longest = max(picture.size)
    sides = [side for side in PHOTO_SIDES[:-1] if side < longest]
    sides.append(min(longest, PHOTO_SIDES[-1]))
    return [_jpeg_rendition(picture, side) for side in sides]


def _flatten_rgb(picture: Image.Image) -> Image.Image:
    if picture.mode == "RGB":
        return picture
    rgba = picture.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _jpeg_rendition(picture: Image.Image, side: int) -> tuple[int, int, bytes]:
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    resized = picture if size == picture.size else picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return size[0], size[1], buffer.getvalue()


def _extension(file_name: str | None, mime_type: str | None) -> str:
    if file_name and "." in file_name.rsplit("/", 1)[-1]:
        return "." + file_name.rsplit(".", 1)[-1].lower()
    guessed = mimetypes.guess_extension(mime_type) if mime_type else None
    return guessed or ".bin"


# --- chats and updates -----------------------------------------------------------------------


@dataclass
class _Chat:
    info: JsonDict
    next_message_id: int = 1
    log: dict[int, JsonDict] = field(default_factory=dict)
    bot_message_ids: list[int] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)

    def allocate_id(self) -> int:
        message_id = self.next_message_id
        self.next_message_id += 1
        return message_id

    def live(self, message_id: Any) -> JsonDict | None:
        if not isinstance(message_id, int) or message_id in self.deleted:
            return None
        return self.log.get(message_id)


@dataclass(frozen=True)
class SentMessage:
    """A message the bot sent, and when the stand-in recorded it.

    Attributes:
        position: Its place among all the bot's messages to every chat, counting from 1.
        chat_id: The chat it went to.
        message: The Message dict as it is now (after any edits).
        received: ``time.monotonic()`` when the stand-in recorded it, so that a test can tell
            how long an answer took from the moment its question was sent.
    """

    position: int
    chat_id: int
    message: JsonDict
    received: float


@dataclass(frozen=True)
class _Fault:
    error_code: int
    description: str
    retry_after: int | None

    def error(self) -> _ApiError:
        parameters = {"retry_after": self.retry_after} if self.retry_after is not None else None
        return _ApiError(self.error_code, self.description, parameters)


def _update_kind(update: JsonDict) -> str:
    return next((key for key in update if key != "update_id"), "")


def _without_reply(message: JsonDict) -> JsonDict:
    quoted = copy.deepcopy(message)
    quoted.pop("reply_to_message", None)
    return quoted


def _chat_id(params: JsonDict) -> Any:
    value = params.get("chat_id")
    if value is None or value == "":
        raise _bad_request("chat_id is empty")
    return value


# --- HTTP plumbing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json_response(status: int, payload: JsonDict) -> _Response:
    return _Response(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"))


def _not_found() -> _ApiError:
    return _ApiError(404, "Not Found")


_Responder = Callable[[str, str, bytes], _Response]


class _BodyError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], responder: _Responder, closing: threading.Event
    ) -> None:
        self.responder = responder
        self.closing = closing
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wakes idle keep-alive connections so that their threads end; responses still go out."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Bot API stand-in connection error: %r", sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("Bot API stand-in answered %s with %s", self.command, code)

    def log_message(self, format: str, *args: Any) -> None:
        # The arguments can hold the request line, and with it the bot token.
        logger.debug("Bot API stand-in HTTP: %s", format)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except _BodyError as error:
            self.close_connection = True
            payload = {"ok": False, "error_code": error.status, "description": error.description}
            self._write(_json_response(error.status, payload))
            return
        content_type = self.headers.get("Content-Type", "")
        try:
            response = self.server.responder(self.path, content_type, body)
        except Exception:
            logger.exception("Bot API stand-in failed to answer a %s request", self.command)
            response = _json_response(500, _ApiError(500, "Internal Server Error").payload())
        self._write(response)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as error:
            raise _BodyError(400, "Bad Request: invalid Content-Length") from error
        if length > MAX_REQUEST_BODY:
            raise _BodyError(413, "Request Entity Too Large")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0], 16)
            except ValueError as error:
                raise _BodyError(400, "Bad Request: invalid chunked body") from error
            total += size
            if total > MAX_REQUEST_BODY:
                raise _BodyError(413, "Request Entity Too Large")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _write(self, response: _Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            if self.close_connection or self.server.closing.is_set():
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:
            self.close_connection = True
            logger.debug("Bot API stand-in client went away before the answer", exc_info=True)


# --- the stand-in ----------------------------------------------------------------------------


class BotAPIStandIn:
    """A thread-safe, in-process Telegram Bot API server for one bot token.

    The bot side talks HTTP to `base_url` / `base_file_url`; the user side calls `send_text`,
    `send_photo`, `send_document` or `send_update` from any thread. Users and chats are created
    when they first write. State lives only in memory; a stopped stand-in cannot be restarted.

    Example:
        >>> with BotAPIStandIn() as api:  # doctest: +SKIP
        ...     app = ApplicationBuilder().token(api.token).base_url(api.base_url).build()

    Args:
        token: The only bot token accepted; other well-formed tokens get 401 Unauthorized.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see `port` after `start`).
        bot_username: The bot's username as reported by getMe.
        record_polls: Whether `calls` lists getUpdates too. A stand-in serving for days (the
            offline web chat) leaves them out, or its call log grows with every poll.
    """

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bot_username: str = "skingpt_test_bot",
        record_polls: bool = True,
    ) -> None:
        if not _TOKEN_RE.fullmatch(token):
            raise ValueError("token must look like '<bot id>:<secret>'")
        self.token = token
        self._host = host
        self._requested_port = port
        self._bot_user: JsonDict = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "SkinGPT Test Bot",
            "username": bot_username,
        }
        self._cond = threading.Condition(threading.Lock())
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._users: dict[int, JsonDict] = {}
        self._chats: dict[int, _Chat] = {}
        self._updates: list[JsonDict] = []
        self._next_update_id = 1
        self._poll_generation = 0
        self._allowed_updates: frozenset[str] | None = None
        self._webhook: JsonDict = {}
        self._files: dict[str, _StoredFile] = {}
        self._file_paths: dict[str, _StoredFile] = {}
        self._commands: dict[tuple[str, str], list[JsonDict]] = {}
        self._callback_queries: set[str] = set()
        self._calls: list[tuple[str, JsonDict]] = []
        self._record_polls = record_polls
        self._faults: dict[str, deque[_Fault]] = {}
        self._delays: dict[str, deque[float]] = {}
        # (chat id, message id, time.monotonic()) of every bot message, in the order received.
        self._sent: list[tuple[int, int, float]] = []
        self._methods: dict[str, tuple[str, Callable[[JsonDict], Any]]] = {
            name.lower(): (name, handler) for name, handler in self._method_table()
        }

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> BotAPIStandIn:
        """Starts serving in a daemon thread.

        Returns:
            The stand-in itself, for chaining.

        Raises:
            RuntimeError: When it was started before.
        """
        if self._server is not None or self._closing.is_set():
            raise RuntimeError("the Bot API stand-in was already started")
        self._server = _Server((self._host, self._requested_port), self._respond, self._closing)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="bot-api-standin",
            daemon=True,
        )
        self._thread.start()
        logger.debug("Bot API stand-in listening on port %d", self.port)
        return self

    def stop(self) -> None:
        """Releases waiting long polls and waits, stops serving and closes the sockets.

        Safe to call more than once.
        """
        with self._cond:
            if self._closing.is_set():
                return
            self._closing.set()
            self._cond.notify_all()
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> BotAPIStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port being served (known once started)."""
        if self._server is None:
            raise RuntimeError("start the Bot API stand-in first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """API base URL for PTB's ``base_url``; PTB appends the token."""
        return f"http://{self._public_host()}:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """File download base URL for PTB's ``base_file_url``; PTB appends the token."""
        return f"http://{self._public_host()}:{self.port}/file/bot"

    def _public_host(self) -> str:
        return "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host

    # --- the user side -----------------------------------------------------------------------

    def send_text(
        self,
        user_id: int,
        text: str,
        *,
        chat_id: int | None = None,
        chat_type: str = "private",
        language_code: str = "en",
        reply_to_message_id: int | None = None,
    ) -> JsonDict:
        """Queues a text message from a user as a ``message`` update.

        Args:
            user_id: The writing user; created on first use.
            text: Message text.
            chat_id: Target chat; defaults to the user's private chat (same id).
            chat_type: "private", "group" or "supergroup" (group ids are negative).
            language_code: The user's IETF language tag.
            reply_to_message_id: Message in the same chat this one replies to.

        Returns:
            The queued Message dict.
        """
        content: JsonDict = {"text": text}
        if entities := _command_entities(text):
            content["entities"] = entities
        return self._post_user_message(
            user_id, chat_id, chat_type, language_code, reply_to_message_id, content
        )

    def send_photo(
        self,
        user_id: int,
        image: bytes,
        *,
        caption: str | None = None,
        chat_id: int | None = None,
        media_group_id: str | None = None,
        chat_type: str = "private",
        language_code: str = "en",
        reply_to_message_id: int | None = None,
    ) -> JsonDict:
        """Queues a photo message; the image is re-encoded into Telegram's JPEG renditions.

        Args:
            user_id: The writing user; created on first use.
            image: Encoded image bytes in any format Pillow reads.
            caption: Optional caption.
            chat_id: Target chat; defaults to the user's private chat.
            media_group_id: Album id shared by photos sent together.
            chat_type: "private", "group" or "supergroup".
            language_code: The user's IETF language tag.
            reply_to_message_id: Message in the same chat this one replies to.

        Returns:
            The queued Message dict, with ``photo`` sizes in ascending order.

        Raises:
            ValueError: When Pillow cannot decode `image`.
        """
        renditions = _photo_renditions(image)
        sizes = []
        for width, height, data in renditions:
            stored = self._store_file(data, "photos", ".jpg")
            sizes.append({**stored.summary(), "width": width, "height": height})
        content: JsonDict = {"photo": sizes}
        if media_group_id is not None:
            content["media_group_id"] = media_group_id
        if caption is not None:
            content["caption"] = caption
            if entities := _command_entities(caption):
                content["caption_entities"] = entities
        return self._post_user_message(
            user_id, chat_id, chat_type, language_code, reply_to_message_id, content
        )

    def send_document(
        self,
        user_id: int,
        data: bytes,
        *,
        file_name: str | None,
        mime_type: str | None,
        caption: str | None = None,
        chat_id: int | None = None,
        chat_type: str = "private",
        language_code: str = "en",
        reply_to_message_id: int | None = None,
    ) -> JsonDict:
        """Queues a document message; the bytes are stored unchanged.

        Args:
            user_id: The writing user; created on first use.
            data: File content.
            file_name: Original file name, or None to leave it out as Telegram can.
            mime_type: MIME type, or None to leave it out.
            caption: Optional caption.
            chat_id: Target chat; defaults to the user's private chat.
            chat_type: "private", "group" or "supergroup".
            language_code: The user's IETF language tag.
            reply_to_message_id: Message in the same chat this one replies to.

        Returns:
            The queued Message dict.
        """
        stored = self._store_file(bytes(data), "documents", _extension(file_name, mime_type))
        document = stored.summary()
        if file_name is not None:
            document["file_name"] = file_name
        if mime_type is not None:
            document["mime_type"] = mime_type
        content: JsonDict = {"document": document}
        if caption is not None:
            content["caption"] = caption
            if entities := _command_entities(caption):
                content["caption_entities"] = entities
        return self._post_user_message(
            user_id, chat_id, chat_type, language_code, reply_to_message_id, content
        )

    def send_update(self, update: dict[str, Any]) -> int:
        """Queues a raw update of any kind (sticker, edited_message, callback_query, ...).

        Users, chats and messages found in it become known, so the bot can answer them;
        callback query ids become answerable.

        Args:
            update: The update body; any ``update_id`` in it is replaced.

        Returns:
            The assigned update_id.
        """
        body = copy.deepcopy(update)
        body.pop("update_id", None)
        if not body:
            raise ValueError("the update has no content")
        with self._cond:
            self._register_raw(body)
            return self._queue_update(body)

    # --- inspection and fault injection ------------------------------------------------------

    def messages(self, chat_id: int) -> list[JsonDict]:
        """Messages the bot sent to a chat, in order, as they are now (after edits).

        Deleted messages stay in the list (so counts only grow); see ``calls("deleteMessage")``.

        Args:
            chat_id: The chat.

        Returns:
            Copies of the Message dicts.
        """
        with self._cond:
            return self._bot_messages(chat_id)

    def wait_for_messages(self, chat_id: int, count: int, timeout: float = 30.0) -> list[JsonDict]:
        """Blocks until the bot has sent at least `count` messages to a chat.

        Args:
            chat_id: The chat.
            count: How many bot messages to wait for.
            timeout: Seconds to wait.

        Returns:
            All the bot's messages in that chat (at least `count`).

        Raises:
            AssertionError: On timeout, showing what did arrive.

        Note:
            This blocks; from a coroutine use ``await asyncio.to_thread(api.wait_for_messages,
            ...)`` so the bot running on the same event loop keeps going.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: self._bot_message_count(chat_id) >= count or self._closing.is_set(),
                timeout,
            )
            messages = self._bot_messages(chat_id)
        if len(messages) < count:
            texts = [message.get("text", message.get("caption")) for message in messages]
            raise AssertionError(
                f"expected {count} bot message(s) in chat {chat_id} within {timeout}s, "
                f"got {len(messages)}: {texts!r}"
            )
        return messages

    def sent(self, after: int = 0, *, timeout: float = 0.0) -> list[SentMessage]:
        """Messages the bot sent to any chat, in the order the stand-in received them.

        One call covers every chat, so a test that follows hundreds of users reads only what is
        new instead of polling each chat, and learns when each message arrived.

        Args:
            after: How many of them the caller has seen already (the last ``position`` it
                read); only later ones are returned.
            timeout: Seconds to wait for at least one new message; 0 returns at once.

        Returns:
            Copies of the new messages, oldest first; empty when none came in time.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: len(self._sent) > after or self._closing.is_set(), max(timeout, 0.0)
            )
            return [
                SentMessage(position, chat_id, copy.deepcopy(self._chats[chat_id].log[id_]), at)
                for position, (chat_id, id_, at) in enumerate(self._sent[after:], after + 1)
            ]

    def calls(self, method: str | None = None) -> list[tuple[str, JsonDict]]:
        """API calls the bot made, oldest first, as (method name, parsed parameters).

        Args:
            method: Only calls of this method (case-insensitive); all when None.

        Returns:
            Copies of the recorded calls; uploaded files appear as name/type/size dicts.
        """
        with self._cond:
            return [
                (name, copy.deepcopy(params))
                for name, params in self._calls
                if method is None or name.lower() == method.lower()
            ]

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        """Makes the next `count` calls of `method` answer an error instead.

        Args:
            method: Bot API method name (case-insensitive).
            error_code: HTTP status and error_code, e.g. 429 or 502.
            description: The error description, e.g. "Too Many Requests: retry after 3".
            retry_after: Adds ``"parameters": {"retry_after": N}`` (flood control).
            count: How many consecutive calls fail.

        Raises:
            ValueError: For a method the stand-in does not serve, a bad code or count.
        """
        key = method.lower()
        if key not in self._methods:
            raise ValueError(f"the stand-in does not serve {method!r}")
        if not 400 <= error_code <= 599 or count < 1:
            raise ValueError("error_code must be 400..599 and count at least 1")
        with self._cond:
            faults = self._faults.setdefault(key, deque())
            faults.extend([_Fault(error_code, description, retry_after)] * count)

    def delay_next(self, method: str, seconds: float, count: int = 1) -> None:
        """Makes the next `count` calls of `method` take effect at once but answer `seconds` late.

        A client whose read timeout is shorter gives up on a call that Telegram did apply, which
        is how a slow network looks from the bot: a retry would send the message twice.

        Args:
            method: Bot API method name (case-insensitive).
            seconds: How long each answer waits.
            count: How many consecutive calls are slow.

        Raises:
            ValueError: For a method the stand-in does not serve, a bad delay or count.
        """
        key = method.lower()
        if key not in self._methods:
            raise ValueError(f"the stand-in does not serve {method!r}")
        if not 0 < seconds <= 300 or count < 1:
            raise ValueError("seconds must be more than 0 and at most 300, count at least 1")
        with self._cond:
            self._delays.setdefault(key, deque()).extend([seconds] * count)

    # --- state helpers (callers hold the lock unless noted) ----------------------------------

    def _bot_message_count(self, chat_id: int) -> int:
        chat = self._chats.get(chat_id)
        return len(chat.bot_message_ids) if chat else 0

    def _bot_messages(self, chat_id: int) -> list[JsonDict]:
        chat = self._chats.get(chat_id)
        if chat is None:
            return []
        return [copy.deepcopy(chat.log[message_id]) for message_id in chat.bot_message_ids]

    def _store_file(self, data: bytes, folder: str, extension: str) -> _StoredFile:
        """Registers file content (takes the lock itself)."""
        unique = hashlib.sha256(data).hexdigest()[:16]
        with self._cond:
            number = len(self._files) + 1
            stored = _StoredFile(
                number, f"F{number:06d}-{unique}", unique, data, folder, extension
            )
            self._files[stored.file_id] = stored
        return stored

    def _ensure_user(self, user_id: int, language_code: str) -> JsonDict:
        user = self._users.setdefault(
            user_id, {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}
        )
        user["language_code"] = language_code
        return user

    def _ensure_chat(self, chat_id: int, chat_type: str, user: JsonDict) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is not None:
            if chat.info["type"] != chat_type:
                raise ValueError(f"chat {chat_id} is a {chat.info['type']} chat")
            return chat
        if chat_type == "private" and chat_id != user["id"]:
            raise ValueError("a private chat's id is the user's id")
        if chat_type in GROUP_CHAT_TYPES and chat_id >= 0:
            raise ValueError("group chat ids are negative")
        if chat_type == "private":
            info: JsonDict = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
        elif chat_type in GROUP_CHAT_TYPES:
            info = {"id": chat_id, "type": chat_type, "title": f"Test group {abs(chat_id)}"}
        else:
            raise ValueError("chat_type must be 'private', 'group' or 'supergroup'")
        chat = self._chats[chat_id] = _Chat(info)
        return chat

    def _post_user_message(
        self,
        user_id: int,
        chat_id: int | None,
        chat_type: str,
        language_code: str,
        reply_to_message_id: int | None,
        content: JsonDict,
    ) -> JsonDict:
        """Stores a user's message and queues it as an update (takes the lock itself)."""
        with self._cond:
            user = self._ensure_user(user_id, language_code)
            chat = self._ensure_chat(user_id if chat_id is None else chat_id, chat_type, user)
            message: JsonDict = {
                "message_id": chat.allocate_id(),
                "from": copy.deepcopy(user),
                "chat": copy.deepcopy(chat.info),
                "date": int(time.time()),
                **copy.deepcopy(content),
            }
            if reply_to_message_id is not None:
                target = chat.live(reply_to_message_id)
                if target is None:
                    raise ValueError(f"no message {reply_to_message_id} in chat {chat.info['id']}")
                message["reply_to_message"] = _without_reply(target)
            chat.log[message["message_id"]] = message
            self._queue_update({"message": message})
            return copy.deepcopy(message)

    def _queue_update(self, body: JsonDict) -> int:
        update_id = self._next_update_id
        self._next_update_id += 1
        self._updates.append({"update_id": update_id, **copy.deepcopy(body)})
        self._cond.notify_all()
        return update_id

    def _register_raw(self, body: JsonDict) -> None:
        kind = _update_kind(body)
        payload = body[kind]
        if not isinstance(payload, dict):
            return
        self._register_user(payload.get("from"))
        self._register_message(payload, replace=kind.startswith("edited_"))
        if isinstance(payload.get("message"), dict):
            self._register_message(payload["message"], replace=False)
        if kind == "callback_query" and "id" in payload:
            self._callback_queries.add(str(payload["id"]))

    def _register_user(self, user: Any) -> None:
        if isinstance(user, dict) and isinstance(user.get("id"), int):
            self._users.setdefault(user["id"], copy.deepcopy(user))

    def _register_message(self, message: JsonDict, *, replace: bool) -> None:
        info = message.get("chat")
        if not isinstance(info, dict) or not isinstance(info.get("id"), int):
            return
        chat = self._chats.setdefault(info["id"], _Chat(copy.deepcopy(info)))
        message_id = message.get("message_id")
        if not isinstance(message_id, int):
            return
        if replace or message_id not in chat.log:
            chat.log[message_id] = copy.deepcopy(message)
        chat.next_message_id = max(chat.next_message_id, message_id + 1)

    # --- HTTP dispatch -----------------------------------------------------------------------

    def _respond(self, target: str, content_type: str, body: bytes) -> _Response:
        raw_path, _, query = target.partition("?")
        path = unquote(raw_path)
        try:
            if path.startswith("/file/bot"):
                return self._file_response(path.removeprefix("/file/bot"))
            if path.startswith("/bot"):
                return self._api_response(path.removeprefix("/bot"), query, content_type, body)
            raise _not_found()
        except _ApiError as error:
            return _json_response(error.code, error.payload())

    def _check_token(self, token: str) -> None:
        if token == self.token:
            return
        if _TOKEN_RE.fullmatch(token):
            raise _ApiError(401, "Unauthorized")
        raise _not_found()

    def _api_response(self, rest: str, query: str, content_type: str, body: bytes) -> _Response:
        token, _, method = rest.partition("/")
        self._check_token(token)
        entry = self._methods.get(method.lower())
        if entry is None:
            raise _not_found()
        params = _coerce_params(_collect_params(query, content_type, body))
        name, handler = entry
        with self._cond:
            if self._record_polls or name != "getUpdates":
                self._calls.append((name, _recordable(params)))
            faults = self._faults.get(name.lower())
            if faults:
                raise faults.popleft().error()
            result = handler(params)
            delays = self._delays.get(name.lower())
            delay = delays.popleft() if delays else 0.0
        if delay:
            # The call took effect; only its answer is late (and ends early if the stand-in stops).
            self._closing.wait(delay)
        return _json_response(200, {"ok": True, "result": result})

    def _file_response(self, rest: str) -> _Response:
        token, _, file_path = rest.partition("/")
        self._check_token(token)
        with self._cond:
            stored = self._file_paths.get(file_path)
        if stored is None:
            raise _not_found()
        mime = mimetypes.guess_type(file_path)[0] or "application/octet-stream"
        return _Response(200, stored.data, mime)

    # --- Bot API methods (called with the lock held) -----------------------------------------

    def _method_table(self) -> list[tuple[str, Callable[[JsonDict], Any]]]:
        return [
            ("getMe", self._get_me),
            ("getUpdates", self._get_updates),
            ("setWebhook", self._set_webhook),
            ("deleteWebhook", self._delete_webhook),
            ("getWebhookInfo", self._get_webhook_info),
            ("setMyCommands", self._set_my_commands),
            ("getMyCommands", self._get_my_commands),
            ("deleteMyCommands", self._delete_my_commands),
            ("sendMessage", self._send_message),
            ("editMessageText", self._edit_message_text),
            ("editMessageReplyMarkup", self._edit_message_reply_markup),
            ("deleteMessage", self._delete_message),
            ("sendChatAction", self._send_chat_action),
            ("getFile", self._get_file),
            ("answerCallbackQuery", self._answer_callback_query),
            ("close", self._true),
            ("logOut", self._true),
        ]

    def _true(self, params: JsonDict) -> bool:
        return True

    def _get_me(self, params: JsonDict) -> JsonDict:
        return {
            **self._bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _get_updates(self, params: JsonDict) -> list[JsonDict]:
        """Long poll; a newer getUpdates terminates a waiting one with 409, as Telegram does."""
        if self._webhook.get("url"):
            raise _ApiError(409, CONFLICT_WEBHOOK)
        self._poll_generation += 1
        generation = self._poll_generation
        self._cond.notify_all()
        if "allowed_updates" in params:
            self._set_allowed_updates(params["allowed_updates"])
        self._confirm_updates(int(params.get("offset") or 0))
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = max(int(params.get("timeout") or 0), 0)
        self._cond.wait_for(
            lambda: (
                self._closing.is_set()
                or generation != self._poll_generation
                or self._has_deliverable()
            ),
            timeout,
        )
        if generation != self._poll_generation:
            raise _ApiError(409, CONFLICT_POLL)
        self._has_deliverable()
        return copy.deepcopy(self._updates[:limit])

    def _set_allowed_updates(self, allowed: Any) -> None:
        if not isinstance(allowed, list):
            raise _bad_request("can't parse allowed_updates JSON object")
        self._allowed_updates = frozenset(map(str, allowed)) or None

    def _confirm_updates(self, offset: int) -> None:
        if offset > 0:
            self._updates = [item for item in self._updates if item["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

    def _has_deliverable(self) -> bool:
        """Drops queued updates of kinds the bot did not ask for; tells whether any remain."""
        allowed = self._allowed_updates
        self._updates = [
            item
            for item in self._updates
            if (allowed is None and _update_kind(item) not in OPT_IN_UPDATES)
            or (allowed is not None and _update_kind(item) in allowed)
        ]
        return bool(self._updates)

    def _set_webhook(self, params: JsonDict) -> bool:
        url = str(params.get("url") or "")
        if url and not url.startswith("https://"):
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        if "allowed_updates" in params:
            self._set_allowed_updates(params["allowed_updates"])
        self._webhook = {
            "url": url,
            "secret_token": params.get("secret_token"),
            "max_connections": params.get("max_connections") or 40,
        }
        self._poll_generation += 1
        self._cond.notify_all()
        return True

    def _delete_webhook(self, params: JsonDict) -> bool:
        self._webhook = {}
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _get_webhook_info(self, params: JsonDict) -> JsonDict:
        info: JsonDict = {
            "url": self._webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if info["url"]:
            info["max_connections"] = self._webhook["max_connections"]
            if self._allowed_updates is not None:
                info["allowed_updates"] = sorted(self._allowed_updates)
        return info

    def _commands_key(self, params: JsonDict) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(params.get("language_code") or "")

    def _set_my_commands(self, params: JsonDict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad_request("can't parse commands JSON object")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_RE.fullmatch(
                str(command.get("command", ""))
            ):
                raise _bad_request("BOT_COMMAND_INVALID")
        self._commands[self._commands_key(params)] = copy.deepcopy(commands)
        return True

    def _get_my_commands(self, params: JsonDict) -> list[JsonDict]:
        return copy.deepcopy(self._commands.get(self._commands_key(params), []))

    def _delete_my_commands(self, params: JsonDict) -> bool:
        self._commands.pop(self._commands_key(params), None)
        return True

    def _known_chat(self, params: JsonDict) -> _Chat:
        chat = self._chats.get(_chat_id(params))
        if chat is None:
            raise _bad_request("chat not found")
        return chat

    def _send_message(self, params: JsonDict) -> JsonDict:
        chat = self._known_chat(params)
        text, entities = _render_text(params)
        reply = self._reply_target(chat, params)
        markup = _inline_markup(params.get("reply_markup"))
        message: JsonDict = {
            "message_id": chat.allocate_id(),
            "from": dict(self._bot_user),
            "chat": copy.deepcopy(chat.info),
            "date": int(time.time()),
            "text": text,
        }
        if entities:
            message["entities"] = entities
        if reply is not None:
            message["reply_to_message"] = reply
        if markup is not None:
            message["reply_markup"] = markup
        chat.log[message["message_id"]] = message
        chat.bot_message_ids.append(message["message_id"])
        self._sent.append((chat.info["id"], message["message_id"], time.monotonic()))
        self._cond.notify_all()
        return copy.deepcopy(message)

    def _reply_target(self, chat: _Chat, params: JsonDict) -> JsonDict | None:
        reply = params.get("reply_parameters") or {}
        if not isinstance(reply, dict):
            raise _bad_request("can't parse reply parameters JSON object")
        target = reply.get("message_id", params.get("reply_to_message_id"))
        if target is None:
            return None
        message = chat.live(target)
        if message is not None:
            return _without_reply(message)
        if reply.get("allow_sending_without_reply", params.get("allow_sending_without_reply")):
            return None
        raise _bad_request("message to be replied not found")

    def _editable(self, params: JsonDict) -> JsonDict:
        if params.get("inline_message_id"):
            raise _bad_request("MESSAGE_ID_INVALID")
        chat = self._known_chat(params)
        if params.get("message_id") is None:
            raise _bad_request("message identifier is not specified")
        message = chat.live(params["message_id"])
        if message is None:
            raise _bad_request("message to edit not found")
        if message.get("from", {}).get("id") != self._bot_user["id"]:
            raise _bad_request("message can't be edited")
        return message

    def _edit_message_text(self, params: JsonDict) -> JsonDict:
        message = self._editable(params)
        text, entities = _render_text(params)
        if "text" not in message:
            raise _bad_request("there is no text in the message to edit")
        markup = _inline_markup(params.get("reply_markup"))
        changes = {"text": text, "entities": entities or None, "reply_markup": markup}
        return self._apply_edit(message, changes)

    def _edit_message_reply_markup(self, params: JsonDict) -> JsonDict:
        message = self._editable(params)
        markup = _inline_markup(params.get("reply_markup"))
        return self._apply_edit(message, {"reply_markup": markup})

    def _apply_edit(self, message: JsonDict, changes: JsonDict) -> JsonDict:
        if all(message.get(key) == value for key, value in changes.items()):
            raise _bad_request(NOT_MODIFIED)
        for key, value in changes.items():
            if value is None:
                message.pop(key, None)
            else:
                message[key] = value
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _delete_message(self, params: JsonDict) -> bool:
        chat = self._known_chat(params)
        message_id = params.get("message_id")
        if not isinstance(message_id, int) or chat.live(message_id) is None:
            raise _bad_request("message to delete not found")
        chat.deleted.add(message_id)
        return True

    def _send_chat_action(self, params: JsonDict) -> bool:
        self._known_chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    def _get_file(self, params: JsonDict) -> JsonDict:
        stored = self._files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise _bad_request("invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_SIZE:
            raise _bad_request("file is too big")
        if stored.path is None:
            stored.path = f"{stored.folder}/file_{stored.number}{stored.extension}"
            self._file_paths[stored.path] = stored
        return {**stored.summary(), "file_path": stored.path}

    def _answer_callback_query(self, params: JsonDict) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._callback_queries:
            raise _bad_request(CALLBACK_INVALID)
        self._callback_queries.discard(query_id)
        return True


def _render_text(params: JsonDict) -> tuple[str, list[JsonDict]]:
    """Applies parse_mode/entities to ``text`` and checks it the way sendMessage does."""
    raw = params.get("text")
    source = "" if raw is None else str(raw)
    if not source.strip():
        raise _bad_request("message text is empty")
    mode = str(params.get("parse_mode") or "").lower()
    entities = params.get("entities")
    if entities is not None:
        if not isinstance(entities, list):
            raise _bad_request("can't parse entities JSON object")
        text, parsed = source, copy.deepcopy(entities)
    elif mode == "html":
        text, parsed = _HtmlParser(source).parse()
    elif mode in ("", "markdown", "markdownv2"):
        text, parsed = source, []
    else:
        raise _bad_request(f"unsupported parse_mode: {params.get('parse_mode')}")
    text, parsed = _strip_text(text, parsed)
    if not text:
        raise _bad_request("message text is empty")
    if _utf16_len(text) > MAX_MESSAGE_LENGTH:
        raise _bad_request("message is too long")
    return text, parsed


def main(argv: list[str] | None = None) -> None:
    """Serves a stand-in until Ctrl-C (``python -m bot.standin``)."""
    parser = argparse.ArgumentParser(description="Local stand-in for the Telegram Bot API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", default="123456:TEST-TOKEN")
    parser.add_argument("--bot-username", default="skingpt_test_bot")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    api = BotAPIStandIn(args.token, host=args.host, port=args.port, bot_username=args.bot_username)
    with api:
        logger.info(
            "Bot API stand-in: base_url=%s base_file_url=%s", api.base_url, api.base_file_url
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            logger.info("Bot API stand-in stopping")


if __name__ == "__main__":
    main()
