"""A local web page for chatting with the bot when the clinic has no Telegram.

In offline clinic mode the bot talks to :class:`bot.standin.BotAPIStandIn` instead of Telegram.
`WebChat` is the user side of that stand-in as a web page: a person in the clinic opens the page,
takes or picks a photo, writes a question and reads the bot's answers, which appear as they
arrive (the page polls a JSON endpoint about once a second). Each browser is its own Telegram
user with a private chat, identified by an HttpOnly session cookie; its ``Accept-Language``
becomes that user's ``language_code``.

The server binds to 127.0.0.1 by default. Even there it refuses requests that name another host
(DNS rebinding), requires the ``X-Web-Chat: 1`` header on every POST (so other sites cannot
submit forms to it), caps uploads at 20 MB and answers every error in JSON. It never logs
message text, photos or user ids.

Endpoints (JSON unless noted)::

    GET  /                 the page (HTML); starts a session
    GET  /static/<file>    the page's script and style sheet
    GET  /api/messages     the conversation, plus "typing" and one-off "notices"
    GET  /api/photo/<id>   a small JPEG of a photo this session sent
    POST /api/text         {"text": "..."}, sent as a text message (commands work as typed)
    POST /api/upload       multipart form: "file" and optional "caption"
    POST /api/button       {"message_id": 7, "data": "..."}, an inline keyboard button press
"""

from __future__ import annotations

import contextlib
import email.message
import email.parser
import io
import ipaddress
import json
import logging
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageOps

from bot.standin import BotAPIStandIn

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest photo or file, in bytes, that the page accepts."""

MAX_TEXT_LENGTH = 4096
"""Longest text message, in UTF-16 code units, as in Telegram."""

MAX_CAPTION_LENGTH = 1024
"""Longest photo caption, in UTF-16 code units, as in Telegram."""

MAX_SESSIONS = 1000
"""Sessions kept in memory; the least recently used one is forgotten beyond this."""

SESSION_COOKIE = "skingpt_webchat"
POST_HEADER = "X-Web-Chat"
TYPING_SECONDS = 5.0
QUERY_ANSWER_SECONDS = 60.0

_FORM_OVERHEAD = 64 * 1024
_MAX_JSON_BODY = 64 * 1024
_DRAIN_LIMIT = 64 * 1024 * 1024
_THUMBNAIL_SIDE = 480
_THUMBNAILS_PER_SESSION = 100
_PHOTO_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_LANGUAGE_RE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_PHOTO_PATH_RE = re.compile(r"/api/photo/([0-9]{1,10})")
_STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Nothing from other origins, no inline script: bot text can never turn into code.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


class _ChatError(Exception):
    """A request the web chat refuses: HTTP status, a short code and what to do about it."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


_INTERNAL_ERROR = _ChatError(500, "internal", "Something went wrong. Reload the page, try again.")


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, payload: JsonDict) -> _Reply:
    return _Reply(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"))


def _error_reply(error: _ChatError) -> _Reply:
    payload = {"ok": False, "error": error.code, "description": error.description}
    return _json_reply(error.status, payload)


@dataclass(frozen=True)
class _Part:
    """One field of a multipart/form-data body."""

    data: bytes
    file_name: str | None
    mime_type: str | None

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass
class _Session:
    """One browser's user: private chat, language, and what the page needs to show."""

    user_id: int
    language_code: str
    chat_instance: str
    sent: dict[int, JsonDict] = field(default_factory=dict)
    thumbnails: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    # Button presses not yet answered by the bot, with the time they were made.
    pending_queries: dict[str, float] = field(default_factory=dict)

    def user(self) -> JsonDict:
        # Same shape and name as the stand-in gives users who write first.
        return {
            "id": self.user_id,
            "is_bot": False,
            "first_name": f"User {self.user_id}",
            "language_code": self.language_code,
        }


@dataclass
class _Activity:
    """What the bot did in one chat besides sending messages, read from the stand-in's log."""

    deleted: set[int] = field(default_factory=set)
    typing_since: float | None = None


# --- request parsing -------------------------------------------------------------------------


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _language_code(header: str | None) -> str | None:
    """The browser's preferred language as a Telegram ``language_code`` ("ar-EG" -> "ar-eg")."""
    best: tuple[float, str] | None = None
    for item in (header or "").split(","):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        if not _LANGUAGE_RE.fullmatch(tag):
            continue
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, tag.lower())
    return best[1] if best else None


