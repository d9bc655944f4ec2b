"""A self-contained HTML atlas viewer: one file, images inlined as base64, no network.

Drag to pan, wheel to zoom (or the +/- buttons). Hovering a cell shows a tooltip with
its count, the dataset examples closest to the cell mean (thumbnails when inputs are
images or 1-D signals, otherwise their indices), the class the cell's mean activation pushes up
most (lucid's label, also drawn on the atlas) and, when labels exist, its class mix.  A panel on the
right can show single neurons' feature visualizations beside the cells (``neurons=``).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from widthkit.atomic import atomic_write_text

from .compose import compose, png_bytes


def _b64png(img) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


def cell_records(layout, acts=None, class_names=None) -> list[dict]:
    """Per-cell tooltip data: grid position, count, top examples (+thumbnails), label, class mix."""
    thumbs = None
    if acts is not None and layout.top_inputs.size:
        ti = layout.top_inputs
        valid = ti[ti >= 0]
        th = acts.thumbs(valid) if len(valid) else None
        if th is not None:
            thumbs = {int(i): _b64png(t) for i, t in zip(valid, th)}
    recs = []
    for k, (gx, gy) in enumerate(layout.cells):
        top = [int(i) for i in layout.top_inputs[k] if i >= 0]
        rec = {"gx": int(gx), "gy": int(gy), "count": int(layout.counts[k]), "top": top}
        if thumbs is not None:
            rec["thumbs"] = [thumbs[i] for i in top]
        if layout.labels is not None:
            lab = int(layout.labels[k])
            rec["label"] = class_names[lab] if class_names else str(lab)
        if layout.class_mix is not None:
            mix = layout.class_mix[k]
            names = class_names or [str(i) for i in range(len(mix))]
            rec["classes"] = [[names[c], int(mix[c])] for c in np.argsort(-mix) if mix[c] > 0]
        recs.append(rec)
    return recs


_TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
 body{margin:0;font:13px sans-serif;background:#f4f4f4;overflow:hidden}
 #bar{position:fixed;top:0;left:0;right:0;height:30px;background:#222;color:#eee;padding:6px 10px;box-sizing:border-box;z-index:3}
 #bar button{margin-left:6px}
 #view{position:absolute;top:30px;left:0;right:__NW__px;bottom:0;overflow:hidden;cursor:grab}
 #neurons{position:absolute;top:30px;right:0;bottom:0;width:__NW__px;overflow-y:auto;background:#fff;border-left:1px solid #888;box-sizing:border-box;padding:4px;font-size:11px}
 #neurons figure{margin:4px 0;text-align:center}
 #neurons img{width:72px;height:72px;image-rendering:pixelated;border:1px solid #ccc}
 #stage{position:absolute;left:0;top:0;transform-origin:0 0}
 #stage img{display:block;image-rendering:pixelated;user-select:none;-webkit-user-drag:none}
 .cell{position:absolute;box-sizing:border-box}
 .cell:hover{outline:2px solid #e33}
 #tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:6px;max-width:360px;z-index:4;box-shadow:2px 2px 6px #0004}
 #tip img{width:40px;height:40px;image-rendering:pixelated;margin:1px;border:1px solid #ccc}
 .bar{display:inline-block;height:8px;background:#47a;vertical-align:middle}
</style></head><body>
<div id="bar">__TITLE__ &middot; __SUB__ <button id="zin">+</button><button id="zout">&minus;</button><button id="reset">reset</button></div>
<div id="view"><div id="stage"><img id="atlas" src="__IMG__" width="__PX__" height="__PX__" alt="atlas">__CELLS__</div></div>
__NEURONS__<div id="tip"></div>
<script>
const CELLS = __DATA__;
const view = document.getElementById('view'), stage = document.getElementById('stage'), tip = document.getElementById('tip');
let s = 1, tx = 0, ty = 0, drag = null;
function apply(){ stage.style.transform = `translate(${tx}px,${ty}px) scale(${s})`; }
function zoom(f, cx, cy){ const ns = Math.min(20, Math.max(0.2, s * f)); tx = cx - (cx - tx) * ns / s; ty = cy - (cy - ty) * ns / s; s = ns; apply(); }
function fit(){ const r = view.getBoundingClientRect(); s = Math.min(r.width, r.height) / __PX__; tx = (r.width - __PX__ * s) / 2; ty = (r.height - __PX__ * s) / 2; apply(); }
view.addEventListener('wheel', e => { e.preventDefault(); const r = view.getBoundingClientRect(); zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top); }, {passive: false});
view.addEventListener('mousedown', e => { drag = [e.clientX - tx, e.clientY - ty]; view.style.cursor = 'grabbing'; });
window.addEventListener('mouseup', () => { drag = null; view.style.cursor = 'grab'; });
window.addEventListener('mousemove', e => { if (drag) { tx = e.clientX - drag[0]; ty = e.clientY - drag[1]; apply(); } });
document.getElementById('zin').onclick = () => { const r = view.getBoundingClientRect(); zoom(1.25, r.width / 2, r.height / 2); };
document.getElementById('zout').onclick = () => { const r = view.getBoundingClientRect(); zoom(0.8, r.width / 2, r.height / 2); };
document.getElementById('reset').onclick = fit;
function esc(t){ return String(t).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function show(k, e){
  const c = CELLS[k];
  let h = `<b>cell (${c.gx}, ${c.gy})</b><br>count: <span class="count">${c.count}</span><br>`;
  if (c.thumbs) h += '<div class="examples">' + c.thumbs.map((t, i) => `<img src="${t}" title="input ${c.top[i]}">`).join('') + '</div>';
  else h += '<div class="examples">top inputs: ' + c.top.join(', ') + '</div>';
  if (c.label !== undefined) h += `<div class="label">pushes up: <b>${esc(c.label)}</b></div>`;
  if (c.classes) { const n = c.classes.reduce((a, b) => a + b[1], 0);
    h += '<div class="classes">' + c.classes.slice(0, 6).map(([name, m]) => `<div>${esc(name)}: ${(100 * m / n).toFixed(0)}% <span class="bar" style="width:${Math.round(80 * m / n)}px"></span></div>`).join('') + '</div>'; }
  tip.innerHTML = h; tip.style.display = 'block'; move(e);
}
function move(e){ tip.style.left = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4) + 'px'; tip.style.top = Math.min(e.clientY + 14, window.innerHeight - tip.offsetHeight - 4) + 'px'; }
document.querySelectorAll('.cell').forEach(el => { const k = +el.dataset.k;
  el.addEventListener('mouseenter', e => show(k, e)); el.addEventListener('mousemove', move);
  el.addEventListener('mouseleave', () => { tip.style.display = 'none'; }); });
fit(); window.addEventListener('resize', fit);
</script></body></html>
"""


