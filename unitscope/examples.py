"""A layer's examples — rows of the top-k, bottom-k and activation-range tables — as one table with
a `kind` column (top, bottom, range), the form the patches, projections and verification stages
and the figures take them in."""
from __future__ import annotations

import os

import pandas as pd

from .patches import ENTRY_COLUMNS

MAX_SHOWN_PER_UNIT = 64  # a figure shows at most this many examples per unit (tables keep all)


def layer_examples(topk: str | os.PathLike | pd.DataFrame,
                   bottomk: str | os.PathLike | pd.DataFrame | None = None,
                   ranges: str | os.PathLike | pd.DataFrame | None = None,
                   units: list[int] | None = None, kinds=("top", "bottom", "range"),
                   max_rank: int | None = None) -> pd.DataFrame:
    """The examples of the given kinds (of `units` only, when given; ranks below `max_rank`),
    columns kind, unit, rank, image_id, activation, y, x, y0, x0, y1, x1 (+ range for range rows)."""
    parts = []
    for kind, source in (("top", topk), ("bottom", bottomk), ("range", ranges)):
        if kind not in kinds or source is None:
            continue
        t = pd.read_parquet(source) if not isinstance(source, pd.DataFrame) else source.copy()
        if units is not None:
            t = t[t["unit"].isin(units)]
        if max_rank is not None and kind != "range":
            t = t[t["rank"] < max_rank]
        t = t.assign(kind=kind)
        parts.append(t)
    if not parts:
        return pd.DataFrame(columns=ENTRY_COLUMNS + ["activation"])
    out = pd.concat(parts, ignore_index=True)
    cols = ENTRY_COLUMNS + ["activation"] + (["range"] if "range" in out else [])
    return out[cols].reset_index(drop=True)


def median_erf(verified: pd.DataFrame, kind: str | None = None) -> int | None:
    """The median effective field (erf_px) of a verify table's rows where it was measured (of one
    kind, if given); None where no row has one."""
    t = verified[verified["erf_px"] >= 0]
    if kind is not None:
        t = t[t["kind"] == kind]
    return int(t["erf_px"].median()) if len(t) else None
