"""Offline clinic mode as a clinic meets it: ``skingpt run`` with no Telegram token and no Redis,
and a person using the local web chat in headless Chromium.

The conversations are saved under ``artifacts/`` (screenshots and transcripts).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import texts
from skingpt import report
from skingpt.i18n import gettext_for
from skingpt.replies import DISCLAIMER
from tests.e2e.support import DATA, stop

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``skingpt run`` on a free loopback port; yields the web chat's address."""
    log = tmp_path_factory.mktemp("clinic") / "run.log"
    env = {
        **os.environ,
        # Nothing answers here: the offline mode must not need Redis at all.
        "SKINGPT_REDIS_URL": "redis://127.0.0.1:9/0",
        "SKINGPT_MODEL": "scripted",
        "SKINGPT_SCRIPT": str(DATA / "scripted" / "samples.toml"),
        "SKINGPT_ALLOW_SCRIPTED_MODEL": "true",
        "SKINGPT_STATUS_INTERVAL_SECONDS": "3",
    }
    env.pop("SKINGPT_TELEGRAM_TOKEN", None)
    port = _free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "skingpt.cli", "run", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Web chat: " not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        url = re.search(r"Web chat: (\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        assert url == f"http://127.0.0.1:{port}/"
        yield url
        assert process.poll() is None, "skingpt run exited during the test"
    finally:
        stop(process)
        sys.stderr.write(f"\n----- skingpt run -----\n{log.read_text(errors='replace')}")


def _converse(page: Any, url: str, language: str, photo: str, follow_up: str) -> list[str]:
    """Agree, send a photo, ask a follow-up; returns the conversation as shown."""
    _ = gettext_for(language)
    page.open(url, language=language)
    page.write("/start")
    page.send()
    page.wait_for_message(_(texts.CONSENT).split(":")[0], timeout=30)
    page.press(_(texts.CONSENT).split(":")[0], _(texts.AGREE))
    page.wait_for_message(_(texts.THANKS_FOR_CONSENT))
    page.choose_photo(DATA / photo)
    page.send()
    page.wait(
        lambda _d: any(_(report.SEES) in t and _(DISCLAIMER) in t for t in page.texts()),
        timeout=60,
    )
    page.write(follow_up)
    page.send()
    page.wait_for_message(follow_up, sender="user")
    page.wait(lambda _d: sum(_(DISCLAIMER) in t for t in page.texts()) >= 2, timeout=60)
    return [text or f"[photo: {photo}]" for text in page.texts()]


def test_clinic_mode_web_chat_answers_a_photo_in_english(clinic: str, chat_page: Any) -> None:
    shown = _converse(chat_page, clinic, "en", "psoriasis_01.jpg", "Is it contagious?")
    analysis = next(t for t in shown if report.SEES in t and DISCLAIMER in t)
    for heading in (report.CONDITIONS, report.DO_NOW, report.SEE_CLINICIAN):
        assert heading in analysis
    assert "plaque psoriasis" in analysis and analysis.endswith(DISCLAIMER)
    assert "not contagious" in shown[-1].lower()
    # The status message ("number 1 in line") goes once the answer is there.
    status = texts.QUEUED.split("{")[0]
    chat_page.wait(lambda _d: not any(status in t for t in chat_page.texts()))
    chat_page.screenshot("webchat-clinic.png")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "conversation-en.txt").write_text("\n\n----\n\n".join(shown), encoding="utf-8")


def test_clinic_mode_web_chat_answers_in_arabic_right_to_left(clinic: str, chat_page: Any) -> None:
    ar = gettext_for("ar")
    shown = _converse(chat_page, clinic, "ar", "psoriasis_01.jpg", "هل هو معدٍ؟")
    analysis = next(t for t in shown if ar(report.SEES) in t and ar(DISCLAIMER) in t)
    assert ar(report.SEE_CLINICIAN) in analysis and "لويحة" in analysis
    assert chat_page.driver.execute_script("return document.documentElement.dir") == "rtl"
    chat_page.screenshot("webchat-clinic-ar.png")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "conversation-ar.txt").write_text("\n\n----\n\n".join(shown), encoding="utf-8")
