"""The walk: one real forward pass followed op by op in a TorchFunctionMode (it sees `F.conv2d` of
a Python model and `aten.conv2d` of a torch.export model alike), carrying boxes for every element
of every tensor that depends on the input (`boxes.py`), of three kinds:

- **theoretical**: every pixel that can change the element;
- **local**: the same through spatially local paths only — an operand reduced to 1×1 over space
  (a squeeze-and-excitation gate, a global attention pool) and broadcast back over the positions
  acts as a per-image gain, not as a place the element looks, and is left out of the union;
- **cell**: the same again with attention's mixing of tokens left out (of a product of two
  features only the query side counts) — the token's own cell on the patch grid.

A kind equals the one before it (None) until an op makes it differ. Ops with a rule: convolution
(any stride, padding, dilation, groups; transposed), pooling (max, average, LP; `ceil_mode`;
adaptive), padding, upsampling, reductions and softmax over any axes, elementwise ops (with
broadcasting), linear maps and matrix products (einsum too), attention (`scaled_dot_product_
attention`, `multi_head_attention_forward`), and layout ops of every kind (permute, view, reshape,
flatten, slicing, concatenation, roll, split, window partitions), which are followed exactly.
Where branches meet a position's box is the union of what each branch sees. An attention logit
masked by an added constant at or below `MASKED_LOGIT` (Swin's shifted windows add -100; others
-1e4, the float minimum or -inf), or filled with such a value, is no dependence: softmax gives it
a weight of exp(-50) or less, which the model means as zero; the walk (and the probe) leave it and
the value it would have weighted out of the field. Normalisations are
treated as their affine part (statistics as constants, as batch norm in eval mode is). Any other op
makes the field *unknown* (with the op's name)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..geometry import UnknownReceptiveField
from ..hooks import FirstCalls
from .boxes import FILL, Boxes, compress, map_axis, union_all, union_over
from .fields import _adaptive_sources, _resize_sources, _transposed_sources, _window_sources
from .ops import (_ADAPTIVE, _AVG_POOLS, _CONVS, _MAX_POOLS, _REDUCTIONS, _UPSAMPLE, _op_name,
                  _pair, _tensors, call_arg, conv_args)

KINDS = ("theory", "local", "cell")
MASKED_LOGIT = -50.0  # an attention logit at or below this (an added mask) weighs nothing


@dataclass
class Traced:
    """What the walk knows of one tensor: its boxes of each kind (None: as the kind before),
    the spacing of its positions in input pixels (y, x), and its shape."""

    theory: Boxes
    local: Boxes | None
    cell: Boxes | None
    jump: tuple[Fraction, Fraction]
    shape: tuple[int, ...]

    def kind(self, k: str) -> Boxes:
        if k == "cell" and self.cell is not None:
            return self.cell
        if k in ("cell", "local") and self.local is not None:
            return self.local
        return self.theory


class Unknown:
    """Marks a tensor whose field the walk cannot follow, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason


# ops whose output element is its inputs' elements at the same index (broadcasting)
POINTWISE = {
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide", "neg",
    "abs", "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "gelu", "gelu_", "silu", "silu_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu",
    "celu", "mish", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "softplus", "exp",
    "log", "sqrt", "rsqrt", "pow", "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip",
    "where", "maximum", "minimum", "threshold", "threshold_", "prelu", "_prelu_kernel", "addcmul",
    "addcdiv", "lerp", "erf", "reciprocal", "sign", "batch_norm", "native_batch_norm",
    "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "instance_norm",
    "group_norm", "native_group_norm", "layer_norm", "native_layer_norm", "local_response_norm",
    "dropout", "dropout_", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "dropout2d", "native_dropout", "mul_scalar", "add_scalar", "__and__", "__or__", "masked_fill",
    "masked_fill_", "nan_to_num", "logical_not",
}
# ops that only move elements: followed exactly by running them on element indices
LAYOUT = {
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_",
    "__getitem__", "select", "slice", "narrow", "split", "split_with_sizes", "chunk", "unbind",
    "tensor_split", "cat", "concat", "concatenate", "stack", "roll", "repeat", "flip",
    "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "index_select", "view_as",
    "reshape_as", "unfold", "diagonal", "tile", "movedim", "moveaxis",
}
# layout ops that act on dimensions only: applied to the stored (broadcastable) planes directly
DIMS_ONLY = {"permute", "transpose", "transpose_", "swapaxes", "swapdims", "t", "unsqueeze",
             "unsqueeze_", "expand", "expand_as", "contiguous", "clone", "detach", "alias", "to",
             "_to_copy", "float", "double", "half", "bfloat16", "type_as", "type", "lift_fresh",
             "requires_grad_"}
