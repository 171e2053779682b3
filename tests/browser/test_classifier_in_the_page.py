"""Chapter 14's classifier as a reader's browser runs it (headless Chromium, no network): the page loads
without JavaScript errors; for every image it offers, the probabilities it shows equal PyTorch's
(the page's own weights, read back from the built HTML) within 1e-3; an uploaded image gets a
prediction; changing the layer or head redraws the attention."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vit_from_scratch.classifier_page import page_probabilities, read_classifier_page

PAGE = "book/14_deployment.html"


@pytest.fixture(scope="module")
def opened(chrome, book_url, book_html):
    from _browser import open_page
    from selenium.webdriver.support.ui import WebDriverWait

    html = (book_html / PAGE).read_text(encoding="utf-8")
    chrome.get_log("browser")  # start with an empty console log
    open_page(chrome, f"{book_url}/{PAGE}")
    root = chrome.find_element("css selector", ".vit-classifier")
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'});", root)
    WebDriverWait(chrome, 60).until(lambda _: root.get_attribute("data-rendered"), "the page never classified")
    return root, html


def _after(chrome, root, action, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    before = root.get_attribute("data-rendered")
    action()
    WebDriverWait(chrome, timeout).until(lambda _: root.get_attribute("data-rendered") != before,
                                         "the classifier did not run again (data-rendered unchanged)")


def test_the_page_runs_without_javascript_errors(chrome, opened):
    errors = [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"
              and not re.search(r"favicon\.ico|Failed to load resource: net::ERR_NAME_NOT_RESOLVED", e["message"])]
    assert not errors, "\n".join(errors)


def test_every_offered_image_gets_pythons_probabilities(chrome, opened):
    from selenium.webdriver.support.ui import Select

    root, html = opened
    model, images, info = read_classifier_page(html)
    expected = page_probabilities(model, images, info["mean"], info["std"])  # (B, K)
    select = Select(root.find_element("css selector", 'select[data-role="image"]'))
    assert len(select.options) == len(images) >= 20
    for b in range(len(images)):
        if b:  # image 0 is shown when the page opens
            _after(chrome, root, lambda: select.select_by_index(b))
        assert root.get_attribute("data-source") == f"image {b}"
        shown = torch.tensor(json.loads(root.get_attribute("data-probs")))
        assert (shown - expected[b]).abs().max() < 1e-3, (b, shown, expected[b])
        assert root.get_attribute("data-prediction") == info["classes"][int(expected[b].argmax())]


def test_an_uploaded_image_gets_a_prediction(chrome, opened, tmp_path):
    from PIL import Image

    root, html = opened
    classes = read_classifier_page(html)[2]["classes"]
    g = torch.Generator().manual_seed(0)
    picture = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()  # not square, not 32 px
    path = tmp_path / "upload.png"
    Image.fromarray(picture).save(path)
    upload = root.find_element("css selector", 'input[type="file"]')
    _after(chrome, root, lambda: upload.send_keys(str(path)))
    assert root.get_attribute("data-source") == "upload"
    probs = json.loads(root.get_attribute("data-probs"))
    assert len(probs) == len(classes) and abs(sum(probs) - 1) < 1e-6
    assert root.get_attribute("data-prediction") in classes
    assert "your image" in root.find_element("css selector", ".vc-caption").text


def test_another_layer_or_head_redraws_the_attention(chrome, opened):
    from selenium.webdriver.support.ui import Select

    root, _ = opened
    canvas = root.find_element("css selector", "canvas.vit-explorer-map")
    pictures = [chrome.execute_script("return arguments[0].toDataURL();", canvas)]
    for role in ("layer", "head"):
        select = Select(root.find_element("css selector", f'select[data-role="{role}"]'))
        _after(chrome, root, lambda: select.select_by_index(1))
        pictures.append(chrome.execute_script("return arguments[0].toDataURL();", canvas))
    assert len(set(pictures)) == 3, "another layer or head drew the same attention"
