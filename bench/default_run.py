"""Section default: the default run (408 sample crops, EfficientNet-Lite0): wall time, and per
layer the share of the figure's tile cells left empty — padding gray, or the margin around a tile
that shows what the unit sees — (<= 0.35) and the share of shown projections with >= 2% of their
pixels 16+ grey levels from mid-grey (>= 0.90)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import REPO, snakemake, stage_records


def bench_default(tmp: Path, max_images: int | None) -> dict:
    import yaml

    from unitscope.plan import Layout

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if max_images:
        config["dataset"]["max_images"] = max_images
    work = tmp / "default"
    wall = snakemake(work, config)
    layers = {}
    L = Layout("sample", "efficientnet_lite0", str(work / "results"))
    for layer in config["layers"]:
        layers[layer] = figure_shares(L, layer)
    return {"wall_s": wall, "images": max_images or 408, "stages": stage_records(work),
            "layers": layers}


def figure_shares(L, layer: str) -> dict:
    """Share of the shown top tiles' cells left empty (padding gray, or around a tile that shows what
    the unit sees) and the share of shown projections with >= 2% of pixels 16+ levels from mid-grey."""
    import pandas as pd

    from unitscope.patches import read_index, read_patches
    from unitscope.shown import read_shown

    shown = read_shown(L.shown(layer))["units"]
    table = pd.read_parquet(L.layers_table).set_index("layer").loc[layer]
    field = (table.rf_size, table.rf_size_x) if table.rf_affine else (table.rf_max_h, table.rf_max_w)
    seen = 2 * min(field) >= table.input_h
    idx = read_index(L.patches(layer))
    t = idx[(idx["kind"] == "top") & idx["unit"].isin(shown)]
    box = (t.y1 - t.y0) * (t.x1 - t.x0)
    vis = (t.vy1 - t.vy0) * (t.vx1 - t.vx0)
    if seen:  # a tile keeps the visible part's aspect: the cell's empty share is 1 - short/long side
        h, w = t.vy1 - t.vy0, t.vx1 - t.vx0
        padding = float((1 - np.minimum(h, w) / np.maximum(h, w)).mean())
    else:
        padding = float((1 - vis / box).mean())
    pidx = read_index(L.projections(layer), "projections")
    pt = pidx[pidx["kind"] == "top"]
    images = read_patches(L.projections(layer), pt.index, "projections")
    lively = [float((np.abs(im.astype(int) - 128) >= 16).any(2).mean() >= 0.02) for im in images]
    return {"padding_share": padding, "projection_share": float(np.mean(lively)),
            "rf": int(max(field)), "tiles": "what the unit sees" if seen else "padded box"}


def rows(d: dict) -> list:
    return [(f"default run, {layer} (RF {f['rf']} px, tiles: {f['tiles']}): padding share "
             f"/ lively projections", f"{f['padding_share']:.2f} / {f['projection_share']:.2f}",
             "<= 0.35 / >= 0.90", f["padding_share"] <= 0.35 and f["projection_share"] >= 0.90)
            for layer, f in d["layers"].items()]


def stage_line(d: dict) -> str:
    stages = ", ".join(f"{k} {v['s']:.1f}" for k, v in sorted(d["stages"].items(), key=lambda kv: -kv[1]["s"]))
    return (f"Default run ({d['images']} images, 5 layers): {d['wall_s']:.0f} s wall; stage "
            f"times (s, summed over jobs): {stages}")
