"""Chapter 7, in the page itself: attention and patch-grid explorers that need no kernel.

The ipywidgets explorer of :mod:`vit_from_scratch.attention_plots` redraws with matplotlib, so it
needs a running Python. The views here are precomputed instead: :func:`attention_explorer_data`
runs the package's own functions (:func:`~vit_from_scratch.attention_maps.collect_attention`,
:func:`~vit_from_scratch.attention_maps.pooled_attention`,
:func:`~vit_from_scratch.attention_maps.attention_rollout`) once, quantises every map to 8 bits,
and :func:`attention_explorer_html` writes one self-contained block of HTML and JavaScript: the
data inline as base64, no CDN, no network. The same block works on the static book page, in
Jupyter and in Colab (show it with ``IPython.display.HTML``). Chapter 1's patch grid gets the same
treatment in :func:`patch_grid_explorer_html`.

Every explorer is a ``<div class="vit-explorer" data-kind=...>`` with a unique id, ``<select
data-role=...>`` controls, a ``<canvas class="vit-explorer-map">``, a ``<div
class="vit-explorer-caption">`` saying what is shown, and a ``data-rendered`` counter that grows
with every redraw. Its script touches nothing outside its own root.

Letters as in :mod:`vit_from_scratch.attention_maps`: B images, L layers, nh heads, N = h*w patches.
"""

from __future__ import annotations

import base64
import html
import json
import uuid
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from .attention import MultiHeadSelfAttention
from .attention_maps import TokenLayout, attention_rollout, collect_attention, pooled_attention
from .data import normalize
from .patches import check_patch_grid

__all__ = ["LEVELS", "AttentionExplorerData", "quantize_maps", "dequantize_maps", "attention_explorer_data",
           "attention_explorer_html", "patch_grid_explorer_html"]

LEVELS = 255  # 8 bits: a map's values become codes 0..255 of its own scale (its largest value)
MAX_BYTES = 4_000_000  # the most map data one explorer embeds by default (base64 adds a third)


# Quantising ------------------------------------------------------------------------------------
def quantize_maps(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Non-negative maps -> 8-bit codes and one scale per map, the map's largest value.

    A value is ``code * scale / 255``, off by at most half a step, ``scale / 510``.

    Shape:
        (..., N) -> codes (..., N) uint8, scales (...) float32
    """
    if maps.numel() and not bool((maps >= 0).all()):  # also catches NaN
        raise ValueError("maps to quantise must be non-negative (attention weights are), got a negative or "
                         "NaN value")
    scale = maps.float().amax(dim=-1)  # (...): stored in float32, quantised against that
    codes = maps.double() / scale.double().clamp_min(1e-30)[..., None] * LEVELS
    return codes.round().clamp(0, LEVELS).to(torch.uint8), scale


def dequantize_maps(codes: Tensor, scales: Tensor) -> Tensor:
    """The inverse of :func:`quantize_maps`, to within half a step: ``code * scale / 255``.

    Shape:
        codes (..., N), scales (...) -> (..., N) float32
    """
    return codes.float() * (scales.float() / LEVELS)[..., None]


@dataclass(frozen=True)
class AttentionExplorerData:
    """What an attention explorer embeds: the images and every map, quantised by :func:`quantize_maps`.

    Maps are on the patch grid in row-major order (patch ``(i, j)`` is entry ``i * w + j``), with the
    prefix tokens left out. Dequantise with :meth:`maps`.

    Shape:
        images (B, 3, H, W) uint8; attention (B, L, nh, N) and scales (B, L, nh); rollout (B, L, N) and
        scales (B, L); query (B, L, nh, N, N) and scales (B, L, nh, N)
    """

    images: Tensor  # the pixels drawn under the maps
    titles: tuple[str, ...]  # one per image, shown in the image menu
    layout: TokenLayout  # grid, patch size, prefix tokens, pooling of the model
    attention: Tensor  # what the head reads out takes from each patch: the class token's row (pool="cls")
    attention_scale: Tensor
    rollout: Tensor  # the same for the rollout through layers 1..l (heads fused by their mean)
    rollout_scale: Tensor
    query: Tensor  # [b, l, k, q]: patch q's attention to every patch, in layer l, head k
    query_scale: Tensor

    @property
    def num_layers(self) -> int:
        return self.attention.shape[1]

    @property
    def num_heads(self) -> int:
        return self.attention.shape[2]

    def maps(self, kind: Literal["attention", "rollout", "query"]) -> Tensor:
        """The dequantised maps of one kind, float32, shaped as stored."""
        if kind not in ("attention", "rollout", "query"):
            raise ValueError(f"kind must be 'attention', 'rollout' or 'query', got {kind!r}")
        return dequantize_maps(getattr(self, kind), getattr(self, f"{kind}_scale"))


# Computing -------------------------------------------------------------------------------------
def _as_batch(images: Tensor | Sequence[Tensor], layout: TokenLayout) -> Tensor:
    """A (B, C, H, W) float batch in [0, 1] at the model's image size, or a ValueError that says why not."""
    if not isinstance(images, Tensor):
        images = list(images)
        if not images:
            raise ValueError("no images given: pass a batch shaped (B, C, H, W) with at least one image, "
                             "e.g. test_images[:4]")
        if len({tuple(x.shape) for x in images}) > 1:
            raise ValueError(f"the images differ in shape ({sorted({tuple(x.shape) for x in images})}); "
                             "resize them to the model's image size first")
        images = torch.stack(list(images))
    if images.ndim == 3:
        raise ValueError(f"expected a batch shaped (B, C, H, W), got one image {tuple(images.shape)}; "
                         "use images.unsqueeze(0)")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a batch of at least one image shaped (B, C, H, W), got shape "
                         f"{tuple(images.shape)}")
    if tuple(images.shape[-2:]) != tuple(layout.image_size):
        raise ValueError(f"the model reads {layout.image_size[0]}x{layout.image_size[1]} images, got "
                         f"{images.shape[-2]}x{images.shape[-1]} (shape {tuple(images.shape)}); resize them "
                         "first (vit_from_scratch.data.resize_images), or pass (B, C, H, W), not channels last")
    x = images.float().div(LEVELS) if images.dtype == torch.uint8 else images.float()
    if not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"images must be pixels in [0, 1] (they are drawn under the maps), got values from "
                         f"{x.min():.3g} to {x.max():.3g}; pass the un-normalised images and give the model's "
                         "normalisation as mean= and std=")
    return x


