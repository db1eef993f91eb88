"""The layer figure of Zeiler & Fergus Fig. 2, made to explain itself: a header that says what a
unit is, how many the layer has and how big each one's patch is (theoretical and effective
receptive field), then for each shown unit a ceil(√k)-wide block of its top patches (projections
beside them), all drawn at one display size, its id and maximum underneath, marks for saturated
units and units that never fire, and a legend line for the gray.

A tile is the unit's receptive-field box around its peak, padded with gray where the box reaches
outside the image (never shifted). Where the field spans half the input or more, a padded tile
would be mostly gray: the tile then shows what the unit sees — the part of its field inside the
image, the whole input once the field is larger than it — at full cell size, with the peak
position marked, and the header says so. A figure shows at most 64 patches per unit and 64 units
(the tables keep everything), and fewer patches per unit where that many at the display size would
make the layer figure larger than 50 Mpx (Pillow refuses to open far larger images as likely
decompression bombs); the header then says how many of k it draws. Figure text is ASCII: Pillow's
built-in font has no × or ≈."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .patches import GRAY, file_attrs, padded, read_index, read_patches
from .examples import MAX_SHOWN_PER_UNIT

log = logging.getLogger("unitscope")

MAX_UNITS_PER_FIGURE = 64
MAX_FIGURE_PIXELS = 50_000_000
PANELS = ("patches", "projections", "both")
FIGURES = ("top", "bottom", "both")
PATCH_GAP = 2
UNIT_GAP = 14
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
MARK = (230, 30, 30)
ERF_MARK = (255, 200, 0)
METHOD_NAMES = {"guided_backprop": "guided backprop", "gradient": "plain input gradient"}  # the effective field around a token's cell
EMPTY_TILE = (235, 235, 235)


@dataclass
class FigureFacts:
    """What the header says: the layer, its shape and field, and how the units were chosen."""

    model: str = ""
    dataset: str = ""
    n_images: int | None = None
    layer: str = ""
    module: str = ""
    shape: tuple[int, int, int] = (0, 0, 0)
    input_size: int = 0
    rf: tuple[int, int] | None = None  # the field size (rows, columns); the largest if not affine
    rf_affine: bool = True
    erf: int | None = None              # median effective field (px), where measured
    k: int = 9
    display_px: int = 64
    picked: str = ""
    method: str = ""                    # projection method
    notes: list[str] = field(default_factory=list)
    layout: str = "nchw"                # nchw, nhwc (channels last) or tokens
    tokens: str = ""                    # for token layers: patch, cls or all
    cell: bool = False                  # positions are token cells (attention): cells outlined
    gated: tuple[int, int] | None = None  # the largest theoretical field, where global gates act

    def covers_input(self) -> bool:
        return self.rf is not None and self.input_size > 0 and min(self.rf) > self.input_size

    def large(self) -> bool:
        """The field spans half the input or more: tiles show what the unit sees, not padding."""
        return self.rf is not None and self.input_size > 0 and 2 * min(self.rf) >= self.input_size


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(image: np.ndarray, display_px: int, nearest: bool):
    """An image scaled so its longer side is display_px (nearest-neighbour when enlarging small
    patches: the pixels stay visible)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = display_px / max(h, w, 1)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    resample = Image.NEAREST if (s >= 1 and nearest) else Image.LANCZOS
    return Image.fromarray(np.ascontiguousarray(image)).resize(size, resample)


