"""The image's view: for one image, the units of each layer that fire most on it relative to their
own maximum over the dataset (activation / unit max), with the receptive-field box of each peak —
what the network "sees" in that image, layer by layer."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .inputs import shard_rows
from .layers import read_boxes
from .provenance import open_checked

COLUMNS = ["layer", "unit", "activation", "unit_max", "ratio", "y", "x", "y0", "x0", "y1", "x1"]


def image_rows(activation_paths: list[str | os.PathLike], manifest: pd.DataFrame,
               image_ids: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """image_id -> {max, argmax_y, argmax_x} rows (per unit) from a layer's activation shards,
    reading only the shards and rows that hold the wanted images."""
    wanted = set(int(i) for i in image_ids)
    out: dict[int, dict[str, np.ndarray]] = {}
    for shard, path in enumerate(activation_paths):
        ids = shard_rows(manifest, shard, len(activation_paths))["image_id"].to_numpy()
        hits = [i for i in ids if int(i) in wanted]
        if not hits:
            continue
        with open_checked(path, "activations") as f:
            stored = f["image_id"][:]
            where = {int(v): r for r, v in enumerate(stored)}
            for i in hits:
                r = where[int(i)]
                out[int(i)] = {k: f[k][r] for k in ("max", "argmax_y", "argmax_x")}
    return out


def top_units(rows: dict[str, np.ndarray], units: pd.DataFrame, boxes: np.ndarray, layer: str,
              n: int = 5) -> pd.DataFrame:
    """The n units firing most on one image relative to their own maximum (units that never fire
    are left out), with their peak's box."""
    unit_max = units.sort_values("unit")["max"].to_numpy(np.float64)
    act = rows["max"].astype(np.float64)
    ratio = np.where(unit_max > 0, act / np.where(unit_max > 0, unit_max, 1), -np.inf)
    ratio = np.where(act > 0, ratio, -np.inf)
    order = [int(u) for u in np.argsort(-ratio, kind="stable")[:n] if np.isfinite(ratio[u])]
    out = []
    for u in order:
        y, x = int(rows["argmax_y"][u]), int(rows["argmax_x"][u])
        y0, x0, y1, x1 = (int(v) for v in boxes[y, x])
        out.append({"layer": layer, "unit": u, "activation": float(act[u]),
                    "unit_max": float(unit_max[u]), "ratio": float(ratio[u]), "y": y, "x": x,
                    "y0": y0, "x0": x0, "y1": y1, "x1": x1})
    return pd.DataFrame(out, columns=COLUMNS)


def image_view(layers: pd.DataFrame, manifest: pd.DataFrame, paths: dict[str, dict],
               image_ids: list[int], n: int = 5) -> dict[int, pd.DataFrame]:
    """image_id -> its top units of every layer. `paths[layer]` holds "activations" (the
    layer's shard files), "units" and "rf"."""
    result: dict[int, list[pd.DataFrame]] = {int(i): [] for i in image_ids}
    for layer in layers.itertuples():
        p = paths[layer.layer]
        units = pd.read_parquet(p["units"])
        boxes = read_boxes(p["rf"], int(layer.height), int(layer.width))
        rows = image_rows(p["activations"], manifest, image_ids)
        for i, r in rows.items():
            result[i].append(top_units(r, units, boxes, layer.layer, n))
    return {i: (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS))
            for i, parts in result.items()}
