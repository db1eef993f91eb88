"""Beyond the top k: a unit's whole range of activations, streamed in a second pass over the
activation shards once the first (topk.py) has fixed each unit's extremes.

- `hist/L.parquet`: layer, unit, bin, lo, hi, count — the histogram of every unit's per-image
  maxima over `bins` equal bins from its smallest to its largest per-image maximum (bin b holds
  lo <= v < hi; the last bin also holds the maximum). Exact: every image is counted.
- `ranges/L.parquet`: layer, unit, range, lo, hi, rank, image_id, activation, spatial_mean, y, x,
  y0, x0, y1, x1 — for each shown unit, `per_range` examples from each of `n_ranges` equal
  activation intervals between its positive minimum and its maximum: the images in the interval
  with the smallest hash of their image_id, so the choice is deterministic and does not depend on
  how the images were split into shards; `rank` numbers a unit's examples (range-major).

With many shards the pass runs as a tree, like the top-k: blocks of shards give partial counts
and candidates (`parts/L/ranges-BBB.h5`), which the final job merges exactly."""
from __future__ import annotations

import logging
import os

import h5py
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
    """N×C bin index of N×C values in C rows of equally spaced edges (the last bin is closed):
    what searchsorted(edges[u], v, side="right") - 1 gives, found arithmetically and corrected
    against the edges themselves, so that it agrees with them to the last bit."""
    bins = edges.shape[1] - 1
    v = values.astype(np.float64)
    lo, width = edges[:, 0], edges[:, -1] - edges[:, 0]
    width = np.where(width > 0, width, 1.0)
    guess = np.clip(np.floor((v - lo) / width * bins).astype(np.int64), 0, bins - 1)
    cols = np.broadcast_to(np.arange(edges.shape[0]), v.shape)
    below = v < edges[cols, guess]
    guess = np.where(below & (guess > 0), guess - 1, guess)
    above = (guess < bins - 1) & (v >= edges[cols, np.minimum(guess + 1, bins)])
    return np.where(above, guess + 1, guess)


SAMPLE_COLUMNS = ("unit", "range", "hash", "image_id", "activation", "spatial_mean", "y", "x")


class RangeSamples:
    """For each (unit, range), the `per_range` candidates with the smallest image hash (ties by
    image_id), kept per unit as arrays."""

    FIELDS = SAMPLE_COLUMNS[1:]

    def __init__(self, units: list[int], edges: np.ndarray, per_range: int):
        self.units, self.edges, self.per_range = units, edges, per_range
        self.kept: dict[int, dict[str, np.ndarray]] = {}

    def _keep(self, unit: int, new: dict[str, np.ndarray]) -> None:
        old = self.kept.get(unit)
        both = new if old is None else {f: np.concatenate([old[f], new[f]]) for f in self.FIELDS}
        order = np.lexsort((both["image_id"], both["hash"], both["range"]))
        both = {f: v[order] for f, v in both.items()}
        starts = np.r_[0, np.flatnonzero(np.diff(both["range"])) + 1]
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        keep = rank < self.per_range
        self.kept[unit] = {f: v[keep] for f, v in both.items()}

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
            if len(rows):
                self._keep(unit, {"range": r[rows, j], "hash": h[rows], "image_id": image_id[rows],
                                  "activation": act[rows, j].astype(np.float32),
                                  "spatial_mean": values["mean"][rows, unit].astype(np.float32),
                                  "y": values["argmax_y"][rows, unit].astype(np.int64),
                                  "x": values["argmax_x"][rows, unit].astype(np.int64)})

    def table(self) -> dict[str, np.ndarray]:
        """Every kept candidate, columns SAMPLE_COLUMNS (a block's partial result)."""
        units = [u for u in self.units if u in self.kept]
        out = {"unit": np.concatenate([np.full(len(self.kept[u]["range"]), u, np.int64) for u in units])
               if units else np.zeros(0, np.int64)}
        for f in self.FIELDS:
            out[f] = (np.concatenate([self.kept[u][f] for u in units]) if units
                      else np.zeros(0, np.uint64 if f == "hash" else np.float32))
        return out

    def add_kept(self, table: dict[str, np.ndarray]) -> None:
        """Merge another block's kept candidates (columns SAMPLE_COLUMNS)."""
        for unit in np.unique(table["unit"]):
            rows = table["unit"] == unit
            self._keep(int(unit), {f: table[f][rows] for f in self.FIELDS})

    def result(self) -> pd.DataFrame:
        parts = []
        for j, unit in enumerate(self.units):
            k = self.kept.get(unit)
            if k is None:
                continue
            order = np.lexsort((k["image_id"], -k["activation"].astype(np.float64), k["range"]))
            rng = k["range"][order]
            parts.append(pd.DataFrame({"unit": unit, "range": rng, "lo": self.edges[j, rng],
                                       "hi": self.edges[j, rng + 1], "rank": np.arange(len(order)),
                                       "image_id": k["image_id"][order],
                                       "activation": k["activation"][order].astype(np.float64),
                                       "spatial_mean": k["spatial_mean"][order].astype(np.float64),
                                       "y": k["y"][order], "x": k["x"][order]}))
        columns = ["unit", "range", "lo", "hi", "rank", "image_id", "activation", "spatial_mean", "y", "x"]
        if not parts:
            return pd.DataFrame(columns=columns)
        return pd.concat(parts, ignore_index=True)[columns].astype(
            {"unit": np.int64, "range": np.int64, "rank": np.int64, "image_id": np.int64,
             "y": np.int64, "x": np.int64})


