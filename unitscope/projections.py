"""Projections of a unit's activation back to pixel space, as Zeiler & Fergus's deconvnet does:
keep only the chosen unit's activation at its peak, zero every other activation of the layer, and
pass it back down — max-unpooling with the switches recorded in the forward pass, rectification,
and the transposed filters of each convolution. Guided backpropagation (Springenberg et al. 2015)
differs only at the ReLUs: it also keeps the forward pass's mask. Behind attention neither rule
is defined; there the projection is the plain input gradient (`gradient`), named as such.

Both are backpropagation with the ReLU's backward rule replaced, so they run as one autograd pass
under a TorchFunctionMode that swaps each ReLU for a function with that rule (max-pool's own
backward already routes through the switches; normalisation layers pass the signal unchanged).
Clamps (ReLU6, Hardtanh) pass the signal through their upper cap as a ReLU does: a saturated unit
still shows what drives it. The mode sees `F.relu` of a Python model and `aten.relu` of a
torch.export model alike.

Projections file (`projections/L.h5`), one entry per shown example, like the patches file: `kind`,
`unit`, `rank`, `image_id`, `box`, `visible`, `jpeg` (the projection over the visible part of the
box, display-normalised: mid-gray is 0, 255 / 1 are ± `value_scale`), `value_scale` (per entry:
the 99.5th percentile of |value| over the visible part; larger values are clipped); attributes
`method`, `display_scale` (the rule), `shrink`."""
from __future__ import annotations

import contextlib
import logging
import os

import h5py
import numpy as np
import pandas as pd
import torch
from torch.overrides import TorchFunctionMode

from .atomic import atomic_path
from .hooks import FirstCalls
from .patches import GRAY, ImageSource, entry_frame, visible_box, write_entries
from .models import batch_limit
from .progress import Progress
from .provenance import stamp

log = logging.getLogger("unitscope")

METHODS = ("deconvnet", "guided_backprop", "gradient")
DISPLAY_PERCENTILE = 99.5
_RELU = {"relu", "relu_", "threshold", "threshold_"}
_CLAMPS = {"relu6", "hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min", "clamp_min_"}
_NORMS = {"local_response_norm", "batch_norm", "native_batch_norm",
          "_native_batch_norm_legit_no_training"}
# ops a deconvnet can invert; anything else that changes values makes it refuse the model
_DECONV_OK = _RELU | _NORMS | {"conv2d", "convolution", "max_pool2d", "max_pool2d_with_indices",
                               "dropout", "pad", "flatten", "view", "reshape", "contiguous", "to",
                               "float", "size", "dim", "__get__", "permute", "clone", "detach"}


def _name(func) -> str:
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet or func, "__name__", "")


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None, None  # rectify the signal going down; no forward mask


class _GuidedReLU(torch.autograd.Function):
    """Positive signal, where the forward input was above the clamp's lower bound (through the
    upper cap of ReLU6/Hardtanh as through a ReLU)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo = lo
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > ctx.lo), None, None


class _ThroughCap(torch.autograd.Function):
    """The plain gradient of a ReLU-like clamp, except that it also flows where the input is
    above the upper cap (a saturated ReLU6 unit still has a gradient to measure)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo = lo
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > ctx.lo), None, None


class _PassThrough(torch.autograd.Function):
    """Forward as the wrapped op; backward hands the signal on unchanged (the deconvnet does not
    invert contrast normalisation)."""

    @staticmethod
    def forward(ctx, x, out):
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _clamp_bounds(name: str, args, kwargs) -> tuple[float | None, float | None] | None:
    """(lo, hi) of a ReLU-like clamp, or None where the op is not one (a clamp below 0)."""
    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)
    if name in _RELU:
        if name.startswith("threshold") and arg(1, "threshold") != 0:
            return None
        return 0.0, None
    if name == "relu6":
        return 0.0, 6.0
    if name.startswith("hardtanh"):
        return float(arg(1, "min_val", -1.0)), float(arg(2, "max_val", 1.0))
    if name.startswith("clamp_min"):
        lo = arg(1, "min")
        return (float(lo), None) if isinstance(lo, (int, float)) else None
    lo, hi = arg(1, "min"), arg(2, "max")
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor) or lo is None:
        return None
    return float(lo), (float(hi) if hi is not None else None)


class _Projecting(TorchFunctionMode):
    """Forward as usual, but with the backward rules of the chosen method at ReLU-like clamps
    (and, for the deconvnet, at normalisations); records any op the deconvnet cannot invert.
    Method "gradient" is the plain gradient, passed through the upper caps of clamps."""

    def __init__(self, method: str):
        super().__init__()
        self.method = method
        self.foreign: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in _RELU or name in _CLAMPS:
            bounds = _clamp_bounds(name, args, kwargs)
            x = args[0] if args else kwargs.get("input")
            if bounds is not None and isinstance(x, torch.Tensor):
                rule = {"deconvnet": _DeconvReLU, "guided_backprop": _GuidedReLU}.get(self.method, _ThroughCap)
                return rule.apply(x, *bounds)
        if self.method == "deconvnet":
            if name in _NORMS:
                with torch.no_grad():
                    out = func(*args, **kwargs)
                first = out[0] if isinstance(out, tuple) else out
                passed = _PassThrough.apply(args[0], first)
                return (passed,) + tuple(out[1:]) if isinstance(out, tuple) else passed
            if name not in _DECONV_OK and any(isinstance(a, torch.Tensor) and a.requires_grad
                                              for a in args):
                self.foreign.add(name)
        return func(*args, **kwargs)


class DeconvnetUnsupported(ValueError):
    """The model has parts a deconvnet cannot invert."""


