"""Exact receptive fields of every feature position of any layer, found two independent ways.

**The walk** (`trace_fields`) follows one real forward pass op by op in a TorchFunctionMode (it sees
`F.conv2d` of a Python model and `aten.conv2d` of a torch.export model alike) and carries, for
every position of every feature map, two boxes in input pixels (y0, x0, y1, x1; end-exclusive):

- the *support*: the bounding box of the image pixels that can change that position;
- the *display box*: the same field extended into the padding (a window reaching past the border
  is drawn padded, never shifted) — the box patches are cut to.

Ops with a rule: convolution (any stride, padding, dilation, groups; transposed), pooling (max,
average, LP; `ceil_mode`; adaptive), padding (constant, reflect, replicate, circular), upsampling
(nearest, nearest-exact, bilinear, bicubic, area; `align_corners`), spatial slicing, reductions
over the spatial axes, elementwise ops (with broadcasting), and channel concatenation. Every rule
acts on the two spatial axes separately, as a list of source positions per output position, so a
field needs not be affine. Where branches meet (addition, concatenation) a position's box is the
union of its branches' boxes; a unit of a concatenation therefore gets the union field of all
branches. Normalisations are treated as their affine part (statistics as constants, as batch
norm in eval mode is). Any other op makes the field *unknown* (with the op's name).

**The probe** (`probe_supports`) needs no rules: it makes the network linear and positive (every
convolution an all-ones kernel, max-pooling an average over the same window, activations and
normalisations the identity, float64) and feeds it threshold images, 1 on the rows above row r (or
below, or the columns left/right of a column). A position's output is then positive exactly when
its support reaches past the threshold, so counting the zero outputs over all thresholds gives
every position's support box at once, in 2·(H+W) forward passes and no backward pass.

`layer_fields` puts them together: where the walk knows a layer, its support must equal the
probe's at every position (else a one-line error naming the layer, the position and both boxes);
where the walk does not, the probe's boxes are the field (display box = support)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .geometry import UnknownReceptiveField
from .hooks import FirstCalls

EMPTY = 1 << 40  # a support with no pixel: y0 = x0 = EMPTY, y1 = x1 = -EMPTY


# ----------------------------------------------------------------------------- fields
@dataclass
class Field:
    """The receptive field of every position of one feature map: `support` and `display` are
    (4, H, W) int64 arrays of y0, x0, y1, x1; `jump` is the input-pixel distance between
    neighbouring positions along (y, x), used to extend a field into padding."""

    support: np.ndarray
    display: np.ndarray
    jump: tuple[Fraction, Fraction]

    @property
    def shape(self) -> tuple[int, int]:
        return self.support.shape[1], self.support.shape[2]

    @classmethod
    def identity(cls, h: int, w: int) -> "Field":
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        boxes = np.stack([ys, xs, ys + 1, xs + 1]).astype(np.int64)
        return cls(boxes, boxes.copy(), (Fraction(1), Fraction(1)))

    def broadcast(self, h: int, w: int) -> "Field":
        """This field on an h×w grid (a 1-wide axis repeats, as in tensor broadcasting)."""
        shape = (4, h, w)
        return Field(np.broadcast_to(self.support, shape), np.broadcast_to(self.display, shape),
                     self.jump)

    def union(self, other: "Field") -> "Field":
        def u(a, b):
            return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
        return Field(u(self.support, other.support), u(self.display, other.display),
                     (min(self.jump[0], other.jump[0]), min(self.jump[1], other.jump[1])))


class Unknown:
    """Marks a feature map whose field the walk cannot follow, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason


def _map_axis(field: Field, axis: int, sources: np.ndarray, valid: np.ndarray,
              jump: Fraction, extend: bool) -> Field:
    """The field after an op that, along `axis` (0 = rows, 1 = columns), makes output position o
    from the input positions sources[o, t] where valid[o, t]. Sources outside the input are
    padding: the display box extends the edge position's box by the jump (`extend`), the support
    ignores them."""
    n = field.shape[axis]
    src = np.where(valid, sources, 0)
    inside = valid & (src >= 0) & (src < n)
    clip = np.clip(src, 0, n - 1)
    shift = np.floor((src - clip) * float(field.jump[axis])).astype(np.int64)
    lo, hi = (0, 2) if axis == 0 else (1, 3)

    def gather(boxes: np.ndarray, use: np.ndarray, shift_by: np.ndarray | None) -> np.ndarray:
        arr = boxes if axis == 0 else boxes.transpose(0, 2, 1)  # (4, n, other)
        g = arr[:, clip, :].astype(np.int64)  # (4, M, K, other)
        if shift_by is not None:
            for c in (lo, hi):
                g[c] += shift_by[:, :, None]
        keep = use[:, :, None]
        out = np.empty((4, g.shape[1], g.shape[3]), np.int64)
        for c in range(4):
            fill = EMPTY if c < 2 else -EMPTY
            v = np.where(keep, g[c], fill)
            out[c] = v.min(axis=1) if c < 2 else v.max(axis=1)
        return out if axis == 0 else out.transpose(0, 2, 1)

    support = gather(field.support, inside, None)
    display = gather(field.display, valid if extend else inside, shift)
    jumps = list(field.jump)
    jumps[axis] = jump
    return Field(support, display, (jumps[0], jumps[1]))


