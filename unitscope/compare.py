"""How units change across models (Zeiler & Fergus 2014, Fig. 4): the comparison of one layer's
units over an ordered list of models — checkpoints of one training run, or a model before and
after fine-tuning — where a unit is a channel index.

Table `compare/<name>/L.parquet`, one row per model, unit and rank of the unit's top-k in that
model: `model` (id), `step` (the model's place in the comparison, 0..), `unit`, `rank`,
`image_id`, `activation`, `y`, `x` (the peak position) and `y0`, `x0`, `y1`, `x1` (its receptive
field in input pixels), exactly as in that model's `topk/L.parquet`; then per unit and model
`jaccard` (|A∩B| / |A∪B| of the sets of images in this model's and the previous model's top-k;
NaN at step 0) and `top1_changed` (whether the strongest image differs from the previous
model's; missing at step 0). Figure `compare/<name>/L.png`: per unit a row, per model a column,
the unit's strongest example (its projection and its patch), its maximum and the overlap under
it, a red frame where the top image changed. No torch here: the projections come from each
model's projections job."""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .compare_units import channel_count, choose_units

log = logging.getLogger("unitscope")

COLUMNS = ["model", "step", "unit", "rank", "image_id", "activation", "y", "x", "y0", "x0", "y1",
           "x1", "jaccard", "top1_changed"]
CHANGED = (220, 30, 30)


def compare_table(tops: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The comparison of the models' top-k tables of one layer, in the given model order.
    Raises ValueError where a model's layer has another channel count (unit identity is the
    channel index)."""
    counts = {m: channel_count(t) for m, t in tops.items()}
    if len(set(counts.values())) > 1:
        what = ", ".join(f"{c} in {m}" for m, c in counts.items())
        raise ValueError(f"the layer has {what} channels; a unit is a channel index, so only "
                         f"models of one architecture can be compared")
    frames, before, before_top = [], None, None
    for step, (model, top) in enumerate(tops.items()):
        t = top.sort_values(["unit", "rank"], kind="stable")
        t = t[["unit", "rank", "image_id", "activation", "y", "x", "y0", "x0", "y1", "x1"]]
        sets = {int(u): frozenset(g.tolist()) for u, g in t.groupby("unit")["image_id"]}
        first = t[t["rank"] == 0].set_index("unit")["image_id"]
        if before is None:
            jaccard = pd.Series(np.nan, index=list(sets))
            changed = pd.Series(pd.NA, index=list(sets), dtype="boolean")
        else:
            jaccard = pd.Series({u: len(s & before.get(u, frozenset()))
                                 / max(len(s | before.get(u, frozenset())), 1) for u, s in sets.items()})
            changed = pd.Series({u: bool(first.get(u) != before_top.get(u)) for u in sets},
                                dtype="boolean")
        frames.append(t.assign(model=model, step=step, jaccard=t["unit"].map(jaccard).astype("float64"),
                               top1_changed=t["unit"].map(changed).astype("boolean")))
        before, before_top = sets, first
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return out[COLUMNS].reset_index(drop=True)


def _strongest(index: pd.DataFrame, unit: int):
    rows = index[(index["kind"] == "top") & (index["unit"] == unit) & (index["rank"] == 0)]
    return rows.index[0] if len(rows) else None


def _opened(sources: dict[str, dict]) -> dict[str, dict]:
    """Per model and kind (projections, patches): (path, entry index, attributes), each file's
    index read once for every unit of the figure; None where the model has no such file."""
    from .patches import file_attrs, read_index

    return {model: {kind: (files[kind], read_index(files[kind], kind), file_attrs(files[kind], kind))
                    if files.get(kind) else None for kind in ("projections", "patches")}
            for model, files in sources.items()}


def _cell(opened: dict, unit: int, display_px: int):
    """(projection tile or None, patch tile or None) of a unit's strongest example in one model."""
    from .grids import make_tile
    from .patches import read_patch

    tiles = []
    for kind in ("projections", "patches"):
        i = _strongest(opened[kind][1], unit) if opened[kind] else None
        if i is None:
            tiles.append(None)
            continue
        path, index, attrs = opened[kind]
        entry = index.loc[i]
        seen = 2 * min(entry.y1 - entry.y0, entry.x1 - entry.x0) >= int(attrs["input_size"])
        tiles.append(make_tile(read_patch(path, i, kind), entry, float(attrs["shrink"]),
                               int(attrs["input_size"]), display_px, seen=seen))
    return tiles