def _setup(layers_path, rf_path, units_path, layer, shown_units, n_ranges, bins):
    row = layer_row(layers_path, layer)
    n_units, height, width = int(row["units"]), int(row["height"]), int(row["width"])
    boxes = read_boxes(rf_path, height, width)
    units = pd.read_parquet(units_path).set_index("unit").sort_index()
    if len(units) != n_units:
        raise ValueError(f"{units_path} has {len(units)} units, the layer table {n_units}")
    floor = units["floor"].to_numpy(np.float32)
    top = units["max"].to_numpy(np.float32)
    edges = bin_edges(floor, top, bins)
    shown = [u for u in shown_units if not bool(units.loc[u, "dead"])] if n_ranges else []
    pos_min = units["pos_min"].to_numpy(np.float32)
    range_edges = bin_edges(pos_min[shown], top[shown], max(n_ranges, 1)) if shown else np.zeros((0, 2))
    return n_units, boxes, edges, shown, range_edges


def _scan(shards, n_units, edges, samples, chunk):
    counts = np.zeros((n_units, edges.shape[1] - 1), np.int64)
    progress = Progress(shards.n_images, f"histogram {shards.layer}")
    for image_id, a in shards.chunks(chunk, columns=("max", "mean", "argmax_y", "argmax_x")):
        b = bin_of(a["max"], edges)
        np.add.at(counts, (np.broadcast_to(np.arange(n_units), b.shape), b), 1)
        samples.add(image_id, a)
        progress.update(len(image_id))
    return counts