def _window_sources(n_out: int, kernel: int, stride: int, pad: int, dilation: int):
    o = np.arange(n_out)[:, None]
    t = np.arange(kernel)[None, :]
    src = o * stride - pad + t * dilation
    return src, np.ones_like(src, dtype=bool)


def _transposed_sources(n_in: int, n_out: int, kernel: int, stride: int, pad: int, dilation: int):
    o = np.arange(n_out)[:, None]
    t = np.arange(kernel)[None, :]
    num = o + pad - t * dilation
    j = np.floor_divide(num, stride)
    return j, (num % stride == 0) & (j >= 0) & (j < n_in)


def _list_sources(lists: list[list[int]]):
    k = max(1, max(len(s) for s in lists))
    src = np.zeros((len(lists), k), np.int64)
    valid = np.zeros((len(lists), k), bool)
    for o, s in enumerate(lists):
        src[o, :len(s)], valid[o, :len(s)] = s, True
    return src, valid


def _adaptive_sources(n_in: int, n_out: int):
    return _list_sources([list(range((o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)))
                          for o in range(n_out)])


def _floorf(v: float) -> int:
    """floorf of a value cast to float32, as PyTorch's upsampling kernels take the index."""
    return int(np.floor(np.float32(v)))


def _resize_sources(mode: str, n_in: int, n_out: int, align_corners: bool | None,
                    scale_factor: float | None):
    """Source positions with non-zero weight of each output position of F.interpolate, with
    PyTorch's arithmetic: nearest indices in float32; linear and cubic source coordinates in
    float64 (the probe's precision), their integer part taken in float32 and the weight clamped
    to [0, 1]."""
    if mode == "area":
        return _adaptive_sources(n_in, n_out)
    lists = []
    if mode in ("nearest", "nearest-exact"):
        scale = np.float32(1.0 / scale_factor) if scale_factor else np.float32(n_in) / np.float32(n_out)
        for o in range(n_out):
            if n_in == n_out:
                j = o
            elif mode == "nearest" and n_out == 2 * n_in:
                j = o >> 1
            else:
                at = np.float32(o) * scale if mode == "nearest" else (np.float32(o) + np.float32(0.5)) * scale
                j = int(np.floor(at))
            lists.append([min(j, n_in - 1)])
        return _list_sources(lists)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        scale = 1.0 / scale_factor if scale_factor else n_in / n_out
    for o in range(n_out):
        if mode in ("bilinear", "linear"):
            src = o * scale if align_corners else max(scale * (o + 0.5) - 0.5, 0.0)
            j0 = min(_floorf(src), n_in - 1)
            lam = min(max(src - j0, 0.0), 1.0)
            j1 = j0 + (1 if j0 < n_in - 1 else 0)
            lists.append([j0] + ([j1] if lam > 0 and j1 != j0 else []))
        elif mode == "bicubic":
            src = o * scale if align_corners else scale * (o + 0.5) - 0.5
            j0 = _floorf(src)
            t = min(max(src - j0, 0.0), 1.0)
            a = -0.75
            weights = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                       ((a + 2) * t - (a + 3)) * t * t + 1,
                       ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                       ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
            lists.append(sorted({min(max(j0 - 1 + i, 0), n_in - 1)
                                 for i, wt in enumerate(weights) if wt != 0}))
        else:
            raise UnknownReceptiveField(f"interpolate mode {mode}")
    return _list_sources(lists)


# ----------------------------------------------------------------------------- op rules
def _op_name(func) -> str:
    """`conv2d` for F.conv2d and for aten.conv2d.default alike."""
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet or func, "__name__", str(func))


