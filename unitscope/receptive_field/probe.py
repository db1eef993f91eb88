"""The probe: no rules for positions, only forward passes. The network is made a network of "or"s
on 0/1 values: every convolution, linear map and matrix product outputs 1 wherever any input it
weighs is 1 (a max over its window and channels), max- and average-pooling a max over the same
window, activations and normalisations the identity, attention the max over its query, keys and
values, layout ops run as they are. It is fed threshold images, 1 on the rows above row r (or
below, or the columns left/right of a column). An element's output is then 1 exactly when its
support reaches past the threshold, so counting over all thresholds gives every element's support
box, in 2·(H+W) forward passes of cheap ops (maxima, in float32, which is exact for 0 and 1) and no
backward pass.

Three kinds, as in the walk: `theory` (every path), `local` (an operand 1×1 over space broadcast
back over the positions — a gate — is a constant), `cell` (also attention keeps only its query).
A masked attention logit is -1: it weighs nothing, in softmax and in the product with the values.

`verify_elements` checks claimed boxes instead of measuring them: the output on "rows < r" is
monotone in r, so the thresholds r = y0 and y0 + 1 at each edge decide a box completely."""
from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..geometry import UnknownReceptiveField
from ..hooks import FirstCalls
from .boxes import EMPTY, compress
from .ops import (_ADAPTIVE, _AVG_POOLS, _CONVS, _MAX_POOLS, _op_name, _pair, _tensors, call_arg,
                  conv_args)
from .walk import ATTENTION, CONSTANT, DIMS_ONLY, LAYOUT, MASKED_LOGIT, MATMUL, POINTWISE, SOFTMAX

_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp",
           "nansum", "nanmean", "prod", "linalg_vector_norm"}
_IDENTITY = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh",
             "tanh_", "gelu", "gelu_", "silu", "silu_", "leaky_relu", "leaky_relu_", "elu",
             "elu_", "selu", "celu", "mish", "hardswish", "hardswish_", "hardsigmoid",
             "hardsigmoid_", "softplus", "exp", "log", "sqrt", "rsqrt", "neg", "abs", "square",
             "pow", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "threshold",
             "threshold_", "erf", "reciprocal", "sign", "batch_norm", "instance_norm",
             "group_norm", "layer_norm", "local_response_norm", "dropout", "dropout_",
             "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "dropout2d",
             "nan_to_num"}
_TUPLE_NORMS = {"native_batch_norm": 3, "_native_batch_norm_legit": 3,
                "_native_batch_norm_legit_no_training": 3, "native_layer_norm": 3,
                "native_group_norm": 3, "native_dropout": 2}