def neuron_panel(pictures: np.ndarray, captions: list[str]) -> str:
    """The viewer's side panel: single-neuron feature visualizations ``[k, s, s, C]``, each captioned."""
    figs = "".join(f'<figure><img src="{_b64png(p)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}'
                   "</figcaption></figure>" for p, c in zip(pictures, captions))
    return (f'<div id="neurons"><b>the {len(captions)} most class-selective single neurons</b> '
            f"(n&lt;index&gt;:&lt;class it pushes up most&gt;){figs}</div>")


def write_html(layout, icons: np.ndarray, path: str | Path, *, acts=None, title: str | None = None,
               class_names=None, density_alpha: bool = False, neurons=None) -> Path:
    """Write the single-file viewer to ``path``.

    ``neurons = (pictures [k, s, s, C], captions)`` adds a side panel of single neurons beside the cells.

    ``acts`` (the :class:`~atlases.collect.Activations`) supplies example thumbnails; when
    omitted, the activations file recorded in the layout is used if it still exists.
    """
    if acts is None and layout.meta.get("activations") and Path(layout.meta["activations"]).exists():
        from .collect import Activations
        acts = Activations(Path(layout.meta["activations"]))
    g, s = layout.grid, icons.shape[1]
    img = compose(layout, icons, density_alpha=density_alpha, class_names=class_names)
    cells = "".join(
        f'<div class="cell" id="cell-{int(gx)}-{int(gy)}" data-k="{k}" style="left:{int(gx) * s}px;'
        f'top:{(g - 1 - int(gy)) * s}px;width:{s}px;height:{s}px"></div>'
        for k, (gx, gy) in enumerate(layout.cells))
    title = title or f"activation atlas: {layout.meta.get('layer', '')}"
    sub = f"{g}x{g} grid, {layout.n_cells} cells, {int(np.sum(layout.counts))} activations"
    page = (_TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__SUB__", html.escape(sub))
            .replace("__NW__", "110" if neurons else "0")
            .replace("__NEURONS__", neuron_panel(*neurons) if neurons else "")
            .replace("__IMG__", _b64png(img)).replace("__PX__", str(g * s)).replace("__CELLS__", cells)
            .replace("__DATA__", json.dumps(cell_records(layout, acts, class_names)).replace("</", "<\\/")))
    path = Path(path)
    atomic_write_text(path, page)
    return path


_LAYERS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>activation atlases</title>
<style>
 body{margin:0;font:13px sans-serif;background:#222;color:#eee}
 #pick{height:28px;padding:4px 10px;box-sizing:border-box}
 iframe{position:absolute;top:28px;left:0;width:100%;height:calc(100% - 28px);border:0;display:none}
 iframe.on{display:block}
</style></head><body>
<div id="pick">atlas: <select id="layer">__OPTIONS__</select></div>
__FRAMES__
<script>
const sel = document.getElementById('layer');
sel.onchange = () => document.querySelectorAll('iframe').forEach((f, i) => f.classList.toggle('on', i === +sel.value));
</script></body></html>
"""


def write_layers_html(folders, path: str | Path, names) -> Path:
    """One page that switches between the viewers (``<folder>/atlas.html``) of several atlases, e.g. one
    per layer; each viewer is embedded whole, so the page is self-contained and every atlas keeps its layout."""
    options = "".join(f'<option value="{i}">{html.escape(n)}</option>' for i, n in enumerate(names))
    frames = "".join(f'<iframe class="{"on" if i == 0 else ""}" title="{html.escape(n)}" srcdoc="'
                     f'{html.escape((Path(d) / "atlas.html").read_text())}"></iframe>'
                     for i, (d, n) in enumerate(zip(folders, names)))
    path = Path(path)
    atomic_write_text(path, _LAYERS.replace("__OPTIONS__", options).replace("__FRAMES__", frames))
    return path