def make_tile(image: np.ndarray, entry, shrink: float, input_size: int, display_px: int,
              fill=GRAY, seen: bool = False, erf: int | None = None):
    """One example drawn in a display_px cell: the padded box, or — with `seen` (a field that
    spans half the input or more) — the part of the field inside the image at full cell size,
    with the peak position (the field's centre) marked. Where the entry has a token cell
    (cy0…cx1), the cell is outlined, the + sits at its centre, and a square of the effective
    field's size `erf` (px) is drawn around it."""
    from PIL import ImageDraw

    box = (entry.y0, entry.x0, entry.y1, entry.x1)
    vis = (entry.vy0, entry.vx0, entry.vy1, entry.vx1)
    cell = getattr(entry, "cy0", None)
    cell = None if cell is None or pd.isna(cell) else (entry.cy0, entry.cx0, entry.cy1, entry.cx1)
    if seen and image.size:
        tile = _fit(image, display_px, nearest=False)
        origin = (vis[0], vis[1])
    else:
        full, _ = padded(image, box, vis, shrink, fill)
        tile = _fit(full, display_px, nearest=True).convert("RGB")
        origin = (box[0], box[1])
        if not cell:
            return tile
    s = tile.width / max((vis[3] - vis[1]) if seen else (box[3] - box[1]), 1)
    centre = cell or box
    cy = ((centre[0] + centre[2]) / 2 - origin[0]) * s
    cx = ((centre[1] + centre[3]) / 2 - origin[1]) * s
    d = ImageDraw.Draw(tile)
    if cell:
        if erf:
            e = erf * s / 2
            d.rectangle([cx - e, cy - e, cx + e, cy + e], outline=ERF_MARK, width=1)
        d.rectangle([(cell[1] - origin[1]) * s, (cell[0] - origin[0]) * s,
                     (cell[3] - origin[1]) * s - 1, (cell[2] - origin[0]) * s - 1],
                    outline=MARK, width=2)
        return tile
    r = max(3, display_px // 12)
    d.line([(cx - r, cy), (cx + r, cy)], fill=MARK, width=2)
    d.line([(cx, cy - r), (cx, cy + r)], fill=MARK, width=2)
    return tile


def tile_grid(tiles: list, k: int, display_px: int):
    """A unit's tiles in a ceil(√k)-wide grid, thin gaps between them; missing ones light gray."""
    from PIL import Image

    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = Image.new("RGB", (cols * display_px + (cols - 1) * PATCH_GAP,
                             rows * display_px + (rows - 1) * PATCH_GAP), BACKGROUND)
    empty = Image.new("RGB", (display_px, display_px), EMPTY_TILE)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        tile = tiles[i] if i < len(tiles) else empty
        grid.paste(tile, (c * (display_px + PATCH_GAP) + (display_px - tile.width) // 2,
                          r * (display_px + PATCH_GAP) + (display_px - tile.height) // 2))
    return grid


def unit_block(sets: list[list], k: int, display_px: int, caption: list[tuple[str, tuple]]):
    """One unit's block: its grids side by side (projections left of patches, as in the paper),
    with caption lines underneath ((text, colour) each)."""
    from PIL import Image, ImageDraw

    grids = [tile_grid(t, k, display_px) for t in sets]
    line_h = 14
    width = max(sum(g.width for g in grids) + (len(grids) - 1) * 3 * PATCH_GAP, 120)
    height = grids[0].height + 4 + line_h * len(caption)
    block = Image.new("RGB", (width, height), BACKGROUND)
    x = 0
    for g in grids:
        block.paste(g, (x, 0))
        x += g.width + 3 * PATCH_GAP
    draw = ImageDraw.Draw(block)
    for i, (text, colour) in enumerate(caption):
        draw.text((0, grids[0].height + 3 + i * line_h), _clip(draw, text, width, 11), fill=colour,
                  font=_font(11))
    return block


def _clip(draw, text: str, width: int, size: int) -> str:
    """The text, shortened with '...' to fit `width` pixels."""
    if draw.textlength(text, font=_font(size)) <= width:
        return text
    while text and draw.textlength(text + "...", font=_font(size)) > width:
        text = text[:-1]
    return text + "..."


def figure_pixels(per_unit: int, display_px: int, n_blocks: int, sets: int, pairs: bool) -> int:
    """The pixels of a layer figure of `n_blocks` unit blocks with `per_unit` tiles in each of its
    `sets` grids (the layout of `draw_grids`, header aside)."""
    cols = math.ceil(math.sqrt(per_unit))
    rows = math.ceil(per_unit / cols)
    grid_w = cols * display_px + (cols - 1) * PATCH_GAP
    bw = max(sets * grid_w + (sets - 1) * 3 * PATCH_GAP, 120)
    bh = rows * display_px + (rows - 1) * PATCH_GAP + 4 + 14 * 3
    per_row = 2 * math.ceil(math.sqrt(n_blocks / 2)) if pairs else math.ceil(math.sqrt(n_blocks))
    n_rows = math.ceil(n_blocks / max(per_row, 1))
    return (per_row * (bw + UNIT_GAP) + UNIT_GAP) * (n_rows * (bh + UNIT_GAP) + UNIT_GAP + 120)


def drawn_per_unit(k: int, display_px: int, n_blocks: int, sets: int, pairs: bool) -> int:
    """How many of a unit's k examples a figure draws: k, at most 64, and no more than keeps the
    layer figure under MAX_FIGURE_PIXELS."""
    n = min(k, MAX_SHOWN_PER_UNIT)
    while n > 1 and figure_pixels(n, display_px, n_blocks, sets, pairs) > MAX_FIGURE_PIXELS:
        n -= 1
    return n


def header_lines(facts: FigureFacts, kinds: list[str], shown_k: int, available: int,
                 n_units: int, panels: str) -> list[str]:
    """The header's sentences: what a unit is, why k patches, how big a patch is."""
    c, h, w = facts.shape
    images = f" ({facts.n_images:,} images)" if facts.n_images is not None else ""
    lines = [f"{facts.model} on {facts.dataset}{images} · layer {facts.layer}"
             + (f" (module {facts.module})" if facts.module and facts.module != facts.layer else "")]
    if facts.layout == "tokens":
        where = {"patch": f"its {h}x{w} grid of patch tokens",
                 "cls": f"its {w} class token{'s' if w > 1 else ''}",
                 "all": f"all its {w} tokens"}.get(facts.tokens, f"its {h}x{w} tokens")
        lines.append(f"token layer: {c} units (channels) read over {where}; a unit's activation on "
                     f"an image is its maximum over them; input {facts.input_size}x"
                     f"{facts.input_size} px")
    else:
        lines.append(f"output {c}x{h}x{w}{' (stored channels last)' if facts.layout == 'nhwc' else ''}"
                     f": {c} units, each an {h}x{w} map; a unit's activation on an "
                     f"image is its map's maximum; one receptive field per position; input "
                     f"{facts.input_size}x{facts.input_size} px")
    if facts.rf is not None:
        rf = f"{facts.rf[0]}x{facts.rf[1]} px" if facts.rf[0] != facts.rf[1] else f"{facts.rf[0]} px"
        field_line = ("receptive field " + ("" if facts.rf_affine else "up to ") + rf
                      + " (theoretical)")
        if facts.erf:
            field_line += f", effective ~ {facts.erf} px (90% of the gradient)"
        mark = ("the red square is the peak token's cell" + (
            ", the yellow one the effective field" if facts.erf else "") if facts.cell
            else "+ marks its peak")
        if facts.covers_input() or (facts.cell and facts.large()
                                    and min(facts.rf) >= facts.input_size):
            op = ">" if facts.covers_input() else ">="
            field_line += (f" · RF {max(facts.rf)} px {op} {facts.input_size} px input: each tile "
                           f"is the whole input the unit sees, {mark}")
        elif facts.large():
            field_line += (f" · RF {max(facts.rf)} px spans over half the {facts.input_size} px "
                           f"input: each tile is the part of the field inside the image, {mark}")
        elif facts.cell:
            field_line += f" · {mark}"
        lines.append(field_line)
    which = {"top": "strongest", "bottom": "most negative (bottom-k)"}
    shown = " and ".join(f"its {which[k]}" for k in kinds)
    count = f"{shown_k}" if shown_k >= facts.k else f"{shown_k} of k={facts.k}"
    if available < min(facts.k, shown_k):
        count = f"{available} of k={facts.k} available"
    elif shown_k < min(facts.k, MAX_SHOWN_PER_UNIT):
        count = (f"first {shown_k} of k={facts.k} (at {facts.display_px} px, more would make the "
                 f"figure over {MAX_FIGURE_PIXELS // 1_000_000} Mpx; the tables have all)")
    elif facts.k > MAX_SHOWN_PER_UNIT:
        count = f"first {MAX_SHOWN_PER_UNIT} of k={facts.k}"
    lines.append(f"each block: one unit, {shown} {count} images (one patch per image); "
                 f"{n_units} units, {facts.picked}")
    legend = ("tiles enlarged to one size" if facts.large() else
              "gray: the part of a field outside the image (padding, never shifted)")
    if panels != "patches":
        legend = (f"left: projections back to pixels ({METHOD_NAMES.get(facts.method, facts.method)}; gray = 0), "
                  f"right: patches · " + legend)
    lines.append(legend)
    if facts.gated:
        lines.append(f"also modulated by the whole image through global gates (squeeze-excitation, "
                     f"global pools): theoretical field up to {facts.gated[0]}x{facts.gated[1]} px; "
                     f"tiles show the local field, through spatially local paths")
    return lines + facts.notes


def draw_header(fig, lines: list[str], x: int, y: int):
    from PIL import ImageDraw

    d = ImageDraw.Draw(fig)
    for i, line in enumerate(lines):
        d.text((x, y + (0 if i == 0 else 22 + 16 * (i - 1))), line, fill=TEXT if i < 2 else MUTED,
               font=_font(16 if i == 0 else 12))


def _header_height(lines: list[str]) -> int:
    return 22 + 16 * (len(lines) - 1) + 8


def draw_grids(patches_path: str | os.PathLike, units_path: str | os.PathLike,
               shown: dict, figure_out: str | os.PathLike, unit_dir: str | os.PathLike,
               display_px: int = 64, k: int = 9, facts: FigureFacts | None = None,
               projections_path: str | os.PathLike | None = None, panels: str = "patches",
               figure: str = "top") -> list[int]:
    """Write the layer figure and one PNG per shown unit (unit-UUUU.png); returns the units.
    `shown` is the layer's shown/L.json; `panels` = patches, projections or both; `figure` =
    top, bottom or both."""
    if panels not in PANELS:
        raise ValueError(f"panels {panels!r}; valid: {', '.join(PANELS)}")
    if figure not in FIGURES:
        raise ValueError(f"figure {figure!r}; valid: {', '.join(FIGURES)}")
    if panels != "patches" and projections_path is None:
        raise ValueError(f"panels: {panels} needs projections (projection is none)")
    facts = facts or FigureFacts()
    facts.k, facts.display_px = k, display_px
    units = pd.read_parquet(units_path).set_index("unit")
    chosen = [int(u) for u in shown["units"]]
    index = read_index(patches_path)
    attrs = file_attrs(patches_path)
    shrink, input_size = float(attrs["shrink"]), int(attrs["input_size"])
    facts.input_size = facts.input_size or input_size
    proj = read_index(projections_path, "projections") if projections_path else None
    if proj is not None and "cy0" in index and "cy0" not in proj:  # the same examples' cells
        key = ["kind", "unit", "rank"]
        proj = proj.reset_index().merge(index[key + ["cy0", "cx0", "cy1", "cx1"]], on=key,
                                        how="left").set_index("index")
    proj_shrink = float(file_attrs(projections_path, "projections")["shrink"]) if projections_path else 1.0
    kinds = ["top", "bottom"] if figure == "both" else [figure]
    limit = drawn_per_unit(k, display_px, min(len(chosen), MAX_UNITS_PER_FIGURE) * len(kinds),
                           2 if panels == "both" else 1, len(kinds) > 1)

    def tiles(path, idx, s, unit, kind, fill):
        rows = idx[(idx["unit"] == unit) & (idx["kind"] == kind) & (idx["rank"] < limit)].sort_values("rank")
        if rows.empty:
            return []
        images = read_patches(path, rows.index, "projections" if path == projections_path else "patches")
        return [make_tile(img, e, s, input_size, display_px, fill, facts.large(), facts.erf)
                for img, e in zip(images, rows.itertuples())]

    blocks, available = [], 0
    for u in chosen:
        stats = units.loc[u]
        for kind in kinds:
            sets = []
            if panels in ("projections", "both"):
                if proj is not None and proj[(proj["unit"] == u) & (proj["kind"] == kind)].empty \
                        and not index[(index["unit"] == u) & (index["kind"] == kind)].empty:
                    raise ValueError(f"no projections of unit {u}: the projections file holds other "
                                     f"units than shown/{facts.layer}.json")
                sets.append(tiles(projections_path, proj, proj_shrink, u, kind, GRAY))
            sets.append(tiles(patches_path, index, shrink, u, kind, GRAY))
            available = max(available, len(sets[-1]))
            caption = [(f"unit {u} · {'max' if kind == 'top' else 'min'} "
                        f"{stats['max' if kind == 'top' else 'min']:.3g}"
                        + (" · bottom-k" if figure == "both" and kind == "bottom" else ""), TEXT)]
            if bool(stats.get("dead", False)):
                caption.append(("never fires on this dataset", MARK))
            elif bool(stats.get("saturated", False)) and kind == "top":
                caption.append((f"saturated: {int(stats['n_at_max'])} images at the max", MARK))
            if kind == "bottom" and not sets[-1]:
                caption.append(("never negative on this dataset", MUTED))
            blocks.append((u, unit_block(sets, limit, display_px, caption)))
    n_units = len(chosen)
    header = header_lines(facts, kinds, limit, available, n_units, panels)
    unit_dir = Path(unit_dir)
    per_unit: dict[int, list] = {}
    for u, b in blocks:
        per_unit.setdefault(u, []).append(b)
    with atomic_path(unit_dir) as tmp_dir:
        tmp_dir.mkdir()
        for u, bs in per_unit.items():
            unit_header = header[:3] + [f"unit {u}: {shown.get('why', {}).get(u, '')}"] + header[
                4:6 if facts.gated else 5]
            _compose(bs, unit_header, per_row=len(bs)).save(tmp_dir / f"unit-{u:04d}.png")
    shown_blocks = [b for u, b in blocks if u in chosen[:MAX_UNITS_PER_FIGURE]]
    if n_units > MAX_UNITS_PER_FIGURE:
        header.append(f"the first {MAX_UNITS_PER_FIGURE} of {n_units} shown units; every unit has its "
                      f"own figure in grids/{facts.layer}/")
    per_row = math.ceil(math.sqrt(len(shown_blocks))) if len(kinds) == 1 else 2 * math.ceil(
        math.sqrt(len(shown_blocks) / 2))
    fig = _compose(shown_blocks, header, per_row)
    with atomic_path(figure_out) as tmp:
        fig.save(tmp, format="PNG")
    log.info("figure %s: units %s", figure_out, chosen)
    return chosen


def _compose(blocks: list, header: list[str], per_row: int):
    """Blocks in rows under the header, on white."""
    from PIL import Image

    per_row = max(1, per_row)
    bw = max(b.width for b in blocks) if blocks else 200
    bh = max(b.height for b in blocks) if blocks else 20
    n_rows = math.ceil(len(blocks) / per_row)
    top = _header_height(header)
    width = max(per_row * bw + (per_row + 1) * UNIT_GAP, _text_width(header) + 2 * UNIT_GAP)
    fig = Image.new("RGB", (width, top + n_rows * bh + (n_rows + 1) * UNIT_GAP), BACKGROUND)
    for i, b in enumerate(blocks):
        r, c = divmod(i, per_row)
        fig.paste(b, (UNIT_GAP + c * (bw + UNIT_GAP), top + UNIT_GAP + r * (bh + UNIT_GAP)))
    draw_header(fig, header, UNIT_GAP, 6)
    return fig


def _text_width(lines: list[str]) -> int:
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return int(max((d.textlength(line, font=_font(16 if i == 0 else 12))
                    for i, line in enumerate(lines)), default=0))