def call_arg(args: Sequence, kwargs: dict, index: int, name: str, default=None):
    """An argument of an intercepted torch call, given by position or by name."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _pair(v, default=None) -> tuple[int, int]:
    """(height, width) of a kernel/stride/padding argument: an int, or a list whose last two
    entries are the spatial ones (3-D pooling over channels × H × W)."""
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    if isinstance(v, (list, tuple)):
        return (int(v[-2]), int(v[-1])) if len(v) > 1 else (int(v[0]), int(v[0]))
    return int(v), int(v)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


_CONVS = {"conv2d", "convolution", "_convolution", "conv_transpose2d", "conv3d"}
_MAX_POOLS = {"max_pool2d", "max_pool2d_with_indices", "max_pool3d", "max_pool3d_with_indices"}
_AVG_POOLS = {"avg_pool2d", "avg_pool3d", "lp_pool2d"}
_ADAPTIVE = {"adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d",
             "adaptive_avg_pool3d", "_adaptive_avg_pool3d", "adaptive_max_pool3d"}
_UPSAMPLE = {"upsample_nearest2d": "nearest", "_upsample_nearest_exact2d": "nearest-exact",
             "upsample_bilinear2d": "bilinear", "upsample_bicubic2d": "bicubic"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp",
               "nansum", "nanmean", "prod"}
# ops that keep every position where it is: the field of the output is the union of the fields
# of the inputs at the same position (broadcast where an input is 1 wide)
_POINTWISE = {
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide", "neg",
    "abs", "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "gelu", "silu", "silu_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu",
    "mish", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "softplus", "exp", "log",
    "sqrt", "rsqrt", "pow", "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "where",
    "maximum", "minimum", "threshold", "threshold_", "prelu", "_prelu_kernel", "addcmul",
    "addcdiv", "lerp", "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "instance_norm", "group_norm", "native_group_norm",
    "layer_norm", "native_layer_norm", "local_response_norm", "dropout", "dropout_",
    "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "dropout2d", "native_dropout",
    "contiguous", "clone", "detach", "to", "_to_copy", "float", "double", "half", "bfloat16",
    "type_as", "copy_", "cat", "concat", "stack", "view", "reshape", "_unsafe_view", "unsqueeze",
    "squeeze", "expand", "expand_as", "split", "split_with_sizes", "chunk", "unbind", "alias",
    "__getitem__", "select", "slice", "narrow", "permute", "transpose", "flatten",
    "softmax", "_softmax", "log_softmax", "_log_softmax", "channel_shuffle", "pixel_shuffle",
}


class _Walk(TorchFunctionMode):
    """Carries a Field (or Unknown) for every feature map of one forward pass."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.fields: dict[int, Field | Unknown] = {}
        self._set(x, Field.identity(*x.shape[-2:]))

    def _set(self, t: torch.Tensor, f) -> None:
        key = id(t)
        if key not in self.fields:
            weakref.finalize(t, self.fields.pop, key, None)
        self.fields[key] = f

    def field(self, t: torch.Tensor):
        return self.fields.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in _tensors(args) + _tensors(kwargs) if id(t) in self.fields]
        outs = [t for t in _tensors(out) if t.dim() >= 4]
        if not ins or not outs:
            return out
        name = _op_name(func)
        fields = [self.fields[id(t)] for t in ins]
        unknown = next((f for f in fields if isinstance(f, Unknown)), None)
        if unknown is not None:
            results = [unknown] * len(outs)
        else:
            try:
                results = self._rule(name, args, kwargs, ins, fields, outs)
            except UnknownReceptiveField as e:
                results = [Unknown(f"{name}: {e}")] * len(outs)
        for t, f in zip(outs, results):
            self._set(t, f)
        return out

    def _rule(self, name, args, kwargs, ins, fields, outs) -> list:
        src, f = ins[0], fields[0]
        out = outs[0]
        oh, ow = out.shape[-2:]
        if name in _CONVS and src is call_arg(args, kwargs, 0, "input"):
            weight = call_arg(args, kwargs, 1, "weight")
            if name in ("convolution", "_convolution"):
                transposed = bool(call_arg(args, kwargs, 6, "transposed", False))
                stride, padding, dilation = (call_arg(args, kwargs, i, n) for i, n in
                                             ((3, "stride"), (4, "padding"), (5, "dilation")))
            elif name == "conv_transpose2d":
                transposed = True
                stride = call_arg(args, kwargs, 3, "stride", 1)
                padding = call_arg(args, kwargs, 4, "padding", 0)
                dilation = call_arg(args, kwargs, 7, "dilation", 1)
            else:
                transposed = False
                stride = call_arg(args, kwargs, 3, "stride", 1)
                padding = call_arg(args, kwargs, 4, "padding", 0)
                dilation = call_arg(args, kwargs, 5, "dilation", 1)
            kh, kw = weight.shape[-2:]
            sh, sw = _pair(stride, (1, 1))
            dh, dw = _pair(dilation, (1, 1))
            if isinstance(padding, str):
                ph, pw = (0, 0) if padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
            else:
                ph, pw = _pair(padding, (0, 0))
            if transposed:
                h, w = f.shape
                fy = _map_axis(f, 0, *_transposed_sources(h, oh, kh, sh, ph, dh), f.jump[0] / sh, False)
                return [_map_axis(fy, 1, *_transposed_sources(w, ow, kw, sw, pw, dw), f.jump[1] / sw, False)]
            return [self._window(f, (kh, kw), (sh, sw), (ph, pw), (dh, dw), oh, ow)]
        if name in _MAX_POOLS or name in _AVG_POOLS:
            pool_arg = 2 if name == "lp_pool2d" else 1
            kernel = _pair(call_arg(args, kwargs, pool_arg, "kernel_size"))
            stride = _pair(call_arg(args, kwargs, pool_arg + 1, "stride"), kernel)
            padding = (0, 0) if name == "lp_pool2d" else _pair(call_arg(args, kwargs, 3, "padding"), (0, 0))
            dilation = _pair(call_arg(args, kwargs, 4, "dilation"), (1, 1)) if name in _MAX_POOLS else (1, 1)
            return [self._window(f, kernel, stride, padding, dilation, oh, ow)] * len(outs)
        if name in _ADAPTIVE:
            h, w = f.shape
            fy = _map_axis(f, 0, *_adaptive_sources(h, oh), f.jump[0] * h / oh, False)
            return [_map_axis(fy, 1, *_adaptive_sources(w, ow), f.jump[1] * w / ow, False)] * len(outs)
        if name in ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "_pad_circular"):
            return [self._pad(name, args, kwargs, f, oh, ow)]
        if name == "interpolate" or name in _UPSAMPLE:
            return [self._resize(name, args, kwargs, f, oh, ow)]
        if name in _REDUCTIONS:
            return [self._reduce(args, kwargs, f, src, oh, ow)]
        if name in ("slice", "narrow") or (name == "__getitem__" and src.shape[-2:] != out.shape[-2:]):
            return [self._slice(name, args, kwargs, f, src, oh, ow)]
        if name in _POINTWISE:
            spatial_dims = {src.dim() - 2, src.dim() - 1, -1, -2}
            if name in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
                if call_arg(args, kwargs, 1, "dim") in spatial_dims:
                    raise UnknownReceptiveField("softmax over a spatial axis")
            if name in ("permute", "transpose", "flatten", "pixel_shuffle") and \
                    out.shape[-2:] != src.shape[-2:]:
                raise UnknownReceptiveField("moves the spatial axes")
            if name in ("cat", "concat", "stack"):
                dim = call_arg(args, kwargs, 1, "dim", 0)
                if dim in spatial_dims and name != "stack":
                    raise UnknownReceptiveField("concatenation along a spatial axis")
            return [self._pointwise(ins, fields, oh, ow, name)] * len(outs)
        raise UnknownReceptiveField("no rule for this op")

    @staticmethod
    def _window(f: Field, kernel, stride, padding, dilation, oh: int, ow: int) -> Field:
        fy = _map_axis(f, 0, *_window_sources(oh, kernel[0], stride[0], padding[0], dilation[0]),
                       f.jump[0] * stride[0], True)
        return _map_axis(fy, 1, *_window_sources(ow, kernel[1], stride[1], padding[1], dilation[1]),
                         f.jump[1] * stride[1], True)

    @staticmethod
    def _pad(name, args, kwargs, f: Field, oh: int, ow: int) -> Field:
        pad = list(call_arg(args, kwargs, 1, "pad" if name in ("pad", "constant_pad_nd") else "padding"))
        mode = {"reflection_pad2d": "reflect", "replication_pad2d": "replicate",
                "_pad_circular": "circular", "constant_pad_nd": "constant"}.get(
            name, call_arg(args, kwargs, 2, "mode", "constant") or "constant")
        left, right, top, bottom = (pad + [0, 0, 0, 0])[:4]
        h, w = f.shape
        result = f
        for axis, before, n, n_out in ((0, top, h, oh), (1, left, w, ow)):
            o = np.arange(n_out) - before
            if mode == "constant":
                src = o
            elif mode == "reflect":
                period = 2 * (n - 1) if n > 1 else 1
                m = np.mod(o, period)
                src = np.where(m < n, m, period - m)
            elif mode == "replicate":
                src = np.clip(o, 0, n - 1)
            elif mode == "circular":
                src = np.mod(o, n)
            else:
                raise UnknownReceptiveField(f"{mode} padding")
            result = _map_axis(result, axis, src[:, None], np.ones((n_out, 1), bool),
                               result.jump[axis], mode == "constant")
        return result

    @staticmethod
    def _resize(name, args, kwargs, f: Field, oh: int, ow: int) -> Field:
        if name == "interpolate":
            mode = call_arg(args, kwargs, 3, "mode", "nearest")
            align = call_arg(args, kwargs, 4, "align_corners", None)
            scale = call_arg(args, kwargs, 2, "scale_factor", None)
            recompute = call_arg(args, kwargs, 5, "recompute_scale_factor", None)
            if recompute:
                scale = None
        else:
            mode = _UPSAMPLE[name]
            align = call_arg(args, kwargs, 2, "align_corners", None) if mode in ("bilinear", "bicubic") else None
            scale = (call_arg(args, kwargs, 3 if mode in ("bilinear", "bicubic") else 2,
                              "scale_factors", None))
        scales = _pair_float(scale)
        h, w = f.shape
        fy = _map_axis(f, 0, *_resize_sources(mode, h, oh, align, scales[0]), f.jump[0] * h / oh, False)
        return _map_axis(fy, 1, *_resize_sources(mode, w, ow, align, scales[1]), f.jump[1] * w / ow, False)

    @staticmethod
    def _reduce(args, kwargs, f: Field, src: torch.Tensor, oh: int, ow: int) -> Field:
        dims = call_arg(args, kwargs, 1, "dim", None)
        dims = list(range(src.dim())) if dims is None else [dims] if isinstance(dims, int) else list(dims)
        dims = {d % src.dim() for d in dims}
        h, w = f.shape
        result = f
        for axis, n, n_out in ((0, h, oh), (1, w, ow)):
            if src.dim() - 2 + axis in dims:
                if n_out != 1:
                    raise UnknownReceptiveField("reduction without keepdim")
                result = _map_axis(result, axis, np.arange(n)[None, :], np.ones((1, n), bool),
                                   result.jump[axis] * n, False)
        if result.shape != (oh, ow):
            raise UnknownReceptiveField("changes the spatial size")
        return result

    @staticmethod
    def _slice(name, args, kwargs, f: Field, src: torch.Tensor, oh: int, ow: int) -> Field:
        h, w = f.shape
        ranges = {0: (0, h, 1), 1: (0, w, 1)}
        if name == "__getitem__":
            key = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(k is None or k is Ellipsis and key.count(Ellipsis) > 1 for k in key) or \
                    not all(isinstance(k, slice) or k is Ellipsis for k in key):
                raise UnknownReceptiveField("indexing")
            if Ellipsis in key:
                i = key.index(Ellipsis)
                key = key[:i] + (slice(None),) * (src.dim() - len(key) + 1) + key[i + 1:]
            key = key + (slice(None),) * (src.dim() - len(key))
            for axis in (0, 1):
                ranges[axis] = key[src.dim() - 2 + axis].indices((h, w)[axis])
        else:
            dim = call_arg(args, kwargs, 1, "dim", 0) % src.dim()
            axis = dim - (src.dim() - 2)
            if axis not in (0, 1):
                return f
            n = (h, w)[axis]
            if name == "narrow":
                start = call_arg(args, kwargs, 2, "start")
                ranges[axis] = slice(start, start + call_arg(args, kwargs, 3, "length")).indices(n)
            else:
                ranges[axis] = slice(call_arg(args, kwargs, 2, "start", None),
                                     call_arg(args, kwargs, 3, "end", None),
                                     call_arg(args, kwargs, 4, "step", 1)).indices(n)
        result = f
        for axis, n_out in ((0, oh), (1, ow)):
            start, _, step = ranges[axis]
            src_idx = start + step * np.arange(n_out)
            result = _map_axis(result, axis, src_idx[:, None], np.ones((n_out, 1), bool),
                               result.jump[axis] * abs(step), False)
        return result

    @staticmethod
    def _pointwise(ins, fields, oh: int, ow: int, name: str) -> Field:
        result = None
        for t, f in zip(ins, fields):
            h, w = f.shape
            if (h, w) != (oh, ow):
                if (h not in (1, oh)) or (w not in (1, ow)):
                    raise UnknownReceptiveField(f"changes the spatial size {h}x{w} -> {oh}x{ow}")
                f = f.broadcast(oh, ow)
            result = f if result is None else result.union(f)
        return result


