"""Screenshots of every page of the built book at desktop and phone widths, for a person to look at.

    python tests/browser/screenshots.py _build/html shots/

writes shots/<page>-1280.png and shots/<page>-390.png (whole pages, top to bottom; --max-height caps
very long ones). Needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver).
The network is off for the browser as in the tests, so the Colab badge shows its alt text.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _browser import DESKTOP, PHONE, chapter_pages, find_browser, open_page, serve, start_chromium  # noqa: E402


def full_page_png(chrome, max_height: int) -> bytes:
    """The whole page (up to max_height CSS pixels) as PNG, through the DevTools protocol."""
    size = chrome.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
    shot = chrome.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    return base64.b64decode(shot["data"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built book's HTML folder, e.g. _build/html")
    parser.add_argument("out", type=Path, help="folder for the PNG files (created)")
    parser.add_argument("--widths", type=int, nargs="+", default=[DESKTOP[0], PHONE[0]])
    parser.add_argument("--max-height", type=int, default=30000, help="cap in CSS pixels")
    args = parser.parse_args(argv)
    found = find_browser()
    if found is None:
        parser.error("no Chromium/Chrome with chromedriver: apt-get install chromium chromium-driver")
    pages = chapter_pages(args.html)
    if not pages:
        parser.error(f"{args.html} has no book/*.html: build the book first (jupyter-book build .)")
    args.out.mkdir(parents=True, exist_ok=True)
    with serve(args.html) as base:
        for width in args.widths:
            chrome = start_chromium(*found, size=(width, PHONE[1] if width < 800 else DESKTOP[1]))
            try:
                for page in pages:
                    open_page(chrome, f"{base}/{page}")
                    target = args.out / f"{Path(page).stem}-{width}.png"
                    target.write_bytes(full_page_png(chrome, args.max_height))
                    print(target)
            finally:
                chrome.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
