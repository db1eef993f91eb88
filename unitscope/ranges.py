"""Beyond the top k: a unit's whole range of activations, streamed in a second pass over the
activation shards once the first (topk.py) has fixed each unit's extremes.

- `hist/L.parquet`: layer, unit, bin, lo, hi, count — the histogram of every unit's per-image
  maxima over `bins` equal bins from its smallest to its largest per-image maximum (bin b holds
  lo <= v < hi; the last bin also holds the maximum). Exact: every image is counted.
- `ranges/L.parquet`: layer, unit, range, lo, hi, rank, image_id, activation, spatial_mean, y, x,
  y0, x0, y1, x1 — for each shown unit, `per_range` examples from each of `n_ranges` equal
  activation intervals between its positive minimum and its maximum: the images in the interval
  with the smallest hash of their image_id, so the choice is deterministic and does not depend on
  how the images were split into shards; `rank` numbers a unit's examples (range-major)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .layers import layer_row, read_boxes
from .progress import Progress
from .topk import ActivationShards

log = logging.getLogger("unitscope")

BINS = 40
RANGE_COLUMNS = ["layer", "unit", "range", "lo", "hi", "rank", "image_id", "activation",
                 "spatial_mean", "y", "x", "y0", "x0", "y1", "x1"]


def image_hash(image_id: np.ndarray) -> np.ndarray:
    """splitmix64 of each image_id: a fixed pseudo-random order of the images."""
    z = np.asarray(image_id, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def bin_edges(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """C×(bins+1) edges of equal bins from lo to hi per unit (a unit with lo == hi gets bins of
    width 1 starting at lo, so that its single value lands in bin 0)."""
    width = np.where(hi > lo, hi.astype(np.float64) - lo, 1.0)
    return lo.astype(np.float64)[:, None] + width[:, None] * np.arange(bins + 1)[None, :] / bins


def bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """N×C bin index of N×C values in C rows of edges (the last bin is closed)."""
    bins = edges.shape[1] - 1
    out = np.empty(values.shape, np.int64)
    for u in range(values.shape[1]):
        out[:, u] = np.searchsorted(edges[u], values[:, u].astype(np.float64), side="right") - 1
    return np.clip(out, 0, bins - 1)


class RangeSamples:
    """For each (unit, range), the `per_range` candidates with the smallest image hash."""

    def __init__(self, units: list[int], edges: np.ndarray, per_range: int):
        self.units, self.edges, self.per_range = units, edges, per_range
        self.kept: dict[tuple[int, int], pd.DataFrame] = {}

    def add(self, image_id: np.ndarray, values: dict[str, np.ndarray]) -> None:
        if not self.units or len(image_id) == 0:
            return
        h = image_hash(image_id)
        act = values["max"][:, self.units]
        lo, hi = self.edges[:, 0], self.edges[:, -1]
        inside = (act >= lo[None, :]) & (act <= hi[None, :]) & (act > 0)
        r = bin_of(act, self.edges)
        for j, unit in enumerate(self.units):
            rows = np.flatnonzero(inside[:, j])
            if not len(rows):
                continue
            frame = pd.DataFrame({"range": r[rows, j], "hash": h[rows], "image_id": image_id[rows],
                                  "activation": act[rows, j],
                                  "spatial_mean": values["mean"][rows, unit],
                                  "y": values["argmax_y"][rows, unit].astype(np.int64),
                                  "x": values["argmax_x"][rows, unit].astype(np.int64)})
            for rng, part in frame.groupby("range"):
                key = (unit, int(rng))
                both = part if key not in self.kept else pd.concat([self.kept[key], part])
                self.kept[key] = both.nsmallest(self.per_range, "hash", keep="all").sort_values(
                    ["hash", "image_id"]).head(self.per_range)

    def result(self) -> pd.DataFrame:
        rows = []
        for j, unit in enumerate(self.units):
            rank = 0
            for rng in range(self.edges.shape[1] - 1):
                part = self.kept.get((unit, rng))
                if part is None:
                    continue
                part = part.sort_values(["activation", "image_id"], ascending=[False, True])
                for r in part.itertuples():
                    rows.append({"unit": unit, "range": rng, "lo": self.edges[j, rng],
                                 "hi": self.edges[j, rng + 1], "rank": rank,
                                 "image_id": int(r.image_id), "activation": float(r.activation),
                                 "spatial_mean": float(r.spatial_mean), "y": int(r.y), "x": int(r.x)})
                    rank += 1
        return pd.DataFrame(rows, columns=["unit", "range", "lo", "hi", "rank", "image_id",
                                           "activation", "spatial_mean", "y", "x"])


def histogram_and_ranges(activation_paths: list[str | os.PathLike], manifest_path: str | os.PathLike,
                         layers_path: str | os.PathLike, rf_path: str | os.PathLike,
                         units_path: str | os.PathLike, layer: str, shown_units: list[int],
                         n_ranges: int = 10, per_range: int = 5, bins: int = BINS,
                         model_key: str | None = None, hist_out: str | os.PathLike | None = None,
                         ranges_out: str | os.PathLike | None = None, chunk: int | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The histogram of every unit and the range examples of the shown units, in one pass."""
    row = layer_row(layers_path, layer)
    n_units, height, width = int(row["units"]), int(row["height"]), int(row["width"])
    boxes = read_boxes(rf_path, height, width)
    units = pd.read_parquet(units_path).set_index("unit").sort_index()
    if len(units) != n_units:
        raise ValueError(f"{units_path} has {len(units)} units, the layer table {n_units}")
    floor = units["floor"].to_numpy(np.float32) if "floor" in units else units["min"].to_numpy(np.float32)
    top = units["max"].to_numpy(np.float32)
    edges = bin_edges(floor, top, bins)
    counts = np.zeros((n_units, bins), np.int64)
    shown = [u for u in shown_units if not bool(units.loc[u, "dead"])] if n_ranges else []
    pos_min = units["pos_min"].to_numpy(np.float32)
    range_edges = bin_edges(pos_min[shown], top[shown], max(n_ranges, 1)) if shown else np.zeros((0, 2))
    samples = RangeSamples(shown, range_edges, per_range)
    shards = ActivationShards(activation_paths, manifest_path, layer, model_key)
    chunk = chunk or max(256, 2_000_000 // n_units)
    progress = Progress(shards.n_images, f"histogram {layer}")
    for image_id, a in shards.chunks(chunk, columns=("max", "mean", "argmax_y", "argmax_x")):
        b = bin_of(a["max"], edges)
        np.add.at(counts, (np.broadcast_to(np.arange(n_units), b.shape), b), 1)
        samples.add(image_id, a)
        progress.update(len(image_id))
    hist = pd.DataFrame({"layer": layer, "unit": np.repeat(np.arange(n_units), bins),
                         "bin": np.tile(np.arange(bins), n_units),
                         "lo": edges[:, :-1].ravel(), "hi": edges[:, 1:].ravel(),
                         "count": counts.ravel()})
    ranges = samples.result()
    b = boxes[ranges["y"].to_numpy(), ranges["x"].to_numpy()].reshape(-1, 4)
    for i, name in enumerate(("y0", "x0", "y1", "x1")):
        ranges[name] = b[:, i].astype(np.int64)
    ranges.insert(0, "layer", layer)
    ranges = ranges[RANGE_COLUMNS]
    for t, path in ((hist, hist_out), (ranges, ranges_out)):
        if path is not None:
            with atomic_path(path) as tmp:
                t.to_parquet(tmp, index=False)
    return hist, ranges

