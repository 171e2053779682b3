"""The built book as a reader's browser shows it (headless Chromium, no network): every page loads
without JavaScript errors, its math is typeset by the MathJax served with the book, its figures load,
its buttons point at the repository in _config.yml, no code block is cut off at desktop width, and
the static explorers of chapters 1 and 7 redraw when the reader changes a control or clicks a patch."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from _browser import ROOT, open_page

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"]["branch"]
TOC_FILES = re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text())
PAGES = sorted({f"{name}.html" for name in TOC_FILES + [yaml.safe_load((ROOT / "_toc.yml").read_text())["root"]]})
NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / p.replace(".html", ".ipynb")).is_file()]
EXPLORERS = {"book/01_patches.html": ("patches", "patch-size"),
             "book/07_attention_maps.html": ("attention", "head")}

FACTS = """
const article = document.querySelector('article') || document.body;
const pres = Array.from(article.querySelectorAll('pre'));
const isOutput = p => !!p.closest('.cell_output, .output');
const cut = p => p.scrollWidth > p.clientWidth + 1;
const text = p => p.textContent.split('\\n').reduce((a, b) => a.length >= b.length ? a : b).slice(0, 100);
return {
  maths: article.querySelectorAll('.math').length,
  typeset: Array.from(article.querySelectorAll('.math')).filter(m => m.querySelector('mjx-container')).length,
  merrors: article.querySelectorAll('mjx-merror').length,
  mathjax: Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s)),
  images: Array.from(article.querySelectorAll('img')).map(i => [i.src, i.naturalWidth, i.naturalHeight]),
  colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]')).map(a => a.href),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  downloads: Array.from(document.querySelectorAll('.btn-download-source-button')).map(
      a => a.href || a.getAttribute('onclick') || ''),
  footer: Array.from(document.querySelectorAll('footer')).map(f => f.textContent).join(' '),
  cutCells: pres.filter(p => p.closest('.cell_input') && cut(p)).map(p => [p.scrollWidth, p.clientWidth, text(p)]),
  cutBlocks: pres.filter(p => !isOutput(p) && !p.closest('.cell_input') && cut(p)).map(
      p => [p.scrollWidth, p.clientWidth, text(p)]),
  cutOutput: pres.filter(p => isOutput(p) && cut(p)).length,
};
"""


def _is_local(url: str, base: str) -> bool:
    return urlparse(url).netloc in ("", urlparse(base).netloc)


def _javascript_errors(chrome, base: str) -> list[str]:
    """SEVERE console entries, less failed loads of other hosts (the tests run with no network)."""
    errors = []
    for entry in chrome.get_log("browser"):
        message = entry["message"]
        if entry["level"] != "SEVERE":
            continue
        if "Failed to load resource" in message and not _is_local(message.split(" ")[0], base):
            continue
        if re.match(r"\S+/favicon\.ico - Failed to load resource", message):
            continue  # the browser asks for it on its own; the book has none
        errors.append(message)
    return errors


@pytest.fixture(scope="module")
def pages(chrome, book_url):
    """Open every page once at desktop width; what each shows, and its console errors."""
    seen = {}
    chrome.get_log("browser")  # start with an empty console log
    for page in PAGES:
        open_page(chrome, f"{book_url}/{page}")
        seen[page] = chrome.execute_script(FACTS)
        seen[page]["errors"] = _javascript_errors(chrome, book_url)
    return seen


def test_the_toc_lists_pages():
    assert len(PAGES) >= 10 and "book/01_patches.html" in PAGES and NOTEBOOK_PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_without_javascript_errors(pages, page):
    assert not pages[page]["errors"], f"{page}: " + "\n".join(pages[page]["errors"])


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset_by_the_mathjax_served_with_the_book(pages, page, book_url):
    facts = pages[page]
    if not facts["maths"]:
        assert page not in NOTEBOOK_PAGES[:5], f"{page}: chapters 1-5 have math, the page shows none"
        return
    assert facts["mathjax"] and all(_is_local(src, book_url) for src in facts["mathjax"]), facts["mathjax"]
    assert facts["typeset"] == facts["maths"], f"{page}: {facts['typeset']} of {facts['maths']} typeset"
    assert facts["merrors"] == 0, f"{page}: {facts['merrors']} TeX errors"


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_loads(pages, page, book_url):
    images = [(src, w, h) for src, w, h in pages[page]["images"] if _is_local(src, book_url)]
    empty = [src for src, w, h in images if not (w > 0 and h > 0)]
    assert not empty, f"{page}: images with no size: {empty}"


@pytest.mark.parametrize("page", PAGES)
def test_buttons_point_at_the_configured_repository(pages, page):
    facts = pages[page]
    notebook = page.replace(".html", ".ipynb")
    expected = f"https://colab.research.google.com/github/{REPO_URL.split('github.com/')[1]}/blob/{BRANCH}/{notebook}"
    if page in NOTEBOOK_PAGES:
        assert all(href == expected for href in facts["colab"]), f"{page}: Colab links {facts['colab']}"
    else:  # a page that is not a notebook (the intro) may open a chapter: one of this repository's notebooks
        prefix = expected[: expected.index("/blob/")] + f"/blob/{BRANCH}/"
        assert all(href.startswith(prefix) and (ROOT / href[len(prefix):]).is_file() for href in facts["colab"]), (
            f"{page}: Colab links {facts['colab']}")
    if page in NOTEBOOK_PAGES:
        assert len(facts["colab"]) >= 2, f"{page}: expected the badge and the launch button, got {facts['colab']}"
        assert any(d.endswith(".ipynb") for d in facts["downloads"]), f"{page}: download {facts['downloads']}"
    assert REPO_URL in facts["links"], f"{page}: no repository button"
    assert any(link.startswith(f"{REPO_URL}/issues/new") for link in facts["links"]), f"{page}: no issues button"
    assert "2-core x86_64 CPU" in facts["footer"], f"{page}: the footer must say what the outputs ran on"


@pytest.mark.parametrize("page", PAGES)
def test_no_code_cell_is_cut_off_at_desktop_width(pages, page):
    cut = pages[page]["cutCells"]
    assert not cut, f"{page}: code wider than its box at 1280 px (scrollWidth, clientWidth, longest line): {cut}"


# The package's own source, which chapters show with literalinclude, has lines up to 120 characters:
# book/_ext/static/book_pages.css wraps code blocks in the prose rather than cut them off.
@pytest.mark.parametrize("page", PAGES)
def test_no_code_block_in_the_prose_is_cut_off_at_desktop_width(pages, page):
    cut = pages[page]["cutBlocks"]
    assert not cut, f"{page}: code wider than its box at 1280 px (scrollWidth, clientWidth, longest line): {cut}"


def _redrawn(chrome, root, action) -> str:
    """Do `action`, wait until the explorer redrew, return the canvas's pixels as a data URL."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = root.get_attribute("data-rendered")
    action()
    WebDriverWait(chrome, 10).until(lambda _: root.get_attribute("data-rendered") != before,
                                    "the explorer did not redraw (data-rendered unchanged)")
    canvas = root.find_element("css selector", "canvas.vit-explorer-map")
    return chrome.execute_script("return arguments[0].toDataURL();", canvas)


