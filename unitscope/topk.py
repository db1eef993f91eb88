"""Streaming top-k and bottom-k per unit over images.

`TopK` keeps, for every unit at once, the k strongest (activation, image) pairs seen so far —
with `distinct="group"` at most one per group — ordered by activation (descending), then by a
secondary score that depends on the image (the map's spatial mean: among images tied at a unit's
maximum, e.g. a ReLU6 unit at its cap, the one where more of the map fires comes first), then by
image_id. `add` takes a whole chunk of images; merging shards is just adding them (or loading
another TopK's `state_dict` and adding it), so the result never depends on how the images were
split. The bottom-k is the same class over negated minima.

`select_topk` streams a layer's activation shards once, checking each is the shard it should be
(provenance.py), and writes three tables:

- `topk/L.parquet`: layer, unit, rank (0 = strongest), image_id, activation (the unit's spatial
  maximum on the image), spatial_mean (the secondary score), y, x (feature-map position of the
  maximum), y0, x0, y1, x1 (its receptive-field box from `rf/L.parquet`: input pixels,
  end-exclusive, not clipped);
- `bottomk/L.parquet`: the same columns for the k images with the most negative spatial minimum
  (activation = that minimum; only negative ones; rank 0 = most negative);
- `units/L.parquet`: see unit_stats.py; plus label (the most common label among the unit's top-k
  images; ties: the alphabetically first; none for a unit that never fires) and purity (its share).

With many shards the pass runs as a tree: each block of shards gives a partial result
(`parts/L/topk-BBB.h5`: the states of its top-k, bottom-k and statistics, stamped like a shard)
and the final job merges them — the same tables, since adding states is how TopK merges."""
from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pandas as pd

from .activation_file import DATASETS
from .atomic import atomic_path
from .inputs import shard_rows
from .layers import layer_row, read_boxes
from .progress import Progress
from .provenance import Digest, StaleFileError, manifest_sha256, open_checked
from .unit_stats import UnitStats

log = logging.getLogger("unitscope")

FIELDS = ("activation", "score", "image_id", "y", "x", "group")
DISTINCT = ("image", "group")
TABLE_COLUMNS = ["layer", "unit", "rank", "image_id", "activation", "spatial_mean", "y", "x",
                 "y0", "x0", "y1", "x1"]


