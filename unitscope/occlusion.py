"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): a grey square slid over an image, and at
each of its positions the unit's activation (its map's spatial maximum, as everywhere) and, where
the model ends in a classifier, the probability of the image's unoccluded top class and the most
probable class. A projection shows what the backward pass emphasises; this shows what the
activation needs.

Geometry (`Squares`): the input is cut into cells of `stride` px; square (i, j) has side `size`
and is centred on cell (i, j), so the map lies over the image cell by cell and, with stride ≤ size,
every pixel is covered (squares at the border reach into the padding: only their part inside the
image is grey). The grey is the training data's mean colour (the model's normalisation mean: a
zero network input), the paper's choice; `fill` takes another colour.

Computation, exact and batched: one unoccluded pass per image gives the reference map. A square
changes only the positions whose theoretical field (rf/L.parquet: ty0…tx1, which covers global
gates) it touches; a square that touches none needs no forward pass. Where the layer's field is
affine, ungated and plain N×C×H×W, the touched positions are recomputed on a crop of the occluded
image (the union of their fields, its start on the layer's stride grid) and the new maximum is the
larger of theirs and of the untouched positions' stored values; that this crop gives the full
pass's values is checked on each image's unoccluded crops of every crop shape, and the layer falls
back to whole images where it does not. Class maps take whole occluded images through the full
network, with a square of a quarter of the input (`class_size`).

The file it writes, and the geometry and settings: occlusion_file.py."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .hooks import FirstCalls
from .occlusion_file import (Settings, Squares, fill_colour, read_occlusion,  # noqa: F401
                             square_size, stride_for, write_occlusion)
from .progress import Progress
from .provenance import manifest_sha256

log = logging.getLogger("unitscope")

BATCH_PIXELS = 8 * 224 * 224  # pixels per batch: 8 whole 224-px copies (the CPU's fastest), or many crops
MAX_CROPS = 2048
SHARE_ABOVE = 0.75  # crops this large (share of the input): whole images, shared with the class maps


@dataclass
class AxisPlan:
    """Along one axis, for each square: the positions it touches [p0, p1) (empty: p0 == p1) and
    the crop [a, b) of the input that recomputes them (a on the stride grid)."""

    p0: np.ndarray
    p1: np.ndarray
    a: np.ndarray
    b: np.ndarray
    stride: int


def _axis_plan(spans: np.ndarray, start: int, size: int, stride: int, positions: int,
               input_size: int) -> AxisPlan:
    """Touched positions and crops of an affine axis (position p sees [start + stride·p, … + size))."""
    q0, q1 = spans[:, 0], spans[:, 1]
    if stride == 0:  # every position sees the same rows
        hit = (q0 < start + size) & (q1 > start) & (q1 > q0)
        p0 = np.zeros_like(q0)
        p1 = np.where(hit, positions, 0)
        return AxisPlan(p0, p1, np.zeros_like(q0), np.full_like(q0, input_size), 0)
    # p touches [q0, q1) iff start + stride·p < q1 and start + stride·p + size > q0
    p0 = np.maximum(np.floor_divide(q0 - start - size, stride) + 1, 0)
    p1 = np.minimum(np.floor_divide(q1 - 1 - start, stride) + 1, positions)
    p1 = np.where((p1 > p0) & (q1 > q0), p1, p0)
    r0 = np.clip(start + stride * p0, 0, input_size)
    r1 = np.clip(start + stride * (p1 - 1) + size, 0, input_size)
    a = (r0 // stride) * stride
    b = np.maximum(r1, a + 1)
    # a crop as long as the input modulo the stride: every intermediate map then has the input's
    # parity, so that padding computed from the size (TensorFlow's SAME) is the same as in the
    # whole image (b stays ≤ input_size: input_size − a is itself such a length)
    b = b + (input_size - (b - a)) % stride
    return AxisPlan(p0, p1, a, b, stride)


@dataclass
class Geometry:
    """What one layer's occlusion needs of its fields: the touched positions of every square and,
    where the field allows it (`local`), the crop that recomputes them."""

    squares: Squares
    y: AxisPlan
    x: AxisPlan
    local: bool
    touched: np.ndarray  # (n, n) bool: whether square (i, j) touches any position's field

    @property
    def crop_share(self) -> float:
        """Mean crop area over the whole input's (1 where whole images run)."""
        if not self.local:
            return 1.0
        hy = (self.y.b - self.y.a)[:, None] * (self.x.b - self.x.a)[None, :]
        return float(hy[self.touched].mean()) / self.squares.input_size ** 2 if self.touched.any() else 0.0


def layer_geometry(squares: Squares, rf: pd.DataFrame, row: pd.Series) -> Geometry:
    """The occlusion geometry of a layer from its rf table and layer-table row: local recomputation
    where the field is affine, ungated, plain N×C×H×W and its theoretical boxes are its boxes."""
    h, w = int(row["height"]), int(row["width"])
    spans = squares.spans()
    theory = rf[["ty0", "tx0", "ty1", "tx1"]].to_numpy(np.int64) if "ty0" in rf else \
        rf[["y0", "x0", "y1", "x1"]].to_numpy(np.int64)
    inside = np.clip(rf[["y0", "x0", "y1", "x1"]].to_numpy(np.int64), 0, squares.input_size)
    local = (bool(row["rf_affine"]) and not bool(row.get("rf_gated", False))
             and not bool(row.get("rf_cell", False)) and str(row.get("layout", "nchw")) == "nchw"
             and (np.clip(theory, 0, squares.input_size) == inside).all())
    if local:
        n_in = squares.input_size
        y = _axis_plan(spans, int(row["rf_start"]), int(row["rf_size"]), int(row["rf_stride"]), h, n_in)
        x = _axis_plan(spans, int(row["rf_start_x"]), int(row["rf_size_x"]), int(row["rf_stride_x"]),
                       w, n_in)
        touched = (y.p1 > y.p0)[:, None] & (x.p1 > x.p0)[None, :]
        return Geometry(squares, y, x, True, touched)
    # any field: a square changes nothing where it touches no position's theoretical box
    ty0, tx0, ty1, tx1 = (theory[:, i] for i in range(4))
    hit_y = (spans[:, None, 0] < ty1[None]) & (spans[:, None, 1] > ty0[None])   # (n, P)
    hit_x = (spans[:, None, 0] < tx1[None]) & (spans[:, None, 1] > tx0[None])
    touched = (hit_y.astype(np.int64) @ hit_x.T.astype(np.int64)) > 0          # (n, n)

    def whole(positions: int) -> AxisPlan:  # every position, the whole input
        zeros = np.zeros(squares.n, np.int64)
        return AxisPlan(zeros, np.full(squares.n, positions), zeros,
                        np.full(squares.n, squares.input_size), 0)
    return Geometry(squares, whole(h), whole(w), False, touched)


class NotLocal(RuntimeError):
    """The layer's crops do not give the full pass's values: whole images must run."""


@dataclass
class Runner:
    """The network and how to feed it: `module` is the layer's module path, `view` its LayerView
    (None for N×C×H×W), `mean`/`std` on the 0–255 scale, `fill` the grey (0–255)."""

    model: torch.nn.Module
    module: str
    mean: tuple
    std: tuple
    fill: tuple
    view: object = None
    batch_pixels: int = BATCH_PIXELS
    dtype: torch.dtype = torch.float32
    forward_s: float = 0.0   # time inside the network's forward passes
    copies: int = 0          # occluded copies run
    shapes: list = field(default_factory=list)  # (batch, height, width, full) of every pass

    def __post_init__(self):
        self.model = self.model.eval()
        self._mean = torch.tensor(self.mean, dtype=self.dtype).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=self.dtype).view(1, 3, 1, 1)
        self.grey = ((torch.tensor(self.fill, dtype=self.dtype) - self._mean.flatten())
                     / self._std.flatten()).view(1, 3, 1, 1)

    def normalised(self, image: np.ndarray) -> torch.Tensor:
        """An H×W×3 uint8 image as the 1×3×H×W network input."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(self.dtype)
        return (x - self._mean) / self._std

    def run(self, x: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the layer's N×C×H×W maps, the model's output where `full` and it is a tensor)."""
        captured = {}
        x = x.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        with torch.inference_mode(), FirstCalls(self.model, {"layer": self.module}, captured.__setitem__,
                                                stop=not full,
                                                views={"layer": self.view} if self.view else None) as calls:
            out = calls.run(self.model, x)
        self.forward_s += time.perf_counter() - started
        self.shapes.append((x.shape[0], x.shape[2], x.shape[3], full))
        return captured["layer"], (out if full and isinstance(out, torch.Tensor) else None)

    def per_batch(self, h: int, w: int) -> int:
        """Copies per batch: BATCH_PIXELS worth of them (at most what an export file takes)."""
        from .models import batch_limit

        return batch_limit(self.model, max(1, min(MAX_CROPS, self.batch_pixels // max(h * w, 1))))


def _windows(x: torch.Tensor, ay: np.ndarray, ax: np.ndarray, h: int, w: int) -> torch.Tensor:
    """The (B, 3, h, w) windows of x (1×3×H×W) starting at rows ay, columns ax."""
    iy = torch.as_tensor(ay)[:, None] + torch.arange(h)[None]          # (B, h)
    ix = torch.as_tensor(ax)[:, None] + torch.arange(w)[None]          # (B, w)
    return x[0][:, iy[:, :, None], ix[:, None, :]].permute(1, 0, 2, 3)


def _occluded(x: torch.Tensor, grey: torch.Tensor, ay, ax, h: int, w: int, qy, qx) -> torch.Tensor:
    """Windows of x with the squares qy, qx ((B, 2) [start, end) in input pixels) grey."""
    whole = (h, w) == tuple(x.shape[-2:]) and not np.any(ay) and not np.any(ax)
    win = x if whole else _windows(x, ay, ax, h, w)  # whole images: broadcast, nothing gathered
    ry = torch.as_tensor(ay)[:, None] + torch.arange(h)[None]
    rx = torch.as_tensor(ax)[:, None] + torch.arange(w)[None]
    qy, qx = torch.as_tensor(qy), torch.as_tensor(qx)
    my = (ry >= qy[:, :1]) & (ry < qy[:, 1:])
    mx = (rx >= qx[:, :1]) & (rx < qx[:, 1:])
    mask = (my[:, :, None] & mx[:, None, :])[:, None]
    return torch.where(mask, grey.to(win.dtype), win)


def _outside_max(fmap: np.ndarray, y: AxisPlan, x: AxisPlan) -> np.ndarray:
    """(U, n, n): each unit's maximum over the positions a square does not touch (-inf where it
    touches them all); fmap is U×H×W."""
    u, h, w = fmap.shape
    n = len(y.p0)
    ninf = np.full((u, 1, w), -np.inf, fmap.dtype)
    rows = np.concatenate([ninf, fmap], 1)                      # prefix over rows
    prefix = np.maximum.accumulate(rows, 1).max(2)              # (U, H+1): max of rows < r
    suffix = np.maximum.accumulate(np.concatenate([fmap, ninf], 1)[:, ::-1], 1)[:, ::-1].max(2)  # rows ≥ r
    out = np.empty((u, n, n), fmap.dtype)
    for i in range(n):
        a, b = int(y.p0[i]), int(y.p1[i])
        best = np.maximum(prefix[:, a], suffix[:, b])            # (U,)
        band = fmap[:, a:b, :].max(1) if b > a else np.full((u, w), -np.inf, fmap.dtype)
        left = np.maximum.accumulate(np.concatenate([np.full((u, 1), -np.inf, fmap.dtype), band], 1), 1)
        right = np.maximum.accumulate(np.concatenate([band, np.full((u, 1), -np.inf, fmap.dtype)], 1)[:, ::-1], 1)[:, ::-1]
        out[:, i, :] = np.maximum(best[:, None], np.maximum(left[:, x.p0], right[:, x.p1]))
    return out


def unit_maps(runner: Runner, image: np.ndarray, units: list[int], geo: Geometry,
              reference: np.ndarray) -> np.ndarray:
    """(U, n, n): each unit's maximum with the square at each cell. `reference` is the layer's
    unoccluded C×H×W map. Squares that touch no field keep the unoccluded maximum; the others
    recompute the positions they touch (on crops where `geo.local`, else whole images)."""
    sq = geo.squares
    n = sq.n
    spans = sq.spans()
    ref = reference[units]
    out = np.repeat(ref.reshape(len(units), -1).max(1)[:, None, None], n, 1).repeat(n, 2)
    x = runner.normalised(image)
    outside = _outside_max(ref, geo.y, geo.x) if geo.local else None
    ii, jj = np.nonzero(geo.touched)
    if not len(ii):
        return out
    ay, ax = geo.y.a[ii], geo.x.a[jj]
    hh, ww = geo.y.b[ii] - ay, geo.x.b[jj] - ax
    sy, sx = max(geo.y.stride, 1), max(geo.x.stride, 1)
    groups: dict[tuple[int, int], np.ndarray] = {}
    for k, key in enumerate(zip(hh.tolist(), ww.tolist())):
        groups.setdefault(key, []).append(k)
    if geo.local:
        _check_crops(runner, x, ref, units, geo, ii, jj, groups)
    for (h, w), ks in groups.items():
        ks = np.asarray(ks)
        step = runner.per_batch(h, w)
        for s in range(0, len(ks), step):
            part = ks[s:s + step]
            batch = _occluded(x, runner.grey, ay[part], ax[part], h, w, spans[ii[part]], spans[jj[part]])
            fmap, _ = runner.run(batch, full=False)
            runner.copies += len(part)
            chosen = fmap[:, units]
            if geo.local:
                vals = _touched_max(chosen, geo, ii[part], jj[part], ay[part] // sy, ax[part] // sx)
                vals = np.maximum(vals, outside[:, ii[part], jj[part]].T)
            else:
                vals = chosen.flatten(2).amax(2).double().numpy()
            out[:, ii[part], jj[part]] = vals.T
    return out


def _touched_max(vals: torch.Tensor, geo: Geometry, i, j, oy, ox) -> np.ndarray:
    """(B, U): the maximum of each crop's output (B×U×h×w) over the positions its square touches."""
    b, u, h, w = vals.shape
    py0, py1 = geo.y.p0[i] - oy, geo.y.p1[i] - oy
    px0, px1 = geo.x.p0[j] - ox, geo.x.p1[j] - ox
    if (py0 < 0).any() or (px0 < 0).any() or (py1 > h).any() or (px1 > w).any():
        raise NotLocal("a crop's output does not hold the positions its square touches")
    ry, rx = torch.arange(h), torch.arange(w)
    py0, py1, px0, px1 = (torch.as_tensor(v)[:, None] for v in (py0, py1, px0, px1))
    mask = (((ry[None] >= py0) & (ry[None] < py1))[:, :, None]
            & ((rx[None] >= px0) & (rx[None] < px1))[:, None, :])
    return vals.masked_fill(~mask[:, None], float("-inf")).flatten(2).amax(2).double().numpy()


def _check_crops(runner: Runner, x: torch.Tensor, ref: np.ndarray, units: list[int], geo: Geometry,
                 ii, jj, groups) -> None:
    """One unoccluded crop of each crop shape must give the full pass's values at the positions
    its square touches (the crop is proved by the field only for convolution-like layers)."""
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    tol = (1e-9 if runner.dtype == torch.float64 else 1e-4) * max(scale, 1.0)
    sy, sx = max(geo.y.stride, 1), max(geo.x.stride, 1)
    for (h, w), ks in groups.items():
        k = ks[0]
        i, j = ii[k], jj[k]
        try:
            fmap, _ = runner.run(_windows(x, geo.y.a[[i]], geo.x.a[[j]], h, w), full=False)
        except (RuntimeError, ValueError) as e:
            raise NotLocal(f"the network does not run on a {h}×{w} crop ({str(e).splitlines()[0]})") from None
        got = fmap[0, units].double().numpy()
        oy, ox = geo.y.a[i] // sy, geo.x.a[j] // sx
        y0, y1, x0, x1 = geo.y.p0[i], geo.y.p1[i], geo.x.p0[j], geo.x.p1[j]
        if y1 - oy > got.shape[1] or x1 - ox > got.shape[2]:
            raise NotLocal(f"a {h}×{w} crop makes a {got.shape[1]}×{got.shape[2]} map, too small")
        crop_part = got[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        full_part = ref[:, y0:y1, x0:x1]
        diff = float(np.abs(crop_part - full_part).max()) if crop_part.size else 0.0
        if not diff <= tol:
            raise NotLocal(f"a {h}×{w} crop differs from the whole image's map by {diff:.3g}")


def class_maps(runner: Runner, image: np.ndarray, squares: Squares, top: int,
               units: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(probability of class `top`, most probable class, and where `units` are given each unit's
    maximum (U×m×m) from the same passes), each m×m, with the square at each cell: whole
    occluded images through the whole network."""
    m = squares.n
    spans = squares.spans()
    ii, jj = np.divmod(np.arange(m * m), m)
    x = runner.normalised(image)
    size = squares.input_size
    prob = np.zeros(m * m)
    label = np.zeros(m * m, np.int32)
    unit = np.zeros((len(units), m * m)) if units else None
    step = runner.per_batch(size, size)
    for s in range(0, m * m, step):
        part = np.arange(s, min(s + step, m * m))
        zeros = np.zeros(len(part), np.int64)
        batch = _occluded(x, runner.grey, zeros, zeros, size, size, spans[ii[part]], spans[jj[part]])
        fmap, out = runner.run(batch, full=True)
        runner.copies += len(part)
        p = torch.softmax(out.double(), 1)
        prob[part] = p[:, top].numpy()
        label[part] = p.argmax(1).numpy()
        if unit is not None:
            unit[:, part] = fmap[:, units].flatten(2).amax(2).double().numpy().T
    return (prob.reshape(m, m), label.reshape(m, m),
            unit.reshape(len(units), m, m) if unit is not None else None)


def classifier_output(out: torch.Tensor | None) -> tuple[np.ndarray, int] | None:
    """The first image's class probabilities and the number of classes from the model's output,
    or None where it is not N×classes logits."""
    if out is None or out.dim() != 2 or out.shape[1] < 2:
        return None
    return torch.softmax(out.double(), 1)[0].numpy(), int(out.shape[1])


def occlude_examples(examples: pd.DataFrame, images, runner: Runner, rf: pd.DataFrame,
                     row: pd.Series, settings: Settings, layer: str = "") -> dict:
    """Occlusion maps of every example row (unit, rank, image_id, activation, y, x, y0…x1) and,
    where the model has a classifier and `settings.classes`, class maps of each distinct image.
    Returns the arrays and attributes `write_occlusion` stores."""
    input_size = int(row["input_h"])
    rf_side = (max(int(row["rf_size"]), int(row["rf_size_x"])) if bool(row["rf_affine"])
               else max(int(row["rf_max_h"]), int(row["rf_max_w"])))
    size = square_size(settings.size, input_size, rf_side)
    squares = Squares(size, stride_for(settings.stride, size, input_size), input_size)
    class_size = square_size(settings.size, input_size, input_size)
    class_squares = Squares(class_size, stride_for(settings.stride, class_size, input_size), input_size)
    geo = layer_geometry(squares, rf, row)
    examples = examples.reset_index(drop=True)
    ids = images.in_order(examples["image_id"].unique())
    maps = np.zeros((len(examples), squares.n, squares.n))  # float64 until written
    unoccluded = np.zeros(len(examples))
    peaks = np.zeros(len(examples), np.int64)  # positions at the unoccluded maximum
    class_rows: list[tuple[int, np.ndarray, np.ndarray, int, float]] = []
    n_classes = 0
    progress = Progress(len(ids), f"occlusion {layer}", unit="images")
    local_note = ""
    for image_id in ids:
        image = images[image_id]
        mine = examples.index[examples["image_id"] == image_id].to_numpy()
        units = sorted(set(int(u) for u in examples.loc[mine, "unit"]))
        fmap, out = runner.run(runner.normalised(image), full=settings.classes)
        reference = fmap[0].double().numpy()
        head = classifier_output(out) if settings.classes else None
        # where crops would be (almost) whole images anyway and the class maps use the same
        # squares, one set of whole passes gives both maps
        shared = head is not None and class_squares == squares and geo.crop_share >= SHARE_ABOVE
        got = None
        if head is not None:
            probs, n_classes = head
            top = int(np.argmax(probs))
            prob, label, got = class_maps(runner, image, class_squares, top, units if shared else None)
            class_rows.append((int(image_id), prob, label, top, float(probs[top])))
        if got is None:
            try:
                got = unit_maps(runner, image, units, geo, reference)
            except NotLocal as e:
                local_note = str(e)
                log.warning("occlusion %s: %s; occluding whole images instead", layer, e)
                geo = layer_geometry(squares, rf, {**row.to_dict(), "rf_affine": False})
                got = unit_maps(runner, image, units, geo, reference)
        for k in mine:
            u = units.index(int(examples.at[k, "unit"]))
            maps[k] = got[u]
            m = reference[int(examples.at[k, "unit"])]
            unoccluded[k] = m.max()
            peaks[k] = int((m == m.max()).sum())
        progress.update(1)
    return {"examples": examples, "maps": maps, "unoccluded": unoccluded, "peaks": peaks, "squares": squares,
            "class_squares": class_squares, "class_rows": class_rows, "n_classes": n_classes,
            "method": "local" if geo.local and geo.crop_share < SHARE_ABOVE else "whole",
            "note": local_note}


def occlusion_stage(top: str, shown: str, rf: str, table: str, manifest: str, images, net,
                    module: str, mean, std, layer: str, out: str, settings: Settings,
                    view=None, model_key: str = "") -> dict:
    """The stage: each shown unit's first `settings.examples` top-k rows occluded, written to
    `out`; returns the runner's counts (forward time, copies, shapes) for the benchmark."""
    from .layers import layer_row
    from .shown import read_shown

    row = layer_row(table, layer)
    chosen = read_shown(shown)["units"]
    if settings.units != "all":
        chosen = chosen[:int(settings.units)]
    t = pd.read_parquet(top)
    t = t[t["unit"].isin(chosen) & (t["rank"] < settings.examples)]
    order = {u: i for i, u in enumerate(chosen)}
    t = t.assign(_o=t["unit"].map(order)).sort_values(["_o", "rank"]).drop(columns="_o")
    fill, fill_mean = fill_colour(settings.fill, mean)
    runner = Runner(net, module, tuple(mean), tuple(std), fill, view)
    started = time.perf_counter()
    result = occlude_examples(t, images, runner, pd.read_parquet(rf), row, settings, layer)
    wall = time.perf_counter() - started
    write_occlusion(result, out, settings, fill, fill_mean, layer, module, manifest_sha256(manifest),
                    model_key, runner.copies)
    log.info("occlusion %s: %d examples of %d images, %d occluded copies (%s), %.1f s, of which "
             "%.1f s in forward passes", layer, len(t), t["image_id"].nunique(), runner.copies,
             "recomputed on crops of the field" if result["method"] == "local" else "whole images",
             wall, runner.forward_s)
    return {"wall_s": wall, "forward_s": runner.forward_s, "copies": runner.copies,
            "shapes": list(runner.shapes), "method": result["method"]}
