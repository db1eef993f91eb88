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

A layer's folder `L/` is written by `build_layer_pages` (one job per layer, so a change to one layer
rebuilds that layer's pages only); `index.html`, `style.css`, `inputs/` and `images/` by
`build_index` (one small job). Pages are Jinja2 templates (`unitscope/templates/`, one per page
kind) with autoescaping, so every text that comes from a dataset (labels, file names) is escaped
by default. Every image is written once (patches straight from their stored JPEG bytes, each input
image once) and referenced."""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from .atomic import atomic_path
from .examples import median_erf
from .geometry import source_box
from .grids import METHOD_NAMES
from .image_view import image_view_table
from .inputs import ImageSource, Preprocessing
from .patches import read_index, visible_box, with_cells
from .progress import Progress
from .provenance import open_checked
from .shown import read_shown

log = logging.getLogger("unitscope")
TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def _env():
    """The Jinja2 environment of the page templates: autoescape on for every .html template."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                              autoescape=jinja2.select_autoescape(["html"]),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def _render(out: Path, template: str, **values) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_env().get_template(template).render(**values), encoding="utf-8")


@dataclass
class LayerFiles:
    """The files of one layer the gallery reads (None where a stage did not run)."""

    topk: str
    units: str
    shown: str
    patches: str
    rf: str
    activations: list[str] = field(default_factory=list)
    bottomk: str | None = None
    hist: str | None = None
    ranges: str | None = None
    projections: str | None = None
    verify: str | None = None
    occlusion: str | None = None        # occlusion/L.h5
    occlusion_rows: str | None = None   # grids/L-occlusion/: one PNG per occluded example


def _write_jpegs(h5_path: str, folder: Path, prefix: str, kind: str) -> dict[tuple[str, int, int], str]:
    """Each entry's stored JPEG as a file (bytes copied, not re-encoded), named by its content so
    that equal patches (a field that covers the whole image: one per image) are written once."""
    import hashlib

    names = {}
    folder.mkdir(parents=True, exist_ok=True)
    index = read_index(h5_path, kind)
    with open_checked(h5_path, kind) as f:
        data = f["jpeg"][:]
    written: set[str] = set()
    for raw, kind_, unit, rank in zip(data, index["kind"], index["unit"], index["rank"]):
        raw = raw.tobytes()
        if not raw:
            continue
        name = f"{prefix}{hashlib.blake2b(raw, digest_size=10).hexdigest()}.jpg"
        if name not in written:
            (folder / name).write_bytes(raw)
            written.add(name)
        names[(kind_, int(unit), int(rank))] = name
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
        text = (f"{layer.rf_size} px" if layer.rf_size == layer.rf_size_x
                else f"{layer.rf_size}×{layer.rf_size_x} px")
    else:
        text = f"up to {layer.rf_max_h}×{layer.rf_max_w} px (varies by position)"
    if bool(getattr(layer, "rf_gated", False)):
        text += (f"; the unit is also modulated by the whole image through global gates "
                 f"(squeeze-excitation: theoretical field up to {layer.rf_theory_max_h}×"
                 f"{layer.rf_theory_max_w} px); patches show the local field")
    if bool(getattr(layer, "rf_cell", False)):
        text += "; each position is a token: its field red on the image, its cell cyan"
    return text


def shown_image_ids(files: LayerFiles) -> set[int]:
    """The images a layer's pages show: its top-k, bottom-k and range examples."""
    used: set[int] = set()
    for path in (files.topk, files.bottomk, files.ranges):
        if path and os.path.exists(path):
            used |= set(int(i) for i in pd.read_parquet(path, columns=["image_id"])["image_id"])
    return used


def _erf(files: LayerFiles) -> int | None:
    return median_erf(pd.read_parquet(files.verify)) if files.verify and os.path.exists(files.verify) else None


def build_gallery(layers_path: str | os.PathLike, manifest_path: str | os.PathLike,
                  files: dict[str, LayerFiles], images: ImageSource, prep: Preprocessing,
                  out_dir: str | os.PathLike, title: str = "", rejected: int = 0,
                  method: str = "", classes_path: str | os.PathLike | None = None,
                  k: dict[str, int] | None = None) -> Path:
    """The whole gallery into `out_dir` (replaced as a whole): every layer's pages and the index,
    as the workflow's per-layer and index jobs write them."""
    layers = pd.read_parquet(layers_path)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for layer in layers["layer"]:
            build_layer_pages(layers_path, layer, files[layer], manifest_path, prep, tmp / layer,
                              method, classes_path, (k or {}).get(layer))
        build_index(layers_path, manifest_path, files, images, prep, tmp, title, rejected)
    return out_dir / "index.html"