def _pair_float(v) -> tuple[float | None, float | None]:
    if v is None:
        return None, None
    if isinstance(v, (list, tuple)):
        return (float(v[-2]), float(v[-1])) if len(v) > 1 else (float(v[0]), float(v[0]))
    return float(v), float(v)


def trace_fields(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int]
                 ) -> tuple[dict[str, Field | Unknown], dict[str, tuple[int, int, int]]]:
    """One forward pass of a zero image through the walk: each layer's Field (or Unknown) and
    output shape (C, H, W), at the first call of its module."""
    x = torch.zeros(1, 3, *input_size)
    walk = _Walk(x)
    fields: dict[str, Field | Unknown] = {}
    shapes: dict[str, tuple[int, int, int]] = {}

    def seen(layer: str, out: torch.Tensor) -> None:
        f = walk.field(out)
        fields[layer] = f if f is not None else Unknown("the output does not depend on the input")
        shapes[layer] = tuple(int(s) for s in out.shape[1:])

    with torch.inference_mode(), FirstCalls(model, modules, seen) as calls, walk:
        calls.run(model, x)
    return fields, shapes


# ----------------------------------------------------------------------------- the probe
class _PositiveLinear(TorchFunctionMode):
    """Makes a network linear and positive on float64 inputs: convolutions all-ones kernels of the
    same geometry (one output channel when `one_channel`), max-pooling an average over the same
    window, activations and normalisations the identity, sums and products of two feature maps a
    sum, a parameter that scales a feature map its absolute value, any other op run as it is."""

    _IDENTITY = {
        "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "silu",
        "silu_", "gelu", "sigmoid", "sigmoid_", "hardswish", "hardswish_", "hardsigmoid",
        "hardsigmoid_", "elu", "elu_", "selu", "celu", "mish", "tanh", "tanh_", "softplus",
        "dropout", "dropout_", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
        "dropout2d", "batch_norm", "group_norm", "layer_norm", "instance_norm",
        "local_response_norm", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "clamp",
        "clamp_", "clamp_min", "clamp_max", "clip", "threshold", "threshold_", "contiguous",
        "clone", "detach", "prelu", "softmax", "_softmax", "log_softmax", "_log_softmax", "pow",
    }
    _TUPLE_NORMS = {"native_batch_norm": 3, "_native_batch_norm_legit": 3,
                    "_native_batch_norm_legit_no_training": 3, "native_layer_norm": 3,
                    "native_group_norm": 3, "native_dropout": 2}
    _ARITH = {"add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide",
              "maximum", "minimum", "where"}

    def __init__(self, x: torch.Tensor, one_channel: bool):
        super().__init__()
        self.one_channel = one_channel
        self.features: set[int] = set()
        self._mark(x)

    def _mark(self, t) -> None:
        for tensor in _tensors(t):
            key = id(tensor)
            if key not in self.features:
                self.features.add(key)
                weakref.finalize(tensor, self.features.discard, key)

    def _is_feature(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.features

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not any(self._is_feature(t) for t in _tensors(args) + _tensors(kwargs)):
            return func(*args, **kwargs)
        out = self._replace(_op_name(func), func, args, kwargs)
        self._mark(out)
        return out

    def _positive(self, v):
        """Non-feature tensors as float64 absolute values, features as they are."""
        if isinstance(v, torch.Tensor) and not self._is_feature(v) and v.is_floating_point():
            return v.detach().abs().double()
        if isinstance(v, (list, tuple)):
            return type(v)(self._positive(i) for i in v)
        return v

    def _replace(self, name, func, args, kwargs):
        x = args[0] if args else None
        if name in self._IDENTITY:
            return x if x is not None else kwargs["input"]
        if name in self._TUPLE_NORMS:
            return (x,) + tuple(torch.empty(0, dtype=x.dtype) for _ in range(self._TUPLE_NORMS[name] - 1))
        if name in _CONVS:
            return self._conv(name, args, kwargs)
        aten = hasattr(func, "overloadpacket")
        if name in _MAX_POOLS:
            out = self._max_pool(args, kwargs)
            indices = name.endswith("indices") or (not aten and call_arg(args, kwargs, 6, "return_indices", False))
            return (out, torch.zeros(out.shape, dtype=torch.long)) if indices else out
        if name in ("adaptive_max_pool2d", "adaptive_max_pool3d"):
            out = F.adaptive_avg_pool2d(x, call_arg(args, kwargs, 1, "output_size"))
            indices = aten or call_arg(args, kwargs, 2, "return_indices", False)
            return (out, torch.zeros(out.shape, dtype=torch.long)) if indices else out
        if name in ("amax", "max", "amin", "min") and len(args) + len(kwargs) > 1:
            dim = call_arg(args, kwargs, 1, "dim")
            keep = call_arg(args, kwargs, 2, "keepdim", False)
            out = x.sum(dim=dim, keepdim=keep)
            return out if name.startswith("a") else (out, torch.zeros(out.shape, dtype=torch.long))
        if name in self._ARITH:
            tensors = [a for a in args[:2] if isinstance(a, torch.Tensor)]
            feats = [a for a in tensors if self._is_feature(a)]
            if name == "where":
                feats = [a for a in args[1:3] if self._is_feature(a)]
                others = [a for a in args[1:3] if isinstance(a, torch.Tensor) and not self._is_feature(a)]
                out = feats[0] if len(feats) == 1 else feats[0] + feats[1]
                return out + torch.zeros_like(others[0], dtype=out.dtype) if others else out
            if len(feats) == 2:
                return feats[0] + feats[1]
            feat = feats[0]
            other = next((a for a in tensors if not self._is_feature(a)), None)
            if other is None:  # a Python scalar: scaling keeps the support, shifting is dropped
                if name in ("mul", "mul_", "div", "div_", "true_divide") and args[1] == 0 and \
                        name.startswith("mul"):
                    return feat * 0
                return feat
            other = other.detach().abs().double()
            if name.startswith(("mul",)):
                return feat * other
            if name.startswith(("div", "true_divide")) and feat is args[0]:
                return feat * torch.where(other > 0, 1.0 / other.clamp_min(1e-300), 0.0)
            return feat + torch.zeros_like(other)  # add/sub of a constant: the support only
        return func(*self._positive(args), **{k: self._positive(v) for k, v in kwargs.items()})

    def _conv(self, name, args, kwargs):
        x = call_arg(args, kwargs, 0, "input")
        weight = call_arg(args, kwargs, 1, "weight")
        if name in ("convolution", "_convolution"):
            transposed = bool(call_arg(args, kwargs, 6, "transposed", False))
            stride, padding, dilation = (call_arg(args, kwargs, i, n) for i, n in
                                         ((3, "stride"), (4, "padding"), (5, "dilation")))
            output_padding = call_arg(args, kwargs, 7, "output_padding", 0)
            groups = call_arg(args, kwargs, 8, "groups", 1)
        elif name == "conv_transpose2d":
            transposed = True
            stride, padding = call_arg(args, kwargs, 3, "stride", 1), call_arg(args, kwargs, 4, "padding", 0)
            output_padding = call_arg(args, kwargs, 5, "output_padding", 0)
            groups = call_arg(args, kwargs, 6, "groups", 1)
            dilation = call_arg(args, kwargs, 7, "dilation", 1)
        else:
            transposed, output_padding = False, 0
            stride, padding = call_arg(args, kwargs, 3, "stride", 1), call_arg(args, kwargs, 4, "padding", 0)
            dilation = call_arg(args, kwargs, 5, "dilation", 1)
            groups = call_arg(args, kwargs, 6, "groups", 1)
        kh, kw = weight.shape[-2:]
        if self.one_channel and not transposed:
            if isinstance(padding, str):
                dh, dw = _pair(dilation, (1, 1))
                ph, pw = (0, 0) if padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
                pads = (pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph) if padding != "valid" else (0, 0, 0, 0)
            else:
                ph, pw = _pair(padding, (0, 0))
                pads = (pw, pw, ph, ph)
            return _box_filter(x.sum(1, keepdim=True), (kh, kw), _pair(stride, (1, 1)), pads,
                               _pair(dilation, (1, 1)))
        if self.one_channel:
            groups = 1
            shape = (x.shape[1], 1, kh, kw)
        else:
            shape = tuple(weight.shape)
        ones = torch.ones(shape, dtype=x.dtype)
        ones /= ones[0].numel()
        if transposed:
            return F.conv_transpose2d(x, ones, None, stride, padding, output_padding, groups, dilation)
        return F.conv2d(x, ones, None, stride, padding, dilation, groups)

    @staticmethod
    def _max_pool(args, kwargs):
        """A max-pool as an average over the same windows (dilation and ceil_mode included),
        built from a depthwise all-ones convolution over the zero-padded input."""
        x = args[0]
        kh, kw = _pair(call_arg(args, kwargs, 1, "kernel_size"))
        sh, sw = _pair(call_arg(args, kwargs, 2, "stride"), (kh, kw))
        ph, pw = _pair(call_arg(args, kwargs, 3, "padding"), (0, 0))
        dh, dw = _pair(call_arg(args, kwargs, 4, "dilation"), (1, 1))
        ceil = bool(call_arg(args, kwargs, 5, "ceil_mode", False))
        extra = []
        for n, k, s, p, d in ((x.shape[-2], kh, sh, ph, dh), (x.shape[-1], kw, sw, pw, dw)):
            span = n + 2 * p - d * (k - 1) - 1
            out = (span + (s - 1 if ceil else 0)) // s + 1
            if ceil and (out - 1) * s >= n + p:
                out -= 1
            extra.append(max(0, (out - 1) * s + d * (k - 1) + 1 - (n + 2 * p)))
        lead = x.shape[:-2]
        flat = x.reshape(-1, 1, *x.shape[-2:])
        out = _box_filter(flat, (kh, kw), (sh, sw), (pw, pw + extra[1], ph, ph + extra[0]), (dh, dw))
        return out.reshape(*lead, *out.shape[-2:])


def _box_filter(x: torch.Tensor, kernel, stride, pads, dilation) -> torch.Tensor:
    """The average over each (dilated) window of the zero-padded input, per channel: an all-ones
    convolution, computed as an average pool where the window has no holes (much faster in
    float64 than a convolution)."""
    x = F.pad(x, pads)
    if tuple(dilation) == (1, 1):
        return F.avg_pool2d(x, kernel, stride, 0)
    ones = torch.ones(x.shape[1], 1, *kernel, dtype=x.dtype) / (kernel[0] * kernel[1])
    return F.conv2d(x, ones, None, stride, 0, dilation, x.shape[1])


def probe_supports(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int],
                   chunk: int = 32) -> dict[str, np.ndarray]:
    """The support box of every position of each layer, measured by threshold probes on the
    positive linear network: {layer: (4, h, w) int64 y0, x0, y1, x1}, EMPTY where a position sees
    no image pixel. Tries one channel per feature map first (cheap), then every channel."""
    from .models import batch_limit

    chunk = batch_limit(model, chunk)
    try:
        return _probe(model, modules, input_size, chunk, one_channel=True)
    except (RuntimeError, ValueError, IndexError, TypeError) as first:
        try:
            return _probe(model, modules, input_size, chunk, one_channel=False)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise UnknownReceptiveField(f"the probe cannot run this model ({e}; with one "
                                        f"channel: {first})") from None


