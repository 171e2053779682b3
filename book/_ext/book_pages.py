"""Repairs to the book's HTML pages, as a local Sphinx extension (`sphinx.local_extensions` in
`_config.yml`).

1. MathJax is served with the book. The pages load `_static/mathjax/tex-mml-chtml.js`
   (`mathjax_path` in `_config.yml`) instead of a CDN, so math renders in a local or offline build
   too. The files come from MathJax 3.2.2 as the PyPI package `django-static-mathjax` ships it
   (a plain copy of the npm package `mathjax-full`, Apache-2.0; importable as `mathjax`, no Django
   needed), installed by requirements.txt; they are copied into the build when it finishes.

2. Every inline script once. Sphinx 7.4 emits twice each inline `<script>` (one with a body and no
   file) that an extension registers after the builder started: `app.add_js_file(None, body=...)`
   reaches the builder with the file name `None`, and `prepare_writing` adds the registry's copy
   again with the file name `''`, which the builder's duplicate check does not recognise. sphinx-thebe
   registers `const THEBE_JS_URL = ...` that way, so every page raised "Identifier 'THEBE_JS_URL' has
   already been declared"; sphinx-togglebutton's selector was doubled the same way. The page's
   script list is made unique just before the page is written.

3. `static/book_pages.css`: code at a size where a line of 88 characters fits a desktop page.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# The component the pages load, and the folders it loads its fonts and on-demand extensions from.
MATHJAX_COMPONENT = "tex-mml-chtml.js"
MATHJAX_FOLDERS = ("a11y", "adaptors", "input", "output", "sre", "ui")
MATHJAX_TARGET = "mathjax"  # under the build's _static/


def mathjax_source() -> Path:
    """The folder of MathJax's browser components (`es5/`) in the installed `django-static-mathjax`."""
    try:
        import mathjax  # the import name of the PyPI package django-static-mathjax
    except ImportError as err:
        raise ExtensionError(
            "MathJax is served with the book from the PyPI package django-static-mathjax: "
            "pip install -r requirements.txt") from err
    root = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (root / MATHJAX_COMPONENT).is_file():
        raise ExtensionError(f"{root / MATHJAX_COMPONENT} is missing: reinstall django-static-mathjax")
    return root


def check_mathjax_path(app: Sphinx, config: Any) -> None:
    """Fail early when `mathjax_path` does not name the copy this extension makes."""
    mathjax_source()
    expected = f"{MATHJAX_TARGET}/{MATHJAX_COMPONENT}"
    if config.mathjax_path != expected:
        raise ExtensionError(
            f"mathjax_path is {config.mathjax_path!r}; set `mathjax_path: {expected}` under "
            "sphinx.config in _config.yml so the pages load the MathJax served with the book")


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    """Copy MathJax's component, fonts and extensions into the finished HTML build's _static/."""
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_source()
    target = Path(app.outdir) / "_static" / MATHJAX_TARGET
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_COMPONENT, target / MATHJAX_COMPONENT)
    for folder in MATHJAX_FOLDERS:
        shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
    shutil.copy2(source.parent / "LICENSE", target / "LICENSE")


def _script_key(script: Any) -> tuple:
    """What makes two script tags the same: the file (None and '' alike) and the attributes."""
    attributes = getattr(script, "attributes", {})
    filename = getattr(script, "filename", script) or ""
    return str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def unique_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop repeated script tags from the page (the first of each stays where it was)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: the builder restores its own list after each page


def add_stylesheet(app: Sphinx) -> None:
    """Serve static/book_pages.css with the pages."""
    app.config.html_static_path.append(str(Path(__file__).resolve().parent / "static"))
    app.add_css_file("book_pages.css")


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the repairs."""
    app.connect("builder-inited", add_stylesheet)
    app.connect("config-inited", check_mathjax_path)
    app.connect("build-finished", copy_mathjax)
    # After every other handler, so scripts that those add to this page are seen too.
    app.connect("html-page-context", unique_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
