"""The probe: no rules, only a forward pass. The network is made linear and positive (every
convolution an all-ones kernel, max-pooling an average over the same window, activations and
normalisations the identity, float64) and fed threshold images, 1 on the rows above row r (or
below, or the columns left/right of a column). A position's output is then positive exactly when
its support reaches past the threshold, so counting the zero outputs over all thresholds gives
every position's support box at once, in 2·(H+W) forward passes and no backward pass."""
from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..geometry import UnknownReceptiveField
from ..hooks import FirstCalls
from .fields import EMPTY
from .ops import _CONVS, _MAX_POOLS, _op_name, _pair, _tensors, call_arg


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
    from ..models import batch_limit

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
