"""Chapter 14, in the page itself: the trained ViT classifying images in the reader's browser, no kernel.

:func:`classifier_page_html` writes one self-contained block of HTML and JavaScript: the model's weights
inline (matrices as int8 with a scale per output row, the small vectors as float32, all base64), about
twenty test images, and a forward pass written out in plain JavaScript: patch embedding, class token,
positions, pre-norm blocks (LayerNorm, multi-head attention with its softmax, GELU MLP), final norm,
head. No library, no network, no build step. The reader picks an image or uploads one (resized to the
model's size in the page) and sees the class probabilities and the class token's attention over the
patches, for any layer and head.

The page computes with the weights it carries, so :func:`page_model` is its twin in PyTorch: the model
with every matrix rounded to int8 and back, exactly as the page decodes it. :func:`read_classifier_page`
reads a page's weights and images back into PyTorch, which is how the tests check the JavaScript.

Every page is a ``<div class="vit-explorer vit-classifier" data-kind="classifier">`` with a unique id;
after each forward pass it sets ``data-probs`` (the probabilities, JSON), ``data-prediction``,
``data-source`` (``image <i>`` or ``upload``) and a ``data-rendered`` counter that grows.

Letters: B images, C channels, H/W image side, P patch size, h/w patch grid, N = h*w patches, D width,
L layers, nh heads, K classes.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import re
import uuid
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .config import ViTConfig
from .data import normalize
from .model import VisionTransformer
from .patches import to_2tuple

__all__ = ["LEVELS", "quantize_rows", "page_model", "page_probabilities", "classifier_page_html",
           "read_classifier_page", "pick_images"]

LEVELS = 127  # symmetric int8: a row's codes run from -127 to 127 of its own scale


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """A weight -> int8 codes and one float32 scale per output row (its largest magnitude / 127).

    A weight is ``code * scale``, off by at most half a step, ``scale / 2``.

    Shape:
        (R, ...) -> codes (R, ...) int8, scales (R,) float32
    """
    w = weight.detach().float().reshape(weight.shape[0], -1)  # (R, ...) -> (R, F)
    scale = (w.abs().amax(dim=1) / LEVELS).clamp_min(1e-12)  # (R,)
    codes = (w.double() / scale.double()[:, None]).round().clamp(-LEVELS, LEVELS).to(torch.int8)
    return codes.reshape(weight.shape), scale


def _dequantize_rows(codes: Tensor, scale: Tensor) -> Tensor:
    return (codes.float().reshape(codes.shape[0], -1) * scale[:, None]).reshape(codes.shape)


def _is_matrix(name: str, t: Tensor) -> bool:
    """The weights stored as int8: every layer's weight matrix (and the patch embedding's kernels)."""
    return t.ndim >= 2 and name.endswith(".weight")


def _check_model(model: VisionTransformer) -> ViTConfig:
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"the page runs a VisionTransformer, got {type(model).__name__}")
    c = model.config
    if (c.pool != "cls" or not c.use_class_token or c.use_fc_norm or model.num_prefix_tokens != 1
            or c.in_channels != 3):
        raise ValueError("the page's forward pass reads out the class token of an RGB ViT (pool='cls', one class "
                         f"token, no fc_norm), got pool={c.pool!r}, {model.num_prefix_tokens} prefix tokens, "
                         f"fc_norm={c.use_fc_norm}, {c.in_channels} channels")
    return c


def page_model(model: VisionTransformer) -> VisionTransformer:
    """A copy of ``model`` with every weight matrix rounded to int8 per row and back: what the page computes."""
    _check_model(model)
    twin = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if _is_matrix(name, p):
                p.copy_(_dequantize_rows(*quantize_rows(p)))
    return twin


def page_probabilities(model: VisionTransformer, images: Tensor, mean: Sequence[float],
                       std: Sequence[float]) -> Tensor:
    """Class probabilities of uint8 ``images`` by ``model``, normalised as the page normalises them.

    Shape:
        images (B, 3, H, W) uint8 -> (B, K)
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images shaped (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    with torch.no_grad():
        return model(normalize(images, mean, std)).softmax(dim=-1)


def pick_images(labels: Tensor, per_class: int = 2) -> list[int]:
    """Indices of the first ``per_class`` images of every class, class by class (a fixed, unselected pick)."""
    picked = []
    for k in range(int(labels.max()) + 1):
        found = torch.nonzero(labels == k).flatten()[:per_class].tolist()
        if len(found) < per_class:
            raise ValueError(f"class {k} has {len(found)} images, fewer than per_class={per_class}")
        picked += found
    return picked


# The page ---------------------------------------------------------------------------------------
def _b64(array: np.ndarray) -> str:
    """URL-safe base64 without padding (no '/', '+' or '=' in the page; the JavaScript reads it back)."""
    return base64.urlsafe_b64encode(np.ascontiguousarray(array).tobytes()).rstrip(b"=").decode("ascii")


def _unb64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), dtype=dtype)