def _split_host(value: str) -> tuple[str, int | None]:
    """Host name (lowercase, IPv6 without brackets) and port of a Host header or netloc."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if not port:
        return name, None
    if not port.isdigit():
        return name, -1
    return name, int(port)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _parse_form(content_type: str, body: bytes) -> dict[str, _Part]:
    """Reads a multipart/form-data body into its fields (the last one of a name wins)."""
    header = email.message.Message()
    header["Content-Type"] = content_type or "application/octet-stream"
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise _ChatError(400, "bad_form", "Send the file as multipart/form-data.")
    fields: dict[str, _Part] = {}
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise _ChatError(400, "bad_form", "The form data is incomplete; send it again.")
        headers = email.parser.HeaderParser().parsestr(head.decode("utf-8", "replace").strip())
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, str):
            mime = headers.get_content_type() if headers.get("Content-Type") else None
            fields[name] = _Part(content, headers.get_filename(), mime)
    return fields


def _json_object(body: bytes) -> JsonDict:
    try:
        decoded = json.loads(body)
    except ValueError as error:
        raise _ChatError(400, "bad_json", "The request body must be a JSON object.") from error
    if not isinstance(decoded, dict):
        raise _ChatError(400, "bad_json", "The request body must be a JSON object.")
    return decoded


# --- photos ----------------------------------------------------------------------------------


def _open_image(data: bytes) -> Image.Image | None:
    """The image in `data` if it is one Telegram would send as a photo, else None."""
    try:
        with warnings.catch_warnings():
            # A decompression bomb is not refused outright, it just goes as a file.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None
    if picture.format not in _PHOTO_FORMATS:
        picture.close()
        return None
    return picture


def _thumbnail(picture: Image.Image) -> bytes | None:
    """A small JPEG to show the sender their own photo; None if the image cannot be decoded."""
    try:
        # JPEGs decode straight at a fraction of their size, much faster than in full.
        picture.draft("RGB", (_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
        upright = ImageOps.exif_transpose(picture)
        upright.thumbnail((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        upright.convert("RGB").save(buffer, "JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return buffer.getvalue()


# --- conversation view -----------------------------------------------------------------------


def _excerpt(message: JsonDict) -> JsonDict:
    text = message.get("text", message.get("caption"))
    if "photo" in message:
        kind = "photo"
    elif "document" in message:
        kind = "document"
    else:
        kind = "text"
    view: JsonDict = {"id": message.get("message_id"), "kind": kind}
    if isinstance(text, str):
        view["text"] = text[:120]
    return view


def _button_view(button: JsonDict) -> JsonDict:
    view: JsonDict = {"text": str(button.get("text", ""))}
    if "callback_data" in button:
        view["data"] = str(button["callback_data"])
    elif isinstance(button.get("url"), str):
        view["url"] = button["url"]
    else:
        # Inline queries, games, payments and web apps do not exist in the web chat.
        view["unsupported"] = True
    return view


def _message_view(message: JsonDict, sender: str, photo_url: str | None) -> JsonDict:
    """What the page needs of a Telegram Message dict, with text and entities untouched."""
    view: JsonDict = {"id": message["message_id"], "from": sender}
    if "text" in message:
        view["text"] = message["text"]
        view["entities"] = message.get("entities", [])
    elif "caption" in message:
        view["text"] = message["caption"]
        view["entities"] = message.get("caption_entities", [])
    if "photo" in message:
        view["photo"] = photo_url
    document = message.get("document")
    if isinstance(document, dict):
        view["document"] = {
            "name": document.get("file_name") or "",
            "size": document.get("file_size"),
        }
    if "edit_date" in message:
        view["edited"] = True
    reply = message.get("reply_to_message")
    if isinstance(reply, dict):
        view["reply_to"] = _excerpt(reply)
    rows = (message.get("reply_markup") or {}).get("inline_keyboard")
    if isinstance(rows, list):
        view["buttons"] = [[_button_view(button) for button in row] for row in rows]
    return view


def _has_button(message: JsonDict, data: str) -> bool:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return any(button.get("callback_data") == data for row in rows for button in row)


# --- HTTP plumbing ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat: WebChat) -> None:
        self.chat = chat
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the machine's name, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Ends idle keep-alive connections, so a stopped web chat really stops answering."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Web chat connection error: %r", sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SkinGPT-WebChat"
    sys_version = ""
    # Seconds a client may stay silent, so stalled connections do not pile up.
    timeout = 60
    server: _Server
    body_consumed = False

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _refuse_method(self) -> None:
        self._serve_error(_ChatError(405, "method_not_allowed", "Use GET or POST."))

    do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse_method

    def send_error(
        self, code: int, message: str | None = None, explain: str | None = None
    ) -> None:
        # http.server answers malformed requests itself, in HTML; keep every answer JSON.
        self.close_connection = True
        self._write(_error_reply(_ChatError(code, "bad_request", "The request is malformed.")))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("Web chat answered %s with %s", self.command, code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Web chat HTTP: %s", format)

    def read_body(self, limit: int) -> bytes:
        """The request body, refused when it is larger than `limit` bytes."""
        self.body_consumed = True
        length = self._content_length()
        if length > limit:
            self._discard(length)
            if limit < MAX_UPLOAD_BYTES:
                raise _ChatError(413, "request_too_large", "The request is too large.")
            raise _ChatError(
                413, "too_large", "The file is larger than 20 MB. Send a smaller photo."
            )
        return self.rfile.read(length) if length else b""

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _ChatError(411, "length_required", "Send the request with a Content-Length.")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as error:
            self.close_connection = True
            raise _ChatError(400, "bad_request", "The Content-Length is not a number.") from error
        if length < 0:
            self.close_connection = True
            raise _ChatError(400, "bad_request", "The Content-Length is negative.")
        return length

    def _discard(self, length: int) -> None:
        # Reading what the browser sends anyway lets it see the answer instead of a reset.
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1024 * 1024))
            if not chunk:
                self.close_connection = True
                break
            length -= len(chunk)

    def _discard_body(self) -> None:
        """Skips a body the answer did not need, keeping the connection usable."""
        self.body_consumed = True
        try:
            self._discard(self._content_length())
        except _ChatError:
            self.close_connection = True

    def _serve(self) -> None:
        self.body_consumed = False
        try:
            reply = self.server.chat._answer(self)
        except _ChatError as error:
            reply = _error_reply(error)
        except Exception:
            logger.exception("Web chat failed to answer a %s request", self.command)
            reply = _error_reply(_INTERNAL_ERROR)
        if not self.body_consumed:
            self._discard_body()
        self._write(reply)

    def _serve_error(self, error: _ChatError) -> None:
        self._discard_body()
        if not self.server.chat._host_allowed(self.headers.get("Host")):
            error = _ChatError(403, "bad_host", "Open the web chat at its own address.")
        self._write(_error_reply(error))

    def _write(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in {**_SECURITY_HEADERS, **reply.headers}.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True
            logger.debug("Web chat client went away before the answer")


# --- the web chat ----------------------------------------------------------------------------


class WebChat:
    """A browser chat with the bot, on top of a running Bot API stand-in.

    Example:
        >>> with BotAPIStandIn() as api, WebChat(api, port=0) as chat:  # doctest: +SKIP
        ...     print("Open", chat.url)

    Args:
        api: The stand-in the bot polls; it must be started before the web chat is used.
        host: Interface to listen on. Keep 127.0.0.1 unless phones on the clinic's own network
            must reach the page; then give this machine's address on that network.
        port: TCP port; 0 picks a free one (see `url` after `start`).
    """

    def __init__(self, api: BotAPIStandIn, *, host: str = "127.0.0.1", port: int = 8080) -> None:
        self._api = api
        self._host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._user_ids: set[int] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._static: dict[str, bytes] = {}
        self._log_lock = threading.Lock()
        self._calls_read = 0
        self._activity: dict[int, _Activity] = {}
        self._query_ids: set[str] = set()
        self._answers: dict[str, JsonDict] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> WebChat:
        """Serves the page in a daemon thread.

        Returns:
            The web chat itself, for chaining.

        Raises:
            RuntimeError: When it was started before.
            OSError: When the address cannot be bound (for example, the port is taken).
        """
        if self._server is not None or self._stopped:
            raise RuntimeError("the web chat was already started")
        self._static = {
            name: resources.files("bot").joinpath("static", name).read_bytes()
            for name, _ in _STATIC_FILES.values()
        }
        self._server = _Server((self._host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="web-chat",
            daemon=True,
        )
        self._thread.start()
        logger.info("Web chat listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stops serving and closes every connection. Safe to call more than once."""
        self._stopped = True
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        logger.info("Web chat stopped")

    def __enter__(self) -> WebChat:
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
            raise RuntimeError("start the web chat first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    # --- request checks ----------------------------------------------------------------------

    def _host_allowed(self, header: str | None) -> bool:
        """Whether a Host header names this server (anything else may be DNS rebinding)."""
        if not header or self._server is None:
            return False
        name, port = _split_host(header)
        if (port if port is not None else 80) != self.port:
            return False
        if name in ("localhost", self._host.lower()):
            return True
        # Bound to every interface, the page is reached by any of this machine's addresses;
        # an address typed as digits cannot be re-pointed by a hostile DNS server.
        return self._host in _WILDCARD_HOSTS and _is_ip_literal(name)

    def _check_post(self, handler: _Handler) -> None:
        if handler.headers.get(POST_HEADER) != "1":
            raise _ChatError(403, "missing_header", f"Send POST requests with {POST_HEADER}: 1.")
        origin = handler.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme != "http" or not self._host_allowed(parts.netloc):
                raise _ChatError(403, "bad_origin", "Requests from other sites are refused.")

    # --- sessions ----------------------------------------------------------------------------

    def _session(self, handler: _Handler) -> _Session | None:
        cookie = SimpleCookie()
        try:
            cookie.load(handler.headers.get("Cookie") or "")
        except CookieError:
            return None
        morsel = cookie.get(SESSION_COOKIE)
        if morsel is None:
            return None
        with self._lock:
            session = self._sessions.get(morsel.value)
            if session is None:
                return None
            self._sessions.move_to_end(morsel.value)
            language = _language_code(handler.headers.get("Accept-Language"))
            if language is not None:
                session.language_code = language
            return session

    def _require_session(self, handler: _Handler) -> _Session:
        session = self._session(handler)
        if session is None:
            raise _ChatError(401, "no_session", "The chat session has ended. Reload the page.")
        return session

    def _new_session(self, handler: _Handler) -> tuple[str, _Session]:
        token = secrets.token_urlsafe(32)
        language = _language_code(handler.headers.get("Accept-Language")) or "en"
        forgotten = []
        with self._lock:
            user_id = secrets.randbelow(9 * 10**9) + 10**9
            while user_id in self._user_ids:
                user_id = secrets.randbelow(9 * 10**9) + 10**9
            self._user_ids.add(user_id)
            session = _Session(user_id, language, str(secrets.randbits(62)))
            self._sessions[token] = session
            while len(self._sessions) > MAX_SESSIONS:
                forgotten.append(self._sessions.popitem(last=False)[1].user_id)
                self._user_ids.discard(forgotten[-1])
        with self._log_lock:
            self._activity[user_id] = _Activity()
            for old_id in forgotten:
                self._activity.pop(old_id, None)
        logger.info("Web chat session started")
        return token, session

    # --- routing -----------------------------------------------------------------------------

    def _answer(self, handler: _Handler) -> _Reply:
        """Answers one request; raises _ChatError for anything refused."""
        if not self._host_allowed(handler.headers.get("Host")):
            logger.warning("Web chat refused a request addressed to another host name")
            handler.close_connection = True
            raise _ChatError(403, "bad_host", "Open the web chat at its own address.")
        path = handler.path.partition("?")[0]
        if handler.command == "GET":
            return self._get(handler, path)
        self._check_post(handler)
        routes = {
            "/api/text": self._post_text,
            "/api/upload": self._post_upload,
            "/api/button": self._post_button,
        }
        route = routes.get(path)
        if route is None:
            raise _ChatError(404, "not_found", "There is nothing at this address.")
        session = self._require_session(handler)
        limit = MAX_UPLOAD_BYTES + _FORM_OVERHEAD if path == "/api/upload" else _MAX_JSON_BODY
        body = handler.read_body(limit)
        return _json_reply(200, {"ok": True, "message": route(session, handler, body)})

    def _get(self, handler: _Handler, path: str) -> _Reply:
        if path in _STATIC_FILES:
            name, content_type = _STATIC_FILES[path]
            reply = _Reply(200, self._static[name], content_type)
            if path == "/" and self._session(handler) is None:
                token, _ = self._new_session(handler)
                reply.headers["Set-Cookie"] = (
                    f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                )
            return reply
        if path == "/favicon.ico":
            return _Reply(204, b"", "image/x-icon")
        if path == "/api/messages":
            return _json_reply(200, self._conversation(self._require_session(handler)))
        match = _PHOTO_PATH_RE.fullmatch(path)
        if match is not None:
            session = self._require_session(handler)
            with self._lock:
                data = session.thumbnails.get(int(match.group(1)))
            if data is None:
                raise _ChatError(404, "not_found", "This photo is not available any more.")
            return _Reply(200, data, "image/jpeg")
        raise _ChatError(404, "not_found", "There is nothing at this address.")

    # --- the user's side ---------------------------------------------------------------------

    def _post_text(self, session: _Session, handler: _Handler, body: bytes) -> JsonDict:
        text = _json_object(body).get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ChatError(400, "empty_text", "Write a message first.")
        text = text.strip()
        if _utf16_len(text) > MAX_TEXT_LENGTH:
            raise _ChatError(
                400, "text_too_long", f"Messages can be {MAX_TEXT_LENGTH} characters at most."
            )
        message = self._api.send_text(session.user_id, text, language_code=session.language_code)
        return self._remember(session, message, None)

    def _post_upload(self, session: _Session, handler: _Handler, body: bytes) -> JsonDict:
        form = _parse_form(handler.headers.get("Content-Type", ""), body)
        upload = form.get("file")
        if upload is None or not upload.data:
            raise _ChatError(400, "no_file", "Choose a photo first.")
        if len(upload.data) > MAX_UPLOAD_BYTES:
            raise _ChatError(
                413, "too_large", "The file is larger than 20 MB. Send a smaller photo."
            )
        caption = form["caption"].text().strip() if "caption" in form else ""
        if _utf16_len(caption) > MAX_CAPTION_LENGTH:
            raise _ChatError(
                400,
                "caption_too_long",
                f"A question sent with a photo can be {MAX_CAPTION_LENGTH} characters at most; "
                "send the photo first and the question as its own message.",
            )
        picture = _open_image(upload.data)
        if picture is not None:
            with picture:
                thumbnail = _thumbnail(picture)
            if thumbnail is not None:
                message = self._send_photo(session, upload.data, caption or None)
                if message is not None:
                    return self._remember(session, message, thumbnail)
        message = self._api.send_document(
            session.user_id,
            upload.data,
            file_name=upload.file_name or None,
            mime_type=upload.mime_type,
            caption=caption or None,
            language_code=session.language_code,
        )
        return self._remember(session, message, None)

    def _send_photo(self, session: _Session, data: bytes, caption: str | None) -> JsonDict | None:
        try:
            return self._api.send_photo(
                session.user_id, data, caption=caption, language_code=session.language_code
            )
        except ValueError:
            # Pillow read the header but not the pixels; Telegram would deliver it as a file.
            return None

    def _post_button(self, session: _Session, handler: _Handler, body: bytes) -> JsonDict:
        request = _json_object(body)
        message_id, data = request.get("message_id"), request.get("data")
        if not isinstance(message_id, int) or not isinstance(data, str):
            raise _ChatError(400, "bad_button", "Send the message_id and the button's data.")
        message = self._live_bot_message(session.user_id, message_id)
        if message is None or not _has_button(message, data):
            raise _ChatError(409, "stale_button", "This button is no longer available.")
        query_id = str(secrets.randbits(63))
        with self._lock:
            session.pending_queries[query_id] = time.monotonic()
        with self._log_lock:
            self._query_ids.add(query_id)
        query = {
            "id": query_id,
            "from": session.user(),
            "message": message,
            "chat_instance": session.chat_instance,
            "data": data,
        }
        self._api.send_update({"callback_query": query})
        return {"id": message_id, "pressed": data}

    def _remember(self, session: _Session, message: JsonDict, thumbnail: bytes | None) -> JsonDict:
        message_id = message["message_id"]
        with self._lock:
            session.sent[message_id] = message
            if thumbnail is not None:
                session.thumbnails[message_id] = thumbnail
                while len(session.thumbnails) > _THUMBNAILS_PER_SESSION:
                    session.thumbnails.popitem(last=False)
        return _message_view(message, "user", self._photo_url(message_id, thumbnail is not None))

    @staticmethod
    def _photo_url(message_id: int, available: bool) -> str | None:
        return f"/api/photo/{message_id}" if available else None

    # --- the bot's side ---------------------------------------------------------------------

    def _read_call_log(self) -> None:
        """Brings deletions, chat actions and button answers up to date from the stand-in's log.

        The stand-in keeps deleted messages in `messages` and records the rest only as calls,
        so the log is read once per poll, from where the last reading stopped.
        """
        with self._log_lock:
            calls = self._api.calls()
            now = time.monotonic()
            for name, params in calls[self._calls_read :]:
                chat_id = params.get("chat_id")
                if name == "answerCallbackQuery":
                    query_id = str(params.get("callback_query_id"))
                    if query_id in self._query_ids:
                        self._answers[query_id] = params
                    continue
                activity = self._activity.get(chat_id) if isinstance(chat_id, int) else None
                if activity is None:
                    continue
                if name == "deleteMessage" and isinstance(params.get("message_id"), int):
                    activity.deleted.add(params["message_id"])
                elif name == "sendChatAction":
                    activity.typing_since = now
                elif name == "sendMessage":
                    # Telegram clients stop showing "typing" when the bot's message arrives.
                    activity.typing_since = None
            self._calls_read = len(calls)

    def _chat_activity(self, chat_id: int) -> tuple[set[int], bool]:
        """Deleted message ids of a chat, and whether the bot is typing there now."""
        with self._log_lock:
            activity = self._activity.get(chat_id) or _Activity()
            since = activity.typing_since
            typing = since is not None and time.monotonic() - since < TYPING_SECONDS
            return set(activity.deleted), typing

    def _live_bot_message(self, chat_id: int, message_id: int) -> JsonDict | None:
        self._read_call_log()
        deleted, _ = self._chat_activity(chat_id)
        if message_id in deleted:
            return None
        return next(
            (m for m in self._api.messages(chat_id) if m["message_id"] == message_id), None
        )

    def _conversation(self, session: _Session) -> JsonDict:
        chat_id = session.user_id
        self._read_call_log()
        deleted, typing = self._chat_activity(chat_id)
        bot_messages = self._api.messages(chat_id)
        notices = self._notices(session)
        with self._lock:
            own = list(session.sent.values())
            thumbnails = set(session.thumbnails)
        entries = [(m, "user") for m in own] + [(m, "bot") for m in bot_messages]
        entries.sort(key=lambda entry: int(entry[0]["message_id"]))
        messages = [
            _message_view(message, sender, self._photo_url(message_id, message_id in thumbnails))
            for message, sender in entries
            if (message_id := message["message_id"]) not in deleted
        ]
        return {"ok": True, "messages": messages, "typing": typing, "notices": notices}

    def _notices(self, session: _Session) -> list[JsonDict]:
        """Texts the bot answered this session's button presses with, each handed out once."""
        expired = time.monotonic() - QUERY_ANSWER_SECONDS
        with self._lock:
            pending = dict(session.pending_queries)
        done, notices = [], []
        with self._log_lock:
            for query_id, pressed in pending.items():
                answer = self._answers.pop(query_id, None)
                if answer is None and pressed >= expired:
                    continue
                self._query_ids.discard(query_id)
                done.append(query_id)
                if answer is not None and answer.get("text"):
                    text = str(answer["text"])
                    notices.append({"text": text, "alert": bool(answer.get("show_alert"))})
        with self._lock:
            for query_id in done:
                session.pending_queries.pop(query_id, None)
        return notices
