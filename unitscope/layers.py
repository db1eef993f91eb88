"""The layer table: for each configured layer, its output shape and receptive field. It answers
"how big is a unit's patch in layer L" and needs no data.

`layers.parquet`, one row per layer: layer, module, layout (`nchw`; `nhwc` for channels-last
blocks; `tokens` for a transformer's N×T×C, whose patch tokens fill the grid_h×grid_w grid from
token `first_token` on), tokens (for token layers, which tokens are the positions: `patch`, the
grid; `cls`, the class tokens, a 1×first_token row; `all`, every token in order, a 1×T row; empty
for other layers), grid_h, grid_w (the patch grid; = height, width for other layers),
channels, height, width, units (= channels), activations (= C×H×W),
input_h, input_w (the network's input), rf_gated (True where a global gate — squeeze-and-
excitation, a global attention pool — also lets the whole image modulate the unit: the boxes are
then the *local* field, through spatially local paths, and rf_theory_max_h/_w give the largest
theoretical box), rf_cell (True for token layers whose token cell differs from the field), rf_method (`analytic`: followed op
by op and checked against the probe at every position; `probe`: measured, where the walk met an op
it has no rule for), rf_affine (True where every position's box is start + stride·position), the
affine summary rf_size, rf_stride, rf_offset (input-pixel centre of position 0; pixel i spans
[i, i+1)), rf_start (first row seen by position 0) and rf_size_x, rf_stride_x, rf_offset_x,
rf_start_x for columns (empty where not affine), and rf_max_h, rf_max_w (the largest box).

`rf/L.parquet`, one row per feature position in row-major order: y, x, y0, x0, y1, x1 (the box in
input pixels, end-exclusive, not clipped: it reaches into the padding where the field does), then
ty0, tx0, ty1, tx1 (the theoretical field's support: the same as the box's where nothing gates the
unit) and cy0, cx0, cy1, cx1 (the token's cell: the support through the query side of attention
only; the same as y0…x1 where nothing attends)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .geometry import affine_of

log = logging.getLogger("unitscope")
RF_COLUMNS = ["y", "x", "y0", "x0", "y1", "x1"]
EXTRA_COLUMNS = ["ty0", "tx0", "ty1", "tx1", "cy0", "cx0", "cy1", "cx1"]


def layer_table(model, modules: dict[str, str], input_size: tuple[int, int], probe: bool = True,
                layouts: dict[str, str] | None = None, tokens: dict[str, str] | None = None
                ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The table and the per-position boxes of each layer (layer name -> module path) of any model;
    `layouts` names the layout of layers whose fields cannot tell it, `tokens` which tokens of a
    token layer are its positions (patch, cls, all)."""
    from .receptive_field import EMPTY, layer_fields

    fields, shapes = layer_fields(model, modules, input_size, probe, layouts, tokens)
    rows, boxes = [], {}
    for layer, module in modules.items():
        c, h, w = shapes[layer]
        f = fields[layer]

        def no_pixel(a):
            a = a.copy()
            a[:, a[0] >= EMPTY // 2] = 0  # a position that sees no pixel at all (rare): an empty box
            return a
        b = no_pixel(f.boxes)
        theory = no_pixel(f.theory)
        cell = no_pixel(f.cell) if f.cell is not None else b  # no attention: the box itself
        boxes[layer] = rf_frame(b, theory, cell)
        affine = affine_of(b, f.jump)
        tokens = f.view.layout == "tokens"
        row = {"layer": layer, "module": module, "layout": f.view.layout,
               "first_token": f.view.first_token, "tokens": f.view.tokens if tokens else "",
               "grid_h": f.view.grid[0] if tokens else h, "grid_w": f.view.grid[1] if tokens else w,
               "channels": c, "height": h, "width": w,
               "units": c, "activations": c * h * w, "input_h": input_size[0],
               "input_w": input_size[1], "rf_gated": f.gated, "rf_cell": f.cell is not None,
               "rf_theory_max_h": int((theory[2] - theory[0]).max()),
               "rf_theory_max_w": int((theory[3] - theory[1]).max()),
               "rf_method": f.method, "rf_affine": affine is not None}
        for suffix, ax in (("", "y"), ("_x", "x")):
            a = getattr(affine, ax) if affine is not None else None
            row[f"rf_size{suffix}"] = a.size if a else None
            row[f"rf_stride{suffix}"] = a.stride if a else None
            row[f"rf_offset{suffix}"] = a.offset if a else None
            row[f"rf_start{suffix}"] = a.start if a else None
        row["rf_max_h"] = int((b[2] - b[0]).max())
        row["rf_max_w"] = int((b[3] - b[1]).max())
        if f.method == "probe":
            log.info("layer %s: the walk stopped at %s; boxes measured by the probe", layer, f.reason)
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("rf_size", "rf_stride", "rf_start", "rf_size_x", "rf_stride_x", "rf_start_x"):
        table[col] = table[col].astype("Int64")
    for col in ("rf_offset", "rf_offset_x"):
        table[col] = table[col].astype("Float64")
    return table, boxes


def rf_frame(boxes: np.ndarray, theory: np.ndarray | None = None, cell: np.ndarray | None = None
             ) -> pd.DataFrame:
    """(4, H, W) boxes as the rf table: y, x, y0, x0, y1, x1 in row-major order, then the
    theoretical support and the cell (each the box's own where not given)."""
    _, h, w = boxes.shape
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cols = {"y": ys.ravel(), "x": xs.ravel()}
    for prefix, b in (("", boxes), ("t", theory if theory is not None else boxes),
                      ("c", cell if cell is not None else boxes)):
        for i, name in enumerate(("y0", "x0", "y1", "x1")):
            cols[prefix + name] = b[i].ravel()
    return pd.DataFrame(cols).astype("int64")


def read_boxes(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """An rf table as an (H, W, 4) array of y0, x0, y1, x1, checked to cover the H×W grid."""
    rf = pd.read_parquet(path, columns=RF_COLUMNS)
    if len(rf) != height * width or not (
            (rf["y"].to_numpy() == np.repeat(np.arange(height), width)).all()
            and (rf["x"].to_numpy() == np.tile(np.arange(width), height)).all()):
        raise ValueError(f"{path} does not hold the boxes of a {height}×{width} feature map")
    return rf[["y0", "x0", "y1", "x1"]].to_numpy(np.int64).reshape(height, width, 4)


def format_table(table: pd.DataFrame) -> str:
    """The table as a human reads it: name, output C×H×W, units, RF size/stride/offset."""
    lw = max([12, *(len(str(v)) for v in table["layer"])])
    mw = max([16, *(len(str(v)) for v in table["module"])])
    lines = [f"{'layer':<{lw}} {'module':<{mw}} {'output C×H×W':>16} {'units':>6} "
             f"{'RF size':>11} {'stride':>6} {'offset':>7}  field"]
    for r in table.itertuples():
        if r.rf_affine and r.rf_stride == 0 == r.rf_stride_x:  # every position sees it all
            size = f"{r.rf_size}" if r.rf_size == r.rf_size_x else f"{r.rf_size}×{r.rf_size_x}"
            stride, offset = "-", "-"
        elif r.rf_affine:
            size = f"{r.rf_size}" if r.rf_size == r.rf_size_x else f"{r.rf_size}×{r.rf_size_x}"
            stride, offset = f"{r.rf_stride}", f"{r.rf_offset:.1f}"
        else:
            size, stride, offset = f"≤{r.rf_max_h}×{r.rf_max_w}", "-", "-"
        kind = ("the whole field at every position" if r.rf_affine and r.rf_stride == 0 == r.rf_stride_x
                else "affine" if r.rf_affine else "per position") + (
            ", probed" if r.rf_method == "probe" else "")
        if getattr(r, "rf_gated", False):
            kind += f", gated by the whole image (theoretical ≤{r.rf_theory_max_h}×{r.rf_theory_max_w} px)"
        if getattr(r, "layout", "nchw") != "nchw":
            kind += f", {r.layout}" + (f" ({r.tokens} tokens)" if r.layout == "tokens" else "")
        lines.append(f"{r.layer:<{lw}} {r.module:<{mw}} {f'{r.channels}×{r.height}×{r.width}':>16} "
                     f"{r.units:>6} {size + ' px':>11} {stride:>6} {offset:>7}  {kind}")
    return "\n".join(lines)


def write_layer_table(table: pd.DataFrame, boxes: dict[str, pd.DataFrame],
                      out_path: str | os.PathLike,
                      rf_paths: dict[str, str | os.PathLike] | None = None,
                      announce: bool = True) -> None:
    """Write the layer table (and log it, with `announce`: the command line prints it instead),
    and each layer's boxes where `rf_paths` names a file."""
    if announce:
        log.info("layer table (receptive fields in input pixels):\n%s", format_table(table))
    for layer, path in (rf_paths or {}).items():
        with atomic_path(path) as tmp:
            boxes[layer].to_parquet(tmp, index=False)
    with atomic_path(out_path) as tmp:
        table.to_parquet(tmp, index=False)


def layer_row(table_path: str | os.PathLike, layer: str) -> pd.Series:
    """One layer's row of a layers.parquet file."""
    table = pd.read_parquet(table_path)
    hit = table[table["layer"] == layer]
    if hit.empty:
        raise ValueError(f"layer {layer!r} not in {table_path}; it has {', '.join(table['layer'])}")
    return hit.iloc[0]
