"""Fixtures of the browser tests: the book built once per session (or the build VIT_BOOK_HTML names),
served on loopback, and one headless Chromium at desktop width. The build needs no browser: the
checks of its HTML text (test_html.py) run everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _browser import DESKTOP, build_book, find_browser, serve, start_chromium


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_paths():
    found = find_browser()
    if found is None:  # .ci/run installs one where apt-get can
        pytest.skip("no Chromium/Chrome with a chromedriver here (Debian: apt-get install chromium "
                    "chromium-driver; or set CHROME_BIN and CHROMEDRIVER)")
    return found


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    """The built book's HTML folder: VIT_BOOK_HTML if set (a build of this checkout), else a fresh build."""
    given = os.environ.get("VIT_BOOK_HTML")
    if given:
        html = Path(given).resolve()
        assert (html / "book").is_dir(), f"VIT_BOOK_HTML={given} is not a built book's HTML folder"
        return html
    return build_book(tmp_path_factory.mktemp("book"))


@pytest.fixture(scope="session")
def book_url(book_html):
    with serve(book_html) as url:
        yield url


@pytest.fixture(scope="session")
def chrome(browser_paths):
    driver = start_chromium(*browser_paths, size=DESKTOP)
    yield driver
    driver.quit()
