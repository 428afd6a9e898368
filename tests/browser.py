"""Headless Debian Chromium for page checks: a session-scoped browser and a helper that opens a page.

Pages are checked the way a user sees them: rendered by a real browser (JavaScript run, images
decoded), then queried for the elements that must be there. The browser is Debian's `chromium`
(`.ci/run` installs it), driven by Playwright; it reaches nothing but loopback and files.
"""

from __future__ import annotations

import shutil
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
# As root in a closed network: no sandbox, no GPU, no background connections that would be refused.
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser() -> Iterator["playwright.sync_api.Browser"]:  # noqa: F821 (imported below)
    """One headless Chromium for the whole session."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, *, width: int = 1400, height: int = 1000, screenshot: str | None = None):
    """A new page at `url`, loaded and its network idle; page errors are collected in `page.errors`."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url, wait_until="networkidle")
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    return page
