"""Unit tests for vit_from_scratch.explorer (Chapters 7 and 1): the views that work without a kernel.

The data an explorer embeds, read back from its HTML, must equal the package's own maps to within the
quantisation step; the HTML must follow the DOM contract the browser tests rely on and load nothing
from outside; bad input must fail with a message that says what to do. The scripts are checked with
`node` (skipped where it is missing): syntax, and a run against a minimal stand-in for the page.
"""

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from vit_from_scratch.attention_maps import TokenLayout, attention_rollout, collect_attention, pooled_attention
from vit_from_scratch.data import normalize
from vit_from_scratch.explorer import (AttentionExplorerData, attention_explorer_data, attention_explorer_html,
                                       dequantize_maps, patch_grid_explorer_html, quantize_maps)

from _attention_tiny import TINY, images, tiny_model

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed: the explorer's JavaScript is not run")


class _Page(HTMLParser):
    """The parts of an explorer's HTML the contract names: root, selects, canvas, caption, script."""

    def __init__(self, text: str):
        super().__init__()
        self.roots, self.selects, self.canvases, self.classes, self.scripts = [], {}, [], [], []
        self._select = self._script = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.classes += (a.get("class") or "").split()
        if "vit-explorer" in (a.get("class") or "").split():
            self.roots.append(a)
        if tag == "select":
            self._select = self.selects.setdefault(a["data-role"], {"options": [], "value": None})
        elif tag == "option":
            self._select["options"].append(a["value"])
            if "selected" in a:
                self._select["value"] = a["value"]
        elif tag == "canvas":
            self.canvases.append(a)
        elif tag == "script":
            self._script = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self.scripts.append(self._script)
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script += data


def _payload(text: str) -> dict:
    """The JSON an explorer's script carries."""
    script = _Page(text).scripts[0]
    return json.loads(re.search(r"\(document\.getElementById\('[\w-]+'\),(\{.*\})\);$", script, re.S).group(1))


def _decode(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), dtype=dtype)


@pytest.fixture(scope="module")
def explorer():
    model = tiny_model()
    x = images(3)
    data = attention_explorer_data(model, x, titles=["a", "b", "c"])
    return model, x, data, attention_explorer_html(data)


# --- the data ----------------------------------------------------------------------------------

def test_quantising_keeps_every_value_within_half_a_step_of_its_map_scale():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 7, 64, generator=g) ** 3 * torch.rand(5, 7, 1, generator=g)
    maps[0, 0] = 0  # a map of zeros stays zeros
    codes, scales = quantize_maps(maps)
    assert codes.dtype == torch.uint8 and codes.shape == maps.shape and scales.shape == (5, 7)
    assert int(codes.amax(-1)[1:].min()) == 255, "each map's largest value must use the top code"
    err = (dequantize_maps(codes, scales) - maps).abs()
    assert bool((err <= scales[..., None] / 510 * (1 + 1e-5) + 1e-9).all())
    assert bool((dequantize_maps(codes, scales)[0, 0] == 0).all())
    with pytest.raises(ValueError, match="non-negative"):
        quantize_maps(torch.tensor([0.5, -0.1]))


def _within_half_a_step(stored: np.ndarray, scales: np.ndarray, exact: torch.Tensor) -> None:
    codes, scales = torch.from_numpy(stored.copy()), torch.from_numpy(scales.copy())
    err = (dequantize_maps(codes.reshape(exact.shape), scales.reshape(exact.shape[:-1])) - exact).abs()
    bound = scales.reshape(exact.shape[:-1])[..., None] / 510 * (1 + 1e-5) + 1e-7
    assert bool((err <= bound).all()), f"worst error {(err / bound).max():.3f} of half a step"


