"""Shared fixtures: a real Redis, bot and worker processes started against it, the sample
photos, a tiny model built once per session, and headless Chromium with a driver for the web
chat page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.support import Launcher, Services

# python-telegram-bot 22 warns on every RetryAfter unless the coming timedelta type is chosen.
os.environ.setdefault("PTB_TIMEDELTA", "1")
# Nothing in the tests may reach the real model hub: an accidental call fails fast on loopback.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

DATA = Path(__file__).parent / "data"
SAMPLE_PHOTOS = sorted(p for p in DATA.iterdir() if p.suffix in {".jpg", ".png"})
REDIS_URL = os.environ.get("SKINGPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.ConnectionError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the configured one, or else a private redis-server started for the run."""
    if _answers(REDIS_URL):
        yield REDIS_URL
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            f"Redis at {REDIS_URL} does not answer and redis-server is not installed. "
            "Install Redis, start it, or set SKINGPT_TEST_REDIS_URL.",
            pytrace=False,
        )
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _answers(url):
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server on port {port} did not start", pytrace=False)
        time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards, so tests never see each other."""
    prefix = f"skingpt-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


@pytest.fixture(scope="module")
def start_services(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Services]]:
    """Start a bot and workers as processes with extra settings (see
    :class:`tests.e2e.support.Launcher`); everything stops with the module."""
    launcher = Launcher(redis_url, lambda: tmp_path_factory.mktemp("service-logs"))
    yield launcher.start
    launcher.close()


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """The tiny-random model, built once (building is deterministic)."""
    from skingpt.model.modeling import build_tiny_random

    return build_tiny_random()


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    assert len(SAMPLE_PHOTOS) >= 4, "tests/data must hold at least four sample photos"
    return SAMPLE_PHOTOS


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


# --- headless Chromium -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver; Selenium never downloads anything."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed; "
            "run: apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--window-size=430,900",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--no-pings",
        # Only loopback can be reached: every other host name fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root; only then is it turned off.
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class ChatPage:
    """Drives the web chat page in Chromium the way a person in the clinic would."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, url: str, *, language: str = "en-US") -> None:
        """Opens the page as a new visitor whose browser prefers `language`."""
        self.driver.execute_cdp_cmd(
            "Network.setUserAgentOverride",
            {
                "userAgent": self.driver.execute_script("return navigator.userAgent"),
                "acceptLanguage": language,
            },
        )
        # Cookies can only be deleted for the page's own site: visit it, forget the session,
        # then load it again as a new visitor.
        self.driver.get(url)
        self.driver.delete_all_cookies()
        self.driver.get(url)
        self.wait(lambda _: self.driver.execute_script("return document.readyState") == "complete")

    def wait(self, condition: Any, timeout: float = 10) -> Any:
        """Waits until `condition(driver)` holds, looking again at messages re-drawn meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        waiting = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        )
        return waiting.until(condition)

    def element(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def choose_photo(self, path: Path) -> None:
        self.element("#photo").send_keys(str(path.resolve()))

    def write(self, text: str) -> None:
        box = self.element("#question")
        box.clear()
        box.send_keys(text)

    def send(self) -> None:
        """Presses send and waits until the page has handed the message over."""
        self.element("#send").click()
        self.wait(lambda _: self.element("#send").is_enabled())

    def messages(self, sender: str = "") -> list[Any]:
        from selenium.webdriver.common.by import By

        selector = f"#conversation > li.message{'.' + sender if sender else ''}"
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def texts(self) -> list[str]:
        """The text of every message on the page, in order (without quotes or buttons)."""
        return [
            str(
                self.driver.execute_script(
                    "const t = arguments[0].querySelector(':scope > .text');"
                    "return t ? t.textContent : '';",
                    message,
                )
            )
            for message in self.messages()
        ]

    def wait_for_message(self, text: str, sender: str = "bot", timeout: float = 10) -> Any:
        """The first message from `sender` containing `text`, once it is on the page."""

        def found(_: Any) -> Any:
            for message in self.messages(sender):
                if text in message.text:
                    return message
            return False

        return self.wait(found, timeout)

    def press(self, message_text: str, label: str) -> None:
        """Presses the inline button `label` under the bot message containing `message_text`."""
        from selenium.webdriver.common.by import By

        def click(_: Any) -> bool:
            message = self.wait_for_message(message_text)
            for button in message.find_elements(By.CSS_SELECTOR, ".keyboard button"):
                if button.text == label:
                    button.click()
                    return True
            raise AssertionError(f"no button {label!r} under the message")

        self.wait(click)

    def style(self, element: Any, name: str) -> str:
        return str(
            self.driver.execute_script(
                "return getComputedStyle(arguments[0]).getPropertyValue(arguments[1])",
                element,
                name,
            )
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        return path


@pytest.fixture
def chat_page(chromium: Any) -> ChatPage:
    """A `ChatPage` on the shared Chromium; `open` starts each test as a new visitor."""
    return ChatPage(chromium)
