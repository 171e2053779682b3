"""Unit tests for vit_from_scratch.classifier_page (Chapter 14): the ViT that runs in the page.

The weights the page carries must be the model's to within half an int8 step, and read back from the
HTML they must equal :func:`page_model`'s exactly; the page must load nothing from outside; its
JavaScript forward pass, run with `node` (skipped where it is missing), must give PyTorch's
probabilities and class-token attention; bad input must fail with a message that says what to do.
"""

import json
import re
import shutil
import subprocess

import pytest
import torch

from vit_from_scratch.attention_maps import collect_attention
from vit_from_scratch.classifier_page import (_MODEL_JS, classifier_page_html, page_model, page_probabilities,
                                              pick_images, quantize_rows, read_classifier_page)
from vit_from_scratch.data import normalize

from _attention_tiny import images, tiny_model

NODE = shutil.which("node")
MEAN, STD, CLASSES = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25), list("abcde")


def _pixels(n=3):
    return (images(n) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def page():
    return classifier_page_html(tiny_model(), _pixels(), classes=CLASSES, mean=MEAN, std=STD,
                                titles=["x", "y", "z"])


def test_int8_rows_keep_every_weight_within_half_a_step():
    w = torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    w[2] = 0  # a row of zeros stays zeros
    codes, scale = quantize_rows(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scale.shape == (7,)
    back = codes.float() * scale.view(-1, 1, 1, 1)
    assert bool(((back - w).abs() <= scale.view(-1, 1, 1, 1) / 2 * (1 + 1e-6)).all())
    assert bool((back[2] == 0).all())
    assert int(codes.abs().amax()) == 127


def test_the_page_carries_exactly_the_twin_model_and_the_images(page):
    model = tiny_model()
    twin = page_model(model)
    carried, pictures, info = read_classifier_page(page)
    assert torch.equal(pictures, _pixels())
    assert info["titles"] == ["x", "y", "z"] and info["classes"] == CLASSES
    for (name, a), b in zip(twin.state_dict().items(), carried.state_dict().values()):
        assert torch.equal(a, b), name
    # the twin rounds the matrices only, and by little
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        if a.ndim >= 2 and name.endswith(".weight"):
            assert 0 < (a - b).abs().max() <= a.abs().max() / 254 * (1 + 1e-5), name
        else:
            assert torch.equal(a, b), name


def test_the_page_is_self_contained(page):
    assert page.count("<script") == 1 and not re.search(r"<[^>]* (src|href)=", page) and "://" not in page
    assert 'data-kind="classifier"' in page and 'type="file"' in page
    assert re.search(r'id="vit-classifier-[0-9a-f]{12}"', page)
    assert 'data-role="image"' in page and 'data-role="layer"' in page and 'data-role="head"' in page


def test_pick_images_takes_the_first_of_each_class_in_order():
    labels = torch.tensor([1, 0, 0, 2, 1, 2, 0])
    assert pick_images(labels, per_class=2) == [1, 2, 0, 4, 3, 5]
    with pytest.raises(ValueError, match="fewer than per_class"):
        pick_images(labels, per_class=3)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="class token"):
        page_model(tiny_model(pool="mean"))
    with pytest.raises(ValueError, match="uint8 images"):
        classifier_page_html(tiny_model(), images(2), classes=CLASSES, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="class names"):
        classifier_page_html(tiny_model(), _pixels(2), classes=CLASSES[:3], mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="one title per image"):
        classifier_page_html(tiny_model(), _pixels(2), classes=CLASSES, mean=MEAN, std=STD, titles=["a"])
    with pytest.raises(ValueError, match="no classifier page"):
        read_classifier_page("<p>nothing here</p>")


@pytest.mark.skipif(NODE is None, reason="node is not installed: the page's JavaScript is not run")
def test_the_javascript_forward_pass_equals_pytorch(page, tmp_path):
    payload = re.search(r"getElementById\('[\w-]+'\),(\{.*?\})\);</script>", page, re.S).group(1)
    script = (_MODEL_JS + f"const D={payload};const m=vitModel(D),g=m.cfg,I=m.bytes(D.images),"
              "Z=g.H*g.W*3,out=[];for(let b=0;b<I.length/Z;b++){const r=m.forward(m.pixels("
              "I.subarray(b*Z,b*Z+Z)));out.push([r.probs,Array.from(r.att)]);}console.log(JSON.stringify(out));")
    (tmp_path / "forward.js").write_text(script)
    run = subprocess.run([NODE, str(tmp_path / "forward.js")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    twin, x = page_model(tiny_model()), _pixels()
    probs = page_probabilities(twin, x, MEAN, STD)
    _, weights = collect_attention(twin, normalize(x, MEAN, STD))  # (B, L, nh, S, S)
    attention = weights[:, :, :, 0, 1:]  # the class token's row, patches only
    js_probs = torch.tensor([r[0] for r in result])
    js_attention = torch.tensor([r[1] for r in result]).reshape(attention.shape)
    assert (js_probs - probs).abs().max() < 1e-5
    assert (js_attention - attention).abs().max() < 1e-5