def draw_compare_figure(table: pd.DataFrame, sources: dict[str, dict], units: list[int],
                        out_path: str | os.PathLike, name: str, layer: str,
                        display_px: int = 64, how_chosen: str = "") -> None:
    """The Fig. 4 arrangement: per unit a row, per model a column, each cell the unit's
    strongest example in that model (projection left of the patch, where projected), its
    maximum and the overlap of its top-k with the previous model's under it, a red frame where
    the top image changed. `sources`: model -> {patches, projections} paths."""
    from PIL import Image, ImageDraw

    from .grids import BACKGROUND, EMPTY_TILE, MUTED, TEXT, _font, _text_width, draw_header, _header_height

    models = list(sources)
    opened = _opened(sources)
    projected = any(o["projections"] for o in opened.values())
    gap, label_w = 4, 74
    cell_w = display_px * (2 if projected else 1) + (gap if projected else 0)
    col_w, row_h = cell_w + 16, display_px + 40
    top1 = table[table["rank"] == 0].set_index(["model", "unit"])
    k = int(table["rank"].max()) + 1 if len(table) else 0
    field = table.iloc[0] if len(table) else None
    fh, fw = (int(field.y1 - field.y0), int(field.x1 - field.x0)) if field is not None else (0, 0)
    rf = f"{fh}x{fw} px"
    size = next((int(o["patches"][2]["input_size"]) for o in opened.values() if o["patches"]), None)
    if size and 2 * min(fh, fw) >= size:  # as the layer figures: what the unit sees, full size
        seen = ("the receptive field (" + rf + (f") covers the whole {size}-px input: each tile is "
                "what the unit sees (the whole image" if min(fh, fw) > size else
                f") spans half the {size}-px input or more: each tile is what the unit sees (the "
                f"part of its field inside the image") + "), + at its peak position")
    else:
        seen = f"the patch of its receptive field, {rf}, shown at {display_px} px"
    header = [f"{name}: layer {layer} across {len(models)} models (Zeiler & Fergus Fig. 4)",
              f"a unit is one feature map, identified by its channel index: the same unit in two "
              f"models is meaningful within one training run or a fine-tune",
              f"each cell: the unit's strongest image in that model (its top-1 of k={k})"
              + (": its projection back to pixels (left) and, right," if projected else ":"),
              seen,
              f"under it: the unit's maximum in that model, and J = overlap of its top-{k} images "
              f"with the previous model's (Jaccard); red frame: its strongest image changed",
              f"units: {how_chosen}" if how_chosen else f"units: {', '.join(map(str, units))}"]
    top = _header_height(header) + 22
    width = max(label_w + len(models) * col_w + 16, _text_width(header) + 28)
    fig = Image.new("RGB", (width, top + len(units) * row_h + 8), BACKGROUND)
    d = ImageDraw.Draw(fig)
    draw_header(fig, header, 14, 6)
    for c, model in enumerate(models):
        x = label_w + c * col_w
        text = model if d.textlength(model, font=_font(12)) <= col_w - 4 else model[-(col_w // 7):]
        d.text((x, top - 18), text, fill=TEXT, font=_font(12))
    for r, unit in enumerate(units):
        y = top + r * row_h
        d.text((8, y + display_px // 2 - 6), f"unit {unit}", fill=TEXT, font=_font(12))
        for c, model in enumerate(models):
            x = label_w + c * col_w
            proj, patch = _cell(opened[model], unit, display_px)
            tiles = ([proj] if projected else []) + [patch]
            for i, tile in enumerate(tiles):
                tx = x + i * (display_px + gap)
                if tile is None:
                    d.rectangle([tx, y, tx + display_px - 1, y + display_px - 1], fill=EMPTY_TILE)
                else:
                    fig.paste(tile, (tx, y))
            row = top1.loc[(model, unit)] if (model, unit) in top1.index else None
            if row is None:
                continue
            changed = row["top1_changed"]
            if changed is True or (not pd.isna(changed) and bool(changed)):
                d.rectangle([x - 3, y - 3, x + cell_w + 2, y + display_px + 2], outline=CHANGED, width=3)
            jac = "" if pd.isna(row["jaccard"]) else f"  J {row['jaccard']:.2f}"
            d.text((x, y + display_px + 4), f"max {row['activation']:.3g}{jac}", fill=MUTED,
                   font=_font(11))
    with atomic_path(out_path) as tmp:
        fig.save(tmp, format="PNG")


def compare_stage(sources: dict[str, dict], layer: str, name: str, units: int | list[int],
                  seed: int, table_out: str | os.PathLike, figure_out: str | os.PathLike,
                  display_px: int = 64) -> pd.DataFrame:
    """The comparison of one layer: `sources` maps each model (in order) to its files (topk,
    patches, projections or None); writes the table and the figure."""
    tops = {model: pd.read_parquet(files["topk"]) for model, files in sources.items()}
    table = compare_table(tops)
    channels = channel_count(next(iter(tops.values())))
    chosen = choose_units(channels, units, seed)
    how = (f"{len(chosen)} of {channels} chosen at random (seed {seed}): "
           f"{', '.join(map(str, chosen))}" if not isinstance(units, (list, tuple))
           else f"{', '.join(map(str, chosen))} (as configured)")
    with atomic_path(table_out) as tmp:
        table.to_parquet(tmp, index=False)
    draw_compare_figure(table, {m: {k: v for k, v in s.items() if k != "topk"} for m, s in sources.items()},
                        chosen, figure_out, name, layer, display_px, how)
    steps = table[table["rank"] == 0].groupby("step")
    for step, g in steps:
        if step:
            log.info("%s %s: step %d (%s): mean Jaccard %.2f, top image changed for %d of %d units",
                     name, layer, step, g["model"].iat[0], g["jaccard"].mean(),
                     int(g["top1_changed"].sum()), len(g))
    return table
