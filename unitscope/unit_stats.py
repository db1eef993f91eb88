"""Per-unit statistics of the per-image maxima (and minima), streamed: used to pick which units a
figure shows and to say, on the figure, what kind of unit it is.

`units/L.parquet`, one row per unit: layer, unit, max (over images of the unit's spatial
maximum), mean (of those maxima), q50, q90, q99 (their quantiles), frac_active (share of images
where the maximum is > 0), min (the smallest value the unit takes anywhere: negative where it
can be inhibited), floor (the smallest per-image maximum: where its histogram starts), pos_min
(the smallest positive per-image maximum: where activation ranges start), n_at_max (images whose
maximum equals the unit's maximum), dead (never positive on this dataset), saturated (two or more
images reach the maximum exactly: a clamp such as ReLU6's cap, so the top-k is ordered by the
secondary score).

Memory does not grow with the images: extremes, sums and counts are running values; quantiles come
from a uniform reservoir sample of at most `reservoir` images (all units share it), so they are
exact up to that many images and a sample beyond (rank error about 1/√reservoir)."""
from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99}


class UnitStats:
    """Running statistics over chunks of N×C per-image maxima (and minima)."""

    def __init__(self, units: int, reservoir: int = 8192, seed: int = 0):
        self.units, self.size = units, reservoir
        self.count = 0
        self.sum = np.zeros(units, np.float64)
        self.max = np.full(units, -np.inf, np.float32)
        self.n_at_max = np.zeros(units, np.int64)
        self.min = np.full(units, np.inf, np.float32)
        self.floor = np.full(units, np.inf, np.float32)
        self.pos_min = np.full(units, np.inf, np.float32)
        self.active = np.zeros(units, np.int64)
        self.sample = np.zeros((0, units), np.float32)
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray, minima: np.ndarray | None = None) -> None:
        if values.size == 0:
            return
        values = np.asarray(values, np.float32)
        self.sum += values.sum(axis=0, dtype=np.float64)
        chunk_max = values.max(axis=0)
        at_chunk_max = (values == chunk_max).sum(axis=0)
        self.n_at_max = np.where(chunk_max > self.max, at_chunk_max,
                                 np.where(chunk_max == self.max, self.n_at_max + at_chunk_max,
                                          self.n_at_max))
        self.max = np.maximum(self.max, chunk_max)
        self.floor = np.minimum(self.floor, values.min(axis=0))
        positive = np.where(values > 0, values, np.inf).min(axis=0)
        self.pos_min = np.minimum(self.pos_min, positive)
        self.min = np.minimum(self.min, (values if minima is None else np.asarray(minima, np.float32)).min(axis=0))
        self.active += (values > 0).sum(axis=0)
        # reservoir sampling (Algorithm R) over image rows, a chunk at a time
        free = max(0, min(self.size - len(self.sample), len(values)))
        if free:
            self.sample = np.concatenate([self.sample, values[:free]])
        rest = values[free:]
        if len(rest):
            seen = self.count + free + np.arange(len(rest))  # images before each row
            slot = (self._rng.random(len(rest)) * (seen + 1)).astype(np.int64)
            hit = slot < self.size
            slot, rows = slot[hit], np.flatnonzero(hit)
            # a later row replacing the same slot wins, as in the one-at-a-time algorithm
            last = len(slot) - 1 - np.unique(slot[::-1], return_index=True)[1]
            self.sample[slot[last]] = rest[rows[last]]
        self.count += len(values)

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in
                ("count", "sum", "max", "n_at_max", "min", "floor", "pos_min", "active", "sample")}

    def merge(self, other: dict) -> None:
        """Add another UnitStats' state (a block of shards): exact for every statistic but the
        quantiles, whose reservoirs merge into a sample weighted by the images they stand for."""
        count = int(other["count"])
        if count == 0:
            return
        self.sum = self.sum + other["sum"]
        self.active = self.active + other["active"]
        self.n_at_max = np.where(other["max"] > self.max, other["n_at_max"],
                                 np.where(other["max"] == self.max, self.n_at_max + other["n_at_max"],
                                          self.n_at_max))
        self.max = np.maximum(self.max, other["max"])
        for name in ("min", "floor", "pos_min"):
            setattr(self, name, np.minimum(getattr(self, name), other[name]))
        sample = np.asarray(other["sample"], np.float32).reshape(-1, self.units)
        if len(self.sample) + len(sample) <= self.size:
            self.sample = np.concatenate([self.sample, sample])
        else:
            take = round(self.size * self.count / (self.count + count))
            take = min(take, len(self.sample), self.size - min(len(sample), self.size - take))
            mine = self._rng.choice(len(self.sample), take, replace=False)
            theirs = self._rng.choice(len(sample), min(len(sample), self.size - take), replace=False)
            self.sample = np.concatenate([self.sample[np.sort(mine)], sample[np.sort(theirs)]])
        self.count += count

    def result(self) -> pd.DataFrame:
        out = pd.DataFrame({"unit": np.arange(self.units, dtype=np.int64),
                            "max": self.max.astype(np.float32),
                            "mean": (self.sum / max(self.count, 1)).astype(np.float32)})
        qs = (np.quantile(self.sample, list(QUANTILES.values()), axis=0).astype(np.float32)
              if len(self.sample) else np.full((len(QUANTILES), self.units), np.nan, np.float32))
        for name, q in zip(QUANTILES, qs):
            out[name] = q
        out["frac_active"] = (self.active / max(self.count, 1)).astype(np.float32)
        out["min"] = self.min.astype(np.float32)
        out["floor"] = self.floor.astype(np.float32)
        out["pos_min"] = np.where(np.isfinite(self.pos_min), self.pos_min, np.nan).astype(np.float32)
        out["n_at_max"] = self.n_at_max.astype(np.int64)
        out["dead"] = self.max <= 0
        out["saturated"] = (self.n_at_max >= 2) & (self.max > 0)
        return out
