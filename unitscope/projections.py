"""Projections of a unit's activation back to pixel space, as Zeiler & Fergus's deconvnet does:
keep only the chosen unit's maximum activation, zero every other activation of the layer, and
pass it back down — max-unpooling with the switches recorded in the forward pass, rectification,
and the transposed filters of each convolution. Guided backpropagation (Springenberg et al. 2015)
differs only at the ReLUs: it also keeps the forward pass's mask.

Both are backpropagation with the ReLU's backward rule replaced, so they run as one autograd pass
under a TorchFunctionMode that swaps each ReLU for a function with that rule (max-pool's own
backward already routes through the switches; normalisation layers pass the signal unchanged).
A TorchScript model runs its ReLUs out of that mode's sight; for it, guided backpropagation hooks
the ReLU nodes of the autograd graph instead (the deconvnet, which must also pass the signal
through normalisations unchanged, is not offered there)."""
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
from .inputs import InputImages
from .patches import GRAY, crop_box, encode_jpeg, stored_size, write_entries
from .progress import Progress
from .receptive_field import call_arg

log = logging.getLogger("unitscope")

METHODS = ("deconvnet", "guided_backprop")
_RELU = {"relu", "relu_", "threshold"}
_NORMS = {"local_response_norm", "batch_norm"}
# ops a deconvnet can invert; anything else that changes values makes it refuse the model
_DECONV_OK = _RELU | _NORMS | {"conv2d", "max_pool2d", "max_pool2d_with_indices", "dropout",
                               "pad", "flatten", "view", "reshape", "contiguous", "to", "float",
                               "size", "dim", "__get__", "permute", "sub", "div", "sub_", "div_"}


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)  # rectify the signal going down; ignore the forward mask


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _PassThrough(torch.autograd.Function):
    """Forward as the wrapped op; backward hands the signal on unchanged (the deconvnet does not
    invert contrast normalisation)."""

    @staticmethod
    def forward(ctx, x, out):
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Projecting(TorchFunctionMode):
    """Forward as usual, but with the backward rules of the chosen method at the ReLUs (and, for
    the deconvnet, at normalisations); records any op the deconvnet cannot invert."""

    def __init__(self, method: str):
        super().__init__()
        self.method = method
        self.foreign: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("relu", "relu_"):
            rule = _DeconvReLU if self.method == "deconvnet" else _GuidedReLU
            return rule.apply(args[0])
        if name in ("hardtanh", "hardtanh_", "relu6") and self.method == "guided_backprop":
            x = args[0]
            lo, hi = call_arg(args, kwargs, 1, "min_val", -1.0), call_arg(args, kwargs, 2, "max_val", 1.0)
            if name == "relu6":
                lo, hi = 0.0, 6.0
            return _GuidedClamp.apply(x, lo, hi)
        if self.method == "deconvnet":
            if name in _NORMS:
                with torch.no_grad():
                    out = func(*args, **kwargs)
                return _PassThrough.apply(args[0], out)
            if name not in _DECONV_OK and any(isinstance(a, torch.Tensor) and a.requires_grad
                                              for a in args):
                self.foreign.add(name)
        return func(*args, **kwargs)


class _GuidedClamp(torch.autograd.Function):
    """Guided backpropagation through a clamp such as ReLU6: positive signal, where the forward
    input was inside the linear range."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > ctx.lo) & (x < ctx.hi)), None, None


TORCHSCRIPT_DECONVNET = (
    "the deconvnet is not available for TorchScript models (it passes the signal through "
    "normalisations unchanged, and a ScriptModule runs them out of Python's reach); use "
    "projection: guided_backprop or none, or give the model as python:package.module:factory")
# autograd nodes of ops whose backward is the forward mask: guided backprop rectifies their output
_MASK_NODES = {"ReluBackward0", "ThresholdBackward0", "HardtanhBackward0"}


def _guide(out: torch.Tensor) -> None:
    """Guided backpropagation on any autograd graph: at every ReLU-like node behind `out`, the
    signal handed down (the incoming signal times the forward mask) keeps only its positive
    part, which equals `_GuidedReLU`'s rule."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() in _MASK_NODES:
            node.register_hook(lambda grad_in, grad_out: tuple(
                g.clamp(min=0) if g is not None else None for g in grad_in))
        stack.extend(next_node for next_node, _ in node.next_functions)


class DeconvnetUnsupported(ValueError):
    """The model has parts a deconvnet cannot invert."""