def build_index(layers_path: str | os.PathLike, manifest_path: str | os.PathLike,
                files: dict[str, LayerFiles], images: ImageSource, prep: Preprocessing,
                out_dir: str | os.PathLike, title: str = "", rejected: int = 0,
                correspondence: str | os.PathLike | None = None, links: dict | None = None) -> Path:
    """The gallery's `index.html`, `style.css`, `inputs/` (each image a page shows, once) and
    `images/` (one page per such image) in `out_dir`, beside the layers' folders; with the part
    correspondence table where one was measured. `links`: the first layer's filters figure
    ("filters", relative to the index) and the comparisons the model takes part in ("compare":
    name -> page)."""
    layers = pd.read_parquet(layers_path)
    manifest = pd.read_parquet(manifest_path)
    by_id = manifest.set_index("image_id", drop=False)
    size = prep.input_size
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[int] = set()
    rows = []
    for layer in layers.itertuples():
        f = files[layer.layer]
        used |= shown_image_ids(f)
        erf = _erf(f)
        rows.append({"layer": layer.layer, "module": layer.module,
                     "shape": f"{layer.channels}×{layer.height}×{layer.width}", "units": layer.units,
                     "rf": _rf_text(layer), "erf": f"{erf} px" if erf else "–",
                     "stride": layer.rf_stride if layer.rf_affine else "–"})
    with atomic_path(out_dir / "inputs") as tmp:
        _write_inputs(used, images, tmp)
    paths = {L: {"activations": f.activations, "units": f.units, "rf": f.rf} for L, f in files.items()}
    views: dict[int, list[dict]] = {i: [] for i in sorted(used)}
    for r in image_view_table(layers, manifest, paths, sorted(used)).to_dict("records"):
        views[int(r["image_id"])].append(r)
    # where each image lives as the run names it (a job's copy of a bucket keeps it in source_path)
    shown = by_id["source_path"] if "source_path" in by_id else by_id["path"]
    metas = by_id[["label"]].assign(path=shown).to_dict("index")
    with atomic_path(out_dir / "images") as tmp:
        tmp.mkdir()
        for image_id, view in views.items():
            _image_page(tmp, image_id, view, metas[image_id], size)
    with atomic_path(out_dir / "style.css") as tmp:
        tmp.write_text((TEMPLATES / "style.css").read_text())
    with atomic_path(out_dir / "index.html") as tmp:
        _render(tmp, "index.html", title=title, depth=0, n_images=len(manifest), rejected=rejected,
                size=size, layers=rows, parts=_correspondence_rows(correspondence),
                filters=(links or {}).get("filters"), compares=(links or {}).get("compare", {}))
    log.info("gallery: %s/index.html", out_dir)
    return out_dir / "index.html"


def _correspondence_rows(path: str | os.PathLike | None) -> list[dict]:
    """The correspondence table as rows of the index page: per part and layer, Δ of the part
    beside Δ of its random control."""
    if not path or not os.path.exists(path):
        return []
    t = pd.read_parquet(path)
    rows = []
    for (part, layer), g in t.groupby(["part", "layer"], sort=False):
        p, c = g[~g["control"]].iloc[0], g[g["control"]].iloc[0]
        rows.append({"part": part, "layer": layer, "delta": f"{p.delta:.3f} ± {p['std']:.3f}",
                     "control": f"{c.delta:.3f} ± {c['std']:.3f}", "images": int(p.images),
                     "lower": bool(p.delta < c.delta)})
    return rows