def _pixels(images: Tensor) -> Tensor:
    """[0, 1] images with 1 or 3 channels -> (B, 3, H, W) uint8 for drawing."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)  # grey -> RGB
    if images.shape[1] != 3:
        raise ValueError(f"the explorer draws RGB or grey images, got {images.shape[1]} channels")
    return (images * LEVELS).round().to(torch.uint8)


def attention_explorer_data(model: nn.Module, images: Tensor | Sequence[Tensor], *,
                            titles: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                            std: Sequence[float] | None = None, max_bytes: int = MAX_BYTES) -> AttentionExplorerData:
    """Every map an attention explorer shows, computed with the package and quantised to 8 bits.

    One forward pass with :func:`~vit_from_scratch.attention_maps.collect_attention` gives the weights of
    every layer and head; from them come the map of what the head reads out (the class token's row,
    :func:`~vit_from_scratch.attention_maps.pooled_attention`), the rollout through each layer
    (:func:`~vit_from_scratch.attention_maps.attention_rollout`, heads fused by their mean), and every
    patch's own attention row. ``images`` are pixels in [0, 1]; ``mean`` and ``std`` are the
    normalisation the model was trained with (:func:`~vit_from_scratch.data.normalize`), if any.

    Shape:
        images (B, C, H, W) -> see :class:`AttentionExplorerData`
    """
    layout = TokenLayout.of(model)
    x = _as_batch(images, layout)
    B = x.shape[0]
    titles = tuple(titles) if titles is not None else tuple(f"image {b}" for b in range(B))
    if len(titles) != B:
        raise ValueError(f"got {B} images but {len(titles)} titles; give one title per image")
    if (mean is None) != (std is None):
        raise ValueError("give both mean= and std= (the model's input normalisation), or neither")
    heads = sum(m.num_heads for m in model.modules() if isinstance(m, MultiHeadSelfAttention))  # L * nh
    size = B * heads * layout.num_patches**2  # bytes of the query rows, the bulk of the data
    if size > max_bytes:
        raise ValueError(f"{B} images of this model embed {size / 1e6:.1f} MB of query rows (limit "
                         f"{max_bytes / 1e6:.1f} MB): pass fewer images, or raise max_bytes")
    device = next(model.parameters()).device
    model_input = normalize(x, mean, std) if mean is not None else x
    _, weights = collect_attention(model, model_input.to(device))  # (B, L, nh, S, S)
    weights = weights.cpu()
    T = layout.num_prefix_tokens
    attention = quantize_maps(pooled_attention(weights, layout))  # (B, L, nh, N)
    rollout = quantize_maps(pooled_attention(attention_rollout(weights), layout))  # (B, L, S, S) -> (B, L, N)
    query = quantize_maps(weights[..., T:, T:])  # (B, L, nh, N, N): patch rows, patch columns
    return AttentionExplorerData(_pixels(x), titles, layout, *attention, *rollout, *query)


# The page --------------------------------------------------------------------------------------
_CSS = (".vit-explorer{font:14px/1.4 system-ui,sans-serif;margin:.5em 0}"
        ".vit-explorer-controls{display:flex;flex-wrap:wrap;gap:.3em 1em;margin-bottom:.4em}"
        ".vit-explorer canvas{display:block;max-width:100%;height:auto;cursor:crosshair}"
        ".vit-explorer-caption{font-weight:600;margin-top:.3em}.vit-explorer-note{font-size:12px;color:#555}")

# Shared by both kinds; runs inside (function(root, D){...}), so it touches only its own root.
_COMMON_JS = r"""
const cv=root.querySelector('canvas.vit-explorer-map'),ctx=cv.getContext('2d'),sel={},
 cap=root.querySelector('.vit-explorer-caption'),note=root.querySelector('.vit-explorer-note');