def project(model: torch.nn.Module, module: str, x: torch.Tensor, units, ys, xs,
            method: str = "deconvnet") -> torch.Tensor:
    """For each image b of x (B×3×H×W, normalised), the projection to input space of unit
    units[b] at feature position (ys[b], xs[b]) of `module`: every other activation of the layer
    set to zero, that one kept at its value, passed back down. Returns B×3×H×W."""
    if method not in METHODS:
        raise ValueError(f"projection {method!r}; valid: none, {', '.join(METHODS)}")
    from .models.torchscript import ScriptedModel

    scripted = isinstance(model, ScriptedModel)
    if scripted and method != "guided_backprop":
        raise DeconvnetUnsupported(TORCHSCRIPT_DECONVNET)
    target = dict(model.named_modules())[module]
    captured = {}

    class Reached(Exception):
        pass

    def stop(mod, inp, out):
        captured["out"] = out
        raise Reached

    handle = target.register_forward_hook(stop)
    x = x.detach().clone().requires_grad_(True)
    mode = _Projecting(method)
    try:  # unoptimised TorchScript: one autograd node per op, none fused away
        with (torch.enable_grad(), mode, torch.jit.optimized_execution(False) if scripted
              else contextlib.nullcontext()):
            model(x)
    except Reached:
        pass
    finally:
        handle.remove()
    if mode.foreign:
        raise DeconvnetUnsupported(
            f"the deconvnet is defined for conv/ReLU/max-pool/normalisation networks, but this "
            f"model also uses {', '.join(sorted(mode.foreign))}; use projection: guided_backprop")
    out = captured["out"]
    if scripted:
        _guide(out)
    b = torch.arange(len(x))
    u, yy, xx = (torch.tensor(np.asarray(v), dtype=torch.long) for v in (units, ys, xs))
    signal = torch.zeros_like(out)
    signal[b, u, yy, xx] = out.detach()[b, u, yy, xx]
    out.backward(signal)
    return x.grad.detach()


def to_display(proj: np.ndarray) -> tuple[np.ndarray, float]:
    """H×W×3 projection -> uint8 image with 0 at mid-gray, scaled by its max |value| (as in the
    paper), and that scale."""
    scale = float(np.abs(proj).max())
    if scale == 0:
        return np.full(proj.shape, GRAY, np.uint8), 0.0
    return np.clip(128 + 127 * proj / scale, 0, 255).round().astype(np.uint8), scale


def write_projections(topk_path: str | os.PathLike, input_paths: list[str | os.PathLike],
                      out_path: str | os.PathLike, model: torch.nn.Module, module: str, mean,
                      std, units: list[int], method: str, patch_max_px: int = 128,
                      batch_size: int = 16) -> int:
    """Projections of the top-k entries of `units`, each cropped to its patch's RF box, stored
    like the patches: `unit`, `rank`, `image_id`, `box`, `jpeg` (display-normalised), `scale`
    (max |value| of each projection: display 255 means +scale, 1 means -scale)."""
    from PIL import Image

    table = pd.read_parquet(topk_path)
    table = table[table["unit"].isin(units)].reset_index(drop=True)
    boxes = table[["y0", "x0", "y1", "x1"]].to_numpy(np.int64)
    rf = (int(boxes[0, 2] - boxes[0, 0]), int(boxes[0, 3] - boxes[0, 1])) if len(table) else (1, 1)
    (sh, sw), shrink = stored_size(rf, patch_max_px)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    progress = Progress(len(table), f"projections ({method})", unit="patches")
    jpegs, scales = [], []
    with InputImages(input_paths) as images:
        for s in range(0, len(table), batch_size):
            rows = table.iloc[s:s + batch_size]
            batch = np.stack([images[i] for i in rows["image_id"]])
            x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - mean_t) / std_t
            proj = project(model, module, x, rows["unit"].to_numpy(), rows["y"].to_numpy(),
                           rows["x"].to_numpy(), method).permute(0, 2, 3, 1).numpy()
            for i, p in enumerate(proj):
                crop, _ = crop_box(p, tuple(boxes[s + i]), fill=0.0)
                img, scale = to_display(crop)
                if shrink < 1.0:
                    img = np.asarray(Image.fromarray(img).resize((sw, sh), Image.LANCZOS))
                jpegs.append(encode_jpeg(img))
                scales.append(scale)
            progress.update(len(rows))
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        write_entries(f, table, boxes, jpegs)
        f.create_dataset("scale", data=np.asarray(scales, np.float32))
        f.attrs.update(method=method, rf_size=rf, size=(sh, sw), shrink=shrink)
    return len(table)
