"""What the browser tests and the screenshot command share: building the book, serving it on loopback,
and a headless Chromium that reaches nothing but that server (so every check holds offline too)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DESKTOP = (1280, 900)
PHONE = (390, 844)


def find_browser() -> tuple[str, str] | None:
    """(browser, chromedriver) paths: CHROME_BIN / CHROMEDRIVER, else the first found on PATH
    (GitHub's runners keep their chromedriver in $CHROMEWEBDRIVER)."""
    browser = os.environ.get("CHROME_BIN") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if driver is None and os.environ.get("CHROMEWEBDRIVER"):
        driver = shutil.which("chromedriver", path=os.environ["CHROMEWEBDRIVER"])
    return (browser, driver) if browser and driver else None


def build_book(out: Path) -> Path:
    """Build the book from the committed outputs into `out`; return its HTML folder."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return out / "_build" / "html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` on a free loopback port; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def start_chromium(browser: str, driver: str, size: tuple[int, int] = DESKTOP):
    """A headless Chromium that logs the console and resolves no host but loopback."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--hide-scrollbars",
                 # every host but loopback is unknown: the pages must work without the network
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    return chrome


def chapter_pages(html: Path) -> list[str]:
    """The book's pages, relative to the HTML folder: the intro and every chapter."""
    return sorted(p.relative_to(html).as_posix() for p in (html / "book").glob("*.html"))


WAIT_FOR_PAGE = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images).filter(i => !i.complete).map(
    i => new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }));
const math = (window.MathJax && MathJax.startup && MathJax.startup.promise) || Promise.resolve();
Promise.all([math, ...images]).then(() => done(true), e => done(String(e)));
"""


def open_page(chrome, url: str) -> None:
    """Load `url` and wait until its images have loaded and MathJax has typeset it."""
    chrome.get(url)
    chrome.set_script_timeout(60)
    result = chrome.execute_async_script(WAIT_FOR_PAGE)
    if result is not True:
        raise RuntimeError(f"{url}: waiting for images and MathJax failed: {result}")
