"""Real headless Chromium (the system's ``chromium``, driven by Playwright) on the live service.

Every page a test opens records its console errors, uncaught exceptions and the hosts it asked for;
:func:`opened` fails the test on any of them. Screenshots go to ``LATENTVO_ARTIFACTS`` (default
``test-artifacts/`` in the repository), so that a person can look at what the tests saw.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Debian's chromium; Playwright never downloads a browser here.
CHROMIUM = os.environ.get("LATENTVO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def artifacts_dir() -> Path:
    path = Path(os.environ.get("LATENTVO_ARTIFACTS") or REPO / "test-artifacts") / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def upload_file(miles_dir, demo_dir, tmp_path_factory) -> Path:
    """A MILES star the demo archive does not hold, as a 1-D FITS image."""
    from bench.heldout import heldout_stars, write_fits_image

    star = heldout_stars(miles_dir, demo_dir / "miles_demo.fits")[0]
    path = tmp_path_factory.mktemp("upload") / f"{star.name}.fits"
    write_fits_image(path, star)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            "the browser tests need Chromium: 'apt-get install chromium' (Debian, Ubuntu), or set "
            "LATENTVO_CHROMIUM to a Chromium or Chrome executable"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
        yield browser
        browser.close()


@dataclass
class Watched:
    """A page and what it did wrong: console errors, exceptions, requests to other hosts."""

    page: object
    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    allowed_hosts: set[str] = field(default_factory=set)

    def check(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.foreign, f"requests to other hosts: {self.foreign}"

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture()
def opened(browser, live_server) -> Iterator:
    """``opened(path)`` loads a page of the live service in a fresh 1400×1000 context; each page's
    console errors and requests to other hosts fail the test at its end."""
    contexts, watched = [], []
    origin = urlsplit(live_server.url).netloc

    def open_page(path: str, allowed_hosts: tuple[str, ...] = (), wait_for: str | None = None) -> Watched:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        record = Watched(page, origin, allowed_hosts=set(allowed_hosts))
        page.on("console", lambda msg: msg.type == "error" and record.errors.append(msg.text))
        page.on("pageerror", lambda exc: record.errors.append(str(exc)))

        def on_request(request) -> None:
            parts = urlsplit(request.url)
            if parts.scheme in ("data", "blob"):
                return
            if parts.netloc != origin and parts.netloc not in record.allowed_hosts:
                record.foreign.append(request.url)

        page.on("request", on_request)
        page.goto(live_server.url + path)
        if wait_for:
            page.wait_for_selector(f"body[data-{wait_for}-ready='true']", timeout=60_000)
        watched.append(record)
        return record

    yield open_page
    try:
        for record in watched:
            record.check()
    finally:
        for context in contexts:
            context.close()