_CSS = (".vit-classifier{font:14px/1.4 system-ui,sans-serif;margin:.5em 0}"
        ".vit-classifier .vc-controls{display:flex;flex-wrap:wrap;gap:.3em 1em;margin-bottom:.5em;align-items:center}"
        ".vit-classifier .vc-body{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
        ".vit-classifier canvas{display:block;image-rendering:pixelated;width:192px;height:192px}"
        ".vit-classifier .vc-figure{text-align:center;font-size:12px;color:#555}"
        ".vit-classifier .vc-bars{min-width:260px;flex:1;max-width:420px}"
        ".vit-classifier .vc-row{display:flex;align-items:center;gap:.4em;margin:1px 0}"
        ".vit-classifier .vc-name{width:6.5em;text-align:right}"
        ".vit-classifier .vc-track{flex:1;background:#eee;height:14px}"
        ".vit-classifier .vc-bar{background:#4c72b0;height:14px}.vit-classifier .vc-top .vc-bar{background:#dd8452}"
        ".vit-classifier .vc-value{width:4em;font-variant-numeric:tabular-nums}"
        ".vit-classifier .vc-caption{font-weight:600;margin-top:.4em}"
        ".vit-classifier .vc-note{font-size:12px;color:#555}")

# The model: pure functions of the payload D, no page. Activations in float64, weights in float32.
_MODEL_JS = r"""
function vitModel(D){
const bytes=s=>{const b=atob(s.replace(/-/g,'+').replace(/_/g,'/')),u=new Uint8Array(b.length);
 for(let i=0;i<b.length;i++)u[i]=b.charCodeAt(i);return u;};
const f32=s=>new Float32Array(bytes(s).buffer);
const c=D.cfg,C=c.C,H=c.H,W=c.W,P=c.P,Dm=c.D,L=c.L,nh=c.nh,hd=Dm/nh,K=c.K,M=c.M,eps=c.eps,
 h=H/P,w=W/P,N=h*w,S=N+1,F=C*P*P;
const T={};for(const t of D.tensors){
 if(t.q){const q=new Int8Array(bytes(t.q).buffer),s=f32(t.s),R=s.length,cols=q.length/R,a=new Float32Array(q.length);
  for(let r=0;r<R;r++)for(let j=0;j<cols;j++)a[r*cols+j]=q[r*cols+j]*s[r];T[t.n]=a;}
 else T[t.n]=f32(t.f);}
function linear(x,n,din,dout,Wt,b){const y=new Float64Array(n*dout);
 for(let t=0;t<n;t++){const xo=t*din,yo=t*dout;for(let o=0;o<dout;o++){let s=b[o];const wo=o*din;
  for(let i=0;i<din;i++)s+=Wt[wo+i]*x[xo+i];y[yo+o]=s;}}return y;}
function norm(x,n,g,b){const y=new Float64Array(n*Dm);
 for(let t=0;t<n;t++){const o=t*Dm;let m=0,v=0;for(let i=0;i<Dm;i++)m+=x[o+i];m/=Dm;
  for(let i=0;i<Dm;i++){const d=x[o+i]-m;v+=d*d;}const r=1/Math.sqrt(v/Dm+eps);
  for(let i=0;i<Dm;i++)y[o+i]=(x[o+i]-m)*r*g[i]+b[i];}return y;}
function erf(x){const s=Math.sign(x),a=Math.abs(x),t=1/(1+0.5*a);  // Numerical Recipes' erfc, error < 1.2e-7
 const y=t*Math.exp(-a*a-1.26551223+t*(1.00002368+t*(0.37409196+t*(0.09678418+t*(-0.18628806+t*(0.27886807+
  t*(-1.13520398+t*(1.48851587+t*(-0.82215223+t*0.17087277)))))))));return s*(1-y);}
function forward(px){  // px: C*H*W normalised pixels -> {probs, att: L*nh*N class-token attention}
 const pv=new Float64Array(N*F);let k=0;  // patch n = i*w+j, its values in (c, y, x) order, as the conv
 for(let i=0;i<h;i++)for(let j=0;j<w;j++)for(let ch=0;ch<C;ch++)for(let y=0;y<P;y++)for(let x=0;x<P;x++)
  pv[k++]=px[(ch*H+i*P+y)*W+j*P+x];
 const pe=linear(pv,N,F,Dm,T['patch_embed.proj.weight'],T['patch_embed.proj.bias']),pos=T['pos_embed'],
  cls=T['cls_token'],x=new Float64Array(S*Dm),att=new Float64Array(L*nh*N),sc=new Float64Array(S),
  scale=1/Math.sqrt(hd);
 for(let i=0;i<Dm;i++)x[i]=cls[i]+pos[i];
 for(let i=Dm;i<S*Dm;i++)x[i]=pe[i-Dm]+pos[i];
 for(let l=0;l<L;l++){const p='blocks.'+l+'.',a=norm(x,S,T[p+'norm1.weight'],T[p+'norm1.bias']),
  qkv=linear(a,S,Dm,3*Dm,T[p+'attn.qkv.weight'],T[p+'attn.qkv.bias']),o=new Float64Array(S*Dm);
  for(let hh=0;hh<nh;hh++)for(let t=0;t<S;t++){let mx=-Infinity,z=0;const qo=t*3*Dm+hh*hd;
   for(let u=0;u<S;u++){const ko=u*3*Dm+Dm+hh*hd;let s=0;for(let e=0;e<hd;e++)s+=qkv[qo+e]*qkv[ko+e];
    sc[u]=s*scale;if(sc[u]>mx)mx=sc[u];}
   for(let u=0;u<S;u++){sc[u]=Math.exp(sc[u]-mx);z+=sc[u];}
   for(let u=0;u<S;u++)sc[u]/=z;
   if(t===0)for(let u=1;u<S;u++)att[(l*nh+hh)*N+u-1]=sc[u];
   for(let e=0;e<hd;e++){let s=0;for(let u=0;u<S;u++)s+=sc[u]*qkv[u*3*Dm+2*Dm+hh*hd+e];o[t*Dm+hh*hd+e]=s;}}
  const pr=linear(o,S,Dm,Dm,T[p+'attn.proj.weight'],T[p+'attn.proj.bias']);
  for(let i=0;i<S*Dm;i++)x[i]+=pr[i];
  const f=linear(norm(x,S,T[p+'norm2.weight'],T[p+'norm2.bias']),S,Dm,M,T[p+'mlp.fc1.weight'],T[p+'mlp.fc1.bias']);
  for(let i=0;i<f.length;i++)f[i]=0.5*f[i]*(1+erf(f[i]/Math.SQRT2));
  const g=linear(f,S,M,Dm,T[p+'mlp.fc2.weight'],T[p+'mlp.fc2.bias']);
  for(let i=0;i<S*Dm;i++)x[i]+=g[i];}
 const z=linear(norm(x.subarray(0,Dm),1,T['norm.weight'],T['norm.bias']),1,Dm,K,T['head.weight'],T['head.bias']);
 let mx=-Infinity,sum=0;for(const v of z)mx=Math.max(mx,v);
 const probs=Array.from(z,v=>Math.exp(v-mx));for(const v of probs)sum+=v;
 return {probs:probs.map(v=>v/sum),att:att};}
function pixels(rgb){  // H*W*3 bytes (0..255) -> C*H*W normalised
 const px=new Float64Array(C*H*W);
 for(let ch=0;ch<C;ch++)for(let i=0;i<H*W;i++)px[ch*H*W+i]=(rgb[i*3+ch]/255-D.mean[ch])/D.std[ch];
 return px;}
return {forward:forward,pixels:pixels,bytes:bytes,cfg:{H:H,W:W,h:h,w:w,N:N,L:L,nh:nh,K:K}};}
"""

