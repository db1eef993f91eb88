"""A static, browsable gallery that works from file:// with no server:

- `index.html`: what a unit is, the layers with their shape, unit count and receptive field
  (theoretical, and effective where measured);
- `L/index.html`: every unit of layer L as a lazy-loaded thumbnail of its top patch, sortable by
  max activation, unit id, label purity or how often it fires; saturated and silent units marked;
- `L/unit-UUUU.html`: the unit's statistics, the histogram of its per-image maxima with the shown
  examples marked, its top-k and bottom-k examples and examples across its activation range — each
  patch beside its projection and the whole input image with the box drawn, its label, activation
  and box in network-input pixels and in the original file's pixels — its label histogram and,
  before a classifier, its strongest class weights;
- `images/IIIIIII.html`: one image's view, reached from every patch: per layer, the units that fire
  most on it relative to their own maximum, their boxes drawn on the image.

Every image is written once (patches straight from their stored JPEG bytes, each input image once)
and referenced; all text that comes from a dataset (labels, file names) is HTML-escaped."""
from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .examples import median_erf
from .geometry import source_box
from .image_view import image_view
from .inputs import ImageSource, Preprocessing
from .patches import read_index, visible_box
from .progress import Progress
from .provenance import open_checked
from .shown import read_shown

log = logging.getLogger("unitscope")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa;max-width:1400px}
a{color:#1a5fb4}table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}.note{color:#666;font-size:90%}
.units{display:flex;flex-wrap:wrap;gap:6px}.units a{display:block;text-align:center;font-size:11px;text-decoration:none;color:#444;width:70px}
.units img{width:64px;height:64px;image-rendering:pixelated;display:block;background:#ddd;margin:auto}
.units .dead img{opacity:.3}.units .sat{color:#c01c28}
.entries{display:flex;flex-wrap:wrap;gap:14px}.entry{background:#fff;padding:8px;border:1px solid #ddd;font-size:12px;width:250px}
.entry .tiles{display:flex;gap:4px}.tile{display:block;position:relative;width:96px;height:96px;background:#808080;overflow:hidden}
.tile img{position:absolute;image-rendering:pixelated}.tile.seen{background:#eee}.tile.seen img{width:100%;height:100%;object-fit:contain}
.frame{display:block;position:relative;width:224px;height:224px;overflow:hidden;margin-top:6px}
.frame img{width:224px;height:224px;display:block}.box{position:absolute;border:2px solid #f33;box-sizing:border-box}
.box span{position:absolute;left:0;top:0;background:#f33;color:#fff;font-size:10px;padding:0 2px}
.stats td{font-family:monospace}nav{margin-bottom:1em}h2{margin-top:1.5em}
.bars td.bar{width:300px}.bars div{background:#1a5fb4;height:10px}
svg.hist rect.b{fill:#9ab}svg.hist line.m{stroke:#c01c28;stroke-width:2}
"""
SORT_JS = """
function sortUnits(key){const c=document.getElementById('units');
const items=[...c.children];const num=(e)=>+(e.dataset[key]||0);
items.sort((a,b)=>key==='unit'?num(a)-num(b):num(b)-num(a));
items.forEach(i=>c.appendChild(i));}
"""


def e(text) -> str:
    """HTML-escape anything shown on a page."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
        return ""
    return html.escape(str(text))


def page(title: str, body: str, depth: int = 0, script: str = "") -> str:
    css = "../" * depth + "style.css"
    js = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
            f"<link rel=stylesheet href='{css}'>{js}</head><body>{body}</body></html>")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@dataclass
class LayerFiles:
    """The files of one layer the gallery reads (None where a stage did not run)."""

    topk: str
    units: str
    shown: str
    patches: str
    rf: str
    activations: list[str]
    bottomk: str | None = None
    hist: str | None = None
    ranges: str | None = None
    projections: str | None = None
    verify: str | None = None


def _write_jpegs(h5_path: str, folder: Path, prefix: str, kind: str) -> dict[tuple[str, int, int], str]:
    """Each entry's stored JPEG as its own file (bytes copied, not re-encoded)."""
    names = {}
    folder.mkdir(parents=True, exist_ok=True)
    index = read_index(h5_path, kind)
    with open_checked(h5_path, kind) as f:
        data = f["jpeg"]
        for i, r in enumerate(index.itertuples()):
            raw = data[i].tobytes()
            if not raw:
                continue
            name = f"{prefix}{r.unit:04d}-{r.kind[0]}{r.rank}.jpg"
            (folder / name).write_bytes(raw)
            names[(r.kind, int(r.unit), int(r.rank))] = name
    return names


def _write_inputs(image_ids: set[int], images: ImageSource, folder: Path) -> None:
    """Each input image the pages show, once."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(image_ids), "gallery images")
    for image_id in images.in_order(image_ids):
        Image.fromarray(images[image_id]).save(folder / f"{image_id:07d}.jpg", quality=90)
        progress.update(1)


def _box_style(y0, x0, y1, x1, size: int) -> str:
    """CSS placing a box over a size×size image, in percent (it may reach outside)."""
    return (f"left:{100 * x0 / size:.3f}%;top:{100 * y0 / size:.3f}%;"
            f"width:{100 * (x1 - x0) / size:.3f}%;height:{100 * (y1 - y0) / size:.3f}%")


def _rf_text(layer) -> str:
    if layer.rf_affine:
        return (f"{layer.rf_size} px" if layer.rf_size == layer.rf_size_x
                else f"{layer.rf_size}×{layer.rf_size_x} px")
    return f"up to {layer.rf_max_h}×{layer.rf_max_w} px (varies by position)"


def build_gallery(layers_path: str | os.PathLike, manifest_path: str | os.PathLike,
                  files: dict[str, LayerFiles], images: ImageSource, prep: Preprocessing,
                  out_dir: str | os.PathLike, title: str = "", rejected: int = 0,
                  method: str = "", classes_path: str | os.PathLike | None = None,
                  k: dict[str, int] | None = None) -> Path:
    """Write the gallery into `out_dir` (replaced as a whole). `k`: each layer's configured k, so
    that a unit with fewer examples says how many of k were available."""
    layers = pd.read_parquet(layers_path)
    manifest = pd.read_parquet(manifest_path)
    by_id = manifest.set_index("image_id", drop=False)
    classes = pd.read_parquet(classes_path) if classes_path and os.path.exists(classes_path) else None
    size = prep.input_size
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / "style.css").write_text(CSS)
        used: set[int] = set()
        rows_html = []
        for layer in layers.itertuples():
            f = files[layer.layer]
            erf = None
            if f.verify and os.path.exists(f.verify):
                erf = median_erf(pd.read_parquet(f.verify))
            used |= _layer_pages(tmp / layer.layer, layer, f, by_id, size, prep, erf, method,
                                 classes[classes["layer"] == layer.layer] if classes is not None else None,
                                 (k or {}).get(layer.layer))
            rows_html.append(
                f"<tr><td><a href='{e(layer.layer)}/index.html'>{e(layer.layer)}</a></td>"
                f"<td>{e(layer.module)}</td><td>{layer.channels}×{layer.height}×{layer.width}</td>"
                f"<td>{layer.units}</td><td>{e(_rf_text(layer))}</td>"
                f"<td>{f'{erf} px' if erf else '–'}</td>"
                f"<td>{layer.rf_stride if layer.rf_affine else '–'}</td></tr>")
        _write_inputs(used, images, tmp / "inputs")
        paths = {L: {"activations": f.activations, "units": f.units, "rf": f.rf} for L, f in files.items()}
        views = image_view(layers, manifest, paths, sorted(used))
        for image_id, view in views.items():
            _image_page(tmp / "images", image_id, view, by_id.loc[image_id], size, prep)
        body = (f"<h1>{e(title)}</h1>"
                f"<p>{len(manifest):,} images" + (f" ({rejected} set aside)" if rejected else "")
                + f", each shown to the network at {size}×{size} px.</p>"
                "<p>A <b>unit</b> is one feature map (one output channel) of a layer: a layer with "
                "output C×H×W has C units, and each of the H×W positions sees one <b>receptive "
                "field</b> (RF) of the input. A unit's activation on an image is its map's maximum; "
                "the patch shown is the RF of that position — every input pixel that can change it. "
                "Gray marks the part of a field outside the image. The <b>effective</b> RF is the "
                "square around the field's centre that holds 90% of the input gradient: the part "
                "that matters.</p>"
                "<table><tr><th>layer</th><th>module</th><th>output C×H×W</th><th>units</th>"
                "<th>RF (theoretical)</th><th>RF (effective)</th><th>RF stride</th></tr>"
                + "".join(rows_html) + "</table>")
        _write(tmp / "index.html", page(title, body))
    log.info("gallery: %s/index.html", out_dir)
    return out_dir / "index.html"


def _hist_svg(hist: pd.DataFrame, marks: list[float]) -> str:
    """A small SVG histogram of a unit's per-image maxima, the shown examples as red ticks."""
    if hist.empty:
        return ""
    w, h = 420, 90
    counts = hist["count"].to_numpy()
    lo, hi = float(hist["lo"].iloc[0]), float(hist["hi"].iloc[-1])
    top = max(int(counts.max()), 1)
    bw = w / len(counts)
    bars = "".join(
        f"<rect class=b x='{i * bw:.1f}' y='{h - 14 - (h - 20) * c / top:.1f}' width='{bw - 1:.1f}' "
        f"height='{(h - 20) * c / top:.1f}'><title>{r.lo:.3g}–{r.hi:.3g}: {c}</title></rect>"
        for i, (c, r) in enumerate(zip(counts, hist.itertuples())))
    span = hi - lo if hi > lo else 1.0
    ticks = "".join(f"<line class=m x1='{w * (m - lo) / span:.1f}' x2='{w * (m - lo) / span:.1f}' "
                    f"y1='{h - 14}' y2='{h - 4}'/>" for m in marks)
    return (f"<svg class=hist width={w} height={h} viewBox='0 0 {w} {h}'>{bars}{ticks}"
            f"<text x=0 y={h} font-size=10>{lo:.3g}</text>"
            f"<text x={w} y={h} font-size=10 text-anchor=end>{hi:.3g}</text></svg>")


def _tile(name: str, alt: str, box, size: int, seen: bool) -> str:
    """A patch image in a square drawn like the figure: the visible part placed inside its box,
    gray where the box is outside the image; for a field that spans half the input or more, the
    visible part at full size."""
    if seen:
        return f"<span class='tile seen'><img src='img/{name}' alt='{alt}'></span>"
    y0, x0, y1, x1 = box
    vy0, vx0, vy1, vx1 = visible_box(box, (size, size))
    side = max(y1 - y0, x1 - x0, 1)
    style = (f"left:{100 * (vx0 - x0) / side:.2f}%;top:{100 * (vy0 - y0) / side:.2f}%;"
             f"width:{100 * (vx1 - vx0) / side:.2f}%;height:{100 * (vy1 - vy0) / side:.2f}%")
    return f"<span class=tile><img src='img/{name}' alt='{alt}' style='{style}'></span>"


def _entry(r, kind: str, meta, patch_names, proj_names, size: int, prep: Preprocessing,
           seen: bool = False) -> str:
    key = (kind, int(r.unit), int(r.rank))
    box = (int(r.y0), int(r.x0), int(r.y1), int(r.x1))
    tiles = ""
    if key in proj_names:
        tiles += _tile(proj_names[key], "projection", box, size, seen)
    if key in patch_names:
        tiles += _tile(patch_names[key], "patch", box, size, seen)
    crop = None
    if "crop_left" in meta and not pd.isna(meta["crop_left"]):
        crop = (int(meta["crop_left"]), int(meta["crop_top"]), int(meta["crop_right"]), int(meta["crop_bottom"]))
    sy0, sx0, sy1, sx1 = source_box((r.y0, r.x0, r.y1, r.x1), (int(meta["width"]), int(meta["height"])),
                                    crop, prep.resize_size, prep.input_size)
    iid = int(r.image_id)
    what = "activation" if kind != "bottom" else "minimum"
    return (f"<div class=entry><div class=tiles>{tiles}</div>"
            f"<b>#{int(r.rank)}</b> {what} {r.activation:.4g}<br>"
            f"label: <span class=label>{e(meta['label'])}</span><br>"
            f"image <a href='../images/{iid:07d}.html'>{iid}</a>: "
            f"<span class=path>{e(os.path.basename(str(meta['path'])))}</span><br>"
            f"box y {r.y0}..{r.y1}, x {r.x0}..{r.x1} (input px)<br>"
            f"in the file: y {sy0:.0f}..{sy1:.0f}, x {sx0:.0f}..{sx1:.0f}"
            f"<a class=frame href='../inputs/{iid:07d}.jpg' title='the input image'>"
            f"<img src='../inputs/{iid:07d}.jpg' alt='input image'>"
            f"<div class=box style='{_box_style(r.y0, r.x0, r.y1, r.x1, size)}'></div></a></div>")


def _layer_pages(folder: Path, layer, f: LayerFiles, manifest: pd.DataFrame, size: int,
                 prep: Preprocessing, erf: int | None, method: str,
                 classes: pd.DataFrame | None, k: int | None = None) -> set[int]:
    """The layer page and every unit page; returns the image ids they show."""
    L = layer.layer
    top = pd.read_parquet(f.topk)
    units = pd.read_parquet(f.units)
    shown = read_shown(f.shown)
    bottom = pd.read_parquet(f.bottomk) if f.bottomk and os.path.exists(f.bottomk) else top.iloc[0:0]
    ranges = pd.read_parquet(f.ranges) if f.ranges and os.path.exists(f.ranges) else None
    hist = pd.read_parquet(f.hist) if f.hist and os.path.exists(f.hist) else None
    img = folder / "img"
    patch_names = _write_jpegs(f.patches, img, "u", "patches")
    proj_names = _write_jpegs(f.projections, img, "p", "projections") if f.projections else {}
    used = set(int(i) for i in top["image_id"]) | set(int(i) for i in bottom["image_id"])
    if ranges is not None:
        used |= set(int(i) for i in ranges["image_id"])
    rf = _rf_text(layer) + (f", effective ≈ {erf} px" if erf else "")
    field = (layer.rf_size, layer.rf_size_x) if layer.rf_affine else (layer.rf_max_h, layer.rf_max_w)
    seen = 2 * min(field) >= size  # as the figures: the visible part of a large field, full size
    has_labels = "purity" in units and units["purity"].notna().any()
    thumbs = []
    progress = Progress(len(units), f"gallery {L}", unit="units")
    by_unit = {u: g.sort_values("rank") for u, g in top.groupby("unit")}
    low_by_unit = {u: g.sort_values("rank") for u, g in bottom.groupby("unit")}
    unit_ids = [int(u) for u in units["unit"]]
    for i, s in enumerate(units.itertuples()):
        u = int(s.unit)
        first = patch_names.get(("top", u, 0))
        image = f"<img loading=lazy src='img/{first}' alt='unit {u}'>" if first else "<img alt=''>"
        marks = " dead" if s.dead else ""
        flag = ("<br><span class=sat>saturated</span>" if s.saturated else
                "<br>never fires" if s.dead else "")
        purity = f" data-purity='{s.purity:.4f}'" if has_labels and not pd.isna(s.purity) else ""
        thumbs.append(f"<a class='unit{marks}' href='unit-{u:04d}.html' data-unit='{u}' "
                      f"data-max='{s.max:.6g}' data-active='{s.frac_active:.4f}'{purity}>{image}"
                      f"{u}<br>{s.max:.3g}{flag}</a>")
        sections = []
        entries = "".join(_entry(r, "top", manifest.loc[int(r.image_id)], patch_names, proj_names, size, prep, seen)
                          for r in by_unit.get(u, top.iloc[0:0]).itertuples())
        if s.dead:
            sections.append("<p><b>This unit never fires on this dataset</b> (its maximum is "
                            f"{s.max:.3g}): its “top” images are arbitrary.</p>")
        if s.saturated:
            sections.append(f"<p><b>Saturated</b>: {s.n_at_max} images reach its maximum "
                            f"{s.max:.4g} exactly (a clamp such as ReLU6's cap); they are ordered "
                            f"by the map's spatial mean.</p>")
        n = len(by_unit.get(u, []))
        short = f" ({n} of k={k} available)" if k and n < k else ""
        sections.append(f"<h2>Top {n} images{short}</h2><div class=entries>{entries}</div>")
        low = low_by_unit.get(u)
        if low is not None and len(low):
            sections.append("<h2>Most negative (bottom-k)</h2><div class=entries>"
                            + "".join(_entry(r, "bottom", manifest.loc[int(r.image_id)], patch_names,
                                             proj_names, size, prep, seen) for r in low.itertuples())
                            + "</div>")
        if ranges is not None:
            mine = ranges[ranges["unit"] == u]
            if len(mine):
                parts = []
                for rng, g in mine.groupby("range"):
                    parts.append(f"<h3>{g['lo'].iat[0]:.3g} – {g['hi'].iat[0]:.3g}</h3><div class=entries>"
                                 + "".join(_entry(r, "range", manifest.loc[int(r.image_id)],
                                                  patch_names, proj_names, size, prep, seen)
                                           for r in g.itertuples()) + "</div>")
                sections.append("<h2>Across its range of activations</h2>" + "".join(parts))
        if hist is not None:
            marks_at = list(by_unit.get(u, top.iloc[0:0])["activation"])
            if ranges is not None:
                marks_at += list(ranges[ranges["unit"] == u]["activation"])
            sections.insert(0, "<h2>Histogram of its per-image maxima</h2>"
                            + _hist_svg(hist[hist["unit"] == u], marks_at)
                            + "<p class=note>red: the examples on this page</p>")
        if has_labels:
            labels = manifest.loc[by_unit.get(u, top.iloc[0:0])["image_id"], "label"].value_counts()
            if len(labels):
                bars = "".join(f"<tr><td>{e(lab)}</td><td>{n}</td><td class=bar><div style='width:"
                               f"{100 * n / labels.max():.0f}%'></div></td></tr>"
                               for lab, n in labels.items())
                sections.append(f"<h2>Labels of its top images</h2><table class=bars>{bars}</table>")
        if classes is not None and len(classes):
            mine = classes[classes["unit"] == u].sort_values("rank")
            if len(mine):
                sections.append("<h2>Classes it votes for (classifier weights)</h2><table>"
                                + "".join(f"<tr><td>{e(r.class_name)}</td><td>{r.weight:+.4f}</td></tr>"
                                          for r in mine.itertuples()) + "</table>")
        stats = "".join(f"<tr><td>{k}</td><td>{getattr(s, k):.4g}</td></tr>"
                        for k in ("max", "mean", "q50", "q90", "q99", "frac_active", "min"))
        if has_labels and not pd.isna(s.purity):
            stats += f"<tr><td>label</td><td>{e(s.label)} ({s.purity:.0%})</td></tr>"
        why = shown["why"].get(u)
        prev_u = unit_ids[i - 1] if i > 0 else None
        next_u = unit_ids[i + 1] if i + 1 < len(unit_ids) else None
        nav = (f"<nav><a href='../index.html'>layers</a> › <a href='index.html'>{e(L)}</a> › "
               f"unit {u}"
               + (f" · <a href='unit-{prev_u:04d}.html'>previous</a>" if prev_u is not None else "")
               + (f" · <a href='unit-{next_u:04d}.html'>next</a>" if next_u is not None else "")
               + "</nav>")
        legend = (f"projection ({e(method.replace('_', ' '))}) left of each patch; " if proj_names else "")
        body = (nav + f"<h1>{e(L)} unit {u}</h1><p>{e(rf)}; {legend}gray: outside the image"
                + (f"; shown in the layer figure: {e(why)}" if why else "") + "</p>"
                f"<table class=stats>{stats}</table>" + "".join(sections))
        _write(folder / f"unit-{u:04d}.html", page(f"{L} unit {u}", body, depth=1))
        progress.update(1)
    sort = ("Sort by <button onclick=\"sortUnits('max')\">max activation</button> "
            "<button onclick=\"sortUnits('unit')\">unit id</button> "
            "<button onclick=\"sortUnits('active')\">how often it fires</button>"
            + (" <button onclick=\"sortUnits('purity')\">label purity</button>" if has_labels else ""))
    body = (f"<nav><a href='../index.html'>layers</a> › {e(L)}</nav>"
            f"<h1>{e(L)}</h1><p>{layer.units} units, each a {layer.height}×{layer.width} map "
            f"({layer.channels}×{layer.height}×{layer.width} activations); RF {e(rf)}. Each "
            f"thumbnail is a unit's strongest patch. {sort}</p>"
            f"<div class=units id=units>{''.join(thumbs)}</div>")
    _write(folder / "index.html", page(L, body, depth=1, script=SORT_JS))
    return used


def _image_page(folder: Path, image_id: int, view: pd.DataFrame, meta, size: int,
                prep: Preprocessing) -> None:
    parts = []
    for layer, g in view.groupby("layer", sort=False):
        boxes = "".join(f"<div class=box style='{_box_style(r.y0, r.x0, r.y1, r.x1, size)}'>"
                        f"<span>{r.unit}</span></div>" for r in g.itertuples())
        rows = "".join(f"<tr><td><a href='../{e(layer)}/unit-{r.unit:04d}.html'>unit {r.unit}</a></td>"
                       f"<td>{r.activation:.4g}</td><td>{r.ratio:.0%} of its max</td>"
                       f"<td>y {r.y0}..{r.y1}, x {r.x0}..{r.x1}</td></tr>" for r in g.itertuples())
        parts.append(f"<h2>{e(layer)}</h2><div style='display:flex;gap:16px'>"
                     f"<div class=frame><img src='../inputs/{image_id:07d}.jpg' alt='input'>{boxes}</div>"
                     f"<table>{rows}</table></div>")
    body = (f"<nav><a href='../index.html'>layers</a> › image {image_id}</nav>"
            f"<h1>Image {image_id}</h1><p>label: {e(meta['label'])}; file "
            f"<span class=path>{e(meta['path'])}</span></p><p>Per layer, the units that fire most "
            f"on this image relative to their own maximum over the dataset, and the receptive "
            f"field of each one's peak.</p>" + "".join(parts))
    _write(folder / f"{image_id:07d}.html", page(f"image {image_id}", body, depth=1))