def _hist(hist: pd.DataFrame, marks: list[float]) -> dict | None:
    """A small histogram of a unit's per-image maxima (SVG geometry), the examples as ticks."""
    if hist.empty:
        return None
    w, h = 420, 90
    counts = hist["count"].to_numpy()
    lo, hi = float(hist["lo"].iloc[0]), float(hist["hi"].iloc[-1])
    top = max(int(counts.max()), 1)
    bw = w / len(counts)
    bars = [{"x": f"{i * bw:.1f}", "y": f"{h - 14 - (h - 20) * c / top:.1f}", "w": f"{bw - 1:.1f}",
             "h": f"{(h - 20) * c / top:.1f}", "title": f"{r.lo:.3g}–{r.hi:.3g}: {c}"}
            for i, (c, r) in enumerate(zip(counts, hist.itertuples()))]
    span = hi - lo if hi > lo else 1.0
    return {"w": w, "h": h, "bars": bars, "marks": [f"{w * (m - lo) / span:.1f}" for m in marks],
            "lo": f"{lo:.3g}", "hi": f"{hi:.3g}"}


def _tile(name: str, alt: str, box, size: int, seen: bool) -> dict:
    """Where a patch goes inside its square (see macros.html)."""
    if seen:
        return {"name": name, "alt": alt, "seen": True, "style": ""}
    y0, x0, y1, x1 = box
    vy0, vx0, vy1, vx1 = visible_box(box, (size, size))
    side = max(y1 - y0, x1 - x0, 1)
    style = (f"left:{100 * (vx0 - x0) / side:.2f}%;top:{100 * (vy0 - y0) / side:.2f}%;"
             f"width:{100 * (vx1 - vx0) / side:.2f}%;height:{100 * (vy1 - vy0) / side:.2f}%")
    return {"name": name, "alt": alt, "seen": False, "style": style}


def _entry(r, kind: str, meta: dict, patch_names, proj_names, size: int, prep: Preprocessing,
           seen: bool = False) -> dict:
    """What the entry macro shows of one example row (a namedtuple of its table)."""
    key = (kind, int(r.unit), int(r.rank))
    box = (int(r.y0), int(r.x0), int(r.y1), int(r.x1))
    tiles = [_tile(names[key], alt, box, size, seen)
             for names, alt in ((proj_names, "projection"), (patch_names, "patch")) if key in names]
    crop = None
    if meta.get("crop_left") is not None and not pd.isna(meta["crop_left"]):
        crop = (int(meta["crop_left"]), int(meta["crop_top"]), int(meta["crop_right"]), int(meta["crop_bottom"]))
    sy0, sx0, sy1, sx1 = source_box((r.y0, r.x0, r.y1, r.x1), (int(meta["width"]), int(meta["height"])),
                                    crop, prep.resize_size, prep.input_size)
    iid = int(r.image_id)
    label = meta["label"]
    cell = getattr(r, "cy0", None)
    cell = None if cell is None or pd.isna(cell) else tuple(int(v) for v in (r.cy0, r.cx0, r.cy1, r.cx1))
    return {"tiles": tiles, "cell": cell, "cell_style": _box_style(*cell, size) if cell else "", "rank": int(r.rank), "what": "activation" if kind != "bottom" else "minimum",
            "activation": f"{r.activation:.4g}", "label": "" if pd.isna(label) else label,
            "image": f"{iid:07d}", "image_id": iid, "file": os.path.basename(str(meta["path"])),
            "y0": r.y0, "y1": r.y1, "x0": r.x0, "x1": r.x1, "sy0": f"{sy0:.0f}",
            "sy1": f"{sy1:.0f}", "sx0": f"{sx0:.0f}", "sx1": f"{sx1:.0f}",
            "box_style": _box_style(r.y0, r.x0, r.y1, r.x1, size)}


def build_layer_pages(layers_path: str | os.PathLike, layer_name: str, f: LayerFiles,
                      manifest_path: str | os.PathLike, prep: Preprocessing,
                      out_dir: str | os.PathLike, method: str = "",
                      classes_path: str | os.PathLike | None = None, k: int | None = None) -> Path:
    """A layer's folder of the gallery (`L/`, replaced as a whole): its page, every unit's page
    and their patch images. `k`: the layer's configured k, so that a unit with fewer examples
    says how many of k were available."""
    layers = pd.read_parquet(layers_path)
    layer = next(r for r in layers.itertuples() if r.layer == layer_name)
    manifest = pd.read_parquet(manifest_path).set_index("image_id", drop=False)
    classes = None
    if classes_path and os.path.exists(classes_path):
        classes = pd.read_parquet(classes_path)
        classes = classes[classes["layer"] == layer_name]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _layer_pages(tmp, layer, f, manifest, prep.input_size, prep, _erf(f), method, classes, k)
    return Path(out_dir) / "index.html"