root.querySelectorAll('select[data-role]').forEach(s=>{sel[s.dataset.role]=s;});
const bytes=s=>{const b=atob(s.replace(/-/g,'+').replace(/_/g,'/')),u=new Uint8Array(b.length);
 for(let i=0;i<b.length;i++)u[i]=b.charCodeAt(i);return u;};
const floats=s=>new Float32Array(bytes(s).buffer);
const img=bytes(D.img),S=D.scale,Wc=D.W*S,Hc=D.H*S;let count=0;
function finish(text,extra){cap.textContent=text;note.textContent=extra;
 root.setAttribute('data-rendered',String(++count));}
function base(b){const out=ctx.createImageData(Wc,Hc),o=b*D.H*D.W*3;
 for(let y=0;y<Hc;y++)for(let x=0;x<Wc;x++){const s=o+(((y/S)|0)*D.W+((x/S)|0))*3,t=(y*Wc+x)*4;
  out.data[t]=img[s];out.data[t+1]=img[s+1];out.data[t+2]=img[s+2];out.data[t+3]=255;}
 return out;}
"""

_ATTENTION_JS = r"""
const att=bytes(D.att),attS=floats(D.attS),roll=bytes(D.roll),rollS=floats(D.rollS),
 qq=bytes(D.q),qS=floats(D.qS),h=D.h,w=D.w,N=h*w,L=D.L,nh=D.nh,A=0.6;
const STOPS=[[0,0,4],[31,12,72],[85,15,109],[136,34,106],[186,54,85],[227,89,51],[249,140,10],
 [249,201,50],[252,255,164]];  // inferno, as the matplotlib figures
let query=[h>>1,w>>1],hover=null;
function colour(v){const t=v*(STOPS.length-1),i=Math.min(STOPS.length-2,Math.floor(t)),f=t-i,
 a=STOPS[i],b=STOPS[i+1];return [0,1,2].map(j=>a[j]+f*(b[j]-a[j]));}
function source(d,n,m){const s=Math.max((d+0.5)*n/m-0.5,0),i=Math.min(Math.floor(s),n-1);
 return [i,Math.min(i+1,n-1),s-i];}  // bilinear, align_corners=False, as upsample_maps
function patchAt(ev){const r=cv.getBoundingClientRect(),
 y=Math.floor((ev.clientY-r.top)/r.height*h),x=Math.floor((ev.clientX-r.left)/r.width*w);
 return [Math.min(h-1,Math.max(0,y)),Math.min(w-1,Math.max(0,x))];}
function current(){const l=+sel.layer.value-1,k=+sel.head.value,bl=+sel.image.value*L+l,q=hover||query;
 if(sel.method.value==='rollout')return {c:roll.subarray(bl*N,bl*N+N),s:rollS[bl],
  what:`mean of heads \u00b7 rollout through layers 1-${l+1}`};
 if(sel.method.value==='query'){const r=(bl*nh+k)*N+q[0]*w+q[1];
  return {c:qq.subarray(r*N,r*N+N),s:qS[r],what:`head ${k} \u00b7 query patch (${q[0]}, ${q[1]})`,q:q};}
 const r=bl*nh+k;return {c:att.subarray(r*N,r*N+N),s:attS[r],what:`head ${k} \u00b7 ${D.label}`};}