class TopK:
    """The k strongest entries per unit (rows), kept as C×k arrays."""

    def __init__(self, k: int, units: int, distinct: str = "image"):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if distinct not in DISTINCT:
            raise ValueError(f"distinct {distinct!r}; valid: {', '.join(DISTINCT)}")
        self.k, self.units, self.distinct = k, units, distinct
        self.activation = np.full((units, 0), -np.inf, dtype=np.float32)
        self.score = np.zeros((units, 0), dtype=np.float32)
        self.image_id = np.zeros((units, 0), dtype=np.int64)
        self.y = np.zeros((units, 0), dtype=np.int32)
        self.x = np.zeros((units, 0), dtype=np.int32)
        self.group = np.zeros((units, 0), dtype=np.int64)

    def add(self, activation: np.ndarray, image_id: np.ndarray, y: np.ndarray, x: np.ndarray,
            group: np.ndarray | None = None, score: np.ndarray | None = None) -> None:
        """Add a chunk: activation, y, x, score are N×C (one row per image), image_id and group
        are (N,). Also accepts C×M arrays of per-unit candidates when image_id/group are C×M."""
        if activation.size == 0:
            return
        if group is None:
            group = image_id
        if score is None:
            score = np.zeros_like(activation, dtype=np.float32)
        if image_id.ndim == 1:  # rows are images: turn into unit-major C×N candidates
            n = len(image_id)
            if activation.shape != (n, self.units):
                raise ValueError(f"expected {n}×{self.units} activations, got {activation.shape}")
            activation, y, x, score = activation.T, y.T, x.T, score.T
            image_id = np.broadcast_to(image_id, (self.units, n))
            group = np.broadcast_to(group, (self.units, n))
        new = (activation, score, image_id, y, x, group)
        if self.distinct == "image" and activation.shape[1] > 4 * self.k:
            # cheap linear pre-selection first, so that only the few survivors are gathered
            cand = self._preselect(new)
        else:
            cand = [np.concatenate([getattr(self, f), v.astype(getattr(self, f).dtype)], axis=1)
                    for f, v in zip(FIELDS, new)]
        act, sc, img = cand[0], cand[1], cand[2]
        # each unit's candidates: activation descending, then score descending, then image_id
        order = np.lexsort((img, -sc.astype(np.float64), -act.astype(np.float64)), axis=1)
        cand = [np.take_along_axis(c, order, axis=1) for c in cand]
        if self.distinct == "group":
            keep = _first_per_group(cand[5])
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

    def _preselect(self, new) -> list[np.ndarray]:
        """Per unit, the kept entries and the new ones whose activation is at least the unit's
        k-th largest (every tie at the boundary stays in), packed into C×W arrays padded with
        -inf. Linear time: a partition, not a sort; only survivors are gathered."""
        act = np.concatenate([self.activation, new[0]], axis=1)
        kth = -np.partition(-act, self.k - 1, axis=1)[:, self.k - 1]
        keep = act >= kth[:, None]
        rows, cols = np.nonzero(keep)
        counts = keep.sum(axis=1)
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        old = cols < self.activation.shape[1]
        new_cols = cols - self.activation.shape[1]
        out = []
        for f, v in zip(FIELDS, new):
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
        """One row per (unit, rank) actually filled: unit, rank, image_id, activation,
        spatial_mean, y, x."""
        units, ranks = np.nonzero(np.isfinite(self.activation))
        return pd.DataFrame({
            "unit": units.astype(np.int64), "rank": ranks.astype(np.int64),
            "image_id": self.image_id[units, ranks].astype(np.int64),
            "activation": self.activation[units, ranks].astype(np.float32),
            "spatial_mean": self.score[units, ranks].astype(np.float32),
            "y": self.y[units, ranks].astype(np.int64), "x": self.x[units, ranks].astype(np.int64),
        })

    def state_dict(self) -> dict:
        return {"k": self.k, "units": self.units, "distinct": self.distinct,
                **{f: getattr(self, f).copy() for f in FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.units, self.distinct = state["k"], state["units"], state["distinct"]
        for f in FIELDS:
            setattr(self, f, state[f].copy())

    def add_state(self, state: dict) -> None:
        """Merge another TopK's state (a shard's partial result)."""
        self.add(state["activation"], state["image_id"], state["y"], state["x"], state["group"],
                 state["score"])


def _first_per_group(group: np.ndarray) -> np.ndarray:
    """C×M mask of the first occurrence of each group value within each row."""
    c, m = group.shape
    codes = np.unique(group, return_inverse=True)[1].reshape(c, m)
    keys = np.arange(c)[:, None] * (codes.max() + 1) + codes
    first = np.zeros(c * m, dtype=bool)
    first[np.unique(keys.ravel(), return_index=True)[1]] = True
    return first.reshape(c, m)


class ActivationShards:
    """A layer's activation shards, each checked before and while it is read: the right layer,
    shard index and count, manifest and model; its image ids exactly the shard's ids of the
    manifest; every value finite; its content digest unchanged."""

    def __init__(self, paths: list[str | os.PathLike], manifest_path: str | os.PathLike,
                 layer: str, model_key: str | None = None, first: int = 0,
                 total: int | None = None):
        self.paths = [str(p) for p in paths]
        self.layer = layer
        self.manifest_sha = manifest_sha256(manifest_path)
        self.manifest = pd.read_parquet(manifest_path, columns=None)
        self.model_key = model_key
        self.first = first  # the paths are shards first .. first+len-1 of `total`
        self.total = total or len(self.paths)
        self.n_images = sum(len(shard_rows(self.manifest, first + i, self.total))
                            for i in range(len(self.paths))) if total else len(self.manifest)

    def expect(self, shard: int) -> dict:
        want = {"layer": self.layer, "shard": shard, "shards": self.total,
                "manifest_sha256": self.manifest_sha}
        if self.model_key:
            want["model_key"] = self.model_key
        return want

    def chunks(self, chunk: int, columns=tuple(DATASETS)):
        """(image_id, {name: N×C array}) over all shards, in chunks of at most `chunk` images.
        All datasets are read (the digest needs every byte); `columns` are the ones returned."""
        for j, path in enumerate(self.paths):
            i = self.first + j
            want_ids = shard_rows(self.manifest, i, self.total)["image_id"].to_numpy(np.int64)
            with open_checked(path, "activations", self.expect(i)) as f:
                ids = f["image_id"][:]
                if len(ids) != len(want_ids) or (ids != want_ids).any():
                    got = f"{len(ids)} images" + (f" ({ids[0]}..{ids[-1]})" if len(ids) else "")
                    raise StaleFileError(path, f"holds {got}, but shard {i} of the manifest is "
                                               f"{len(want_ids)} images"
                                         + (f" ({want_ids[0]}..{want_ids[-1]})" if len(want_ids) else ""))
                digest = Digest()
                n = len(ids)
                for s in range(0, n, chunk):
                    part = {name: f[name][s:s + chunk] for name in DATASETS}
                    for name in DATASETS:
                        digest.update(name, part[name])
                    for name in ("max", "min", "mean"):
                        bad = ~np.isfinite(part[name])
                        if bad.any():
                            r, u = (int(v) for v in np.argwhere(bad)[0])
                            raise StaleFileError(path, f"holds a non-finite {name} ({part[name][r, u]}) "
                                                       f"for unit {u} of image {ids[s + r]} (the model "
                                                       f"overflowed, e.g. in fp16, or the file is damaged)")
                    yield ids[s:s + chunk], {name: part[name] for name in columns}
                digest.update("image_id", ids)
                if digest.hexdigest() != f.attrs.get("content_sha"):
                    raise StaleFileError(path, "its values are not the ones it was written with")


def scan(shards: ActivationShards, units: int, k: int, distinct: str, chunk: int
         ) -> tuple[TopK, TopK, UnitStats]:
    """One pass over activation shards: the running top-k, bottom-k and unit statistics."""
    top = TopK(k, units, distinct)
    bottom = TopK(k, units, distinct)
    group_code = None
    if distinct == "group":
        manifest = shards.manifest
        group_code = np.full(int(manifest["image_id"].max()) + 1, -1, np.int64)
        group_code[manifest["image_id"].to_numpy()] = pd.factorize(manifest["group"])[0]
    stats = UnitStats(units)
    progress = Progress(shards.n_images, f"top-k {shards.layer}")
    for image_id, a in shards.chunks(chunk):
        if a["max"].shape[1] != units:
            raise StaleFileError(shards.paths[0], f"has {a['max'].shape[1]} units, the layer "
                                                  f"table says {units}")
        groups = None if group_code is None else group_code[image_id]
        top.add(a["max"], image_id, a["argmax_y"], a["argmax_x"], groups, a["mean"])
        bottom.add(-a["min"], image_id, a["argmin_y"], a["argmin_x"], groups, -a["mean"])
        stats.add(a["max"], a["min"])
        progress.update(len(image_id))
    return top, bottom, stats


def write_part(path: str | os.PathLike, shards: ActivationShards, top: TopK, bottom: TopK,
               stats: UnitStats) -> None:
    """A block of shards' partial result (the states of its top-k, bottom-k and statistics),
    stamped like the shards it was made from."""
    from .provenance import stamp

    digest = Digest()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, t in (("top", top), ("bottom", bottom)):
            for field, value in t.state_dict().items():
                if isinstance(value, np.ndarray):
                    f.create_dataset(f"{name}/{field}", data=value)
                    digest.update(f"{name}/{field}", value)
        for field, value in stats.state_dict().items():
            f.create_dataset(f"stats/{field}", data=np.asarray(value))
            digest.update(f"stats/{field}", np.asarray(value))
        stamp(f, "topk_part", layer=shards.layer, first=shards.first, n_shards=len(shards.paths),
              shards=shards.total, k=top.k, distinct=top.distinct, units=top.units,
              manifest_sha256=shards.manifest_sha, model_key=shards.model_key or "",
              n_images=shards.n_images, content_sha=digest.hexdigest())


def merge_parts(paths: list[str | os.PathLike], layer: str, manifest_sha: str, k: int,
                distinct: str, units: int, total: int, model_key: str | None
                ) -> tuple[TopK, TopK, UnitStats]:
    """The merged states of the partial results of consecutive blocks of shards."""
    top, bottom, stats = TopK(k, units, distinct), TopK(k, units, distinct), UnitStats(units)
    expected_first = 0
    for path in paths:
        want = {"layer": layer, "shards": total, "manifest_sha256": manifest_sha, "k": k,
                "distinct": distinct, "units": units, "first": expected_first}
        if model_key:
            want["model_key"] = model_key
        with open_checked(path, "topk_part", want) as f:
            digest = Digest()
            for name, t in (("top", top), ("bottom", bottom)):
                state = {"k": k, "units": units, "distinct": distinct}
                for field in FIELDS:
                    state[field] = f[f"{name}/{field}"][:]
                    digest.update(f"{name}/{field}", state[field])
                t.add_state(state)
            part = {field: f[f"stats/{field}"][()] for field in f["stats"]}
            for field, value in part.items():
                digest.update(f"stats/{field}", np.asarray(value))
            if digest.hexdigest() != f.attrs["content_sha"]:
                raise StaleFileError(path, "its values are not the ones it was written with")
            stats.merge(part)
            expected_first += int(f.attrs["n_shards"])
    if expected_first != total:
        raise ValueError(f"the partial results of {layer} cover {expected_first} of {total} shards")
    return top, bottom, stats


def partial_topk(activation_paths: list[str | os.PathLike], manifest_path: str | os.PathLike,
                 layers_path: str | os.PathLike, layer: str, first: int, total: int, k: int = 9,
                 distinct: str = "image", model_key: str | None = None,
                 out: str | os.PathLike | None = None, chunk: int | None = None) -> None:
    """The top-k pass over one block of shards (first .. first+len-1 of `total`), for a tree
    merge when there are many shards."""
    units = int(layer_row(layers_path, layer)["units"])
    shards = ActivationShards(activation_paths, manifest_path, layer, model_key, first, total)
    top, bottom, stats = scan(shards, units, k, distinct, chunk or max(256, 250_000 // units))
    write_part(out, shards, top, bottom, stats)


def select_topk(activation_paths: list[str | os.PathLike] | None, manifest_path: str | os.PathLike,
                layers_path: str | os.PathLike, rf_path: str | os.PathLike, layer: str,
                k: int = 9, distinct: str = "image", model_key: str | None = None,
                topk_out: str | os.PathLike | None = None, units_out: str | os.PathLike | None = None,
                bottomk_out: str | os.PathLike | None = None, chunk: int | None = None,
                parts: list[str | os.PathLike] | None = None, total: int | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Top-k, bottom-k and unit statistics of one layer, streamed over its activation shards —
    or merged from the partial results of blocks of them (`parts`, over `total` shards)."""
    row = layer_row(layers_path, layer)
    units, height, width = int(row["units"]), int(row["height"]), int(row["width"])
    boxes = read_boxes(rf_path, height, width)
    manifest = pd.read_parquet(manifest_path)
    if parts:
        top, bottom, stats = merge_parts(parts, layer, manifest_sha256(manifest_path), k, distinct,
                                         units, total, model_key)
    else:
        shards = ActivationShards(activation_paths, manifest_path, layer, model_key)
        top, bottom, stats = scan(shards, units, k, distinct,
                                  chunk or max(256, 250_000 // units))  # ~15 MB of arrays: flat memory
    if stats.count == 0:
        raise ValueError(f"layer {layer}: the activation files hold no image")
    table = _with_boxes(top.result(), boxes, layer)
    low = bottom.result()
    low["activation"], low["spatial_mean"] = -low["activation"], -low["spatial_mean"]
    low = _with_boxes(low[low["activation"] < 0].reset_index(drop=True), boxes, layer)
    unit_table = stats.result()
    unit_table.insert(0, "layer", layer)
    unit_table = label_purity(unit_table, table, manifest)
    for t, path in ((table, topk_out), (unit_table, units_out), (low, bottomk_out)):
        if path is not None:
            with atomic_path(path) as tmp:
                t.to_parquet(tmp, index=False)
    return table, unit_table, low


def label_purity(units: pd.DataFrame, top: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Each unit's most common label among its top-k images (ties: the alphabetically first) and
    its share of them (purity); empty where the dataset has no labels, and for a unit that never
    fires (its "top" images are arbitrary: the lowest image ids)."""
    units = units.copy()
    labels = manifest.set_index("image_id")["label"] if "label" in manifest else None
    if labels is None or labels.isna().all() or top.empty:
        units["label"] = pd.array([None] * len(units), dtype="string")
        units["purity"] = np.nan
        return units
    t = top[["unit", "image_id"]].assign(label=labels.reindex(top["image_id"]).to_numpy())
    t = t.dropna(subset=["label"])
    counts = t.groupby(["unit", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["unit", "n", "label"], ascending=[True, False, True])
    best = counts.drop_duplicates("unit").set_index("unit")
    totals = top.groupby("unit").size()
    units["label"] = pd.array(best["label"].reindex(units["unit"]).to_numpy(), dtype="string")
    units["purity"] = (best["n"].reindex(units["unit"]) / totals.reindex(units["unit"])).to_numpy(np.float64)
    if "dead" in units:
        dead = units["dead"].to_numpy(bool)
        units.loc[dead, "label"] = pd.NA
        units.loc[dead, "purity"] = np.nan
    return units


def _with_boxes(table: pd.DataFrame, boxes: np.ndarray, layer: str) -> pd.DataFrame:
    """The rf box of each row's position, and the table's columns in order."""
    b = boxes[table["y"].to_numpy(), table["x"].to_numpy()].reshape(-1, 4)
    for i, name in enumerate(("y0", "x0", "y1", "x1")):
        table[name] = b[:, i].astype(np.int64)
    table.insert(0, "layer", layer)
    return table[TABLE_COLUMNS]
