"""A static, browsable gallery that works from file:// with no server:

- `index.html`: the layers, with what a unit is, how many each layer has, and its RF size;
- `L/index.html`: every unit of layer L as a lazy-loaded thumbnail of its top patch, sortable by
  max activation or by unit id;
- `L/unit-UUUU.html`: the unit's k patches (and projections), for each the whole input image with
  the RF box drawn on it, the image's label and the activation, and the unit's statistics.

Every image is written once (patches straight from their stored JPEG bytes, each input image once)
and referenced; all text that comes from a dataset (labels, file names) is HTML-escaped."""
from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .inputs import InputImages
from .progress import Progress

log = logging.getLogger("unitscope")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
a{color:#1a5fb4}table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
.units{display:flex;flex-wrap:wrap;gap:6px}.units a{display:block;text-align:center;font-size:11px;text-decoration:none;color:#444}
.units img{width:64px;height:64px;image-rendering:pixelated;display:block;background:#ddd}
.entries{display:flex;flex-wrap:wrap;gap:14px}.entry{background:#fff;padding:8px;border:1px solid #ddd;font-size:12px;width:250px}
.entry .tiles img{width:96px;height:96px;image-rendering:pixelated;margin-right:4px}
.frame{display:block;position:relative;width:224px;height:224px;overflow:hidden;margin-top:6px}
.frame img{width:224px;height:224px;display:block}.box{position:absolute;border:2px solid #f33;box-sizing:border-box}
.stats td{font-family:monospace}nav{margin-bottom:1em}
"""
SORT_JS = """
function sortUnits(key){const c=document.getElementById('units');
const items=[...c.children];items.sort((a,b)=>key==='unit'?a.dataset.unit-b.dataset.unit:b.dataset.max-a.dataset.max);
items.forEach(i=>c.appendChild(i));}
"""


def e(text) -> str:
    """HTML-escape anything shown on a page."""
    return html.escape("" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text))


def page(title: str, body: str, depth: int = 0, script: str = "") -> str:
    css = "../" * depth + "style.css"
    js = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
            f"<link rel=stylesheet href='{css}'>{js}</head><body>{body}</body></html>")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_jpegs(h5_path: Path, folder: Path, prefix: str) -> dict[tuple[int, int], str]:
    """Each entry's stored JPEG as its own file (bytes copied, not re-encoded)."""
    names = {}
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(h5_path, "r") as f:
        units, ranks, data = f["unit"][:], f["rank"][:], f["jpeg"]
        for i, (u, r) in enumerate(zip(units, ranks)):
            name = f"{prefix}{u:04d}-r{r}.jpg"
            (folder / name).write_bytes(data[i].tobytes())
            names[(int(u), int(r))] = name
    return names


def _write_inputs(image_ids: set[int], input_paths: list[str], folder: Path) -> None:
    """Each input image the pages show, once."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with InputImages(input_paths) as images:
        for image_id in images.in_storage_order(image_ids):
            Image.fromarray(images[image_id]).save(folder / f"{image_id:07d}.jpg", quality=90)


def _box_style(row, size: int) -> str:
    """CSS placing the RF box over a size×size image, in percent (it may reach outside)."""
    return (f"left:{100 * row.x0 / size:.3f}%;top:{100 * row.y0 / size:.3f}%;"
            f"width:{100 * (row.x1 - row.x0) / size:.3f}%;height:{100 * (row.y1 - row.y0) / size:.3f}%")


def build_gallery(results: str | os.PathLike, manifest_path: str | os.PathLike,
                  input_paths: list[str], out_dir: str | os.PathLike, title: str = "") -> Path:
    """Write the gallery of one results/D/M folder into `out_dir` (replaced as a whole)."""
    results, out_dir = Path(results), Path(out_dir)
    layers = pd.read_parquet(results / "layers.parquet")
    manifest = pd.read_parquet(manifest_path).set_index("image_id")
    with h5py.File(input_paths[0], "r") as f:
        size = int(f["images"].shape[1])
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / "style.css").write_text(CSS)
        used_images: set[int] = set()
        rows_html = []
        for layer in layers.itertuples():
            L = layer.layer
            top = pd.read_parquet(results / "topk" / f"{L}.parquet")
            units = pd.read_parquet(results / "units" / f"{L}.parquet")
            used_images |= set(int(i) for i in top["image_id"])
            patch_names = _write_jpegs(results / "patches" / f"{L}.h5", tmp / L / "img", "u")
            proj_file = results / "projections" / f"{L}.h5"
            proj_names = (_write_jpegs(proj_file, tmp / L / "img", "p") if proj_file.exists() else {})
            _layer_pages(tmp / L, L, layer, top, units, manifest, patch_names, proj_names, size)
            rows_html.append(
                f"<tr><td><a href='{e(L)}/index.html'>{e(L)}</a></td><td>{e(layer.module)}</td>"
                f"<td>{layer.channels}×{layer.height}×{layer.width}</td><td>{layer.units}</td>"
                f"<td>{layer.rf_size}×{layer.rf_size_x} px</td><td>{layer.rf_stride}</td></tr>")
        _write_inputs(used_images, input_paths, tmp / "inputs")
        body = (f"<h1>{e(title or results.name)}</h1>"
                "<p>A <b>unit</b> is one feature map (one output channel) of a layer. Its activation "
                "on an image is its spatial maximum; the patch shown is the receptive field (RF) of "
                "the position of that maximum: every input pixel that can change it. Gray marks the "
                "part of a field outside the image.</p>"
                "<table><tr><th>layer</th><th>module</th><th>output C×H×W</th><th>units</th>"
                "<th>RF size</th><th>RF stride</th></tr>" + "".join(rows_html) + "</table>")
        _write(tmp / "index.html", page(title or results.name, body))
    log.info("gallery: %s/index.html", out_dir)
    return out_dir / "index.html"


def _layer_pages(folder: Path, L: str, layer, top: pd.DataFrame, units: pd.DataFrame,
                 manifest: pd.DataFrame, patch_names: dict, proj_names: dict, size: int) -> None:
    rf = f"RF {layer.rf_size}×{layer.rf_size_x} px"
    thumbs = []
    progress = Progress(len(units), f"gallery {L}", unit="units")
    by_unit = {u: g.sort_values("rank") for u, g in top.groupby("unit")}
    unit_ids = list(units["unit"])
    for i, s in enumerate(units.itertuples()):
        u = int(s.unit)
        first = patch_names.get((u, 0))
        img = f"<img loading=lazy src='img/{first}' alt='unit {u}'>" if first else "<img alt=''>"
        thumbs.append(f"<a href='unit-{u:04d}.html' data-unit='{u}' data-max='{s.max:.6g}'>{img}"
                      f"{u}<br>{s.max:.3g}</a>")
        entries = []
        for r in by_unit.get(u, pd.DataFrame()).itertuples():
            meta = manifest.loc[int(r.image_id)]
            tiles = f"<img src='img/{patch_names[(u, int(r.rank))]}' alt='patch'>"
            if (u, int(r.rank)) in proj_names:
                tiles = f"<img src='img/{proj_names[(u, int(r.rank))]}' alt='projection'>" + tiles
            entries.append(
                f"<div class=entry><div class=tiles>{tiles}</div>"
                f"<b>#{int(r.rank)}</b> activation {r.activation:.4g}<br>"
                f"label: <span class=label>{e(meta['label'])}</span><br>"
                f"image {int(r.image_id)}: <span class=path>{e(os.path.basename(str(meta['path'])))}</span><br>"
                f"box y {r.y0}..{r.y1}, x {r.x0}..{r.x1}"
                f"<a class=frame href='../inputs/{int(r.image_id):07d}.jpg' title='the input image'>"
                f"<img src='../inputs/{int(r.image_id):07d}.jpg' alt='input image'>"
                f"<div class=box style='{_box_style(r, size)}'></div></a></div>")
        stats = "".join(f"<tr><td>{k}</td><td>{getattr(s, k):.4g}</td></tr>"
                        for k in ("max", "mean", "q50", "q90", "q99", "frac_active"))
        prev_u = unit_ids[i - 1] if i > 0 else None
        next_u = unit_ids[i + 1] if i + 1 < len(unit_ids) else None
        nav = (f"<nav><a href='../index.html'>layers</a> › <a href='index.html'>{e(L)}</a> › "
               f"unit {u}"
               + (f" · <a href='unit-{prev_u:04d}.html'>previous</a>" if prev_u is not None else "")
               + (f" · <a href='unit-{next_u:04d}.html'>next</a>" if next_u is not None else "")
               + "</nav>")
        body = (nav + f"<h1>{e(L)} unit {u}</h1><p>{rf}; top {len(entries)} images"
                + (", projection left of each patch" if proj_names else "") + "</p>"
                f"<table class=stats>{stats}</table><div class=entries>{''.join(entries)}</div>")
        _write(folder / f"unit-{u:04d}.html", page(f"{L} unit {u}", body, depth=1))
        progress.update(1)
    body = (f"<nav><a href='../index.html'>layers</a> › {e(L)}</nav>"
            f"<h1>{e(L)}</h1><p>{layer.units} units, {layer.channels}×{layer.height}×{layer.width} "
            f"activations, {rf}. Each thumbnail is a unit's strongest patch. Sort by "
            "<button onclick=\"sortUnits('max')\">max activation</button> "
            "<button onclick=\"sortUnits('unit')\">unit id</button></p>"
            f"<div class=units id=units>{''.join(thumbs)}</div>")
    _write(folder / "index.html", page(L, body, depth=1, script=SORT_JS))
