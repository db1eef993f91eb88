"""Per-unit statistics of the per-image maxima: max, mean, quantiles, share of images where the
unit is active (> 0). Used to pick which units a figure shows.

Memory does not grow with the images: max, sum and active counts are running values; quantiles
come from a uniform reservoir sample of at most `reservoir` images (all units share it), so they
are exact up to that many images and a sample beyond (rank error about 1/√reservoir)."""
from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99}


class UnitStats:
    """Running statistics over chunks of N×C per-image maxima."""

    def __init__(self, units: int, reservoir: int = 8192, seed: int = 0):
        self.units, self.size = units, reservoir
        self.count = 0
        self.sum = np.zeros(units, np.float64)
        self.max = np.full(units, -np.inf, np.float64)
        self.active = np.zeros(units, np.int64)
        self.sample = np.zeros((0, units), np.float32)
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        values = np.asarray(values, np.float32)
        self.sum += values.sum(axis=0, dtype=np.float64)
        self.max = np.maximum(self.max, values.max(axis=0))
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

    def result(self) -> pd.DataFrame:
        out = pd.DataFrame({"unit": np.arange(self.units, dtype=np.int64),
                            "max": self.max.astype(np.float32),
                            "mean": (self.sum / max(self.count, 1)).astype(np.float32)})
        qs = (np.quantile(self.sample, list(QUANTILES.values()), axis=0).astype(np.float32)
              if len(self.sample) else np.full((len(QUANTILES), self.units), np.nan, np.float32))
        for name, q in zip(QUANTILES, qs):
            out[name] = q
        out["frac_active"] = (self.active / max(self.count, 1)).astype(np.float32)
        return out
