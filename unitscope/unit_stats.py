"""Per-unit statistics of the per-image maxima: max, mean, quantiles, share of images where the
unit is active (> 0). Used to pick which units a figure shows.

Quantiles are exact: the per-image maxima (N×C float32, the smallest table of this pipeline) are
kept until `result()`."""
from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99}


class UnitStats:
    """Running statistics over chunks of N×C per-image maxima."""

    def __init__(self, units: int):
        self.units = units
        self.count = 0
        self.sum = np.zeros(units, np.float64)
        self.max = np.full(units, -np.inf, np.float64)
        self.active = np.zeros(units, np.int64)
        self._values: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.count += len(values)
        self.sum += values.sum(axis=0, dtype=np.float64)
        self.max = np.maximum(self.max, values.max(axis=0))
        self.active += (values > 0).sum(axis=0)
        self._values.append(np.asarray(values, np.float32))

    def result(self) -> pd.DataFrame:
        allv = np.concatenate(self._values) if self._values else np.zeros((0, self.units), np.float32)
        out = pd.DataFrame({"unit": np.arange(self.units, dtype=np.int64),
                            "max": self.max.astype(np.float32),
                            "mean": (self.sum / max(self.count, 1)).astype(np.float32)})
        for name, q in QUANTILES.items():
            out[name] = np.quantile(allv, q, axis=0).astype(np.float32) if len(allv) else np.nan
        out["frac_active"] = (self.active / max(self.count, 1)).astype(np.float32)
        return out