function draw(){const v=current(),c=v.c,out=base(+sel.image.value),d=out.data;
 let lo=255,hi=0;for(const x of c){lo=Math.min(lo,x);hi=Math.max(hi,x);}const span=Math.max(hi-lo,1e-9);
 const xs=[];for(let x=0;x<Wc;x++)xs.push(source(x,w,Wc));
 for(let y=0;y<Hc;y++){const [y0,y1,fy]=source(y,h,Hc);for(let x=0;x<Wc;x++){const [x0,x1,fx]=xs[x],
  val=(1-fy)*((1-fx)*c[y0*w+x0]+fx*c[y0*w+x1])+fy*((1-fx)*c[y1*w+x0]+fx*c[y1*w+x1]),
  col=colour((val-lo)/span),t=(y*Wc+x)*4;for(let j=0;j<3;j++)d[t+j]=(1-A)*d[t+j]+A*col[j];}}
 ctx.putImageData(out,0,0);
 if(v.q){const pw=Wc/w,ph=Hc/h;ctx.strokeStyle='#00e5ff';ctx.lineWidth=2;
  ctx.strokeRect(v.q[1]*pw+1,v.q[0]*ph+1,pw-2,ph-2);}
 const f=x=>(x*v.s/255).toPrecision(2);
 finish(`image ${sel.image.value} \u00b7 layer ${+sel.layer.value} \u00b7 ${v.what}`,
  `colours from ${f(lo)} (dark) to ${f(hi)} (bright): each map on its own scale; `+
  `click a patch to see where it attends (method query), hover to move it`);}
Object.values(sel).forEach(s=>s.addEventListener('change',()=>{hover=null;draw();}));
cv.addEventListener('click',ev=>{query=patchAt(ev);hover=null;sel.method.value='query';draw();});
cv.addEventListener('mousemove',ev=>{if(sel.method.value!=='query')return;const p=patchAt(ev),
 q=hover||query;if(p[0]!==q[0]||p[1]!==q[1]){hover=p;draw();}});
cv.addEventListener('mouseleave',()=>{if(hover){hover=null;draw();}});
draw();
"""

_PATCHES_JS = r"""
function draw(){const p=+sel['patch-size'].value,g=D.sizes.find(s=>s.p===p),step=p*S;
 ctx.putImageData(base(0),0,0);ctx.strokeStyle='rgba(255,255,255,0.9)';ctx.lineWidth=1;ctx.beginPath();
 for(let i=0;i<=g.h;i++){const y=Math.min(i*step,Hc-1)+0.5;ctx.moveTo(0,y);ctx.lineTo(Wc,y);}
 for(let j=0;j<=g.w;j++){const x=Math.min(j*step,Wc-1)+0.5;ctx.moveTo(x,0);ctx.lineTo(x,Hc);}
 ctx.stroke();
 if(g.n<=64){ctx.font='11px sans-serif';ctx.textBaseline='top';
  for(let i=0;i<g.h;i++)for(let j=0;j<g.w;j++){const t=String(i*g.w+j),x=j*step+3,y=i*step+3;
   ctx.fillStyle='rgba(0,0,0,0.5)';ctx.fillRect(x-1,y-1,ctx.measureText(t).width+2,13);
   ctx.fillStyle='#fff';ctx.fillText(t,x,y);}}
 finish(`patch size ${p} \u00b7 ${g.h}\u00d7${g.w} grid \u00b7 ${g.n} tokens`,
  `${g.vals} values per token; ${g.att.toLocaleString('en')} attention entries, (1 + ${g.n})\u00b2, `+
  `per head and layer`+(g.n<=64?'; numbers: position in the token sequence':''));}
