"""Headless Chromium for the tests: Debian's ``chromium`` (installed by ``make test``) driven by
Playwright, which is told where it is instead of downloading a browser of its own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

# this machine has no network: without these, Chromium keeps trying to reach Google's services
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Where Chromium is: ``DATAFORGE_CHROMIUM``, else ``chromium`` on the PATH."""
    path = os.environ.get("DATAFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found: `make test` installs Debian's chromium (or set DATAFORGE_CHROMIUM)")
    return path


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh page in headless Chromium (its own empty profile)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