def _probe(model, modules, input_size, chunk, one_channel) -> dict[str, np.ndarray]:
    h, w = input_size
    # (axis, low side?) -> thresholds: rows < r (r = 1..h) find y0; rows >= r (r = 0..h-1) find y1
    sweeps = [(0, True, range(1, h + 1)), (0, False, range(h)),
              (1, True, range(1, w + 1)), (1, False, range(w))]
    counts: dict[str, np.ndarray] = {}
    for sweep, (axis, low, thresholds) in enumerate(sweeps):
        thresholds = list(thresholds)
        for s in range(0, len(thresholds), chunk):
            part = thresholds[s:s + chunk]
            x = torch.zeros(len(part), 3, h, w, dtype=torch.float64)
            for b, r in enumerate(part):
                sl = slice(0, r) if low else slice(r, None)
                if axis == 0:
                    x[b, :, sl, :] = 1.0
                else:
                    x[b, :, :, sl] = 1.0
            outputs: dict[str, torch.Tensor] = {}
            with torch.no_grad(), FirstCalls(model, modules, outputs.__setitem__) as calls:
                with _PositiveLinear(x, one_channel):
                    calls.run(model, x)
            for layer, out in outputs.items():
                positive = (out.detach().abs().sum(1) > 0).numpy()  # (B, oh, ow)
                if layer not in counts:
                    counts[layer] = np.zeros((4, *positive.shape[1:]), np.int64)
                # low sweeps count zeros (y0 = thresholds below the support), high sweeps ones
                counts[layer][sweep] += (~positive).sum(0) if low else positive.sum(0)
    result = {}
    for layer, c in counts.items():
        y0, y1, x0, x1 = c[0], c[1], c[2], c[3]
        empty = (y1 == 0) | (x1 == 0)
        boxes = np.stack([y0, x0, y1, x1]).astype(np.int64)
        boxes[:2, empty], boxes[2:, empty] = EMPTY, -EMPTY
        result[layer] = boxes
    return result