_PAGE_JS = r"""
const model=vitModel(D),g=model.cfg,imgs=model.bytes(D.images),Z=g.H*g.W*3;
const q=s=>root.querySelector(s),pick=q('select[data-role="image"]'),layer=q('select[data-role="layer"]'),
 head=q('select[data-role="head"]'),file=q('input[type="file"]'),view=q('canvas.vc-image'),
 map=q('canvas.vit-explorer-map'),bars=q('.vc-bars'),cap=q('.vc-caption'),note=q('.vc-note');
const STOPS=[[0,0,4],[31,12,72],[85,15,109],[136,34,106],[186,54,85],[227,89,51],[249,140,10],
 [249,201,50],[252,255,164]];  // inferno, as the book's figures
function colour(v){const t=v*(STOPS.length-1),i=Math.min(STOPS.length-2,Math.floor(t)),f=t-i,
 a=STOPS[i],b=STOPS[i+1];return [0,1,2].map(j=>a[j]+f*(b[j]-a[j]));}
let rgb=imgs.subarray(0,Z),result=null,source='image 0',count=0;
function paint(){const S=view.width/g.W,ctx=view.getContext('2d'),mtx=map.getContext('2d'),
 a=ctx.createImageData(view.width,view.height),b=mtx.createImageData(map.width,map.height);
 const l=+layer.value-1,k=head.value,m=new Float64Array(g.N);
 for(let n=0;n<g.N;n++){if(k==='mean'){for(let hh=0;hh<g.nh;hh++)m[n]+=result.att[(l*g.nh+hh)*g.N+n]/g.nh;}
  else m[n]=result.att[(l*g.nh+ +k)*g.N+n];}
 let lo=Infinity,hi=-Infinity;for(const v of m){lo=Math.min(lo,v);hi=Math.max(hi,v);}
 const span=Math.max(hi-lo,1e-12),P=g.H/g.h;
 for(let y=0;y<view.height;y++)for(let x=0;x<view.width;x++){const iy=(y/S)|0,ix=(x/S)|0,s=(iy*g.W+ix)*3,
  t=(y*view.width+x)*4,col=colour((m[((iy/P)|0)*g.w+((ix/P)|0)]-lo)/span);
  for(let j=0;j<3;j++){a.data[t+j]=rgb[s+j];b.data[t+j]=0.4*rgb[s+j]+0.6*col[j];}a.data[t+3]=b.data[t+3]=255;}
 ctx.putImageData(a,0,0);mtx.putImageData(b,0,0);
 note.textContent=`attention of the class token to the ${g.N} patches in layer ${l+1}, `+
  (k==='mean'?'mean of the heads':'head '+k)+`: from ${lo.toPrecision(2)} (dark) to ${hi.toPrecision(2)} (bright)`;}
function bar(){const order=result.probs.map((p,i)=>[p,i]).sort((u,v)=>v[0]-u[0]),top=order[0][1];
 bars.innerHTML='';for(let i=0;i<g.K;i++){const p=result.probs[i],row=document.createElement('div');
  row.className='vc-row'+(i===top?' vc-top':'');row.innerHTML='<span class="vc-name"></span><span class="vc-track">'+
  '<div class="vc-bar"></div></span><span class="vc-value"></span>';row.querySelector('.vc-name').textContent=D.classes[i];
  row.querySelector('.vc-bar').style.width=(100*p).toFixed(1)+'%';row.querySelector('.vc-value').textContent=
  (100*p).toFixed(1)+'%';bars.appendChild(row);}
 cap.textContent=`${source==='upload'?'your image':D.titles[+pick.value]}: the model says ${D.classes[top]} `+
  `(${(100*result.probs[top]).toFixed(1)}%)`;
 root.setAttribute('data-probs',JSON.stringify(result.probs));root.setAttribute('data-prediction',D.classes[top]);
 root.setAttribute('data-source',source);root.setAttribute('data-rendered',String(++count));}
function run(){result=model.forward(model.pixels(rgb));paint();bar();}
pick.addEventListener('change',()=>{const b=+pick.value;rgb=imgs.subarray(b*Z,b*Z+Z);source='image '+b;run();});
[layer,head].forEach(s=>s.addEventListener('change',()=>{paint();root.setAttribute('data-rendered',String(++count));}));
file.addEventListener('change',()=>{const f=file.files[0];if(!f)return;const im=new Image(),url=URL.createObjectURL(f);
 im.onload=()=>{const c=document.createElement('canvas');c.width=g.W;c.height=g.H;const x=c.getContext('2d'),
  s=Math.min(im.naturalWidth,im.naturalHeight);x.imageSmoothingEnabled=true;x.imageSmoothingQuality='high';
  x.drawImage(im,(im.naturalWidth-s)/2,(im.naturalHeight-s)/2,s,s,0,0,g.W,g.H);URL.revokeObjectURL(url);
  const d=x.getImageData(0,0,g.W,g.H).data,u=new Uint8Array(Z);for(let i=0;i<g.W*g.H;i++)for(let j=0;j<3;j++)
  u[i*3+j]=d[i*4+j];rgb=u;source='upload';run();};
 im.onerror=()=>{URL.revokeObjectURL(url);cap.textContent='that file is not an image this browser can read';};
 im.src=url;});
run();
"""