def _pick_another(root, role: str):
    from selenium.webdriver.support.ui import Select

    select = Select(root.find_element("css selector", f'select[data-role="{role}"]'))
    options = select.options
    assert len(options) > 1, f"the {role} control offers one choice only"
    current = next(i for i, o in enumerate(options) if o.is_selected())
    return lambda: select.select_by_index((current + 1) % len(options))


def _click_at(chrome, root, fx: float, fy: float):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = root.find_element("css selector", "canvas.vit-explorer-map")
    dx, dy = int(canvas.size["width"] * fx), int(canvas.size["height"] * fy)
    return lambda: ActionChains(chrome).move_to_element_with_offset(canvas, dx, dy).click().perform()


@pytest.mark.parametrize("page", sorted(EXPLORERS))
def test_the_explorers_react_to_their_controls(chrome, book_url, page):
    kind, role = EXPLORERS[page]
    open_page(chrome, f"{book_url}/{page}")
    roots = chrome.find_elements("css selector", ".vit-explorer")
    assert roots, f"{page}: no static explorer (.vit-explorer) on the page"
    assert kind in [r.get_attribute("data-kind") for r in roots], f"{page}: no {kind} explorer"
    for root in roots:
        chrome.execute_script("arguments[0].scrollIntoView({block: 'center'});", root)
        canvas = root.find_element("css selector", "canvas.vit-explorer-map")
        start = chrome.execute_script("return arguments[0].toDataURL();", canvas)
        role = "head" if root.get_attribute("data-kind") == "attention" else "patch-size"
        changed = _redrawn(chrome, root, _pick_another(root, role))
        assert changed != start, f"{page}: another {role} redrew the same picture"
        if root.get_attribute("data-kind") == "attention":
            first = _redrawn(chrome, root, _click_at(chrome, root, -0.25, -0.25))
            second = _redrawn(chrome, root, _click_at(chrome, root, 0.25, 0.25))
            assert second != first, f"{page}: clicking another patch redrew the same picture"