def test_the_maps_embedded_in_the_page_equal_the_package_maps_within_half_a_step(explorer):
    model, x, data, page = explorer
    _, weights = collect_attention(model, x)  # (B, L, nh, S, S), computed here independently
    layout = TokenLayout.of(model)
    T = layout.num_prefix_tokens
    D = _payload(page)
    _within_half_a_step(_decode(D["att"], np.uint8), _decode(D["attS"], "<f4"), pooled_attention(weights, layout))
    _within_half_a_step(_decode(D["roll"], np.uint8), _decode(D["rollS"], "<f4"),
                        pooled_attention(attention_rollout(weights), layout))
    _within_half_a_step(_decode(D["q"], np.uint8), _decode(D["qS"], "<f4"), weights[..., T:, T:])
    pixels = _decode(D["img"], np.uint8).reshape(3, 16, 16, 3)  # (B, H, W, RGB)
    assert np.array_equal(pixels, (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    # and the dataclass says the same as the page
    torch.testing.assert_close(data.maps("query"), dequantize_maps(data.query, data.query_scale))


@pytest.mark.parametrize("pool, prefix", [("cls", 1), ("mean", 0)])
def test_the_data_holds_every_layer_head_and_query_patch(pool, prefix):
    data = attention_explorer_data(tiny_model(pool), images(2))
    L, nh, N = TINY["depth"], TINY["num_heads"], (TINY["image_size"] // TINY["patch_size"]) ** 2
    assert isinstance(data, AttentionExplorerData) and data.layout.num_prefix_tokens == prefix
    assert (data.num_layers, data.num_heads) == (L, nh)
    assert data.attention.shape == (2, L, nh, N) and data.attention_scale.shape == (2, L, nh)
    assert data.rollout.shape == (2, L, N) and data.rollout_scale.shape == (2, L)
    assert data.query.shape == (2, L, nh, N, N) and data.query_scale.shape == (2, L, nh, N)
    assert data.images.shape == (2, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.titles == ("image 0", "image 1")
    # rows of the patch block sum to at most one; with mean pooling they sum to exactly one
    sums = data.maps("query").sum(-1)
    assert bool((sums <= 1 + 0.02).all()) and (pool == "cls" or bool((sums > 0.98).all()))


def test_the_model_sees_the_normalised_images_and_the_page_the_raw_ones():
    model, x = tiny_model(), images(2)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    data = attention_explorer_data(model, x, mean=mean, std=std)
    _, weights = collect_attention(model, normalize(x, mean, std))
    exact = pooled_attention(weights, TokenLayout.of(model))
    assert bool(((data.maps("attention") - exact).abs() <= data.attention_scale[..., None] / 500).all())
    _, plain = collect_attention(model, x)
    assert not torch.allclose(pooled_attention(plain, TokenLayout.of(model)), exact, atol=1e-3), \
        "normalising must change the maps, or this test proves nothing"
    assert torch.equal(data.images, (x * 255).round().to(torch.uint8))


# --- the page ----------------------------------------------------------------------------------

def test_the_attention_page_follows_the_dom_contract(explorer):
    page = _Page(explorer[3])
    assert len(page.roots) == 1 and page.roots[0]["data-kind"] == "attention" and page.roots[0]["id"]
    assert set(page.selects) == {"image", "layer", "head", "method"}
    assert page.selects["method"]["options"] == ["attention", "rollout", "query"]
    assert page.selects["layer"]["options"] == [str(i) for i in range(1, TINY["depth"] + 1)]
    assert page.selects["head"]["options"] == [str(i) for i in range(TINY["num_heads"])]
    assert page.selects["image"]["options"] == ["0", "1", "2"]
    assert [c["class"] for c in page.canvases] == ["vit-explorer-map"]
    assert "vit-explorer-caption" in page.classes and len(page.scripts) == 1


def test_the_patch_page_follows_the_dom_contract():
    page = _Page(patch_grid_explorer_html(torch.rand(3, 224, 224), (32, 16, 8, 16)))
    assert page.roots[0]["data-kind"] == "patches" and set(page.selects) == {"patch-size"}
    assert page.selects["patch-size"] == {"options": ["8", "16", "32"], "value": "16"}
    assert [c["class"] for c in page.canvases] == ["vit-explorer-map"] and "vit-explorer-caption" in page.classes
    sizes = _payload(patch_grid_explorer_html(torch.rand(3, 224, 224), (14,)))["sizes"]
    assert sizes == [{"p": 14, "h": 16, "w": 16, "n": 256, "vals": 588, "att": 257**2}]


def test_the_pages_load_nothing_from_outside(explorer):
    for text in (explorer[3], patch_grid_explorer_html(torch.rand(3, 64, 64), (8, 16))):
        found = re.findall(r"https?://|src\s*=|@import|url\(|<link|<iframe", text, flags=re.I)
        assert not found, f"the explorer must be self-contained, found {found}"


def test_two_explorers_on_one_page_have_their_own_ids(explorer):
    data = explorer[2]
    pages = [attention_explorer_html(data), attention_explorer_html(data),
             patch_grid_explorer_html(torch.rand(3, 32, 32), (8,))]
    ids = [_Page(p).roots[0]["id"] for p in pages]
    assert len(set(ids)) == 3
    for p, i in zip(pages, ids):  # each script looks up its own root, and only that one
        assert re.findall(r"getElementById\('([\w-]+)'\)", p) == [i]
        assert "document." not in p.replace(f"document.getElementById('{i}')", "")


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ([], "no images given"),
    (torch.rand(3, 16, 16), r"one image .*unsqueeze\(0\)"),
    (torch.rand(2, 3, 32, 32), "the model reads 16x16 images, got 32x32"),
    (torch.rand(2, 16, 16, 3), "channels last"),
    (torch.rand(2, 3, 16, 16) * 4 - 2, r"pixels in \[0, 1\].*mean= and std="),
    ([torch.rand(3, 16, 16), torch.rand(3, 8, 8)], "differ in shape"),
])
def test_bad_images_say_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        attention_explorer_data(tiny_model(), bad)


def test_bad_options_say_what_is_wrong():
    model, x = tiny_model(), images(2)
    with pytest.raises(ValueError, match="2 images but 3 titles"):
        attention_explorer_data(model, x, titles=["a", "b", "c"])
    with pytest.raises(ValueError, match="both mean= and std="):
        attention_explorer_data(model, x, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="pass fewer images"):
        attention_explorer_data(model, x, max_bytes=1000)
    with pytest.raises(ValueError, match="model.eval()"):
        attention_explorer_data(tiny_model().train(), x)


def test_bad_patch_sizes_say_what_is_wrong():
    image = torch.rand(3, 224, 224)
    with pytest.raises(ValueError, match=r"does not divide the image size \(224, 224\).*pick a patch size"):
        patch_grid_explorer_html(image, (16, 15))
    with pytest.raises(ValueError, match="no patch sizes"):
        patch_grid_explorer_html(image, ())
    with pytest.raises(ValueError, match=r"one image shaped \(C, H, W\).*images\[0\]"):
        patch_grid_explorer_html(image[None], (16,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        patch_grid_explorer_html(image * 3, (16,))


# --- the scripts, run by node --------------------------------------------------------------------

@needs_node
def test_the_scripts_are_valid_javascript(explorer, tmp_path):
    for name, text in [("attention", explorer[3]), ("patches", patch_grid_explorer_html(torch.rand(3, 224, 224)))]:
        path = tmp_path / f"{name}.js"
        path.write_text(_Page(text).scripts[0])
        result = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name} explorer: {result.stderr[-2000:]}"


# A stand-in for the page: the root, its selects, a canvas that keeps the last picture, the caption.
_HARNESS = r"""
const spec=JSON.parse(require('fs').readFileSync(0,'utf8'));
function el(p){const l={};return Object.assign({attrs:{},listeners:l,
 addEventListener(t,f){(l[t]=l[t]||[]).push(f);},fire(t,e){(l[t]||[]).forEach(f=>f(e||{}));},
 setAttribute(k,v){this.attrs[k]=v;}},p);}
let last=null;const ctx={createImageData:(w,h)=>({width:w,height:h,data:new Uint8ClampedArray(w*h*4)}),
 putImageData(d){last=d;},strokeRect(){},beginPath(){},moveTo(){},lineTo(){},stroke(){},fillRect(){},
 fillText(){},measureText:t=>({width:6*t.length})};
const canvas=el({getContext:()=>ctx,getBoundingClientRect:()=>({left:0,top:0,width:spec.W,height:spec.H})});
const caption=el({textContent:''}),note=el({textContent:''});
const selects=Object.entries(spec.selects).map(([r,s])=>el({dataset:{role:r},value:s.value}));
const role=r=>selects.find(s=>s.dataset.role===r);
const root=el({querySelector:q=>q.startsWith('canvas')?canvas:q.endsWith('caption')?caption:note,
 querySelectorAll:()=>selects});
globalThis.document={getElementById:id=>id===spec.id?root:null};
const log=[];const snap=()=>{const c=spec.centres.map(([x,y])=>{const t=(y*last.width+x)*4;
 return last.data[t]+last.data[t+1]+last.data[t+2];});
 log.push({caption:caption.textContent,rendered:root.attrs['data-rendered'],
  method:role('method')?role('method').value:null,centres:c});};
new Function(spec.script)();snap();
for(const a of spec.actions){if(a.select){role(a.select).value=String(a.value);role(a.select).fire('change');}
 if(a.click)canvas.fire('click',{clientX:a.click[0],clientY:a.click[1]});
 if(a.move)canvas.fire('mousemove',{clientX:a.move[0],clientY:a.move[1]});
 if(a.leave)canvas.fire('mouseleave');snap();}
console.log(JSON.stringify(log));
"""


def _run(text: str, actions: list[dict], centres: list[tuple[int, int]]) -> list[dict]:
    page = _Page(text)
    canvas = page.canvases[0]
    spec = {"id": page.roots[0]["id"], "selects": page.selects, "script": page.scripts[0], "actions": actions,
            "W": int(canvas["width"]), "H": int(canvas["height"]), "centres": centres}
    result = subprocess.run([NODE, "-e", _HARNESS], input=json.dumps(spec), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@needs_node
def test_the_attention_script_redraws_on_every_choice_and_click():
    model = tiny_model()
    black = torch.zeros(2, 3, 16, 16)  # on black, a pixel's brightness is the map's colour alone
    data = attention_explorer_data(model, black)
    page = attention_explorer_html(data, size=64)  # 16 px -> 64 px canvas: 16 canvas px per patch
    centres = [(16 * j + 8, 16 * i + 8) for i in range(4) for j in range(4)]
    log = _run(page, [{"select": "layer", "value": 2}, {"select": "method", "value": "rollout"},
                      {"click": [40, 20]}, {"select": "head", "value": 1}, {"move": [5, 60]}, {"leave": True},
                      {"select": "image", "value": 1}], centres)
    assert [s["rendered"] for s in log] == [str(i) for i in range(1, 9)]
    assert log[0]["caption"] == f"image 0 · layer {TINY['depth']} · head 0 · class-token attention"
    assert log[1]["caption"] == "image 0 · layer 2 · head 0 · class-token attention"
    assert log[2]["caption"] == "image 0 · layer 2 · mean of heads · rollout through layers 1-2"
    assert log[3]["caption"] == "image 0 · layer 2 · head 0 · query patch (1, 2)" and log[3]["method"] == "query"
    assert log[4]["caption"] == "image 0 · layer 2 · head 1 · query patch (1, 2)"
    assert log[5]["caption"] == "image 0 · layer 2 · head 1 · query patch (3, 0)"  # hovering moves it
    assert log[6]["caption"] == log[4]["caption"]  # leaving the canvas returns to the clicked patch
    assert log[7]["caption"] == "image 1 · layer 2 · head 1 · query patch (1, 2)"
    # the brightest patch on the canvas is where the map is largest, up to two of the canvas's 256 colour
    # levels (under torch 2.9's numerics two patches were within one level, and the first of them won)
    expected = [data.maps("attention")[0, -1, 0], data.maps("attention")[0, 1, 0], data.maps("rollout")[0, 1],
                data.maps("query")[0, 1, 0, 6], data.maps("query")[0, 1, 1, 6], data.maps("query")[0, 1, 1, 12]]
    for snap, m in zip(log, expected):
        flat = m.flatten().double()
        level = (flat.max() - flat.min()) / 255
        assert flat[int(np.argmax(snap["centres"]))] >= flat.max() - 2 * level, snap["caption"]


@needs_node
def test_the_patch_script_switches_the_grid_and_counts_the_tokens():
    page = patch_grid_explorer_html(torch.rand(3, 224, 224), (8, 16, 32, 56))
    log = _run(page, [{"select": "patch-size", "value": 56}, {"select": "patch-size", "value": 8}], [(0, 0)])
    assert [s["rendered"] for s in log] == ["1", "2", "3"]
    assert [s["caption"] for s in log] == ["patch size 16 · 14×14 grid · 196 tokens",
                                           "patch size 56 · 4×4 grid · 16 tokens",
                                           "patch size 8 · 28×28 grid · 784 tokens"]