def _select(role: str, label: str, options: Sequence[tuple[object, str]], selected: object) -> str:
    opts = "".join(f'<option value="{html.escape(str(v))}"{" selected" if v == selected else ""}>'
                   f"{html.escape(text)}</option>" for v, text in options)
    return f'<label>{html.escape(label)} <select data-role="{role}">{opts}</select></label>'


def classifier_page_html(model: VisionTransformer, images: Tensor, *, classes: Sequence[str],
                         mean: Sequence[float], std: Sequence[float], titles: Sequence[str] | None = None,
                         display: int = 192) -> str:
    """A self-contained HTML/JavaScript classifier running :func:`page_model` of ``model`` in the browser.

    ``images`` are the pictures the reader can pick (uint8, at the model's size); ``classes``, ``mean``
    and ``std`` come from the model's info (:func:`~vit_from_scratch.checkpoints.load_trained_model`).
    Show it with ``IPython.display.HTML``.

    Shape:
        images (B, 3, H, W) uint8
    """
    c = _check_model(model)
    H, W = to_2tuple(c.image_size)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, H, W):
        raise ValueError(f"expected uint8 images shaped (B, 3, {H}, {W}), got "
                         f"{images.dtype} {tuple(images.shape)}; resize them to the model's size first")
    if len(classes) != c.num_classes or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"give {c.num_classes} class names and a mean and std per channel, got {len(classes)} "
                         f"classes, {len(mean)} means, {len(std)} stds")
    titles = list(titles) if titles is not None else [f"image {b}" for b in range(len(images))]
    if len(titles) != len(images):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles; give one title per image")
    tensors = []
    for name, t in model.state_dict().items():
        t = t.detach().cpu().float()
        if _is_matrix(name, t):
            codes, scale = quantize_rows(t)
            tensors.append({"n": name, "shape": list(t.shape), "q": _b64(codes.numpy()), "s": _b64(scale.numpy())})
        else:
            tensors.append({"n": name, "shape": list(t.shape), "f": _b64(t.numpy().astype("<f4"))})
    payload = {"cfg": {"C": 3, "H": H, "W": W, "P": c.patch_size, "D": c.dim, "L": c.depth, "nh": c.num_heads,
                       "K": c.num_classes, "M": model.blocks[0].mlp.fc1.out_features, "eps": c.norm_eps},
               "config": c.to_dict(), "classes": list(classes), "mean": [float(v) for v in mean],
               "std": [float(v) for v in std], "titles": titles, "tensors": tensors,
               "images": _b64(images.permute(0, 2, 3, 1).contiguous().numpy())}  # (B, H, W, RGB)
    root_id = f"vit-classifier-{uuid.uuid4().hex[:12]}"
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    controls = [_select("image", "image", list(enumerate(titles)), 0),
                '<label>or your own <input type="file" accept="image/*"></label>',
                _select("layer", "layer", [(l, str(l)) for l in range(1, c.depth + 1)], c.depth),
                _select("head", "head", [("mean", "mean of heads")] + [(k, str(k)) for k in range(c.num_heads)],
                        "mean")]
    s = max(1, round(display / max(H, W)))
    canvas = f'width="{W * s}" height="{H * s}"'
    return (f'<div class="vit-explorer vit-classifier" data-kind="classifier" id="{root_id}"><style>{_CSS}</style>'
            f'<div class="vc-controls">{"".join(controls)}</div><div class="vc-body">'
            f'<div class="vc-figure"><canvas class="vc-image" {canvas}></canvas>the model\'s input '
            f"({H}×{W})</div>"
            f'<div class="vc-figure"><canvas class="vit-explorer-map" {canvas}></canvas>class-token attention</div>'
            '<div class="vc-bars"></div></div><div class="vc-caption"></div><div class="vc-note"></div>'
            f"<script>(function(root,D){{'use strict';{_MODEL_JS}{_PAGE_JS}}})"
            f"(document.getElementById('{root_id}'),{data});</script></div>")