# ops whose output holds no information about the input's values
CONSTANT = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like",
            "full_like", "empty_like", "rand_like", "randn_like", "new_tensor", "size", "dim",
            "numel", "stride", "is_contiguous"}
SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax"}
MATMUL = {"linear", "matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm", "einsum", "__matmul__"}
ATTENTION = {"scaled_dot_product_attention", "multi_head_attention_forward"}


class _Walk(TorchFunctionMode):
    """Carries a Traced (or Unknown) for every tensor of one forward pass that depends on the
    input image."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.image_hw = tuple(int(s) for s in x.shape[-2:])
        self.fields: dict[int, Traced | Unknown] = {}
        self.masked: dict[int, np.ndarray] = {}  # per element: a masked logit or its zero weight
        self._set(x, Traced(Boxes.identity(tuple(x.shape)), None, None,
                            (Fraction(1), Fraction(1)), tuple(x.shape)))

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
        name = _op_name(func)
        if name in CONSTANT:
            return out
        ins = [t for t in _tensors(args) + _tensors(kwargs) if id(t) in self.fields]
        outs = [t for t in _tensors(out) if isinstance(t, torch.Tensor)]
        if not ins or not outs:
            return out
        fields = [self.fields[id(t)] for t in ins]
        unknown = next((f for f in fields if isinstance(f, Unknown)), None)
        if unknown is not None:
            results = [unknown] * len(outs)
        else:
            try:
                results = self._rule(name, func, args, kwargs, ins, fields, out, outs)
            except UnknownReceptiveField as e:
                results = [Unknown(f"{name}: {e}")] * len(outs)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                results = [Unknown(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")] * len(outs)
            else:
                results = self._masks(name, func, args, kwargs, ins, outs, results)
        for t, f in zip(outs, results):
            if f is not None:
                self._set(t, f)
        return out

    # masked attention logits ------------------------------------------------------------------
    def _masks(self, name, func, args, kwargs, ins, outs, results) -> list:
        """Follow which elements are masked logits (or the zero weights softmax makes of them):
        made by adding a constant <= MASKED_LOGIT or filling one in, carried by elementwise and
        layout ops (an element stays masked where every operand's is) and softmax."""
        out, first = outs[0], results[0]
        if not isinstance(first, Traced) or tuple(first.shape) != tuple(out.shape):
            return results
        shape = tuple(out.shape)
        given = [self.masked.get(id(t)) for t in ins]
        flags, fresh = None, None
        if name in POINTWISE:
            if all(g is not None for g in given):
                flags = np.logical_and.reduce([np.broadcast_to(g, shape) for g in given])
            mask = None
            if name in ("add", "add_"):
                for c in _tensors(args) + _tensors(kwargs):
                    if id(c) not in self.fields and c.is_floating_point():
                        m = (c.detach() <= MASKED_LOGIT).cpu().numpy()
                        mask = m if mask is None else mask | m
            elif name in ("masked_fill", "masked_fill_"):
                value = call_arg(args, kwargs, 2, "value")
                value = float(value) if not isinstance(value, torch.Tensor) or value.numel() == 1 else 0.0
                where = call_arg(args, kwargs, 1, "mask")
                if value <= MASKED_LOGIT and isinstance(where, torch.Tensor):
                    mask = where.detach().cpu().numpy().astype(bool)
            if mask is not None and mask.any():
                fresh = np.broadcast_to(mask, shape)
                flags = fresh if flags is None else flags | fresh
        elif (name in LAYOUT or name in DIMS_ONLY) and len(ins) == 1 and given[0] is not None:
            flags = self._moved(func, args, kwargs, ins[0], given[0], out)
        elif name in SOFTMAX and given[0] is not None:
            flags = fresh = np.broadcast_to(given[0], shape)
        if flags is None or not flags.any():
            return results
        if fresh is not None:
            first = self._emptied(first, fresh)
        key = id(out)
        if key not in self.masked:
            weakref.finalize(out, self.masked.pop, key, None)
        self.masked[key] = compress(flags[None])[0]
        return [first] + list(results[1:])

    def _emptied(self, f: Traced, where: np.ndarray) -> Traced:
        """`f` with the elements at `where` depending on nothing."""
        def empty(b):
            if b is None:
                return None
            p = np.array(b.full(f.shape))
            p[:, where] = FILL[:, None]
            return p
        return self._traced((empty(f.theory), empty(f.local), empty(f.cell)), f.jump, f.shape)

    @staticmethod
    def _moved(func, args, kwargs, t, flags, out):
        """The masked flags of `t` moved by the layout op as its elements are."""
        ft = torch.from_numpy(np.array(np.broadcast_to(flags, tuple(t.shape)), np.float32))

        def sub(v):
            if v is t:
                return ft
            if isinstance(v, (list, tuple)):
                return type(v)(sub(i) for i in v)
            return v
        moved = func(*sub(args), **{k: sub(v) for k, v in kwargs.items()})
        moved = next((m for m in _tensors(moved) if isinstance(m, torch.Tensor)), None)
        if moved is None or tuple(moved.shape) != tuple(out.shape):
            return None
        return moved.numpy() > 0.5

    # -------------------------------------------------------------------------------- rules
    def _each(self, fields: list[Traced], make, gate: bool = False, attention: bool = False):
        """Apply `make(list of Boxes, kind) -> planes` per kind; a kind is computed only where
        some input has it, or where this op makes it differ (a gate: local; attention: cell)."""
        theory = make([f.theory for f in fields], "theory")
        local = cell = None
        if gate or any(f.local is not None for f in fields):
            local = make([f.kind("local") for f in fields], "local")
        if attention or gate or any(f.cell is not None for f in fields):
            cell = make([f.kind("cell") for f in fields], "cell")
        return theory, local, cell

    def _traced(self, kinds, jump, shape) -> Traced:
        theory, local, cell = (None if p is None else Boxes(compress(p)) for p in kinds)
        if local is not None and np.array_equal(local.planes, theory.planes):
            local = None
        ref = local if local is not None else theory
        if cell is not None and np.array_equal(cell.planes, ref.planes):
            cell = None
        return Traced(theory, local, cell, jump, tuple(shape))

    def _rule(self, name, func, args, kwargs, ins, fields, out, outs) -> list:
        f0 = fields[0]
        jump = f0.jump
        if len(fields) > 1:
            jump = (min(f.jump[0] for f in fields), min(f.jump[1] for f in fields))
        if name in _CONVS and ins[0] is call_arg(args, kwargs, 0, "input"):
            return [self._conv(name, args, kwargs, f0, outs[0])]
        if name in _MAX_POOLS or name in _AVG_POOLS:
            return [self._pool(name, args, kwargs, f0, outs[0])] * len(outs)
        if name in _ADAPTIVE:
            return [self._spatial(f0, outs[0], lambda n, m: _adaptive_sources(n, m), "adaptive")] * len(outs)
        if name in ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "_pad_circular") \
                and self._spatial_pad(name, args, kwargs, ins[0]):
            return [self._pad(name, args, kwargs, f0, outs[0])]
        if name == "interpolate" or name in _UPSAMPLE:
            return [self._resize(name, args, kwargs, f0, outs[0])]
        if name in DIMS_ONLY:
            return [self._dims_only(name, args, kwargs, ins[0], f0, outs[0])] * len(outs)
        if name in LAYOUT or name in ("pad", "constant_pad_nd"):
            return self._layout(func, args, kwargs, ins, fields, outs, jump)
        if name in _REDUCTIONS or name in SOFTMAX or name == "normalize":
            return self._reduce(name, args, kwargs, ins[0], f0, outs)
        if name in POINTWISE:
            return self._pointwise(ins, fields, outs, jump)
        if name in MATMUL:
            return [self._matmul(name, args, kwargs, ins, fields, outs[0], jump)] * len(outs)
        if name in ATTENTION:
            return self._attention(name, args, kwargs, ins, fields, outs, jump)
        raise UnknownReceptiveField("no rule for this op")

    # window ops on the last two axes -------------------------------------------------------
    def _windowed(self, f: Traced, out: torch.Tensor, axis_sources, extend: bool, jumps,
                  channel_union=None) -> Traced:
        shape = tuple(out.shape)

        def make(boxes, kind):
            b = boxes[0]
            p = b.planes.reshape(8, *([1] * (len(f.shape) - b.ndim)), *b.planes.shape[1:])
            p = np.broadcast_to(p, p.shape[:-2] + tuple(f.shape[-2:]))
            if channel_union is not None:
                p = channel_union(p)
            p = np.ascontiguousarray(p)
            for dim, (src, valid, j) in zip((len(shape) - 2, len(shape) - 1), axis_sources):
                p = map_axis(p, dim, src, valid, j, extend)
            return p
        return self._traced(self._each([f], make), jumps, shape)

    def _conv(self, name, args, kwargs, f: Traced, out: torch.Tensor) -> Traced:
        weight = call_arg(args, kwargs, 1, "weight")
        transposed, stride, padding, dilation, groups, _ = conv_args(name, args, kwargs)
        if len(f.shape) != 4 or out.dim() != 4:
            raise UnknownReceptiveField("a convolution that is not 2-D")
        kh, kw = weight.shape[-2:]
        sh, sw = _pair(stride, (1, 1))
        dh, dw = _pair(dilation, (1, 1))
        if isinstance(padding, str):
            ph, pw = (0, 0) if padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
        else:
            ph, pw = _pair(padding, (0, 0))
        h, w = f.shape[-2:]
        oh, ow = out.shape[-2:]
        cin, cout = f.shape[1], out.shape[1]
        groups = int(groups or 1)
        image_hw = self.image_hw

        def channels(p):  # each output channel sees every input channel of its group
            if p.shape[2] == 1:
                return p
            if groups == 1:
                return union_over(p, (1,), image_hw)
            g = p.reshape(8, p.shape[1], groups, cin // groups, *p.shape[3:])
            g = union_over(g, (2,), image_hw)
            g = np.broadcast_to(g, (8, p.shape[1], groups, cout // groups, *p.shape[3:]))
            return g.reshape(8, p.shape[1], cout, *p.shape[3:])
        if transposed:
            srcs = [(*_transposed_sources(h, oh, kh, sh, ph, dh), f.jump[0] / sh),
                    (*_transposed_sources(w, ow, kw, sw, pw, dw), f.jump[1] / sw)]
            return self._windowed(f, out, srcs, False, (f.jump[0] / sh, f.jump[1] / sw), channels)
        srcs = [(*_window_sources(oh, kh, sh, ph, dh), f.jump[0]),
                (*_window_sources(ow, kw, sw, pw, dw), f.jump[1])]
        return self._windowed(f, out, srcs, True, (f.jump[0] * sh, f.jump[1] * sw), channels)

    def _pool(self, name, args, kwargs, f: Traced, out: torch.Tensor) -> Traced:
        pool_arg = 2 if name == "lp_pool2d" else 1
        kernel = _pair(call_arg(args, kwargs, pool_arg, "kernel_size"))
        stride = _pair(call_arg(args, kwargs, pool_arg + 1, "stride"), kernel)
        padding = (0, 0) if name == "lp_pool2d" else _pair(call_arg(args, kwargs, 3, "padding"), (0, 0))
        dilation = _pair(call_arg(args, kwargs, 4, "dilation"), (1, 1)) if name in _MAX_POOLS else (1, 1)
        oh, ow = out.shape[-2:]
        srcs = [(*_window_sources(oh, kernel[0], stride[0], padding[0], dilation[0]), f.jump[0]),
                (*_window_sources(ow, kernel[1], stride[1], padding[1], dilation[1]), f.jump[1])]
        if name.endswith(("3d", "3d_with_indices")):
            f = self._depth(name, args, kwargs, f, out)
        return self._windowed(f, out, srcs, True, (f.jump[0] * stride[0], f.jump[1] * stride[1]))

    def _depth(self, name, args, kwargs, f: Traced, out: torch.Tensor) -> Traced:
        """A 3-D pool's window along the axis before the spatial ones (LRN's decomposition pools
        over channels): the boxes of that axis' window, united."""
        def first(v, default):
            if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
                return default
            return int(v[0]) if isinstance(v, (list, tuple)) else int(v)
        k = first(call_arg(args, kwargs, 1, "kernel_size"), 1)
        st = first(call_arg(args, kwargs, 2, "stride"), k)
        pad = first(call_arg(args, kwargs, 3, "padding"), 0)
        nd = len(f.shape)
        n_out = out.shape[-3]
        src, valid = _window_sources(n_out, k, st, pad, 1)

        def make(boxes, kind):
            b = boxes[0]
            p = b.planes.reshape(8, *([1] * (nd - b.ndim)), *b.planes.shape[1:])
            p = np.ascontiguousarray(np.broadcast_to(p, p.shape[:-3] + (f.shape[-3], *p.shape[-2:])))
            return map_axis(p, nd - 3, src, valid, Fraction(1), False)
        shape = (*f.shape[:-3], n_out, *f.shape[-2:])
        return self._traced(self._each([f], make), f.jump, shape)

    def _spatial(self, f: Traced, out: torch.Tensor, sources, what: str) -> Traced:
        h, w = f.shape[-2:]
        oh, ow = out.shape[-2:]
        jy, jx = f.jump[0] * h / oh, f.jump[1] * w / ow
        srcs = [(*sources(h, oh), f.jump[0]), (*sources(w, ow), f.jump[1])]
        return self._windowed(f, out, srcs, False, (jy, jx))

    @staticmethod
    def _spatial_pad(name, args, kwargs, x) -> bool:
        """A padding of the last two axes of a 4-D tensor (the convolution's kind of padding)."""
        if name in ("reflection_pad2d", "replication_pad2d", "_pad_circular"):
            return True
        pad = list(call_arg(args, kwargs, 1, "pad"))
        return x.dim() == 4 and len(pad) <= 4

    def _pad(self, name, args, kwargs, f: Traced, out: torch.Tensor) -> Traced:
        pad = list(call_arg(args, kwargs, 1, "pad" if name in ("pad", "constant_pad_nd") else "padding"))
        mode = {"reflection_pad2d": "reflect", "replication_pad2d": "replicate",
                "_pad_circular": "circular", "constant_pad_nd": "constant"}.get(
            name, call_arg(args, kwargs, 2, "mode", "constant") or "constant")
        left, right, top, bottom = (pad + [0, 0, 0, 0])[:4]
        h, w = f.shape[-2:]
        oh, ow = out.shape[-2:]
        srcs = []
        for before, n, n_out, j in ((top, h, oh, f.jump[0]), (left, w, ow, f.jump[1])):
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
            srcs.append((src[:, None], np.ones((n_out, 1), bool), j))
        return self._windowed(f, out, srcs, mode == "constant", f.jump)

    def _resize(self, name, args, kwargs, f: Traced, out: torch.Tensor) -> Traced:
        if name == "interpolate":
            mode = call_arg(args, kwargs, 3, "mode", "nearest")
            align = call_arg(args, kwargs, 4, "align_corners", None)
            scale = call_arg(args, kwargs, 2, "scale_factor", None)
            if call_arg(args, kwargs, 5, "recompute_scale_factor", None):
                scale = None
        else:
            mode = _UPSAMPLE[name]
            align = call_arg(args, kwargs, 2, "align_corners", None) if mode in ("bilinear", "bicubic") else None
            scale = call_arg(args, kwargs, 3 if mode in ("bilinear", "bicubic") else 2, "scale_factors", None)
        scales = _pair_float(scale)
        h, w = f.shape[-2:]
        oh, ow = out.shape[-2:]
        srcs = [(*_resize_sources(mode, h, oh, align, scales[0]), f.jump[0]),
                (*_resize_sources(mode, w, ow, align, scales[1]), f.jump[1])]
        return self._windowed(f, out, srcs, False, (f.jump[0] * h / oh, f.jump[1] * w / ow))

    # layout -------------------------------------------------------------------------------
    def _dims_only(self, name, args, kwargs, x, f: Traced, out: torch.Tensor) -> Traced:
        nd = x.dim()

        def make(boxes, kind):
            p = boxes[0].full(f.shape) if name in ("t",) else \
                boxes[0].planes.reshape(8, *([1] * (nd - boxes[0].ndim)), *boxes[0].planes.shape[1:])
            if name == "permute":
                dims = call_arg(args, kwargs, 1, "dims")
                dims = list(dims) if isinstance(dims, (list, tuple)) else list(args[1:])
                return np.transpose(p, [0] + [d % nd + 1 for d in dims])
            if name in ("transpose", "transpose_", "swapaxes", "swapdims", "t"):
                first, second = ("axis0", "axis1") if name == "swapaxes" else ("dim0", "dim1")
                a = call_arg(args, kwargs, 1, first, 0) if name != "t" else 0
                b = call_arg(args, kwargs, 2, second, 1) if name != "t" else 1
                return np.swapaxes(p, a % nd + 1, b % nd + 1)
            if name in ("unsqueeze", "unsqueeze_"):
                d = call_arg(args, kwargs, 1, "dim")
                return np.expand_dims(p, d % (nd + 1) + 1)
            return p  # expand, copies, casts: the same boxes (broadcast to the new shape)
        return self._traced(self._each([f], make), f.jump, out.shape)

    def _layout(self, func, args, kwargs, ins, fields, outs, jump) -> list:
        """Run the op on element indices (each input its own range, constants -1) and gather."""
        offsets, total = {}, 0
        for t in ins:
            if id(t) not in offsets:
                offsets[id(t)] = total
                total += t.numel()

        def index_of(v):
            if isinstance(v, torch.Tensor):
                if id(v) in offsets:
                    return (torch.arange(v.numel(), dtype=torch.int64) + offsets[id(v)]).reshape(v.shape)
                if v.is_floating_point():
                    return torch.full(v.shape, -1, dtype=torch.int64)
                return v
            if isinstance(v, (list, tuple)):
                return type(v)(index_of(i) for i in v)
            return v
        kw = {k: index_of(v) for k, v in kwargs.items()}
        if _op_name(func) in ("pad", "constant_pad_nd"):
            kw["value"] = -1
            if len(args) > 3:
                args = args[:3]
        idx = func(*index_of(args), **kw)
        idx_outs = [t for t in _tensors(idx) if isinstance(t, torch.Tensor)]
        seen = {}
        for t, f in zip(ins, fields):
            seen.setdefault(id(t), (t, f))

        def table(kind):
            flat = [f.kind(kind).full(tuple(t.shape)).reshape(8, -1) for t, f in seen.values()]
            return np.concatenate(flat + [FILL[:, None]], axis=1)
        tables = {k: table(k) for k in KINDS
                  if k == "theory" or any(getattr(f, k) is not None for f in fields)}
        results = []
        step_jump = self._slice_jump(func, args, ins[0], jump)
        for o, i in zip(outs, idx_outs):
            flat = i.reshape(-1).numpy()
            flat = np.where(flat < 0, total, flat)

            def make(_, kind):
                tab = tables.get(kind)
                if tab is None:
                    return None
                return tab[:, flat].reshape(8, *o.shape)
            kinds = (make(None, "theory"), make(None, "local"), make(None, "cell"))
            results.append(self._traced(kinds, step_jump, o.shape))
        return results

    @staticmethod
    def _slice_jump(func, args, x, jump):
        """Strided slicing of the last two axes of a 4-D map spreads its positions."""
        if _op_name(func) != "__getitem__" or x.dim() != 4 or len(args) < 2:
            return jump
        key = args[1] if isinstance(args[1], tuple) else (args[1],)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (4 - len(key))
        steps = [k.step or 1 if isinstance(k, slice) else 1 for k in key[2:4]]
        return (jump[0] * abs(steps[0]), jump[1] * abs(steps[1]))

    # values ---------------------------------------------------------------------------------
    def _reduce(self, name, args, kwargs, x, f: Traced, outs) -> list:
        nd = x.dim()
        if name in SOFTMAX or name == "normalize":  # each element over its whole axis
            d = call_arg(args, kwargs, 1, "dim") if name in SOFTMAX else call_arg(args, kwargs, 2, "dim", 1)
            dims, keep = ((d if d is not None else -1) % nd,), True
        else:
            dim_at = 2 if name in ("norm", "linalg_vector_norm") else 1
            dims = call_arg(args, kwargs, dim_at, "dim", None)
            if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
                dims = tuple(range(nd))
            elif isinstance(dims, int):
                dims = (dims % nd,)
            else:
                dims = tuple(d % nd for d in dims)
            keep = outs[0].dim() == nd
        image_hw = self.image_hw

        def make(boxes, kind):
            p = boxes[0].full(f.shape)
            return union_over(p, dims, image_hw, keepdim=keep)
        results = []
        for o in outs:
            if o.dim() != (nd if keep else nd - len(dims)):
                results.append(None)
                continue
            results.append(self._traced(self._each([f], make), f.jump, o.shape))
        return results

    def _pointwise(self, ins, fields, outs, jump) -> list:
        shape = tuple(outs[0].shape)
        nd = len(shape)
        # an operand 1 wide along an axis where another operand's boxes vary is a gate
        varying = set()
        for t, f in zip(ins, fields):
            p = f.theory.planes
            for i, n in enumerate(p.shape[1:]):
                if n > 1:
                    varying.add(i + nd - f.theory.ndim)
        gates = []
        for t in ins:
            lead = nd - t.dim()
            tshape = [1] * lead + list(t.shape)
            gates.append(any(tshape[d] == 1 and shape[d] > 1 for d in varying))
        gate = any(gates) and not all(gates)
        image_hw = self.image_hw

        def make(boxes, kind):
            parts = []
            for b, t, is_gate in zip(boxes, ins, gates):
                if kind != "theory" and gate and is_gate:
                    continue
                parts.append(b.planes.reshape(8, *([1] * (nd - b.ndim)), *b.planes.shape[1:]))
            return union_all(parts, image_hw)
        kinds = self._each(fields, make, gate=gate)
        results = []
        for o in outs:
            if tuple(o.shape) == shape:
                results.append(self._traced(kinds, jump, shape))
            else:
                results.append(None)  # the statistics a normalisation returns beside its output
        return results

    def _matmul(self, name, args, kwargs, ins, fields, out, jump) -> Traced:
        image_hw = self.image_hw
        nd = out.dim()
        ids = [id(t) for t in ins]
        if name == "einsum":
            return self._einsum(args, ins, fields, out, jump)
        if name == "linear":
            a, b = call_arg(args, kwargs, 0, "input"), call_arg(args, kwargs, 1, "weight")
        elif name in ("baddbmm", "addmm", "addbmm"):
            a, b = args[1], args[2]
        else:
            a, b = args[0], args[1]
        a_feat, b_feat = id(a) in ids, isinstance(b, torch.Tensor) and id(b) in ids
        if name == "linear" and b_feat:
            raise UnknownReceptiveField("a linear map whose weight depends on the input")
        fa = fields[ids.index(id(a))] if a_feat else None
        fb = fields[ids.index(id(b))] if b_feat else None
        both = a_feat and b_feat

        def side(boxes, t, f, over):
            p = boxes.full(tuple(t.shape))
            p = union_over(p, (over % t.dim(),), image_hw)
            if name == "linear" or t.dim() == 1:
                return p.reshape(8, *([1] * (nd - p.ndim + 1)), *p.shape[1:])
            return p.reshape(8, *([1] * (nd - p.ndim + 1)), *p.shape[1:])

        weights = self.masked.get(id(a)) if both and name in ("matmul", "bmm", "__matmul__") else None

        def unmasked(boxes, t):
            """Per output (…, l, c): the union over the k whose weight a[…, l, k] is not masked."""
            lead = nd + 1 - t.dim()  # tensor rank of (…, l, k, c)
            p = boxes.planes.reshape(8, *([1] * (t.dim() - boxes.ndim)), *boxes.planes.shape[1:])
            p = p.reshape(8, *([1] * (lead - 1)), *p.shape[1:-2], 1, *p.shape[-2:])
            w = weights.reshape(*([1] * (nd - weights.ndim)), *weights.shape, 1)
            p = np.where(w[None], FILL.reshape(8, *([1] * (p.ndim - 1))), p)
            return union_over(p, (nd - 1,), image_hw, keepdim=False)

        def make(_, kind):
            parts = []
            if a_feat:
                parts.append(side(fa.kind(kind), a, fa, -1))
            if b_feat and not (both and kind == "cell"):
                parts.append(side(fb.kind(kind), b, fb, -2) if weights is None
                             else unmasked(fb.kind(kind), b))
            return union_all(parts, image_hw)
        flist = [f for f in (fa, fb) if f is not None]
        return self._traced(self._each(flist, make, attention=both), jump, out.shape)

    def _einsum(self, args, ins, fields, out, jump) -> Traced:
        eq = args[0].replace(" ", "")
        operands = args[1:] if not (len(args) == 2 and isinstance(args[1], (list, tuple))) else args[1]
        if "->" not in eq or "." in eq:
            raise UnknownReceptiveField("an einsum without an explicit output")
        lhs, rhs = eq.split("->")
        subs = lhs.split(",")
        ids = [id(t) for t in ins]
        feats = [(s, t, fields[ids.index(id(t))]) for s, t in zip(subs, operands) if id(t) in ids]
        image_hw = self.image_hw

        def one(s, t, boxes):
            if len(set(s)) != len(s):
                raise UnknownReceptiveField("an einsum over a diagonal")
            p = boxes.full(tuple(t.shape))
            summed = tuple(i for i, c in enumerate(s) if c not in rhs)
            p = union_over(p, summed, image_hw)
            kept = [c for i, c in enumerate(s) if i not in summed]
            p = p.reshape(8, *[n for i, n in enumerate(p.shape[1:]) if i not in summed])
            p = np.transpose(p, [0] + [kept.index(c) + 1 for c in rhs if c in kept])
            dims = iter(p.shape[1:])
            return p.reshape(8, *[next(dims) if c in kept else 1 for c in rhs])

        def make(_, kind):
            parts = [one(s, t, f.kind(kind)) for s, t, f in feats]
            if kind == "cell" and len(parts) > 1:
                parts = parts[:1]
            return union_all(parts, image_hw)
        return self._traced(self._each([f for _, _, f in feats], make, attention=len(feats) > 1),
                            jump, out.shape)

    def _attention(self, name, args, kwargs, ins, fields, outs, jump) -> list:
        """Every output token sees its query and all keys and values (the cell: the query)."""
        image_hw = self.image_hw
        ids = [id(t) for t in ins]
        q, k, v = (call_arg(args, kwargs, i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
        out = outs[0]
        nd = out.dim()
        # scaled_dot_product_attention: (..., L, E) with tokens at -2; multi_head_attention_forward:
        # (L, N, E) with tokens at 0
        token_dim = 0 if name == "multi_head_attention_forward" else q.dim() - 2

        def part(t, kind, query: bool):
            if id(t) not in ids:
                return None
            f = fields[ids.index(id(t))]
            p = f.kind(kind).full(tuple(t.shape))
            p = union_over(p, (t.dim() - 1,) if query else (t.dim() - 1, token_dim), image_hw)
            return p.reshape(8, *([1] * (nd - t.dim())), *p.shape[1:])

        def make(_, kind):
            parts = [part(q, kind, True)]
            if kind != "cell":
                parts += [part(k, kind, False), part(v, kind, False)]
            parts = [p for p in parts if p is not None]
            return union_all(parts, image_hw) if parts else None
        flist = [f for t, f in zip(ins, fields)]
        kinds = self._each(flist, make, attention=True)
        if kinds[0] is None:
            raise UnknownReceptiveField("attention whose query does not depend on the input")
        return [self._traced(kinds, jump, out.shape)] + [None] * (len(outs) - 1)


def _pair_float(v) -> tuple[float | None, float | None]:
    if v is None:
        return None, None
    if isinstance(v, (list, tuple)):
        return (float(v[-2]), float(v[-1])) if len(v) > 1 else (float(v[0]), float(v[0]))
    return float(v), float(v)


def trace_tensors(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int]
                  ) -> tuple[dict[str, Traced | Unknown], dict[str, tuple[int, ...]]]:
    """One forward pass of a zero image through the walk: each layer's Traced (or Unknown) and
    output shape (without the batch axis), at the first call of its module."""
    x = torch.zeros(1, 3, *input_size)
    walk = _Walk(x)
    fields: dict[str, Traced | Unknown] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def seen(layer: str, out: torch.Tensor) -> None:
        f = walk.field(out)
        fields[layer] = f if f is not None else Unknown("the output does not depend on the input")
        shapes[layer] = tuple(int(s) for s in out.shape[1:])

    with torch.inference_mode(), FirstCalls(model, modules, seen, any_shape=True) as calls, walk:
        calls.run(model, x)
    return fields, shapes
