"""Headless Chromium (Debian's package) driven by Playwright against the live server.

Never `playwright install`: the browser is /usr/bin/chromium (`apt-get install
chromium`), or CHROMIUM_PATH. Without it the tests skip, except in CI.
"""

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import connections
from playwright.sync_api import Page, sync_playwright

from tests.support import ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# The network is closed: nothing phones home, nothing waits for it.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium_executable() -> Path:
    """Debian's chromium; its absence skips the test, or fails it in CI."""
    if not CHROMIUM.is_file():
        reason = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def page(chromium_executable, live_server, monkeypatch, settings) -> Page:
    """A fresh browser page whose `http://testserver` is the live server.

    The worker writes links for SITE_URL=http://testserver (tests.services);
    Chromium resolves that host to the live server, so the test opens the
    link exactly as mailed. Django's test setup allows the host.
    """
    # Playwright's sync API keeps an event loop running on this thread; the
    # test's own ORM calls are plain synchronous code, not a coroutine's.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # The live server speaks plain http, where a browser refuses Secure
    # cookies (the CSRF cookie included); production serves them over TLS.
    settings.CSRF_COOKIE_SECURE = settings.SESSION_COOKIE_SECURE = False
    server = urlsplit(live_server.url)
    rule = f"--host-resolver-rules=MAP testserver {server.hostname}:{server.port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_executable),
            headless=True,
            args=[*CHROMIUM_ARGS, rule],
        )
        try:
            context = browser.new_context(base_url="http://testserver")
            context.set_default_timeout(15_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()
            # Inside the running loop the ORM keeps its connections apart
            # from the thread's (asgiref's Local); close them here, where
            # they are visible, or PostgreSQL keeps the test database busy.
            connections.close_all()


class Screenshots:
    """Numbered full-page screenshots of one test, kept under test-artifacts/."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.count = 0

    def take(self, step: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def screenshots(page, request) -> Screenshots:
    directory = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.png"):
        old.unlink()
    return Screenshots(page, directory)