def read_classifier_page(text: str) -> tuple[VisionTransformer, Tensor, dict]:
    """The model (its page weights, dequantised) and the images a page of :func:`classifier_page_html` carries.

    Returns ``(model, images, info)``: images uint8 (B, 3, H, W); info holds classes, mean, std, titles.
    """
    found = re.search(r"\(document\.getElementById\('vit-classifier-[0-9a-f]+'\),(\{.*?\})\);</script>", text, re.S)
    if found is None:
        raise ValueError("no classifier page (classifier_page_html's block) in the text")
    D = json.loads(found.group(1).replace("<\\/", "</"))
    model = VisionTransformer(ViTConfig.from_dict(D["config"])).eval()
    state = {}
    for t in D["tensors"]:
        if "q" in t:
            codes = torch.from_numpy(_unb64(t["q"], np.int8).copy()).reshape(t["shape"])
            state[t["n"]] = _dequantize_rows(codes, torch.from_numpy(_unb64(t["s"], "<f4").copy()))
        else:
            state[t["n"]] = torch.from_numpy(_unb64(t["f"], "<f4").copy()).reshape(t["shape"])
    model.load_state_dict(state)
    H, W = D["cfg"]["H"], D["cfg"]["W"]
    images = torch.from_numpy(_unb64(D["images"], np.uint8).copy()).reshape(-1, H, W, 3).permute(0, 3, 1, 2)
    info = {k: D[k] for k in ("classes", "mean", "std", "titles")}
    return model, images.contiguous(), info
