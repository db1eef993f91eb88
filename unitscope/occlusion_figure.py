"""The occlusion figure of a layer (`grids/L-occlusion.png`) in the arrangement of Zeiler & Fergus's
Fig. 7, and one PNG per occluded example (`grids/L-occlusion/unit-UUUU-rank-RR.png`) for the
gallery. Per example, left to right: the image with the unit's field at its peak (red); the change
of the unit's activation when the grey square is centred on each point, over the image (blue: it
drops, red: it rises; the row's scale printed); the patch; and where the model has a classifier,
the probability of the image's unoccluded top class (dark: high) and the most probable class at
each point, with a legend of the classes that appear. The header says what the square is (size,
stride, colour) and what a unit's activation is. Figure text is ASCII (Pillow's built-in font)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .grids import BACKGROUND, MARK, MUTED, TEXT, _font, draw_header, make_tile
from .occlusion_file import Squares, read_occlusion
from .patches import GRAY, file_attrs, read_index, read_patches

log = logging.getLogger("unitscope")

PANEL_PX = 128
GAP = 6
LEGEND_W = 210
DROP = np.array([33, 102, 172], float)   # blue: the activation drops
RISE = np.array([178, 24, 43], float)    # red: it rises
PROB = np.array([0, 90, 50], float)      # dark green: high probability
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
OTHER = (200, 200, 200)
MAX_LEGEND = 6


def ascii_text(text: str) -> str:
    """Text Pillow's built-in font can draw."""
    return text.encode("ascii", "replace").decode("ascii")


def cell_raster(values: np.ndarray, squares: Squares) -> np.ndarray:
    """An n×n map as an input_size×input_size array: cell (i, j) over the pixels of its cell."""
    s = squares.stride
    big = np.repeat(np.repeat(values, s, 0), s, 1)
    return big[:squares.input_size, :squares.input_size]


def diverging(delta: np.ndarray, scale: float) -> np.ndarray:
    """H×W×3 colours: white at 0, blue towards −scale, red towards +scale."""
    t = np.clip(delta / scale, -1, 1)[..., None] if scale > 0 else np.zeros(delta.shape + (1,))
    white = np.full(3, 255.0)
    return np.where(t < 0, white + (-t) * (DROP - white), white + t * (RISE - white))


def sequential(p: np.ndarray) -> np.ndarray:
    """H×W×3 colours: white at 0, dark green at 1."""
    t = np.clip(p, 0, 1)[..., None]
    return 255.0 + t * (PROB - 255.0)


def over_image(colours: np.ndarray, image: np.ndarray, keep: float = 0.35) -> np.ndarray:
    """Colours blended over the image's grey values (the image stays readable underneath)."""
    grey = image.astype(float).mean(2, keepdims=True)
    return np.clip(keep * grey + (1 - keep) * colours, 0, 255).astype(np.uint8)


def _panel(array: np.ndarray, px: int):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array)).resize((px, px), Image.NEAREST)


def _image_panel(image: np.ndarray, box, px: int):
    """The image with the field box (clipped, red) drawn."""
    from PIL import ImageDraw

    from PIL import Image

    tile = Image.fromarray(image).resize((px, px), Image.LANCZOS)
    s = px / image.shape[0]
    y0, x0, y1, x1 = box
    d = ImageDraw.Draw(tile)
    top, left = max(y0, 0) * s, max(x0, 0) * s
    bottom, right = min(y1, image.shape[0]) * s - 1, min(x1, image.shape[1]) * s - 1
    if bottom - top < 8 or right - left < 8:  # a field of a few pixels: a + marks it too
        cy, cx = (top + bottom) / 2, (left + right) / 2
        d.line([(cx - 9, cy), (cx - 4, cy)], fill=MARK, width=2)
        d.line([(cx + 4, cy), (cx + 9, cy)], fill=MARK, width=2)
        d.line([(cx, cy - 9), (cx, cy - 4)], fill=MARK, width=2)
        d.line([(cx, cy + 4), (cx, cy + 9)], fill=MARK, width=2)
    d.rectangle([left, top, max(right, left + 1), max(bottom, top + 1)], outline=MARK, width=1 if bottom - top < 8 else 2)
    return tile