# ----------------------------------------------------------------------------- both together
@dataclass
class LayerField:
    """A layer's field: `boxes` (4, H, W) display boxes, `support` (4, H, W), `method` (analytic
    or probe) and, for probe fields, the reason the walk stopped."""

    boxes: np.ndarray
    support: np.ndarray
    method: str
    reason: str = ""
    jump: tuple[int | None, int | None] = (None, None)


class FieldMismatch(ValueError):
    """The walk and the probe disagree about a layer's field."""


def layer_fields(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int],
                 probe: bool = True) -> tuple[dict[str, LayerField], dict[str, tuple[int, int, int]]]:
    """Each layer's field and output shape. With `probe`, the walk's support is checked against
    the probe's at every position; layers the walk cannot follow take the probe's boxes."""
    fields, shapes = trace_fields(model, modules, input_size)
    unknown = {layer for layer, f in fields.items() if isinstance(f, Unknown)}
    if not probe and unknown:
        layer = sorted(unknown)[0]
        raise UnknownReceptiveField(f"layer {layer}: {fields[layer].reason} (the probe is off)")
    probed = probe_supports(model, modules, input_size) if probe else {}
    result = {}
    for layer, f in fields.items():
        if isinstance(f, Unknown):
            support = probed[layer]
            result[layer] = LayerField(support, support, "probe", f.reason)
            continue
        if probe:
            _check(layer, modules[layer], f.support, probed[layer])
        jump = tuple(int(j) if j.denominator == 1 else None for j in f.jump)
        result[layer] = LayerField(f.display, f.support, "analytic", jump=jump)
    return result, shapes


def _check(layer: str, module: str, walk: np.ndarray, probed: np.ndarray) -> None:
    empty_w, empty_p = walk[0] >= EMPTY // 2, probed[0] >= EMPTY // 2
    differ = (walk != probed).any(0) & ~(empty_w & empty_p)
    if differ.any():
        y, x = (int(v) for v in np.argwhere(differ)[0])

        def show(b, e):
            return "nothing" if e[y, x] else f"{tuple(int(v) for v in b[:, y, x])}"
        raise FieldMismatch(
            f"receptive field of layer {layer} (module {module}) at position ({y}, {x}): the "
            f"walk finds {show(walk, empty_w)} but the probe {show(probed, empty_p)} "
            f"(y0, x0, y1, x1; {int(differ.sum())} positions differ)")


def feature_sizes(model: nn.Module, modules: Iterable[str] | dict[str, str],
                  input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each named module (first call) for one input of `input_size`."""
    from .hooks import layer_outputs

    mods = modules if isinstance(modules, dict) else {m: m for m in modules}
    with torch.inference_mode():
        outs = layer_outputs(model, mods, torch.zeros(1, 3, *input_size))
    return {k: tuple(int(s) for s in v.shape[1:]) for k, v in outs.items()}
