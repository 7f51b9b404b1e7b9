"""The web chat in headless Chromium: a visitor uploads a photo, asks, reads, presses buttons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.webchat import WebChat

PHOTO = Path(__file__).parents[1] / "data" / "psoriasis_01.jpg"


@pytest.mark.timeout(60)
def test_webchat_browser_photo_question_and_button(
    webchat: WebChat, reply_bot: Any, chat_page: Any
) -> None:
    chat_page.open(webchat.url, language="en-US")
    assert chat_page.driver.execute_script("return document.documentElement.dir") == "ltr"

    chat_page.choose_photo(PHOTO)
    assert chat_page.element("#preview-name").text == PHOTO.name
    chat_page.write("Is this psoriasis?")
    chat_page.send()
    status = chat_page.wait_for_message("Photo received: 1280×960. Question: Is this psoriasis?")
    mine = chat_page.wait_for_message("Is this psoriasis?", sender="user")
    chat_page.wait(
        lambda _: chat_page.element("#conversation img.photo").get_property("naturalWidth")
    )

    # The status message was edited in place; the deleted one never stays on the page.
    assert chat_page.texts() == [
        "Is this psoriasis?",
        "Photo received: 1280×960. Question: Is this psoriasis?",
    ]
    assert status.find_element("css selector", ".quote").text == "Is this psoriasis?"
    assert status.get_attribute("dir") == "auto" and mine.get_attribute("dir") == "auto"
    assert chat_page.element("#conversation img.photo").get_attribute("alt")
    assert chat_page.element("#preview").get_attribute("hidden") is not None

    chat_page.write("<b>not bold</b> <img src=x onerror=alert(1)>")
    chat_page.send()
    echoed = chat_page.wait_for_message("Question received: <b>not bold</b>")
    assert echoed.find_elements("css selector", "b, img") == []

    chat_page.write("/start")
    chat_page.send()
    welcome = chat_page.wait_for_message("Welcome to the clinic chat")
    assert welcome.find_element("css selector", "strong").text == "Welcome"
    assert welcome.find_element("css selector", "em").text == "clinic"
    chat_page.press("Welcome to the clinic chat", "Yes")
    chat_page.wait_for_message("You chose consent:yes")
    chat_page.wait(lambda _: "Chosen: consent:yes" in chat_page.element("#notice").text)
    chat_page.wait(
        lambda _: (
            not chat_page.wait_for_message("Welcome").find_elements(
                "css selector", ".keyboard button"
            )
        )
    )

    shot = chat_page.screenshot("webchat.png")
    assert shot.stat().st_size > 0


@pytest.mark.timeout(60)
def test_webchat_browser_edits_replace_in_place_and_deleted_messages_vanish(
    webchat: WebChat, reply_bot: Any, chat_page: Any
) -> None:
    chat_page.open(webchat.url)
    chat_page.write("/progress")
    chat_page.send()

    chat_page.wait_for_message("Queued…")
    queued = chat_page.texts()
    reply_bot.step.release()
    chat_page.wait_for_message("Temporary note")
    analysing = chat_page.texts()
    reply_bot.step.release()
    chat_page.wait(lambda _: chat_page.texts()[-1] == "Done")

    assert queued == ["/progress", "Queued…"]
    assert analysing == ["/progress", "Analysing…", "Temporary note"]
    assert chat_page.texts() == ["/progress", "Done"]


@pytest.mark.timeout(60)
def test_webchat_browser_arabic_reply_reads_right_to_left(
    webchat: WebChat, reply_bot: Any, chat_page: Any
) -> None:
    chat_page.open(webchat.url, language="ar-EG,ar")
    root = chat_page.driver.execute_script(
        "return [document.documentElement.lang, document.documentElement.dir]"
    )

    chat_page.write("هل هذا معدٍ؟")
    chat_page.send()
    reply = chat_page.wait_for_message("وصل سؤالك")

    assert root == ["ar", "rtl"]
    assert chat_page.element("#send").text == "إرسال"
    assert reply.text == "وصل سؤالك: هل هذا معدٍ؟"
    assert reply.get_attribute("dir") == "auto"
    assert chat_page.style(reply, "direction") == "rtl"
    # In a right-to-left page the bot's messages sit on the right edge.
    page_width = chat_page.driver.execute_script("return document.documentElement.clientWidth")
    assert reply.rect["x"] + reply.rect["width"] > page_width * 0.8
    assert reply_bot.updates[0].effective_user.language_code == "ar-eg"
    chat_page.screenshot("webchat-ar.png")