def _layer_pages(folder: Path, layer, f: LayerFiles, manifest: pd.DataFrame, size: int,
                 prep: Preprocessing, erf: int | None, method: str,
                 classes: pd.DataFrame | None, k: int | None = None) -> None:
    """The layer page and every unit page."""
    L = layer.layer
    top = with_cells(pd.read_parquet(f.topk), f.rf)  # token cells, where the layer has them
    units = pd.read_parquet(f.units)
    shown = read_shown(f.shown)
    bottom = pd.read_parquet(f.bottomk) if f.bottomk and os.path.exists(f.bottomk) else top.iloc[0:0]
    bottom = with_cells(bottom, f.rf) if "cy0" not in bottom else bottom
    ranges = pd.read_parquet(f.ranges) if f.ranges and os.path.exists(f.ranges) else None
    ranges = with_cells(ranges, f.rf) if ranges is not None else None
    hist = pd.read_parquet(f.hist) if f.hist and os.path.exists(f.hist) else None
    img = folder / "img"
    patch_names = _write_jpegs(f.patches, img, "u", "patches")
    proj_names = _write_jpegs(f.projections, img, "p", "projections") if f.projections else {}
    rf = _rf_text(layer) + (f", effective ≈ {erf} px" if erf else "")
    field = (layer.rf_size, layer.rf_size_x) if layer.rf_affine else (layer.rf_max_h, layer.rf_max_w)
    seen = 2 * min(field) >= size  # as the figures: the visible part of a large field, full size
    has_labels = "purity" in units and units["purity"].notna().any()
    thumbs = []
    progress = Progress(len(units), f"gallery {L}", unit="units")
    # plain rows grouped once: pandas lookups per unit and per entry are the slow part
    by_unit = _rows_by_unit(top, "rank")
    low_by_unit = _rows_by_unit(bottom, "rank")
    range_by_unit = _rows_by_unit(ranges, "range") if ranges is not None else {}
    hist_by_unit = {int(u): g for u, g in hist.groupby("unit")} if hist is not None else {}
    votes_by_unit = _rows_by_unit(classes, "rank") if classes is not None else {}
    occluded, occlusion_note = _occlusion_rows(f, img)
    unit_ids = [int(u) for u in units["unit"]]
    metas = manifest.to_dict("index")

    def entries(rows: list, kind: str) -> list[dict]:
        return [_entry(r, kind, metas[int(r.image_id)], patch_names, proj_names, size, prep, seen)
                for r in rows]

    for i, s in enumerate(units.itertuples()):
        u = int(s.unit)
        purity = f"{s.purity:.4f}" if has_labels and not pd.isna(s.purity) else None
        thumbs.append({"unit": u, "file": f"{u:04d}", "image": patch_names.get(("top", u, 0)),
                       "dead": bool(s.dead), "saturated": bool(s.saturated), "max": f"{s.max:.6g}",
                       "max_text": f"{s.max:.3g}", "active": f"{s.frac_active:.4f}", "purity": purity})
        mine = by_unit.get(u, [])
        in_range = range_by_unit.get(u, [])
        intervals: dict[int, list] = {}
        for r in in_range:
            intervals.setdefault(int(r.range), []).append(r)
        range_parts = [{"lo": f"{rows[0].lo:.3g}", "hi": f"{rows[0].hi:.3g}", "entries": entries(rows, "range")}
                       for rows in intervals.values()]
        marks = [r.activation for r in mine] + [r.activation for r in in_range]
        labels = []
        if has_labels:
            counts = Counter(lab for r in mine if not pd.isna(lab := metas[int(r.image_id)]["label"]))
            labels = [{"label": lab, "n": n, "width": f"{100 * n / max(counts.values()):.0f}"}
                      for lab, n in counts.most_common()]
        votes = [{"name": r.class_name, "weight": f"{r.weight:+.4f}"} for r in votes_by_unit.get(u, [])]
        stats = [(name, f"{getattr(s, name):.4g}") for name in
                 ("max", "mean", "q50", "q90", "q99", "frac_active", "min")]
        if has_labels and not pd.isna(s.purity):
            stats.append(("label", f"{s.label} ({s.purity:.0%})"))
        _render(folder / f"unit-{u:04d}.html", "unit.html", title=f"{L} unit {u}", depth=1,
                layer=L, unit=u, prev=unit_ids[i - 1] if i > 0 else None,
                next=unit_ids[i + 1] if i + 1 < len(unit_ids) else None, rf=rf,
                method=METHOD_NAMES.get(method, method) if proj_names else "", why=shown["why"].get(u),
                stats=stats, hist=_hist(hist_by_unit[u], marks) if u in hist_by_unit else None,
                dead=bool(s.dead), saturated=bool(s.saturated), max_text=f"{s.max:.3g}",
                max_exact=f"{s.max:.4g}", n_at_max=getattr(s, "n_at_max", ""),
                top=entries(mine, "top"), short=bool(k and len(mine) < k), k=k,
                bottom=entries(low_by_unit.get(u, []), "bottom"), ranges=range_parts,
                labels=labels, classes=votes, occlusion=occluded.get(u, []),
                occlusion_note=occlusion_note)
        progress.update(1)
    _render(folder / "index.html", "layer.html", title=L, depth=1, layer=L, units=layer.units,
            height=layer.height, width=layer.width, channels=layer.channels, rf=rf,
            has_labels=has_labels, thumbs=thumbs)