def _refusal(foreign: set[str]) -> str:
    return (f"the deconvnet is defined for conv/ReLU/max-pool/normalisation networks, but this "
            f"model also uses {', '.join(sorted(foreign))}; use projection: guided_backprop")


def through_caps():
    """A mode under which backpropagation is the plain gradient but for clamps, which pass it
    through their upper cap as a ReLU does (for the effective receptive field of saturated units)."""
    return _Projecting("gradient")


def deconvnet_refusal(model: torch.nn.Module, modules: dict[str, str], input_size: int) -> str | None:
    """Why the deconvnet cannot invert `model` up to the given layers (None if it can)."""
    mode = _Projecting("deconvnet")
    x = torch.zeros(1, 3, input_size, input_size, requires_grad=True)
    with torch.enable_grad(), FirstCalls(model, modules, lambda layer, out: None) as calls, mode:
        calls.run(model, x)
    return _refusal(mode.foreign) if mode.foreign else None


def project(model: torch.nn.Module, module: str, x: torch.Tensor, units, ys, xs,
            method: str = "deconvnet", view=None) -> torch.Tensor:
    """For each image b of x (B×3×H×W, normalised), the projection to input space of unit
    units[b] at feature position (ys[b], xs[b]) of `module` (its first call): every other
    activation of the layer set to zero, that one kept at its value, passed back down.
    Returns B×3×H×W. `gradient` is the plain input gradient; `view` reads a layer that is not
    N×C×H×W."""
    if method not in METHODS:
        raise ValueError(f"projection {method!r}; valid: none, {', '.join(METHODS)}")
    captured = {}
    x = x.detach().clone().requires_grad_(True)
    mode = _Projecting(method) if method != "gradient" else contextlib.nullcontext()
    with torch.enable_grad(), FirstCalls(model, {"layer": module}, captured.__setitem__,
                                         views={"layer": view} if view else None) as calls, mode:
        calls.run(model, x)
    if getattr(mode, "foreign", None):
        raise DeconvnetUnsupported(_refusal(mode.foreign))
    out = captured["layer"]
    b = torch.arange(len(x))
    u, yy, xx = (torch.tensor(np.asarray(v), dtype=torch.long) for v in (units, ys, xs))
    signal = torch.zeros_like(out)
    signal[b, u, yy, xx] = out.detach()[b, u, yy, xx]
    out.backward(signal, inputs=[x])  # the input gradient only, not the weights'
    return x.grad.detach()


def to_display(proj: np.ndarray) -> tuple[np.ndarray, float]:
    """H×W×3 projection -> uint8 image with 0 at mid-gray, ± the 99.5th percentile of |value| at
    255 / 1 (larger values clipped: one bright pixel does not grey out the rest), and that scale."""
    magnitude = np.abs(proj)
    scale = float(np.percentile(magnitude, DISPLAY_PERCENTILE)) if magnitude.size else 0.0
    if scale == 0:
        scale = float(magnitude.max()) if magnitude.size else 0.0
    if scale == 0:
        return np.full(proj.shape, GRAY, np.uint8), 0.0
    return np.clip(128 + 127 * proj / scale, 0, 255).round().astype(np.uint8), scale


def write_projections(entries: pd.DataFrame, images: ImageSource, out_path: str | os.PathLike,
                      model: torch.nn.Module, module: str, mean, std, method: str,
                      patch_max_px: int = 128, batch_size: int = 8, view=None) -> int:
    """Projections of the given examples (columns kind, unit, rank, image_id, y, x, y0, x0, y1,
    x1), each over the visible part of its box. Batches of 8: on the CPU the backward pass is
    fastest per image there (a batch of 16 no longer fits the caches: about 1.6x slower)."""
    from PIL import Image

    from .patches import encode_jpeg, stored_shrink

    entries = entries.reset_index(drop=True)
    size = images.input_size
    boxes = entries[["y0", "x0", "y1", "x1"]].to_numpy(np.int64)
    visible = np.array([visible_box(b, (size, size)) for b in boxes], np.int64).reshape(-1, 4)
    shrink = stored_shrink(visible, patch_max_px)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    model = model.to(memory_format=torch.channels_last)  # faster backward on the CPU
    progress = Progress(len(entries), f"projections ({method})", unit="patches")
    batch_size = batch_limit(model, batch_size)
    jpegs, scales = [], []
    for s in range(0, len(entries), batch_size):
        rows = entries.iloc[s:s + batch_size]
        batch = np.stack([images[i] for i in rows["image_id"]])
        x = ((torch.from_numpy(batch).permute(0, 3, 1, 2).float() - mean_t) / std_t
             ).contiguous(memory_format=torch.channels_last)
        proj = project(model, module, x, rows["unit"].to_numpy(), rows["y"].to_numpy(),
                       rows["x"].to_numpy(), method, view).permute(0, 2, 3, 1).numpy()
        for i, p in enumerate(proj):
            vy0, vx0, vy1, vx1 = visible[s + i]
            img, scale = to_display(p[vy0:vy1, vx0:vx1])
            if shrink < 1.0 and img.size:
                h, w = img.shape[:2]
                img = np.asarray(Image.fromarray(img).resize(
                    (max(1, round(w * shrink)), max(1, round(h * shrink))), Image.LANCZOS))
            jpegs.append(encode_jpeg(img))
            scales.append(scale)
        progress.update(len(rows))
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        write_entries(f, entry_frame(entries), boxes, visible, jpegs)
        f.create_dataset("value_scale", data=np.asarray(scales, np.float32))
        stamp(f, "projections", method=method, shrink=shrink, input_size=size,
              display_scale=f"p{DISPLAY_PERCENTILE:g} of |value| over the visible part")
    return len(entries)
