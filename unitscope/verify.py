"""Re-verification of the shown examples (the check Yosinski's deep-visualization-toolbox makes):
the network is run again, in float32, on the image of every shown top-k (and bottom-k) row, and
the stored activation and its position are compared with what the network gives now. It is the
end-to-end guard against any stale or corrupt cache: wrong weights, a swapped or damaged shard,
an image that changed. A mismatch stops the run naming the unit, rank and image.

Tolerance: the stored value must equal the recomputed one within rtol·|value| + atol·scale, where
scale is the largest |activation| among the unit's checked rows; the recomputed map at the stored
position must be within the same tolerance of the map's maximum (a near-tie may move the peak).
rtol = atol = 1e-3 for fp32 inference, 1e-2 for fp16, 5e-2 for bf16 (the stored values then come
from lower precision than the check).

Values are checked with one forward pass per distinct image. The **effective receptive field** is
measured on each shown unit's strongest example of each kind (rank 0; one backward pass each): the
side of the smallest square, centred on the field's centre, that holds 90% of the input-gradient
mass (|∂activation/∂pixel| summed over colour channels) — the part of the theoretical field that
matters. Clamps pass the gradient through their upper cap, as for the projections, so a saturated
unit has one too.

Levels (`verify:`): `shown` (= true, the default) checks every shown unit's top-k (and bottom-k)
rows; `all` also checks the rank-0 top and bottom example of every other unit (in the same forward
passes), so a changed maximum or minimum of a unit that no figure shows is caught too; `none`
(= false) checks nothing.

`verify/L.parquet`, one row per checked example: layer, kind, unit, rank, image_id, stored,
recomputed, y, x, peak_y, peak_x, ok, erf_px (-1 where not measured: ranks after 0, and the
other units' rows of `verify: all`)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path
from .hooks import FirstCalls
from .inputs import ImageSource
from .models import batch_limit
from .progress import Progress
from .projections import through_caps

log = logging.getLogger("unitscope")

TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}
ERF_MASS = 0.9


class VerificationError(RuntimeError):
    """A stored activation does not match what the network gives now."""


def effective_size(mass: np.ndarray, centre: tuple[float, float], share: float = ERF_MASS) -> int:
    """Side of the smallest square centred at `centre` (input pixels) holding `share` of `mass`
    (an H×W map of non-negative values); the image is the limit."""
    total = float(mass.sum())
    if total <= 0:
        return 0
    h, w = mass.shape
    cy, cx = centre
    limit = int(np.ceil(max(cy, h - cy, cx, w - cx)))
    csum = mass.cumsum(0).cumsum(1)

    def inside(r: int) -> float:
        y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)))
        x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)))
        if y1 <= y0 or x1 <= x0:
            return 0.0
        s = csum[y1 - 1, x1 - 1]
        if y0 > 0:
            s -= csum[y0 - 1, x1 - 1]
        if x0 > 0:
            s -= csum[y1 - 1, x0 - 1]
        if y0 > 0 and x0 > 0:
            s += csum[y0 - 1, x0 - 1]
        return float(s)

    lo, hi = 0, limit
    while lo < hi:  # smallest r with inside(r) >= share·total
        mid = (lo + hi) // 2
        if inside(mid) >= share * total:
            hi = mid
        else:
            lo = mid + 1
    return 2 * lo


COLUMNS = ["layer", "kind", "unit", "rank", "image_id", "stored", "recomputed", "y", "x", "peak_y",
           "peak_x", "ok", "erf_px"]


def _judge(r, recomputed: float, m: np.ndarray, scale: float, tol: float, layer: str) -> dict:
    """One checked row (its effective field not measured: -1), or VerificationError where the
    stored value or position is not what the network gives now. `m` is the unit's map, negated
    for a bottom row."""
    flat = int(np.argmax(m))
    peak = divmod(flat, m.shape[1])
    sign = -1.0 if r.kind == "bottom" else 1.0
    best = sign * float(m[peak])
    t = tol * abs(recomputed) + tol * scale
    ok = abs(r.activation - recomputed) <= t and abs(best - recomputed) <= t
    if not ok:
        raise VerificationError(
            f"verify {layer}: unit {r.unit} {r.kind} rank {r.rank} image {r.image_id}: "
            f"stored activation {r.activation:.6g} at ({r.y}, {r.x}), but the network "
            f"gives {recomputed:.6g} there and {best:.6g} at {peak} (tolerance {t:.2g}); "
            f"the activation files are stale or corrupt: rerun them with "
            f"snakemake --forcerun on the layer's activations")
    return {"layer": layer, "kind": r.kind, "unit": int(r.unit), "rank": int(r.rank),
            "image_id": int(r.image_id), "stored": float(r.activation), "recomputed": recomputed,
            "y": int(r.y), "x": int(r.x), "peak_y": int(peak[0]), "peak_x": int(peak[1]),
            "ok": True, "erf_px": -1}


def check_values(examples: pd.DataFrame, images: ImageSource, model: torch.nn.Module, module: str,
                 mean, std, precision: str = "fp32", layer: str = "", batch_size: int = 8,
                 view=None) -> pd.DataFrame:
    """Check the stored value and position of every example row with one forward pass per
    distinct image (no gradients: the effective field is not measured, erf_px = -1)."""
    tol = TOLERANCE.get(precision, TOLERANCE["fp32"])
    examples = examples.reset_index(drop=True)
    scale = examples.groupby("unit")["activation"].transform(lambda v: v.abs().max()).to_numpy()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    ids = images.in_order(examples["image_id"].unique())
    batch_size = batch_limit(model, batch_size)
    model = model.eval().to(memory_format=torch.channels_last)  # faster on the CPU
    progress = Progress(len(ids), f"verify {layer}", unit="images")
    rows = []
    for s in range(0, len(ids), batch_size):
        part = ids[s:s + batch_size]
        x = ((torch.from_numpy(np.stack([images[i] for i in part])).permute(0, 3, 1, 2).float()
              - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        captured = {}
        with torch.no_grad(), FirstCalls(model, {"layer": module}, captured.__setitem__,
                                         views={"layer": view} if view else None) as calls:
            calls.run(model, x)
        fmap = captured["layer"].float().numpy()
        where = {int(i): j for j, i in enumerate(part)}
        mine = examples[examples["image_id"].isin(where)]
        for idx, r in zip(mine.index, mine.itertuples()):
            m = fmap[where[int(r.image_id)], int(r.unit)]
            m = -m if r.kind == "bottom" else m
            rows.append(_judge(r, float(fmap[where[int(r.image_id)], int(r.unit), r.y, r.x]), m,
                               float(scale[idx]), tol, layer))
        progress.update(len(part))
    return pd.DataFrame(rows, columns=COLUMNS)


def verify_examples(examples: pd.DataFrame, images: ImageSource, model: torch.nn.Module,
                    module: str, mean, std, precision: str = "fp32", layer: str = "",
                    out_path: str | os.PathLike | None = None, batch_size: int = 8,
                    measure: pd.DataFrame | None = None, view=None) -> pd.DataFrame:
    """Check every example row (kind, unit, rank, image_id, activation, y, x, y0, x0, y1, x1):
    value and position, one forward pass per distinct image (`check_values`); and measure the
    effective receptive field of the rows of `measure` (default: each unit's rank-0 row of each
    kind; one backward pass each), centred on the token's cell where the rows have one (cy0, cx0,
    cy1, cx1). `view` reads a layer that is not N×C×H×W. Raises VerificationError on the first
    mismatch."""
    table = check_values(examples, images, model, module, mean, std, precision, layer, batch_size,
                         view)
    measured = (examples[examples["rank"] == 0] if measure is None else measure).reset_index(drop=True)
    if len(measured):
        sizes = effective_fields(measured, images, model, module, mean, std, batch_size, layer, view)
        key = ["kind", "unit", "rank"]
        erf = measured[key].assign(erf_px=sizes)
        table = table.drop(columns="erf_px").merge(erf, on=key, how="left")
        table["erf_px"] = table["erf_px"].fillna(-1).astype(np.int64)
        table = table[COLUMNS]
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            table.to_parquet(tmp, index=False)
    if len(table):
        t = table[table["erf_px"] >= 0]
        log.info("verify %s: %d examples match (largest difference %.2g); effective receptive "
                 "field median %s px", layer, len(table),
                 float((table["stored"] - table["recomputed"]).abs().max()),
                 int(t["erf_px"].median()) if len(t) else "-")
    return table


def effective_fields(examples: pd.DataFrame, images: ImageSource, model: torch.nn.Module,
                     module: str, mean, std, batch_size: int = 8, layer: str = "",
                     view=None) -> list[int]:
    """The effective receptive field (px) of each example row: the input gradient of its
    activation at its position (clamps passing the gradient through their cap), one backward
    pass per row; centred on the row's cell (cy0…cx1) where it has one, else on its box."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    sizes: list[int] = []
    progress = Progress(len(examples), f"effective fields {layer}", unit="examples")
    batch_size = batch_limit(model, batch_size)
    model = model.eval().to(memory_format=torch.channels_last)  # faster on the CPU
    for s in range(0, len(examples), batch_size):
        part = examples.iloc[s:s + batch_size]
        batch = np.stack([images[i] for i in part["image_id"]])
        x = ((torch.from_numpy(batch).permute(0, 3, 1, 2).float() - mean_t) / std_t
             ).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        captured = {}
        with torch.enable_grad(), FirstCalls(model, {"layer": module}, captured.__setitem__,
                                             views={"layer": view} if view else None) as calls, \
                through_caps():
            calls.run(model, x)
        fmap = captured["layer"]
        b = torch.arange(len(part))
        u = torch.tensor(part["unit"].to_numpy(), dtype=torch.long)
        yy, xx = part["y"].to_numpy(), part["x"].to_numpy()
        fmap[b, u, torch.as_tensor(yy.copy()), torch.as_tensor(xx.copy())].sum().backward(inputs=[x])
        mass = x.grad.detach().abs().sum(1).numpy()
        c = ("cy0", "cx0", "cy1", "cx1") if "cy0" in part else ("y0", "x0", "y1", "x1")
        boxes = part[list(c)].to_numpy(np.float64)
        sizes += [effective_size(mass[i], ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
                  for i, b in enumerate(boxes)]
        progress.update(len(part))
    return sizes
