"""Headless Debian Chromium for page checks: a session-scoped browser (registered in conftest.py: one
Playwright for every test module) and a helper that opens a page.

Pages are checked the way a user sees them: rendered by a real browser (JavaScript run, images
decoded), then queried for the elements that must be there. The browser is Debian's `chromium`
(`.ci/run` installs it), driven by Playwright; it reaches nothing but loopback and files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
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


# Where page screenshots go (for a look at them): $CVPIPE_SHOTS, else the test's temporary directory.
SHOTS_ENV = "CVPIPE_SHOTS"


def screenshot_path(name: str, tmp_path: Path) -> str:
    """Where a test saves the screenshot `name`: in $CVPIPE_SHOTS when set, else in `tmp_path`."""
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def open_page(browser, url: str, *, width: int = 1400, height: int = 1000, screenshot: str | None = None):
    """A new page at `url`, loaded (its document, scripts and images); page errors are collected in
    `page.errors`. Not "network idle": a single-page app that polls (MLflow's UI) may never be idle for
    500 ms on a busy machine; callers wait for what they look for to be visible."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url, wait_until="load")
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    return page
