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
               image_ids: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(ids, {max, argmax_y, argmax_x}: one row per id, per unit) of the wanted images from a
    layer's activation shards, reading only the shards that hold them, each dataset once."""
    wanted = set(int(i) for i in image_ids)
    ids, parts = [], {k: [] for k in ("max", "argmax_y", "argmax_x")}
    for shard, path in enumerate(activation_paths):
        rows = shard_rows(manifest, shard, len(activation_paths))["image_id"].to_numpy()
        if not any(int(i) in wanted for i in rows):
            continue
        with open_checked(path, "activations") as f:
            stored = f["image_id"][:]
            keep = np.flatnonzero(np.isin(stored, list(wanted)))
            ids.append(stored[keep])
            for k in parts:
                parts[k].append(f[k][:][keep])
    if not ids:
        return np.zeros(0, np.int64), {}
    return np.concatenate(ids), {k: np.concatenate(v) for k, v in parts.items()}


def top_units(rows: dict[str, np.ndarray], units: pd.DataFrame, boxes: np.ndarray, layer: str,
              n: int = 5) -> pd.DataFrame:
    """The n units firing most on each image (rows: one per image) relative to their own maximum
    (units that never fire are left out), with their peak's box; column `row` says which image."""
    unit_max = units.sort_values("unit")["max"].to_numpy(np.float64)
    act = rows["max"].astype(np.float64).reshape(-1, len(unit_max))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((unit_max > 0) & (act > 0), act / np.where(unit_max > 0, unit_max, 1), -np.inf)
    order = np.argsort(-ratio, axis=1, kind="stable")[:, :n]
    r = np.repeat(np.arange(len(act)), order.shape[1])
    u = order.ravel()
    ok = np.isfinite(ratio[r, u])
    r, u = r[ok], u[ok]
    y = rows["argmax_y"].reshape(act.shape)[r, u].astype(np.int64)
    x = rows["argmax_x"].reshape(act.shape)[r, u].astype(np.int64)
    b = boxes[y, x].astype(np.int64)
    return pd.DataFrame({"row": r, "layer": layer, "unit": u.astype(np.int64), "activation": act[r, u],
                         "unit_max": unit_max[u], "ratio": ratio[r, u], "y": y, "x": x,
                         "y0": b[:, 0], "x0": b[:, 1], "y1": b[:, 2], "x1": b[:, 3]})


def image_view_table(layers: pd.DataFrame, manifest: pd.DataFrame, paths: dict[str, dict],
                     image_ids: list[int], n: int = 5) -> pd.DataFrame:
    """The top units of every layer for each image, as one table (COLUMNS and image_id).
    `paths[layer]` holds "activations" (the layer's shard files), "units" and "rf"."""
    parts = []
    for layer in layers.itertuples():
        p = paths[layer.layer]
        ids, rows = image_rows(p["activations"], manifest, image_ids)
        if not len(ids):
            continue
        units = pd.read_parquet(p["units"])
        boxes = read_boxes(p["rf"], int(layer.height), int(layer.width))
        top = top_units(rows, units, boxes, layer.layer, n)
        parts.append(top.assign(image_id=ids[top.pop("row").to_numpy()]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS + ["image_id"])


def image_view(layers: pd.DataFrame, manifest: pd.DataFrame, paths: dict[str, dict],
               image_ids: list[int], n: int = 5) -> dict[int, pd.DataFrame]:
    """image_id -> its top units of every layer (see `image_view_table`)."""
    every = image_view_table(layers, manifest, paths, image_ids, n)
    groups = {int(i): g[COLUMNS].reset_index(drop=True) for i, g in every.groupby("image_id", sort=False)}
    return {int(i): groups.get(int(i), pd.DataFrame(columns=COLUMNS)) for i in image_ids}