def label_colours(labels: np.ndarray, top: int) -> tuple[dict[int, tuple], list[tuple[int, float]]]:
    """A colour per class of a label map (the image's top class first, then by area; beyond the
    palette grey) and (class, share of positions) in that order."""
    values, counts = np.unique(labels, return_counts=True)
    order = sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: (vc[0] != top, -vc[1], vc[0]))
    colours = {c: (PALETTE[i] if i < len(PALETTE) else OTHER) for i, (c, _) in enumerate(order)}
    total = labels.size
    return colours, [(c, n / total) for c, n in order]


def example_row(image: np.ndarray, ex, unit_map: np.ndarray, squares: Squares, patch_tile,
                classes, names: dict[int, str], px: int = PANEL_PX):
    """One example's row (a PIL image): image, unit map, patch, and the class maps where given
    (`classes` = (probability map, label map, top class, top probability, class squares))."""
    from PIL import Image, ImageDraw

    delta = unit_map - float(ex.unoccluded)
    scale = float(np.abs(delta).max())
    panels = [(_image_panel(image, (ex.y0, ex.x0, ex.y1, ex.x1), px), "image, field at the peak"),
              (_panel(over_image(diverging(cell_raster(delta, squares), scale), image), px),
               f"unit {int(ex.unit)}: change +-{scale:.3g}"),
              (patch_tile, "its patch")]
    legend = []
    if classes is not None:
        prob, labels, top, top_p, csq = classes
        panels.append((_panel(over_image(sequential(cell_raster(prob, csq)), image), px),
                       f"p(top class) {prob.min():.2f}..{prob.max():.2f}"))
        colours, shares = label_colours(labels, top)
        raster = cell_raster(labels, csq)
        rgb = np.zeros(raster.shape + (3,), float)
        for c, col in colours.items():
            rgb[raster == c] = col
        panels.append((_panel(over_image(rgb, image, keep=0.25), px), "most probable class"))
        legend = [(colours[c], f"{names.get(c, f'class {c}')} {share:.0%}") for c, share in shares]
        if len(legend) > MAX_LEGEND:
            legend = legend[:MAX_LEGEND - 1] + [(OTHER, f"+{len(legend) - MAX_LEGEND + 1} more")]
        legend.insert(0, (None, f"top: {names.get(top, f'class {top}')} p={top_p:.2f}"))
    width = len(panels) * (px + GAP) + (LEGEND_W if legend else 0)
    line = 13
    height = px + 2 * line + 4
    row = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(row)
    title = (f"unit {int(ex.unit)} - rank {int(ex.rank)} - image {int(ex.image_id)} - activation "
             f"{float(ex.unoccluded):.3g}")
    if scale == 0:
        peaks = int(getattr(ex, "peaks", 1))
        title += (f" - no square changes it: the map reaches its maximum at {peaks} positions"
                  if peaks > 1 else " - no square changes it")
    d.text((0, 0), ascii_text(title), fill=TEXT, font=_font(11))
    for i, (tile, caption) in enumerate(panels):
        x = i * (px + GAP)
        row.paste(tile, (x + (px - tile.width) // 2, line + (px - tile.height) // 2))
        d.text((x, line + px + 2), ascii_text(caption), fill=MUTED, font=_font(10))
    x = len(panels) * (px + GAP)
    for i, (col, text) in enumerate(legend):
        y = line + i * 14
        if col is not None:
            d.rectangle([x, y + 2, x + 9, y + 11], fill=col)
        d.text((x + (14 if col is not None else 0), y), ascii_text(text), fill=TEXT if col is None else MUTED,
               font=_font(10))
    return row


def header_lines(attrs: dict, layer: str, model: str, dataset: str, n_units: int) -> list[str]:
    """What the figure shows, what the square is, how to read its colours."""
    fill = ("the training data's mean colour (the model's normalisation mean, as in the paper)"
            if attrs.get("fill_mean") else f"RGB {tuple(round(v) for v in attrs.get('fill', []))}")
    n = int(attrs["n"])
    lines = [f"{model} on {dataset} - layer {layer}: occlusion sensitivity (Zeiler & Fergus, Fig. 7)",
             f"a grey square of {attrs['size']} px ({fill}) centred at {n}x{n} points "
             f"{attrs['stride']} px apart over the {attrs['input_size']} px input; at each, the unit's "
             f"activation = the maximum of its map",
             "per image: the image with the unit's field at its peak (red) | the change of the "
             "activation with the square centred there (blue: drops, red: rises; +- the row's "
             "scale) | the patch"]
    if attrs.get("classes"):
        lines.append(f"then the classifier with a {attrs['class_size']} px square, "
                     f"{attrs['class_stride']} px apart: probability of the image's top class "
                     f"(white 0, green 1) | the most probable class (legend: share of positions)")
    lines.append(f"{n_units} units (the first the layer figure shows), each with its "
                 f"{attrs['examples']} strongest images; the unit maps are exact: every "
                 f"position that a square changes is recomputed")
    return [ascii_text(x) for x in lines]


def draw_occlusion_figure(occlusion_path: str | os.PathLike, patches_path: str | os.PathLike,
                          shown_units: list[int], images, out: str | os.PathLike, layer: str,
                          model: str = "", dataset: str = "", rows_dir: str | os.PathLike | None = None,
                          px: int = PANEL_PX) -> int:
    """Write the layer's occlusion figure (and each example's row into `rows_dir`, as
    unit-UUUU-rank-RR.png); returns the number of examples drawn."""
    from PIL import Image, ImageDraw

    occ = read_occlusion(occlusion_path)
    a = occ.attrs
    squares = Squares(int(a["size"]), int(a["stride"]), int(a["input_size"]))
    csq = Squares(int(a["class_size"]), int(a["class_stride"]), int(a["input_size"]))
    index = read_index(patches_path)
    tops = index[index["kind"] == "top"]
    where = {(int(u), int(r)): i for i, u, r in zip(tops.index, tops["unit"], tops["rank"])}
    pattrs = file_attrs(patches_path)
    shrink, input_size = float(pattrs["shrink"]), int(pattrs["input_size"])
    rows = []
    order = {u: i for i, u in enumerate(shown_units)}
    ex = occ.examples.assign(_o=occ.examples["unit"].map(order)).sort_values(["_o", "rank"])
    for k, e in zip(ex.index, ex.itertuples()):
        image = images[int(e.image_id)]
        tile = Image.new("RGB", (px, px), (235, 235, 235))
        key = (int(e.unit), int(e.rank))
        if key in where:
            entry = index.loc[where[key]]
            patch = read_patches(patches_path, [where[key]])[0]
            side = min(int(entry["y1"] - entry["y0"]), int(entry["x1"] - entry["x0"]))
            tile = make_tile(patch, entry, shrink, input_size, px, GRAY, 2 * side >= input_size)
        c = occ.class_maps_of(int(e.image_id))
        classes = (*c, csq) if c is not None else None
        rows.append((e, example_row(image, e, occ.maps[k], squares, tile, classes, occ.names, px)))
    header = header_lines(a, layer, model, dataset, len(set(ex["unit"])))
    width = max([r.width for _, r in rows] + [_text_width(header)]) + 2 * GAP
    top = 22 + 16 * (len(header) - 1) + 12
    height = top + sum(r.height + GAP for _, r in rows) + GAP
    fig = Image.new("RGB", (width, max(height, top + 20)), BACKGROUND)
    y = top
    last = None
    d = ImageDraw.Draw(fig)
    for e, r in rows:
        if last is not None and int(e.unit) != last:
            d.line([(GAP, y - GAP // 2 - 1), (width - GAP, y - GAP // 2 - 1)], fill=(210, 210, 210))
            y += 4
        fig.paste(r, (GAP, y))
        y += r.height + GAP
        last = int(e.unit)
    if not rows:
        d.text((GAP, top), "no occluded examples (occlusion.examples is 0 or no unit is shown)",
               fill=MUTED, font=_font(12))
    draw_header(fig, header, GAP, 6)
    fig = fig.crop((0, 0, width, min(fig.height, max(y + GAP, top + 24))))
    with atomic_path(out) as tmp:
        fig.save(tmp, format="PNG")
    if rows_dir is not None:
        with atomic_path(rows_dir) as tmp_dir:
            Path(tmp_dir).mkdir()
            for e, r in rows:
                r.save(Path(tmp_dir) / row_file(int(e.unit), int(e.rank)))
    log.info("occlusion figure %s: %d examples", out, len(rows))
    return len(rows)


def row_file(unit: int, rank: int) -> str:
    """The name of one example's row image in the rows folder."""
    return f"unit-{unit:04d}-rank-{rank:02d}.png"


def _text_width(lines: list[str]) -> int:
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return int(max((d.textlength(line, font=_font(16 if i == 0 else 12)) for i, line in enumerate(lines)),
                   default=0))