def partial_ranges(activation_paths, manifest_path, layers_path, rf_path, units_path, layer,
                   shown_units, first: int, total: int, n_ranges: int = 10, per_range: int = 5,
                   bins: int = BINS, model_key: str | None = None, out=None, chunk=None) -> None:
    """The histogram-and-ranges pass over one block of shards, for a tree merge."""
    from .provenance import Digest, stamp

    n_units, _, edges, shown, range_edges = _setup(layers_path, rf_path, units_path, layer,
                                                   shown_units, n_ranges, bins)
    shards = ActivationShards(activation_paths, manifest_path, layer, model_key, first, total)
    samples = RangeSamples(shown, range_edges, per_range)
    counts = _scan(shards, n_units, edges, samples, chunk or max(256, 250_000 // n_units))
    digest = Digest()
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("counts", data=counts)
        digest.update("counts", counts)
        for name, values in samples.table().items():
            f.create_dataset(f"samples/{name}", data=values)
            digest.update(name, values)
        stamp(f, "ranges_part", layer=layer, first=first, n_shards=len(shards.paths), shards=total,
              manifest_sha256=shards.manifest_sha, model_key=model_key or "", bins=bins,
              n_ranges=n_ranges, per_range=per_range, shown=",".join(map(str, shown)),
              content_sha=digest.hexdigest())


def histogram_and_ranges(activation_paths: list[str | os.PathLike] | None,
                         manifest_path: str | os.PathLike, layers_path: str | os.PathLike,
                         rf_path: str | os.PathLike, units_path: str | os.PathLike, layer: str,
                         shown_units: list[int], n_ranges: int = 10, per_range: int = 5,
                         bins: int = BINS, model_key: str | None = None,
                         hist_out: str | os.PathLike | None = None,
                         ranges_out: str | os.PathLike | None = None, chunk: int | None = None,
                         parts: list[str | os.PathLike] | None = None, total: int | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The histogram of every unit and the range examples of the shown units, in one pass over
    the shards — or merged from the partial results of blocks of them (`parts`)."""
    from .provenance import Digest, StaleFileError, manifest_sha256, open_checked

    n_units, boxes, edges, shown, range_edges = _setup(layers_path, rf_path, units_path, layer,
                                                       shown_units, n_ranges, bins)
    samples = RangeSamples(shown, range_edges, per_range)
    if parts:
        counts = np.zeros((n_units, bins), np.int64)
        want = {"layer": layer, "shards": total, "manifest_sha256": manifest_sha256(manifest_path),
                "bins": bins, "n_ranges": n_ranges, "per_range": per_range,
                "shown": ",".join(map(str, shown))}
        if model_key:
            want["model_key"] = model_key
        first = 0
        for path in parts:
            with open_checked(path, "ranges_part", {**want, "first": first}) as f:
                digest = Digest()
                part_counts = f["counts"][:]
                digest.update("counts", part_counts)
                table = {c: f[f"samples/{c}"][:] for c in SAMPLE_COLUMNS}
                for c in SAMPLE_COLUMNS:
                    digest.update(c, table[c])
                if digest.hexdigest() != f.attrs["content_sha"]:
                    raise StaleFileError(path, "its values are not the ones it was written with")
                counts += part_counts
                samples.add_kept(table)
                first += int(f.attrs["n_shards"])
        if first != total:
            raise ValueError(f"the partial results of {layer} cover {first} of {total} shards")
    else:
        shards = ActivationShards(activation_paths, manifest_path, layer, model_key)
        counts = _scan(shards, n_units, edges, samples, chunk or max(256, 250_000 // n_units))
    hist = pd.DataFrame({"layer": layer, "unit": np.repeat(np.arange(n_units), bins),
                         "bin": np.tile(np.arange(bins), n_units),
                         "lo": edges[:, :-1].ravel(), "hi": edges[:, 1:].ravel(),
                         "count": counts.ravel()})
    ranges = samples.result()
    # n_ranges 0: no rows, whose empty columns may not be integers
    b = boxes[ranges["y"].to_numpy(np.int64), ranges["x"].to_numpy(np.int64)].reshape(-1, 4)
    for i, name in enumerate(("y0", "x0", "y1", "x1")):
        ranges[name] = b[:, i].astype(np.int64)
    ranges.insert(0, "layer", layer)
    ranges = ranges[RANGE_COLUMNS]
    for t, path in ((hist, hist_out), (ranges, ranges_out)):
        if path is not None:
            with atomic_path(path) as tmp:
                t.to_parquet(tmp, index=False)
    return hist, ranges
