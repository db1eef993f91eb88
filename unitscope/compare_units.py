"""Which units a comparison shows (compare.py): chosen from the channel count and a seed only,
never from the data, so that the projections jobs of every compared model (which project these
units' strongest examples) depend on this module alone, not on the comparison's figure code."""
from __future__ import annotations

import numpy as np
import pandas as pd


def choose_units(channels: int, setting: int | list[int], seed: int = 0) -> list[int]:
    """The units a comparison shows: a list as given, or N channels chosen at random with `seed`
    (the paper showed "a randomly chosen subset"), sorted. Data-independent, so that adding a
    model never changes which units the others project."""
    if isinstance(setting, (list, tuple)):
        bad = [u for u in setting if not 0 <= int(u) < channels]
        if bad:
            raise ValueError(f"compare.units: {bad} not a unit of a layer with {channels} channels "
                             f"(units 0..{channels - 1})")
        return [int(u) for u in setting]
    n = min(int(setting), channels)
    return sorted(int(u) for u in np.random.default_rng(seed).choice(channels, size=n, replace=False))


def channel_count(top: pd.DataFrame) -> int:
    """A layer's channel count as its top-k table holds it (every unit has rows)."""
    return int(top["unit"].max()) + 1 if len(top) else 0
