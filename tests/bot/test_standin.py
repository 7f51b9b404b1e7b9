"""Tests for the Bot API stand-in, driven by real clients: PTB's Bot and raw httpx."""

from __future__ import annotations

import asyncio
import datetime as dtm
import io
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Conflict, InvalidToken, RetryAfter
from telegram.ext import Application, ApplicationBuilder, ContextTypes, MessageHandler, filters

from bot.standin import MAX_DOWNLOAD_SIZE, BotAPIStandIn

TOKEN = "123456:TEST-TOKEN"
USER = 4242
T = TypeVar("T")


@pytest.fixture
def api() -> Iterator[BotAPIStandIn]:
    with BotAPIStandIn(TOKEN) as standin:
        yield standin


def with_bot(api: BotAPIStandIn, action: Callable[[Bot], Awaitable[T]], token: str = TOKEN) -> T:
    """Runs `action` with an initialised PTB Bot pointed at the stand-in."""

    async def main() -> T:
        async with Bot(token, base_url=api.base_url, base_file_url=api.base_file_url) as bot:
            return await action(bot)

    return asyncio.run(main())


def raw(api: BotAPIStandIn, method: str, token: str = TOKEN, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{api.base_url}{token}/{method}", timeout=10, **kwargs)


def make_image(width: int, height: int, fmt: str = "PNG", orientation: int | None = None) -> bytes:
    picture = Image.new("RGB", (width, height), (200, 120, 90))
    picture.paste((30, 60, 200), (0, 0, width // 2, height // 2))
    buffer = io.BytesIO()
    if orientation is None:
        picture.save(buffer, fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.timeout(10)
def test_get_me_through_ptb(api: BotAPIStandIn) -> None:
    me = with_bot(api, lambda bot: bot.get_me())

    assert me.is_bot
    assert me.id == 123456
    assert me.username == "skingpt_test_bot"
    assert me.can_join_groups
    assert me.can_read_all_group_messages is False
    assert me.supports_inline_queries is False
    assert [name for name, _ in api.calls()] == ["getMe", "getMe"]


@pytest.mark.timeout(10)
def test_photo_update_parsed_and_largest_downloadable(api: BotAPIStandIn) -> None:
    api.send_photo(USER, make_image(1600, 900), caption="itchy spot")

    async def fetch(bot: Bot) -> tuple[Update, bytearray]:
        (update,) = await bot.get_updates(timeout=0)
        assert update.message is not None
        largest = await update.message.photo[-1].get_file()
        return update, await largest.download_as_bytearray()

    update, data = with_bot(api, fetch)

    assert update.message is not None
    assert update.message.caption == "itchy spot"
    assert [(size.width, size.height) for size in update.message.photo] == [
        (90, 51),
        (320, 180),
        (800, 450),
        (1280, 720),
    ]
    assert all(size.file_size for size in update.message.photo)
    with Image.open(io.BytesIO(data)) as downloaded:
        assert downloaded.format == "JPEG"
        assert downloaded.size == (1280, 720)


@pytest.mark.timeout(10)
def test_photo_renditions_small_and_exif_rotated(api: BotAPIStandIn) -> None:
    small = api.send_photo(USER, make_image(60, 40))
    rotated = api.send_photo(USER, make_image(400, 200, "JPEG", orientation=6))

    assert [(s["width"], s["height"]) for s in small["photo"]] == [(60, 40)]
    assert [(s["width"], s["height"]) for s in rotated["photo"]] == [
        (45, 90),
        (160, 320),
        (200, 400),
    ]


@pytest.mark.timeout(10)
def test_photo_rejects_bytes_that_are_no_image(api: BotAPIStandIn) -> None:
    with pytest.raises(ValueError, match="Pillow"):
        api.send_photo(USER, b"not an image")


@pytest.mark.timeout(10)
def test_document_round_trip_byte_for_byte(api: BotAPIStandIn) -> None:
    payload = bytes(range(256)) * 400
    api.send_document(USER, payload, file_name="scan.pdf", mime_type="application/pdf")

    async def fetch(bot: Bot) -> tuple[Update, bytearray, str]:
        (update,) = await bot.get_updates(timeout=0)
        assert update.message is not None and update.message.document is not None
        file = await update.message.document.get_file()
        return update, await file.download_as_bytearray(), str(file.file_path)

    update, data, path = with_bot(api, fetch)

    assert update.message is not None and update.message.document is not None
    assert update.message.document.file_name == "scan.pdf"
    assert update.message.document.mime_type == "application/pdf"
    assert update.message.document.file_size == len(payload)
    assert bytes(data) == payload
    assert path.endswith(".pdf") and "/documents/file_" in path


@pytest.mark.timeout(10)
def test_document_without_name_or_type_omits_them(api: BotAPIStandIn) -> None:
    message = api.send_document(USER, b"\x00\x01", file_name=None, mime_type=None)

    assert set(message["document"]) == {"file_id", "file_unique_id", "file_size"}


@pytest.mark.timeout(15)
def test_get_file_too_big_raises_bad_request(api: BotAPIStandIn) -> None:
    at_limit = api.send_document(USER, bytes(MAX_DOWNLOAD_SIZE), file_name="a", mime_type=None)
    over = api.send_document(USER, bytes(MAX_DOWNLOAD_SIZE + 1), file_name="b", mime_type=None)

    async def fetch(bot: Bot) -> None:
        assert (await bot.get_file(at_limit["document"]["file_id"])).file_size == MAX_DOWNLOAD_SIZE
        with pytest.raises(BadRequest, match="File is too big"):
            await bot.get_file(over["document"]["file_id"])
        with pytest.raises(BadRequest, match="Invalid file_id"):
            await bot.get_file("no-such-file")

    with_bot(api, fetch)


@pytest.mark.timeout(10)
def test_file_download_unknown_path_is_not_found(api: BotAPIStandIn) -> None:
    response = httpx.get(f"{api.base_file_url}{TOKEN}/photos/file_99.jpg", timeout=5)

    assert response.status_code == 404
    assert response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


@pytest.mark.timeout(10)
def test_send_message_recorded_and_waitable(api: BotAPIStandIn) -> None:
    api.send_text(USER, "/start")
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="consent:yes")]])

    sent = with_bot(api, lambda bot: bot.send_message(USER, "Welcome!", reply_markup=keyboard))

    assert sent.text == "Welcome!"
    assert sent.reply_markup == keyboard
    assert sent.from_user is not None and sent.from_user.is_bot
    (message,) = api.wait_for_messages(USER, 1, timeout=1)
    assert message["text"] == "Welcome!"
    assert message["message_id"] == 2
    assert message["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "consent:yes"
    ((_, params),) = api.calls("sendmessage")
    assert params["chat_id"] == USER
    assert params["reply_markup"] == keyboard.to_dict()


@pytest.mark.timeout(10)
def test_wait_for_messages_timeout_shows_what_arrived(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    with_bot(api, lambda bot: bot.send_message(USER, "only one"))

    with pytest.raises(AssertionError, match="got 1: \\['only one'\\]"):
        api.wait_for_messages(USER, 2, timeout=0.2)


@pytest.mark.timeout(10)
def test_sent_lists_every_chat_in_arrival_order_with_receive_times(api: BotAPIStandIn) -> None:
    other = USER + 1
    api.send_text(USER, "hi")
    api.send_text(other, "hello")
    assert api.sent() == []
    before = time.monotonic()

    async def three(bot: Bot) -> None:
        await bot.send_message(USER, "first")
        await bot.send_message(other, "second")
        edited = await bot.send_message(USER, "third")
        await edited.edit_text("third, edited")

    with_bot(api, three)
    after = time.monotonic()

    first, second, third = api.sent()
    assert [m.position for m in (first, second, third)] == [1, 2, 3]
    assert [m.chat_id for m in (first, second, third)] == [USER, other, USER]
    assert [m.message["text"] for m in (first, second, third)] == [
        "first",
        "second",
        "third, edited",
    ]
    assert before <= first.received <= second.received <= third.received <= after
    assert [m.message["text"] for m in api.sent(after=2)] == ["third, edited"]
    assert api.sent(after=3) == []


@pytest.mark.timeout(10)
def test_sent_waits_for_the_next_message_from_another_thread(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    with_bot(api, lambda bot: bot.send_message(USER, "one"))
    later = threading.Timer(0.2, lambda: with_bot(api, lambda bot: bot.send_message(USER, "two")))
    later.start()

    (waited,) = api.sent(after=1, timeout=5)
    later.join()

    assert waited.position == 2 and waited.message["text"] == "two"
    assert api.sent(after=2, timeout=0.05) == []


@pytest.mark.timeout(10)
def test_send_message_unknown_chat_and_empty_text(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")

    async def attempt(bot: Bot) -> None:
        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.send_message(999, "hello")
        with pytest.raises(BadRequest, match="Message text is empty"):
            await bot.send_message(USER, "  \n ")

    with_bot(api, attempt)


@pytest.mark.timeout(10)
def test_send_message_length_counts_utf16_units(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")

    async def attempt(bot: Bot) -> None:
        await bot.send_message(USER, "😀" * 2048)
        with pytest.raises(BadRequest, match="Message is too long"):
            await bot.send_message(USER, "😀" * 2049)
        await bot.send_message(USER, f"<b>{'x' * 4096}</b>", parse_mode="HTML")

    with_bot(api, attempt)
    assert [len(m["text"]) for m in api.messages(USER)] == [2048, 4096]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "text",
    [
        "1 < 2",
        "R&D",
        "<b>unclosed",
        "<b>x</i>",
        "x</b>",
        "<blink>x</blink>",
        "&nbsp;",
        "<span>x</span>",
    ],
)
def test_send_message_html_errors(api: BotAPIStandIn, text: str) -> None:
    api.send_text(USER, "hi")

    async def attempt(bot: Bot) -> None:
        with pytest.raises(BadRequest, match="Can't parse entities"):
            await bot.send_message(USER, text, parse_mode="HTML")

    with_bot(api, attempt)
    assert api.messages(USER) == []


@pytest.mark.timeout(10)
def test_send_message_html_entities_parsed(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    text = '<b>Risk</b> &lt;low&gt; &amp; &#128512; <a href="https://x.org/?a=1&amp;b=2">more</a>'

    sent = with_bot(api, lambda bot: bot.send_message(USER, text, parse_mode="HTML"))

    assert sent.text == "Risk <low> & 😀 more"
    assert [(e.type, e.offset, e.length, e.url) for e in sent.entities] == [
        ("bold", 0, 4, None),
        ("text_link", 16, 4, "https://x.org/?a=1&b=2"),
    ]
    assert (
        sent.text_html
        == '<b>Risk</b> &lt;low&gt; &amp; 😀 <a href="https://x.org/?a=1&b=2">more</a>'
    )


@pytest.mark.timeout(10)
def test_send_message_html_pre_code_language_and_nesting(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    text = '<b>a<i>b</i></b> > <pre><code class="language-python">x = 1</code></pre>'

    sent = with_bot(api, lambda bot: bot.send_message(USER, text, parse_mode="HTML"))

    assert sent.text == "ab > x = 1"
    assert [(e.type, e.offset, e.length, e.language) for e in sent.entities] == [
        ("bold", 0, 2, None),
        ("italic", 1, 1, None),
        ("pre", 5, 5, "python"),
    ]


@pytest.mark.timeout(10)
def test_edit_message_text_and_not_modified(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="cancel")]])

    async def edit(bot: Bot) -> None:
        sent = await bot.send_message(USER, "Queued…", reply_markup=keyboard)
        with pytest.raises(BadRequest, match="Message is not modified"):
            await bot.edit_message_text("Queued…", USER, sent.message_id, reply_markup=keyboard)
        await bot.edit_message_text("Analysing…", USER, sent.message_id, reply_markup=keyboard)
        await bot.edit_message_reply_markup(USER, sent.message_id)
        with pytest.raises(BadRequest, match="Message to edit not found"):
            await bot.edit_message_text("x", USER, 999)
        with pytest.raises(BadRequest, match="Message can't be edited"):
            await bot.edit_message_text("x", USER, 1)

    with_bot(api, edit)
    (message,) = api.messages(USER)
    assert message["text"] == "Analysing…"
    assert "reply_markup" not in message
    assert "edit_date" in message


@pytest.mark.timeout(10)
def test_delete_message_keeps_log_and_blocks_edits(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")

    async def delete(bot: Bot) -> None:
        sent = await bot.send_message(USER, "Working…")
        assert await bot.delete_message(USER, sent.message_id)
        with pytest.raises(BadRequest, match="Message to delete not found"):
            await bot.delete_message(USER, sent.message_id)
        with pytest.raises(BadRequest, match="Message to edit not found"):
            await bot.edit_message_text("x", USER, sent.message_id)
        assert await bot.send_chat_action(USER, "typing")

    with_bot(api, delete)
    assert [m["text"] for m in api.messages(USER)] == ["Working…"]
    assert api.calls("sendChatAction")[0][1] == {"chat_id": USER, "action": "typing"}


@pytest.mark.timeout(10)
def test_fail_next_429_raises_retry_after(
    api: BotAPIStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    api.send_text(USER, "hi")
    api.fail_next("sendMessage", 429, "Too Many Requests: retry after 7", retry_after=7)

    async def attempt(bot: Bot) -> None:
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(USER, "first")
        assert caught.value.retry_after == dtm.timedelta(seconds=7)
        await bot.send_message(USER, "second")

    with_bot(api, attempt)
    assert [m["text"] for m in api.messages(USER)] == ["second"]
    assert len(api.calls("sendMessage")) == 2


@pytest.mark.timeout(10)
def test_fail_next_raw_payload_and_count(api: BotAPIStandIn) -> None:
    api.fail_next("getMe", 502, "Bad Gateway", count=2)

    codes = [raw(api, "getMe").status_code for _ in range(3)]

    assert codes == [502, 502, 200]
    with pytest.raises(ValueError, match="does not serve"):
        api.fail_next("sendPoll", 400, "x")


@pytest.mark.timeout(10)
def test_wrong_token_unauthorized(api: BotAPIStandIn) -> None:
    response = raw(api, "getMe", token="123456:WRONG")
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert raw(api, "getMe", token="not-a-token").status_code == 404

    async def attempt() -> None:
        bot = Bot("123456:WRONG", base_url=api.base_url, base_file_url=api.base_file_url)
        with pytest.raises(InvalidToken):
            async with bot:
                pass

    asyncio.run(attempt())
    assert api.calls() == []


@pytest.mark.timeout(10)
def test_unknown_method_and_case_insensitive_names(api: BotAPIStandIn) -> None:
    response = raw(api, "sendPoll")
    assert response.status_code == 404
    assert response.json()["description"] == "Not Found"

    response = httpx.get(f"{api.base_url}{TOKEN}/GETME", timeout=5)
    assert response.status_code == 200
    assert response.json()["result"]["username"] == "skingpt_test_bot"
    assert api.calls() == [("getMe", {})]


@pytest.mark.timeout(10)
def test_params_from_query_json_form_and_multipart(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    markup = {"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}

    assert httpx.get(f"{api.base_url}{TOKEN}/sendMessage?chat_id={USER}&text=q").is_success
    assert raw(api, "sendMessage", json={"chat_id": USER, "text": "j", "reply_markup": markup})
    form = {"chat_id": str(USER), "text": "42", "disable_notification": "true"}
    assert raw(api, "sendMessage", data=form).is_success
    files = {"thumbnail": ("t.jpg", b"\xff\xd8", "image/jpeg")}
    assert raw(api, "sendMessage", data={"chat_id": str(USER), "text": "m"}, files=files)

    recorded = [params for _, params in api.calls("sendMessage")]
    assert recorded[0] == {"chat_id": USER, "text": "q"}
    assert recorded[1]["reply_markup"] == markup
    assert recorded[2] == {"chat_id": USER, "text": "42", "disable_notification": True}
    assert recorded[3]["thumbnail"] == {"file_name": "t.jpg", "mime_type": "image/jpeg", "size": 2}
    assert [m["text"] for m in api.messages(USER)] == ["q", "j", "42", "m"]


@pytest.mark.timeout(10)
def test_bad_reply_markup_and_callback_data(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    too_long = {"inline_keyboard": [[{"text": "A", "callback_data": "x" * 65}]]}

    broken = raw(api, "sendMessage", data={"chat_id": USER, "text": "t", "reply_markup": "{"})
    long_data = raw(
        api, "sendMessage", json={"chat_id": USER, "text": "t", "reply_markup": too_long}
    )

    assert broken.status_code == 400
    assert "can't parse reply keyboard markup" in broken.json()["description"]
    assert long_data.json()["description"] == "Bad Request: BUTTON_DATA_INVALID"


@pytest.mark.timeout(10)
def test_get_updates_long_poll_wakes_and_offset_confirms(api: BotAPIStandIn) -> None:
    async def poll(bot: Bot) -> tuple[float, tuple[Update, ...], tuple[Update, ...]]:
        started = time.monotonic()
        waiting = asyncio.create_task(bot.get_updates(timeout=10))
        await asyncio.sleep(0.3)
        api.send_text(USER, "hello")
        updates = await waiting
        elapsed = time.monotonic() - started
        after = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
        return elapsed, updates, after

    elapsed, updates, after = with_bot(api, poll)

    assert elapsed < 2
    assert [u.message.text for u in updates if u.message] == ["hello"]
    assert after == ()
    assert api.calls("getUpdates")[0][1]["timeout"] == 10


@pytest.mark.timeout(10)
def test_get_updates_limit_and_negative_offset(api: BotAPIStandIn) -> None:
    ids = [api.send_update({"message": {"message_id": i, "text": str(i)}}) for i in range(1, 6)]

    first_two = raw(api, "getUpdates", data={"limit": "2"}).json()["result"]
    last_one = raw(api, "getUpdates", data={"offset": "-1"}).json()["result"]

    assert [u["update_id"] for u in first_two] == ids[:2]
    assert [u["update_id"] for u in last_one] == ids[-1:]


@pytest.mark.timeout(10)
def test_get_updates_conflict_terminates_older_poll(api: BotAPIStandIn) -> None:
    def make_bot() -> Bot:
        return Bot(TOKEN, base_url=api.base_url, base_file_url=api.base_file_url)

    async def two_instances() -> tuple[object, tuple[Update, ...]]:
        async with make_bot() as first, make_bot() as second:
            older = asyncio.create_task(first.get_updates(timeout=5))
            await asyncio.sleep(0.3)
            newer = asyncio.create_task(second.get_updates(timeout=5))
            (outcome,) = await asyncio.wait_for(asyncio.gather(older, return_exceptions=True), 2)
            api.send_text(USER, "ping")
            return outcome, await asyncio.wait_for(newer, 2)

    error, updates = asyncio.run(two_instances())

    assert isinstance(error, Conflict)
    assert "terminated by other getUpdates request" in str(error)
    assert len(updates) == 1


@pytest.mark.timeout(10)
def test_stop_releases_long_poll() -> None:
    api = BotAPIStandIn(TOKEN).start()
    results: list[httpx.Response] = []
    url = f"{api.base_url}{TOKEN}/getUpdates"
    poller = threading.Thread(
        target=lambda: results.append(httpx.post(url, data={"timeout": "30"}))
    )
    poller.start()
    while not api.calls("getUpdates"):
        time.sleep(0.01)

    started = time.monotonic()
    api.stop()
    poller.join(5)

    assert time.monotonic() - started < 2
    assert results[0].json() == {"ok": True, "result": []}


@pytest.mark.timeout(10)
def test_webhook_blocks_get_updates_until_deleted(api: BotAPIStandIn) -> None:
    async def flow(bot: Bot) -> None:
        with pytest.raises(BadRequest, match="https url"):
            await bot.set_webhook("http://127.0.0.1/hook")
        assert await bot.set_webhook("https://example.invalid/hook", secret_token="s3")
        assert (await bot.get_webhook_info()).url == "https://example.invalid/hook"
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates(timeout=0)
        assert await bot.delete_webhook()
        assert await bot.get_updates(timeout=0) == ()

    with_bot(api, flow)


@pytest.mark.timeout(10)
def test_my_commands_set_get_delete(api: BotAPIStandIn) -> None:
    async def flow(bot: Bot) -> None:
        await bot.set_my_commands([("start", "Begin"), ("help", "How it works")])
        await bot.set_my_commands([("start", "Beginnen")], language_code="de")
        assert [c.command for c in await bot.get_my_commands()] == ["start", "help"]
        assert [c.description for c in await bot.get_my_commands(language_code="de")] == [
            "Beginnen"
        ]
        await bot.delete_my_commands()
        assert await bot.get_my_commands() == ()
        with pytest.raises(BadRequest, match="Bot_command_invalid"):
            await bot.set_my_commands([("Bad Command", "x")])

    with_bot(api, flow)


@pytest.mark.timeout(10)
def test_raw_updates_register_chats_and_callback_queries(api: BotAPIStandIn) -> None:
    group: dict[str, Any] = {"id": -100777, "type": "supergroup", "title": "Derm"}
    user = {"id": USER, "is_bot": False, "first_name": "Ana"}
    sticker = {"file_id": "stk", "file_unique_id": "u", "type": "regular", "width": 1, "height": 1}
    sticker |= {"is_animated": False, "is_video": False}
    sticker_id = api.send_update(
        {"message": {"message_id": 5, "date": 0, "chat": group, "from": user, "sticker": sticker}}
    )
    query = {"id": "cb1", "from": user, "chat_instance": "ci", "data": "consent:yes"}
    query_id = api.send_update({"update_id": 1, "callback_query": query})

    async def flow(bot: Bot) -> None:
        updates = await bot.get_updates(timeout=0)
        assert updates[0].message is not None and updates[0].message.sticker is not None
        reply = await bot.send_message(group["id"], "Please send a photo", reply_to_message_id=5)
        assert reply.message_id == 6
        assert reply.reply_to_message is not None and reply.reply_to_message.message_id == 5
        assert await bot.answer_callback_query("cb1", text="Thanks")
        with pytest.raises(BadRequest, match="Query is too old"):
            await bot.answer_callback_query("cb1")

    with_bot(api, flow)
    assert query_id == sticker_id + 1


@pytest.mark.timeout(10)
def test_group_messages_and_user_validation(api: BotAPIStandIn) -> None:
    message = api.send_text(
        USER, "hello all", chat_id=-1001, chat_type="group", language_code="de"
    )
    reply = api.send_text(
        USER, "me again", chat_id=-1001, chat_type="group", reply_to_message_id=1
    )

    assert message["chat"] == {"id": -1001, "type": "group", "title": "Test group 1001"}
    assert message["from"]["language_code"] == "de"
    assert reply["reply_to_message"]["text"] == "hello all"
    with pytest.raises(ValueError, match="negative"):
        api.send_text(USER, "x", chat_id=5, chat_type="group")
    with pytest.raises(ValueError, match="private"):
        api.send_text(USER, "x", chat_id=USER + 1)


@pytest.mark.timeout(15)
def test_concurrent_send_message_keeps_alive_and_orders_ids(api: BotAPIStandIn) -> None:
    api.send_text(USER, "hi")
    ids: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=f"{api.base_url}{TOKEN}/", timeout=10) as client:
            for index in range(50):
                response = client.post("sendMessage", data={"chat_id": USER, "text": str(index)})
                with lock:
                    ids.append(response.json()["result"]["message_id"])

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert time.monotonic() - started < 5
    assert sorted(ids) == list(range(2, 402))
    assert [m["message_id"] for m in api.messages(USER)] == list(range(2, 402))


@pytest.mark.timeout(15)
def test_application_polling_end_to_end(api: BotAPIStandIn) -> None:
    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None and update.effective_message.text
        await update.effective_message.reply_text(update.effective_message.text.upper())

    async def run() -> None:
        builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url)
        app: Application[Any, Any, Any, Any, Any, Any] = builder.base_file_url(
            api.base_file_url
        ).build()
        app.add_handler(MessageHandler(filters.TEXT, echo))
        async with app:
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(poll_interval=0, timeout=5)
            api.send_text(USER, "rash on arm")
            await asyncio.to_thread(api.wait_for_messages, USER, 1, 5)
            await app.updater.stop()
            await app.stop()

    asyncio.run(run())
    assert api.messages(USER)[0]["text"] == "RASH ON ARM"
    assert api.calls("deleteWebhook")


def test_send_text_marks_commands_like_telegram() -> None:
    with BotAPIStandIn() as api:
        assert api.send_text(1, "/start")["entities"] == [
            {"type": "bot_command", "offset": 0, "length": 6}
        ]
        assert api.send_text(1, "😀 /help@skingpt_test_bot")["entities"] == [
            {"type": "bot_command", "offset": 3, "length": 22}
        ]
        assert "entities" not in api.send_text(1, "a/b and http://x/y")


def test_standin_can_leave_polls_out_of_its_call_log() -> None:
    with BotAPIStandIn(record_polls=False) as api:
        url = f"{api.base_url}{api.token}"
        for _ in range(3):
            httpx.post(f"{url}/getUpdates", json={"timeout": 0})
        httpx.post(f"{url}/getMe")
        assert [name for name, _ in api.calls()] == ["getMe"]
