"""The walk: one real forward pass followed op by op in a TorchFunctionMode (it sees `F.conv2d` of
a Python model and `aten.conv2d` of a torch.export model alike), carrying a Field for every
feature map. Ops with a rule: convolution (any stride, padding, dilation, groups; transposed),
pooling (max, average, LP; `ceil_mode`; adaptive), padding (constant, reflect, replicate,
circular), upsampling (nearest, nearest-exact, bilinear, bicubic, area; `align_corners`), spatial
slicing, reductions over the spatial axes, elementwise ops (with broadcasting), and channel
concatenation. Where branches meet (addition, concatenation) a position's box is the union of its
branches' boxes. Normalisations are treated as their affine part. Any other op makes the field
*unknown* (with the op's name)."""
from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..geometry import UnknownReceptiveField
from ..hooks import FirstCalls
from .fields import (Field, Unknown, _adaptive_sources, _map_axis, _resize_sources,
                     _transposed_sources, _window_sources)
from .ops import (_ADAPTIVE, _AVG_POOLS, _CONVS, _MAX_POOLS, _POINTWISE, _REDUCTIONS, _UPSAMPLE,
                  _op_name, _pair, _tensors, call_arg)


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