class _OrNetwork(TorchFunctionMode):
    """Runs a network as "or"s of 0/1 features (see the module docstring) for one kind."""

    def __init__(self, x: torch.Tensor, kind: str):
        super().__init__()
        self.kind = kind
        self.features: set[int] = set()
        self._mark(x)

    def _mark(self, t) -> None:
        for tensor in _tensors(t):
            key = id(tensor)
            if key not in self.features:
                self.features.add(key)
                weakref.finalize(tensor, self.features.discard, key)

    def _is(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.features

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name in CONSTANT or not any(self._is(t) for t in _tensors(args) + _tensors(kwargs)):
            return func(*args, **kwargs)
        out = self._replace(name, func, args, kwargs)
        self._mark(out)
        return out

    def _zeros_for_constants(self, v):
        if isinstance(v, torch.Tensor) and not self._is(v) and v.is_floating_point():
            return torch.zeros(v.shape, dtype=torch.float32)
        if isinstance(v, (list, tuple)):
            return type(v)(self._zeros_for_constants(i) for i in v)
        return v

    def _replace(self, name, func, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        if name in _IDENTITY or name in ("contiguous", "clone", "detach", "alias", "lift_fresh",
                                         "requires_grad_"):
            return x
        if name in ("to", "_to_copy", "float", "double", "half", "bfloat16", "type_as", "type"):
            return x
        if name in _TUPLE_NORMS:
            return (x,) + tuple(torch.empty(0) for _ in range(_TUPLE_NORMS[name] - 1))
        if name in _CONVS and self._is(call_arg(args, kwargs, 0, "input")):
            return self._conv(name, args, kwargs)
        aten = hasattr(func, "overloadpacket")
        if name.endswith(("3d", "3d_with_indices")) and (name in _MAX_POOLS or name in _AVG_POOLS):
            return func(*args, **kwargs)  # over channels too (LRN's decomposition): 0/1 in, >= 0 out
        if name in _MAX_POOLS or name in _AVG_POOLS:
            out = self._pool(name, args, kwargs)
            indices = name.endswith("indices") or (not aten and name in _MAX_POOLS and
                                                   call_arg(args, kwargs, 6, "return_indices", False))
            return (out, torch.zeros(out.shape, dtype=torch.long)) if indices else out
        if name in _ADAPTIVE:
            lean = _lean(x)
            out = F.adaptive_max_pool2d(lean.reshape(-1, 1, *lean.shape[-2:]), call_arg(args, kwargs, 1, "output_size"))
            out = out.reshape(*lean.shape[:-2], *out.shape[-2:]).expand(*x.shape[:-2], *out.shape[-2:])
            indices = name == "adaptive_max_pool2d" and (aten or call_arg(args, kwargs, 2, "return_indices", False))
            return (out, torch.zeros(out.shape, dtype=torch.long)) if indices else out
        if name in ("pad", "constant_pad_nd"):
            mode = (call_arg(args, kwargs, 2, "mode", "constant") if name == "pad" else "constant") or "constant"
            pad = list(call_arg(args, kwargs, 1, "pad"))
            shape = list(x.shape)
            for i in range(len(pad) // 2):
                shape[-1 - i] += pad[2 * i] + pad[2 * i + 1]
            lean = _lean(x)
            if any(lean.shape[-1 - i] != x.shape[-1 - i] for i in range(len(pad) // 2)):
                lean = x  # a padded axis is a broadcast one: pad it as it is
            out = F.pad(lean, pad, mode, **({"value": 0.0} if mode == "constant" else {}))
            return out.expand(shape)
        if name in DIMS_ONLY or name in LAYOUT:
            args = self._zeros_for_constants(args)
            if name in ("view", "_unsafe_view", "view_as"):  # a broadcast feature cannot be viewed
                args = tuple(a.contiguous() if self._is(a) else a for a in args)
            return func(*args, **{k: self._zeros_for_constants(v) for k, v in kwargs.items()})
        if name == "normalize":  # each element over its whole axis (Swin-V2's cosine attention)
            d = call_arg(args, kwargs, 2, "dim", 1)
            return _lean(x).amax(d, keepdim=True).clamp_min(0).expand(x.shape)
        if name in SOFTMAX:  # a masked logit (-1) weighs nothing: its weight is a masked 0 (-1)
            d = call_arg(args, kwargs, 1, "dim")
            row = _lean(x).amax(d if d is not None else -1, keepdim=True).clamp_min(0).expand(x.shape)
            return torch.where(x < 0, x, row) if bool((x < 0).any()) else row
        if name in _REDUCE:
            return self._reduce(name, args, kwargs, x)
        if name in POINTWISE:
            return self._pointwise(name, args, kwargs)
        if name in MATMUL:
            return self._matmul(name, args, kwargs)
        if name in ATTENTION:
            return self._attention(name, args, kwargs)
        if name in ("interpolate", "upsample_nearest2d", "_upsample_nearest_exact2d",
                    "upsample_bilinear2d", "upsample_bicubic2d"):
            return (func(*args, **kwargs).abs() > 0).float()
        return func(*args, **kwargs)  # an op with no "or" form: run as it is on 0/1 values

    # windows ------------------------------------------------------------------------------
    def _conv(self, name, args, kwargs):
        x = call_arg(args, kwargs, 0, "input")
        weight = call_arg(args, kwargs, 1, "weight")
        transposed, stride, padding, dilation, groups, output_padding = conv_args(name, args, kwargs)
        groups = int(groups or 1)
        kh, kw = weight.shape[-2:]
        cout = weight.shape[1] * groups if transposed else weight.shape[0]
        n, cin = x.shape[:2]
        # each output channel sees every input channel of its group; channels that are copies of
        # one (a stride-0 view: every channel of a plain convolution's output) are computed once
        x = _lean(x)
        if x.shape[1] == 1:
            g = x
        else:
            g = x.reshape(n, groups, cin // groups, *x.shape[2:]).amax(2) if groups > 1 else x.amax(1, keepdim=True)
        dh, dw = _pair(dilation, (1, 1))
        sh, sw = _pair(stride, (1, 1))
        if transposed:
            ph, pw = _pair(padding, (0, 0))
            ones = torch.ones(g.shape[1], 1, kh, kw)
            out = F.conv_transpose2d(g, ones, None, (sh, sw), (ph, pw), output_padding, g.shape[1], (dh, dw))
            out = (out > 0).float()
        else:
            if isinstance(padding, str):
                ph, pw = (0, 0) if padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
                pads = (0, 0, 0, 0) if padding == "valid" else (pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph)
            else:
                ph, pw = _pair(padding, (0, 0))
                pads = (pw, pw, ph, ph)
            out = _window_max(g, (kh, kw), (sh, sw), pads, (dh, dw))
        c = out.shape[1]
        if c == 1 or c == cout:
            return out.expand(n, cout, *out.shape[2:])
        return out.repeat_interleave(cout // c, dim=1)

    def _pool(self, name, args, kwargs):
        """A max or average pool as a max over the same windows (dilation and ceil_mode
        included) of the zero-padded input."""
        x = args[0]
        pool_arg = 2 if name == "lp_pool2d" else 1
        kh, kw = _pair(call_arg(args, kwargs, pool_arg, "kernel_size"))
        sh, sw = _pair(call_arg(args, kwargs, pool_arg + 1, "stride"), (kh, kw))
        ph, pw = (0, 0) if name == "lp_pool2d" else _pair(call_arg(args, kwargs, 3, "padding"), (0, 0))
        dh, dw = _pair(call_arg(args, kwargs, 4, "dilation"), (1, 1)) if name in _MAX_POOLS else (1, 1)
        ceil = bool(call_arg(args, kwargs, 5 if name in _MAX_POOLS else 4, "ceil_mode", False))
        extra = []
        for n, k, s, p, d in ((x.shape[-2], kh, sh, ph, dh), (x.shape[-1], kw, sw, pw, dw)):
            span = n + 2 * p - d * (k - 1) - 1
            out = (span + (s - 1 if ceil else 0)) // s + 1
            if ceil and (out - 1) * s >= n + p:
                out -= 1
            extra.append(max(0, (out - 1) * s + d * (k - 1) + 1 - (n + 2 * p)))
        full = x.shape[:-2]
        x = _lean(x)
        lead = x.shape[:-2]
        flat = x.reshape(-1, 1, *x.shape[-2:])
        out = _window_max(flat, (kh, kw), (sh, sw), (pw, pw + extra[1], ph, ph + extra[0]), (dh, dw))
        return out.reshape(*lead, *out.shape[-2:]).expand(*full, *out.shape[-2:])

    # values ----------------------------------------------------------------------------------
    def _reduce(self, name, args, kwargs, x):
        dim_at = 2 if name in ("norm", "linalg_vector_norm") else 1
        dims = call_arg(args, kwargs, dim_at, "dim", None)
        keep = bool(call_arg(args, kwargs, dim_at + 1 if name not in ("std", "var") else 3, "keepdim", False))
        if name in ("max", "min") and dims is None:
            return x.amax()
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = tuple(range(x.dim()))
        dims = tuple(d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims))
        out = _lean(x).amax(dim=dims, keepdim=True)
        out = out.expand([1 if d in dims else n for d, n in enumerate(x.shape)])
        if not keep:
            out = out.reshape([n for d, n in enumerate(x.shape) if d not in dims])
        if name in ("max", "min") and isinstance(call_arg(args, kwargs, 1, "dim", None), int):
            return out, torch.zeros(out.shape, dtype=torch.long)
        return out

    def _pointwise(self, name, args, kwargs):
        """The "or" of the features; a gate left out (local and cell kinds). A masked attention
        logit (an added constant <= MASKED_LOGIT, or one filled in) is -1: it stays -1 where every
        operand is masked, as the walk's flags do."""
        out = self._or(name, args, kwargs)
        mask = None
        if name in ("add", "add_"):
            for c in _tensors(args) + _tensors(kwargs):
                if not self._is(c) and c.is_floating_point() and bool((c <= MASKED_LOGIT).any()):
                    mask = (c <= MASKED_LOGIT) if mask is None else mask | (c <= MASKED_LOGIT)
        elif name in ("masked_fill", "masked_fill_"):
            value = call_arg(args, kwargs, 2, "value")
            if (not isinstance(value, torch.Tensor) or value.numel() == 1) and float(value) <= MASKED_LOGIT:
                mask = call_arg(args, kwargs, 1, "mask")
        if mask is not None:
            out = torch.where(mask, torch.tensor(-1.0), out)
        return out

    def _or(self, name, args, kwargs):
        tensors = [a for a in _tensors(args) + _tensors(kwargs)]
        feats = [a for a in tensors if self._is(a)]
        if name in ("where",) and any(self._is(a) for a in args[1:3]):
            feats = [a for a in args[1:3] if self._is(a)]
        shape = torch.broadcast_shapes(*[t.shape for t in tensors if t.is_floating_point() or self._is(t)])
        if self.kind != "theory" and len(feats) > 1:
            gates = [self._gate(f, feats, shape) for f in feats]
            if any(gates) and not all(gates):
                feats = [f for f, g in zip(feats, gates) if not g]
        out = _lean(feats[0])
        for f in feats[1:]:
            out = torch.maximum(out, _lean(f))
        return out.expand(shape) if tuple(out.shape) != tuple(shape) else out

    @staticmethod
    def _gate(t, feats, shape) -> bool:
        """`t` is 1 wide where the output is not, along an axis where another feature varies
        (on these threshold images; where none varies, along two or more axes)."""
        nd = len(shape)
        tshape = [1] * (nd - t.dim()) + list(t.shape)
        narrow = [d for d in range(nd) if tshape[d] == 1 and shape[d] > 1]
        if not narrow:
            return False
        for other in feats:
            if other is t:
                continue
            o = _lean(other)
            o = o.reshape(*([1] * (nd - o.dim())), *o.shape)
            for d in narrow:
                if o.shape[d] > 1 and not bool((o == o.narrow(d, 0, 1)).all()):
                    return True
        return len([d for d in narrow if d > 0]) >= 2

    def _matmul(self, name, args, kwargs):
        if name == "einsum":
            return self._einsum(args)
        if name == "linear":
            x, w = call_arg(args, kwargs, 0, "input"), call_arg(args, kwargs, 1, "weight")
            return x.amax(-1, keepdim=True).expand(*x.shape[:-1], w.shape[0])
        a, b = (args[1], args[2]) if name in ("baddbmm", "addmm", "addbmm") else (args[0], args[1])
        if a.dim() < 2 or b.dim() < 2:
            raise UnknownReceptiveField("a matrix product of a vector")
        shape = (*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
        if name == "addbmm":
            shape = (a.shape[-2], b.shape[-1])
        parts = []
        masked = self._is(a) and self._is(b) and name in ("matmul", "bmm", "__matmul__") \
            and bool((a < 0).any())
        if self._is(a):
            parts.append(a.amax(-1, keepdim=True).clamp_min(0))
        if self._is(b) and not (self.kind == "cell" and parts):
            # b's rows count where a's weight is not masked (-1): for each output row, an "or"
            # over the unmasked ones, as a product with the 0/1 matrix of a's unmasked weights
            parts.append(((a >= 0).float() @ _narrow(b) > 0).float() if masked
                         else b.amax(-2, keepdim=True))
        if name == "addbmm":
            parts = [p.amax(0) for p in parts]
        out = parts[0]
        for p in parts[1:]:
            out = torch.maximum(out, p)
        return out.expand(shape)

    def _einsum(self, args):
        eq = args[0].replace(" ", "")
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        lhs, rhs = eq.split("->")
        sizes = {}
        for s, t in zip(lhs.split(","), operands):
            sizes.update(zip(s, t.shape))
        parts = []
        for s, t in zip(lhs.split(","), operands):
            if not self._is(t) or (self.kind == "cell" and parts):
                continue
            summed = [i for i, c in enumerate(s) if c not in rhs]
            p = t.amax(dim=summed, keepdim=False) if summed else t
            kept = [c for c in s if c in rhs]
            p = p.permute([kept.index(c) for c in rhs if c in kept])
            dims = iter(p.shape)
            parts.append(p.reshape([next(dims) if c in kept else 1 for c in rhs]))
        out = parts[0]
        for p in parts[1:]:
            out = torch.maximum(out, p)
        return out.expand([sizes[c] for c in rhs])

    def _attention(self, name, args, kwargs):
        q, k, v = (call_arg(args, kwargs, i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
        token = 0 if name == "multi_head_attention_forward" else q.dim() - 2
        if name == "multi_head_attention_forward":
            shape = q.shape
        else:
            shape = (*q.shape[:-1], v.shape[-1])
        out = q.amax(-1, keepdim=True) if self._is(q) else torch.zeros(*q.shape[:-1], 1)
        if self.kind != "cell":
            for t in (k, v):
                if self._is(t):
                    out = torch.maximum(out, t.amax(dim=(token, t.dim() - 1), keepdim=True))
        out = out.expand(shape)
        return (out, None) if name == "multi_head_attention_forward" else out


def _lean(t: torch.Tensor) -> torch.Tensor:
    """`t` with every broadcast (stride-0) axis narrowed to 1: the same values, computed once."""
    for d in range(t.dim()):
        if t.shape[d] > 1 and t.stride(d) == 0:
            t = t.narrow(d, 0, 1)
    return t


def _narrow(t: torch.Tensor) -> torch.Tensor:
    """`t` lean, and 1 wide along its last axis where every column is the same (the channels of
    an attention head's values): a product with it then costs one column."""
    t = _lean(t)
    if t.shape[-1] > 1 and bool((t == t[..., :1]).all()):
        t = t[..., :1]
    return t


def _window_max(x: torch.Tensor, kernel, stride, pads, dilation) -> torch.Tensor:
    """The max over each (dilated) window of the zero-padded input, per channel."""
    if tuple(kernel) == (1, 1) and not any(pads):
        return x[:, :, ::stride[0], ::stride[1]]
    x = F.pad(x, pads)
    return F.max_pool2d(x, kernel, stride, 0, dilation)


def probe_elements(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int],
                   kinds: tuple[str, ...] = ("local",), chunk: int = 64
                   ) -> dict[str, dict[str, np.ndarray]]:
    """The support box of every element of each layer's output, measured by threshold probes on
    the "or" network: {kind: {layer: (4, *shape) int64 y0, x0, y1, x1}} (shape with the batch
    axis, kept 1 wide where nothing changes along it), EMPTY where an element sees no pixel."""
    from ..models import batch_limit

    chunk = batch_limit(model, chunk)
    result = {}
    for kind in kinds:
        try:
            result[kind] = _probe(model, modules, input_size, chunk, kind)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise UnknownReceptiveField(f"the probe cannot run this model ({str(e).splitlines()[0]})") from None
    return result


def _or_outputs(model, modules, kind: str, axis: int, low: bool, part: torch.Tensor, h: int,
                w: int) -> dict[str, torch.Tensor]:
    """Each layer's output of the "or" network on the threshold images of `part`: 1 on the rows
    (axis 0) or columns (axis 1) below each threshold r (`low`), or at and above it."""
    at = torch.arange(h if axis == 0 else w)
    lit = ((at[None, :] < part[:, None]) if low else (at[None, :] >= part[:, None])).float()
    x = (lit[:, None, :, None] if axis == 0 else lit[:, None, None, :]).expand(
        len(part), 3, h, w).contiguous()
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad(), FirstCalls(model, modules, outputs.__setitem__, any_shape=True) as calls:
        with _OrNetwork(x, kind):
            calls.run(model, x)
    return outputs


# (axis, low side, edge plane): rows < r find y0, rows >= r find y1, columns likewise
SWEEPS = ((0, True, 0), (0, False, 2), (1, True, 1), (1, False, 3))


def verify_elements(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int],
                    kind: str, expect: dict[str, np.ndarray], chunk: int = 64) -> bool:
    """Whether every element of each layer has the support `expect` gives it ((4, ...) planes
    y0, x0, y1, x1 broadcastable to the output, batch axis first; EMPTY where none), run on the
    "or" network at only the thresholds that decide it. An element's output on "rows < r" is
    1 exactly when y0 < r, which is monotone in r: it is 0 at r = y0 and 1 at r = y0 + 1 if and
    only if its support starts at row y0. So the thresholds {y0, y0 + 1} of every element (and
    the last one, where an element that sees nothing must stay 0) check every box completely,
    at a fraction of the 2·(H+W) images that measure it."""
    from ..models import batch_limit

    chunk = batch_limit(model, chunk)
    h, w = input_size
    try:
        for axis, low, edge in SWEEPS:
            n = h if axis == 0 else w
            users: dict[int, set[str]] = {}  # threshold -> the layers whose boxes it decides
            for layer, planes in expect.items():
                e = planes[edge]
                vals = np.unique(e[np.abs(e) < EMPTY // 2])
                if len(vals) and (vals.min() < 0 or vals.max() > n):
                    return False  # supports lie inside the image: such an edge is wrong
                wanted = {n if low else 0} | set((vals + (0 if low else -1)).tolist()) | set(
                    (vals + (1 if low else 0)).tolist())
                for t in wanted:
                    if (1 <= t <= n) if low else (0 <= t < n):
                        users.setdefault(int(t), set()).add(layer)
            groups: dict[frozenset, list[int]] = {}
            for t, layers in sorted(users.items()):
                groups.setdefault(frozenset(layers), []).append(t)
            # each group runs only as deep as its deepest layer: the many thresholds of an early
            # layer's fine grid of edges never pass through the rest of the network
            for layers, ts in groups.items():
                mods = {layer: modules[layer] for layer in modules if layer in layers}
                for s in range(0, len(ts), chunk):
                    part = torch.tensor(ts[s:s + chunk])
                    for layer, out in _or_outputs(model, mods, kind, axis, low, part, h, w).items():
                        got = (_lean(out.detach()) > 0).numpy()
                        e = expect[layer][edge]
                        e = e.reshape(*([1] * (got.ndim - e.ndim)), *e.shape)
                        r = part.numpy().reshape(-1, *([1] * (got.ndim - 1)))
                        want = (e < r) if low else (e > r)
                        if (np.broadcast_to(got, np.broadcast_shapes(got.shape, want.shape)) != want).any():
                            return False
    except (RuntimeError, ValueError, IndexError, TypeError):
        return False
    return True


def _probe(model, modules, input_size, chunk, kind) -> dict[str, np.ndarray]:
    h, w = input_size
    # (axis, low side?) -> thresholds: rows < r (r = 1..h) find y0; rows >= r (r = 0..h-1) find y1
    sweeps = [(0, True, range(1, h + 1)), (0, False, range(h)),
              (1, True, range(1, w + 1)), (1, False, range(w))]
    counts: dict[str, np.ndarray] = {}
    for sweep, (axis, low, thresholds) in enumerate(sweeps):
        thresholds = list(thresholds)
        for s in range(0, len(thresholds), chunk):
            part = torch.tensor(thresholds[s:s + chunk])
            for layer, out in _or_outputs(model, modules, kind, axis, low, part, h, w).items():
                positive = (_lean(out.detach()) > 0)
                n = positive.sum(0, keepdim=True, dtype=torch.int64).numpy()
                if layer not in counts:
                    counts[layer] = np.zeros((4, *n.shape), np.int64)
                elif counts[layer].shape[1:] != n.shape:  # broadcast in one chunk, not another
                    shape = np.broadcast_shapes(counts[layer].shape[1:], n.shape)
                    counts[layer] = np.ascontiguousarray(np.broadcast_to(counts[layer], (4, *shape)))
                    n = np.broadcast_to(n, shape)
                # low sweeps count zeros (y0 = thresholds below the support), high sweeps ones
                counts[layer][sweep] += (len(part) - n) if low else n
    result = {}
    for layer, c in counts.items():
        y0, y1, x0, x1 = c[0], c[1], c[2], c[3]
        empty = (y1 == 0) | (x1 == 0)
        boxes = np.stack([y0, x0, y1, x1]).astype(np.int64)
        boxes[:2, empty], boxes[2:, empty] = EMPTY, -EMPTY
        result[layer] = compress(boxes)
    return result
