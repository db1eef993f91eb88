"""Streaming top-k per unit over images. `TopK` keeps, for every unit at once, the k strongest
(activation, image) pairs seen so far — with `distinct="group"` at most one per group — ordered
by activation descending, ties by image_id ascending. `add` takes a whole chunk of images; merging
shards is just adding them (or loading another TopK's `state_dict` and adding it), so the result
never depends on how the images were split."""
from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .atomic import atomic_path
from .geometry import field_of, layer_row
from .progress import Progress
from .unit_stats import UnitStats

log = logging.getLogger("unitscope")

FIELDS = ("activation", "image_id", "y", "x", "group")
DISTINCT = ("image", "group")


class TopK:
    """The k strongest entries per unit (columns), kept as C×k arrays."""

    def __init__(self, k: int, units: int, distinct: str = "image"):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if distinct not in DISTINCT:
            raise ValueError(f"distinct {distinct!r}; valid: {', '.join(DISTINCT)}")
        self.k, self.units, self.distinct = k, units, distinct
        self.activation = np.full((units, 0), -np.inf, dtype=np.float32)
        self.image_id = np.zeros((units, 0), dtype=np.int64)
        self.y = np.zeros((units, 0), dtype=np.int32)
        self.x = np.zeros((units, 0), dtype=np.int32)
        self.group = np.zeros((units, 0), dtype=np.int64)

    def add(self, activation: np.ndarray, image_id: np.ndarray, y: np.ndarray, x: np.ndarray,
            group: np.ndarray | None = None) -> None:
        """Add a chunk: activation, y, x are N×C (one row per image), image_id and group are (N,).
        Also accepts C×M arrays of per-unit candidates when image_id/group are C×M too."""
        if activation.size == 0:
            return
        if group is None:
            group = image_id
        if image_id.ndim == 1:  # rows are images: turn into unit-major C×N candidates
            n = len(image_id)
            if activation.shape != (n, self.units):
                raise ValueError(f"expected {n}×{self.units} activations, got {activation.shape}")
            activation, y, x = activation.T, y.T, x.T
            image_id = np.broadcast_to(image_id, (self.units, n))
            group = np.broadcast_to(group, (self.units, n))
        if self.distinct == "image" and activation.shape[1] > 4 * self.k:
            # cheap linear pre-selection first, so that only the few survivors are gathered
            cand = self._preselect(activation, image_id, y, x, group)
        else:
            cand = [np.concatenate([getattr(self, f), v], axis=1) for f, v in
                    zip(FIELDS, (activation, image_id, y, x, group))]
        act, img = cand[0], cand[1]
        # Sort each unit's candidates: activation descending, then image_id ascending.
        order = np.lexsort((img, -act.astype(np.float64)), axis=1)
        cand = [np.take_along_axis(c, order, axis=1) for c in cand]
        if self.distinct == "group":
            keep = _first_per_group(cand[4])
            rank = np.cumsum(keep, axis=1) - 1
            keep &= rank < self.k
            width = min(self.k, int(keep.sum(axis=1).max()))
            # move kept entries to the front of each row, preserving order
            pos = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            cand = [np.take_along_axis(c, pos, axis=1) for c in cand]
            valid = np.take_along_axis(keep, pos, axis=1)
            cand[0] = np.where(valid, cand[0], -np.inf).astype(np.float32)
        else:
            cand = [c[:, :self.k] for c in cand]
        for f, c in zip(FIELDS, cand):
            setattr(self, f, np.ascontiguousarray(c))

    def _preselect(self, activation, image_id, y, x, group) -> list[np.ndarray]:
        """Per unit, the kept entries and the new ones whose activation is at least the unit's
        k-th largest (every tie at the boundary stays in), packed into C×W arrays padded with
        -inf. Linear time: a partition, not a sort; only survivors are gathered."""
        act = np.concatenate([self.activation, activation], axis=1)
        kth = -np.partition(-act, self.k - 1, axis=1)[:, self.k - 1]
        keep = act >= kth[:, None]
        rows, cols = np.nonzero(keep)
        counts = keep.sum(axis=1)
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        old = cols < self.activation.shape[1]
        new_cols = cols - self.activation.shape[1]
        out = []
        for f, v in zip(FIELDS, (activation, image_id, y, x, group)):
            mine = getattr(self, f)
            picked = np.empty(len(rows), dtype=mine.dtype)
            picked[old] = mine[rows[old], cols[old]]
            fresh = ~old
            picked[fresh] = v[rows[fresh], new_cols[fresh]]
            packed = np.full((act.shape[0], int(counts.max())), -np.inf if f == "activation" else 0,
                             dtype=mine.dtype)
            packed[rows, slot] = picked
            out.append(packed)
        return out

    def result(self) -> pd.DataFrame:
        """One row per (unit, rank) actually filled: unit, rank, image_id, activation, y, x."""
        units, ranks = np.nonzero(np.isfinite(self.activation))
        return pd.DataFrame({
            "unit": units.astype(np.int64), "rank": ranks.astype(np.int64),
            "image_id": self.image_id[units, ranks].astype(np.int64),
            "activation": self.activation[units, ranks].astype(np.float32),
            "y": self.y[units, ranks].astype(np.int64), "x": self.x[units, ranks].astype(np.int64),
        })

    def state_dict(self) -> dict:
        return {"k": self.k, "units": self.units, "distinct": self.distinct,
                **{f: getattr(self, f).copy() for f in FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.units, self.distinct = state["k"], state["units"], state["distinct"]
        for f in FIELDS:
            setattr(self, f, state[f].copy())


def _first_per_group(group: np.ndarray) -> np.ndarray:
    """C×M mask of the first occurrence of each group value within each row."""
    c, m = group.shape
    codes = np.unique(group, return_inverse=True)[1].reshape(c, m)
    keys = np.arange(c)[:, None] * (codes.max() + 1) + codes
    first = np.zeros(c * m, dtype=bool)
    first[np.unique(keys.ravel(), return_index=True)[1]] = True
    return first.reshape(c, m)


def iter_chunks(paths: list[str | os.PathLike], chunk: int):
    """(image_id, max, argmax_y, argmax_x) in chunks of at most `chunk` images over shard files."""
    for p in paths:
        with h5py.File(p, "r") as f:
            n = len(f["image_id"])
            for s in range(0, n, chunk):
                yield (f["image_id"][s:s + chunk], f["max"][s:s + chunk],
                       f["argmax_y"][s:s + chunk], f["argmax_x"][s:s + chunk])


def select_topk(activation_paths: list[str | os.PathLike], manifest_path: str | os.PathLike,
                layers_path: str | os.PathLike, layer: str, k: int = 9, distinct: str = "image",
                topk_out: str | os.PathLike | None = None, units_out: str | os.PathLike | None = None,
                chunk: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k table and unit statistics of one layer, streamed over its activation shards.

    topk columns: layer, unit, rank, image_id, activation, y, x, y0, x0, y1, x1 (the receptive
    field box in input pixels, exclusive ends, not clipped). units columns: layer, unit, max,
    mean, q50, q90, q99, frac_active."""
    row = layer_row(layers_path, layer)
    units = int(row["units"])
    chunk = chunk or max(256, 4_000_000 // units)  # about 100 MB of working arrays
    top = TopK(k, units, distinct)
    group_code = None
    if distinct == "group":  # one int per image: the only part that grows with the images
        manifest = pd.read_parquet(manifest_path, columns=["image_id", "group"])
        group_code = np.full(int(manifest["image_id"].max()) + 1, -1, np.int64)
        group_code[manifest["image_id"].to_numpy()] = pd.factorize(manifest["group"])[0]
    stats = UnitStats(units)
    progress = Progress(pq.ParquetFile(manifest_path).metadata.num_rows, f"top-k {layer}")
    for image_id, values, ys, xs in iter_chunks(activation_paths, chunk):
        top.add(values, image_id, ys, xs, None if group_code is None else group_code[image_id])
        stats.add(values)
        progress.update(len(image_id))
    if stats.count == 0:
        raise ValueError(f"layer {layer}: the activation files hold no image")
    table = top.result()
    rf = field_of(row)
    table["y0"] = rf.y.start + rf.y.stride * table["y"]
    table["x0"] = rf.x.start + rf.x.stride * table["x"]
    table["y1"] = table["y0"] + rf.y.size
    table["x1"] = table["x0"] + rf.x.size
    table.insert(0, "layer", layer)
    unit_table = stats.result()
    unit_table.insert(0, "layer", layer)
    for t, path in ((table, topk_out), (unit_table, units_out)):
        if path is not None:
            with atomic_path(path) as tmp:
                t.to_parquet(tmp, index=False)
    return table, unit_table
