"""The built pages' HTML, read as text: each inline script once (sphinx-thebe's `const THEBE_JS_URL`
twice was a SyntaxError on every page) and MathJax loaded from the book itself, not from a CDN."""

from __future__ import annotations

import re
from collections import Counter

import pytest

SCRIPT = re.compile(r"<script([^>]*)>(.*?)</script>", re.S)


@pytest.fixture(scope="module")
def html_pages(book_html):
    pages = sorted(book_html.glob("book/*.html"))
    assert pages, f"no pages in {book_html}/book"
    return {p.name: p.read_text(encoding="utf-8") for p in pages}


def test_thebe_is_configured_once_per_page(html_pages):
    counts = {name: text.count("const THEBE_JS_URL") for name, text in html_pages.items()}
    assert all(n == 1 for n in counts.values()), f"declarations of THEBE_JS_URL per page: {counts}"


def test_no_script_tag_is_repeated(html_pages):
    for name, text in html_pages.items():
        repeated = [tag for tag, n in Counter(SCRIPT.findall(text)).items() if n > 1]
        assert not repeated, f"{name}: script tags twice: {[a + b[:80] for a, b in repeated]}"


def test_mathjax_comes_with_the_book(html_pages, book_html):
    sources = {src for text in html_pages.values() for src in re.findall(r'<script[^>]*src="([^"]*)"', text)
               if "mathjax" in src.lower()}
    assert sources == {"../_static/mathjax/tex-mml-chtml.js"}, sources
    mathjax = book_html / "_static" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 500_000
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))