sel['patch-size'].addEventListener('change',draw);
draw();
"""


def _b64(t: Tensor) -> str:
    """URL-safe base64 without padding: no '/', '+' or '=' in the page (the JavaScript reads it back)."""
    raw = t.contiguous().numpy().astype("<f4" if t.is_floating_point() else "u1").tobytes()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _select(role: str, label: str, options: Sequence[tuple[object, str]], selected: object) -> str:
    opts = "".join(f'<option value="{html.escape(str(v))}"{" selected" if v == selected else ""}>'
                   f"{html.escape(text)}</option>" for v, text in options)
    return f'<label>{html.escape(label)} <select data-role="{role}">{opts}</select></label>'


def _explorer(kind: str, controls: Sequence[str], data: dict, script: str, size: tuple[int, int]) -> str:
    """One self-contained explorer: root div with a fresh unique id, controls, canvas, caption, script."""
    root_id = f"vit-explorer-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # cannot close the script
    return (f'<div class="vit-explorer" data-kind="{kind}" id="{root_id}"><style>{_CSS}</style>'
            f'<div class="vit-explorer-controls">{"".join(controls)}</div>'
            f'<canvas class="vit-explorer-map" width="{size[1]}" height="{size[0]}"></canvas>'
            '<div class="vit-explorer-caption"></div><div class="vit-explorer-note"></div>'
            f"<script>(function(root,D){{'use strict';{_COMMON_JS}{script}}})"
            f"(document.getElementById('{root_id}'),{payload});</script></div>")


def _display_scale(height: int, width: int, target: int) -> int:
    return max(1, round(target / max(height, width)))  # whole canvas pixels per image pixel


def attention_explorer_html(data: AttentionExplorerData, *, size: int = 320) -> str:
    """A self-contained HTML/JavaScript attention explorer (no kernel, no network) for ``data``.

    The reader picks an image, a layer, a head and a method: ``attention`` (what the class token takes
    from each patch in that layer and head), ``rollout`` (through layers 1..layer, heads fused by their
    mean) or ``query`` (the attention row of one patch; click or hover a patch to choose it). The map is
    blended over the image, each on its own colour scale, as :func:`~vit_from_scratch.attention_plots.
    show_attention` draws it. ``size`` is about the canvas side in pixels. Show it with
    ``IPython.display.HTML``.
    """
    (H, W), (h, w) = data.layout.image_size, data.layout.grid_size
    s, L, nh = _display_scale(H, W, size), data.num_layers, data.num_heads
    payload = {"H": H, "W": W, "h": h, "w": w, "L": L, "nh": nh, "scale": s,
               "label": "class-token attention" if data.layout.pool == "cls" else "mean attention received",
               "img": _b64(data.images.permute(0, 2, 3, 1)),  # (B, 3, H, W) -> (B, H, W, 3): RGB per pixel
               "att": _b64(data.attention), "attS": _b64(data.attention_scale),
               "roll": _b64(data.rollout), "rollS": _b64(data.rollout_scale),
               "q": _b64(data.query), "qS": _b64(data.query_scale)}
    controls = [_select("image", "image", list(enumerate(data.titles)), 0),
                _select("layer", "layer", [(l, str(l)) for l in range(1, L + 1)], L),
                _select("head", "head", [(k, str(k)) for k in range(nh)], 0),
                _select("method", "method", [("attention", "attention"), ("rollout", "rollout"),
                                             ("query", "query patch")], "attention")]
    return _explorer("attention", controls, payload, _ATTENTION_JS, (H * s, W * s))


def patch_grid_explorer_html(image: Tensor, patch_sizes: Sequence[int] = (8, 14, 16, 28, 32, 56), *,
                             size: int = 448) -> str:
    """A self-contained HTML/JavaScript view of ``image`` cut into patches, one patch size at a time.

    For every patch size the grid, the number of tokens, the values per token and the attention entries
    are computed here; the page switches between them with a ``patch-size`` menu (no kernel needed).

    Shape:
        image (C, H, W), pixels in [0, 1] or uint8, C = 1 or 3
    """
    if image.ndim != 3:
        hint = "; pass one image, images[0]" if image.ndim == 4 else ""
        raise ValueError(f"expected one image shaped (C, H, W), got shape {tuple(image.shape)}{hint}")
    sizes = sorted(set(int(p) for p in patch_sizes))
    if not sizes:
        raise ValueError("no patch sizes given: pass a few that divide the image, e.g. (8, 16, 32)")
    C, H, W = image.shape
    x = image.float().div(LEVELS) if image.dtype == torch.uint8 else image.float()
    if not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"image pixels must be in [0, 1] (or uint8), got values from {x.min():.3g} to "
                         f"{x.max():.3g}; pass the image before normalisation")
    grids = []
    for p in sizes:
        h, w = check_patch_grid((H, W), p)  # raises, naming the sizes that would divide the image
        grids.append({"p": p, "h": h, "w": w, "n": h * w, "vals": C * p * p, "att": (1 + h * w) ** 2})
    s = _display_scale(H, W, size)
    payload = {"H": H, "W": W, "scale": s, "sizes": grids, "img": _b64(_pixels(x[None])[0].permute(1, 2, 0))}
    chosen = 16 if 16 in sizes else sizes[0]
    options = [(g["p"], f"{g['p']} px ({g['n']} tokens)") for g in grids]
    return _explorer("patches", [_select("patch-size", "patch size", options, chosen)], payload, _PATCHES_JS,
                     (H * s, W * s))