def _occlusion_rows(f: LayerFiles, img: Path) -> tuple[dict[int, list[dict]], str]:
    """Each unit's occlusion rows (copied into the layer's img/ folder) and the sentence that says
    what they show."""
    if not f.occlusion or not f.occlusion_rows or not os.path.exists(f.occlusion):
        return {}, ""
    import shutil

    from .occlusion_file import read_occlusion
    from .occlusion_figure import row_file

    occ = read_occlusion(f.occlusion)
    a = occ.attrs
    out: dict[int, list[dict]] = {}
    for e in occ.examples.itertuples():
        name = row_file(int(e.unit), int(e.rank))
        src = Path(f.occlusion_rows) / name
        if not src.exists():
            continue
        shutil.copyfile(src, img / f"occ-{name}")
        out.setdefault(int(e.unit), []).append({"src": f"img/occ-{name}", "rank": int(e.rank),
                                                "image": f"{int(e.image_id):07d}"})
    grey = "the training data's mean colour" if a.get("fill_mean") else "a fixed colour"
    note = (f"A grey square of {a['size']} px ({grey}) centred at {a['n']}×{a['n']} points "
            f"{a['stride']} px apart; the second panel is the change of the unit's activation (its "
            f"map's maximum) with the square there: blue where it drops, red where it rises.")
    if a.get("classes"):
        note += (f" The last two are the classifier's, with a {a['class_size']} px square: the "
                 f"probability of the image's top class and the most probable class.")
    return out, note


def _rows_by_unit(table: pd.DataFrame, order: str) -> dict[int, list]:
    """A table's rows (as objects with the columns as attributes) by unit, sorted by `order` (and
    by rank within it)."""
    keys = [order] + (["rank"] if order != "rank" and "rank" in table else [])
    out: dict[int, list] = {}
    for r in table.sort_values(["unit", *keys]).to_dict("records"):
        out.setdefault(int(r["unit"]), []).append(SimpleNamespace(**r))
    return out


def _image_page(folder: Path, image_id: int, view: list[dict], meta, size: int) -> None:
    """One image's page: `view` holds its rows of the image-view table, layer by layer."""
    parts: dict[str, list] = {}
    for r in view:
        parts.setdefault(r["layer"], []).append(
            {"unit": int(r["unit"]), "style": _box_style(r["y0"], r["x0"], r["y1"], r["x1"], size),
             "activation": f"{r['activation']:.4g}", "ratio": f"{r['ratio']:.0%}", "y0": r["y0"],
             "y1": r["y1"], "x0": r["x0"], "x1": r["x1"]})
    label = meta["label"]
    _render(folder / f"{image_id:07d}.html", "image.html", title=f"image {image_id}", depth=1,
            image_id=image_id, image=f"{image_id:07d}", label="" if pd.isna(label) else label,
            path=meta["path"], layers=[{"layer": k, "rows": v} for k, v in parts.items()])
