"""Exact receptive fields of any layer of a CNN, found two independent ways.

`analytic_receptive_fields` follows a real forward pass op by op (a TorchFunctionMode sees every
conv, pool, pad, add, cat, ...; for a TorchScript model, whose ops Python does not see, the same
rules run over ATen ops in a TorchDispatchMode) and carries (size, stride, start) per axis through it; where
branches meet the field is the union over the paths. The gradient probe back-propagates from one
position of the layer with the network made linear and positive (every convolution an all-ones
kernel of the same geometry, max-pool an average, activations and norms the identity) and reads
off the input pixels with non-zero gradient. `check_against_probe` holds the two against each
other; `probe_receptive_field` is the answer for layers the walk cannot follow.

Coordinates are pixel edges: pixel i spans [i, i+1). A unit at feature position p along an axis
sees input pixels [start + stride·p, start + stride·p + size); its centre is offset + stride·p
with offset = start + size/2. Starts may be negative (the field reaches into the padding).
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .geometry import IDENTITY, AxisRF, ReceptiveField, UnknownReceptiveField, clipped
from .models.torchscript import ScriptedModel


class _Unknown:
    """Marks a tensor whose field could not be followed, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason


def call_arg(args: Sequence, kwargs: dict, index: int, name: str, default=None):
    """An argument of an intercepted torch call, given by position or by name."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _pair(v) -> tuple[int, int]:
    """(height, width) of a kernel/stride/padding argument: an int, or a list whose last two
    entries are the spatial ones (3-D pooling over channels × H × W)."""
    if isinstance(v, (list, tuple)):
        return (int(v[-2]), int(v[-1])) if len(v) > 1 else (int(v[0]), int(v[0])) if v else (None, None)
    return int(v), int(v)


def _op_name(func) -> str:
    """`conv2d` for torch.nn.functional.conv2d and for aten.conv2d.default alike."""
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet or func, "__name__", str(func))


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _window(rf: ReceptiveField, kernel, stride, padding, dilation) -> ReceptiveField:
    """The field after a conv or pool window given PyTorch's arguments."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride not in (None, [], ()) else kernel)
    dh, dw = _pair(dilation if dilation is not None else 1)
    if isinstance(padding, str):
        if padding == "valid":
            ph = pw = 0
        else:  # PyTorch's "same" (stride 1 only): total (k-1)·d, the smaller half before
            ph, pw = (dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2
    else:
        ph, pw = _pair(padding if padding is not None else 0)
    return ReceptiveField(rf.y.through(kh, sh, ph, dh), rf.x.through(kw, sw, pw, dw))


class _FieldRules:
    """Records the receptive field of every tensor with spatial last two axes (4-D feature maps,
    and the 5-D views that cross-channel normalisation makes of them) from the ops that make it."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.fields: dict[int, ReceptiveField | _Unknown] = {id(x): IDENTITY}
        self._keep = [x]  # ids stay unique while the tensors are alive

    def field(self, t: torch.Tensor):
        return self.fields.get(id(t))

    def _record(self, func, args, kwargs, out):
        ins = [t for t in _tensors(args) + _tensors(kwargs) if id(t) in self.fields]
        outs = [t for t in _tensors(out) if t.dim() >= 4]
        if not ins or not outs:
            return out
        name = _op_name(func)
        try:
            rf = self._rule(name, args, kwargs, ins, outs[0])
        except UnknownReceptiveField as e:
            rf = _Unknown(f"{name}: {e}")
        for t in outs:
            self.fields[id(t)] = rf
            self._keep.append(t)
        return out

    def _rule(self, name, args, kwargs, ins, out):
        fields = [self.fields[id(t)] for t in ins]
        for f in fields:
            if isinstance(f, _Unknown):
                raise UnknownReceptiveField(f.reason)
        src = ins[0]
        if name in ("conv2d", "convolution", "_convolution") and src is args[0]:
            weight = call_arg(args, kwargs, 1, "weight")
            if name != "conv2d" and call_arg(args, kwargs, 6, "transposed", False):
                raise UnknownReceptiveField("transposed convolution")
            return _window(fields[0], tuple(weight.shape[-2:]), call_arg(args, kwargs, 3, "stride", 1),
                           call_arg(args, kwargs, 4, "padding", 0),
                           call_arg(args, kwargs, 5, "dilation", 1))
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            kernel = call_arg(args, kwargs, 1, "kernel_size")
            return _window(fields[0], kernel, call_arg(args, kwargs, 2, "stride", None),
                           call_arg(args, kwargs, 3, "padding", 0),
                           call_arg(args, kwargs, 4, "dilation", 1))
        if name in ("avg_pool2d", "avg_pool3d"):
            kernel = call_arg(args, kwargs, 1, "kernel_size")
            return _window(fields[0], kernel, call_arg(args, kwargs, 2, "stride", None),
                           call_arg(args, kwargs, 3, "padding", 0), 1)
        if name in ("pad", "constant_pad_nd"):
            pad = list(call_arg(args, kwargs, 1, "pad"))
            mode = "constant" if name == "constant_pad_nd" else call_arg(args, kwargs, 2, "mode",
                                                                          "constant")
            if mode not in ("constant", None) and any(pad[:4]):
                # reflect/replicate padding copies interior pixels: the window still starts
                # `before` pixels earlier, but those pixels come from inside the image.
                raise UnknownReceptiveField(f"{mode} padding")
            left, right = (pad + [0, 0])[:2]
            top, bottom = (pad + [0, 0, 0, 0])[2:4]
            rf = fields[0]
            return ReceptiveField(rf.y.through(1, 1, top), rf.x.through(1, 1, left))
        if name.startswith(("adaptive_", "_adaptive_", "upsample", "reflection_pad",
                            "replication_pad")) or name == "interpolate":
            if out.shape[-2:] == (1, 1):
                raise UnknownReceptiveField("global pooling (the whole input)")
            raise UnknownReceptiveField(name)
        # Everything else must keep the spatial grid (elementwise ops, norms, activations,
        # channel concat, in-place updates); the field is the union over its inputs.
        same = [t for t in ins if t.shape[-2:] == out.shape[-2:]]
        if len(same) != len(ins):
            raise UnknownReceptiveField(f"{name} changes the spatial size "
                                        f"{tuple(src.shape[-2:])} -> {tuple(out.shape[-2:])}")
        rf = self.fields[id(same[0])]
        for t in same[1:]:
            rf = rf.union(self.fields[id(t)])
        return rf


class _FieldTracker(_FieldRules, TorchFunctionMode):
    """The field rules over torch functions (F.conv2d, F.max_pool2d, ...) of a Python model."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        return self._record(func, args, kwargs, func(*args, **kwargs))


class _AtenFieldTracker(_FieldRules, TorchDispatchMode):
    """The field rules over ATen ops, which a TorchScript model runs out of Python's sight."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        return self._record(func, args, kwargs, func(*args, **kwargs))


def analytic_receptive_fields(model: nn.Module, modules: Iterable[str],
                              input_size: tuple[int, int]) -> dict[str, ReceptiveField | str]:
    """Receptive field of the output of each named module, for an input of `input_size` (H, W).
    A module whose field cannot be followed maps to a string saying why (use
    `probe_receptive_field` for it)."""
    return trace_layers(model, modules, input_size)[0]


def trace_layers(model: nn.Module, modules: Iterable[str], input_size: tuple[int, int]
                 ) -> tuple[dict[str, ReceptiveField | str], dict[str, tuple[int, ...]]]:
    """One forward pass of a 1×3×H×W zero image: the analytic receptive field and the output
    shape (C, H, W) of each named module."""
    wanted = list(modules)
    named = dict(model.named_modules())
    x = torch.zeros(1, 3, *input_size)
    outputs: dict[str, torch.Tensor] = {}
    handles = [named[m].register_forward_hook(
        lambda mod, inp, out, m=m: outputs.update({m: out})) for m in wanted]
    tracker = (_AtenFieldTracker if isinstance(model, ScriptedModel) else _FieldTracker)(x)
    try:
        with torch.inference_mode(), tracker:
            model(x)
    finally:
        for h in handles:
            h.remove()
    result: dict[str, ReceptiveField | str] = {}
    for m in wanted:
        if m not in outputs:
            result[m] = "module did not run in the forward pass"
            continue
        f = tracker.field(outputs[m]) if isinstance(outputs[m], torch.Tensor) else None
        if f is None:
            result[m] = "output is not a 4-D feature map"
        elif isinstance(f, _Unknown):
            result[m] = f.reason
        else:
            result[m] = f
    shapes = {m: tuple(o.shape[1:]) for m, o in outputs.items() if isinstance(o, torch.Tensor)}
    return result, shapes


class _PositiveLinear(TorchFunctionMode):
    """Makes a network linear with positive weights and one channel, so that a gradient can never
    cancel and the probe costs little: every convolution becomes a normalised all-ones kernel of
    the same size, stride, padding and dilation over all its input channels (one output channel;
    which input pixels reach an output depends only on that geometry), max-pool becomes avg-pool,
    activations and normalisations become the identity."""

    _IDENTITY = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "silu", "gelu",
                 "sigmoid", "hardswish", "hardsigmoid", "elu", "mish", "tanh", "dropout",
                 "batch_norm", "group_norm", "layer_norm", "instance_norm",
                 "local_response_norm"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self._IDENTITY:
            return args[0] if args else kwargs["input"]
        if name == "conv2d":
            x, weight = args[0], call_arg(args, kwargs, 1, "weight")
            ones = torch.ones(1, x.shape[1], *weight.shape[-2:], dtype=x.dtype)
            return F.conv2d(x, ones / ones.numel(), None, call_arg(args, kwargs, 3, "stride", 1),
                            call_arg(args, kwargs, 4, "padding", 0),
                            call_arg(args, kwargs, 5, "dilation", 1))
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            kernel = call_arg(args, kwargs, 1, "kernel_size")
            stride = call_arg(args, kwargs, 2, "stride", None) or kernel
            dilation = _pair(call_arg(args, kwargs, 4, "dilation", 1))
            if dilation != (1, 1):
                raise UnknownReceptiveField("dilated max-pool has no probe")
            out = F.avg_pool2d(args[0], kernel, stride, call_arg(args, kwargs, 3, "padding", 0),
                               call_arg(args, kwargs, 5, "ceil_mode", False), True)
            return (out, None) if call_arg(args, kwargs, 6, "return_indices", False) else out
        return func(*args, **kwargs)


class _Reached(Exception):
    """Stops a forward pass once the wanted layer has run."""


def probe_boxes(model: nn.Module, module: str, input_size: tuple[int, int],
                positions: list[tuple[int, int]]) -> list[tuple[int, int, int, int] | None]:
    """For each feature position of `module`, (y0, x0, y1, x1) of the input pixels with non-zero
    gradient from that position (all channels), with the model made positive and linear
    (float64, one image per position, one pass; the model's own weights are not used). Boxes are clipped to the input, as any gradient
    is; None where a position sees only padding."""
    captured = {}

    def stop(mod, inp, out):
        captured["out"] = out
        raise _Reached

    def run(net: nn.Module) -> torch.Tensor:
        x = torch.ones(len(positions), 3, *input_size, dtype=torch.float64, requires_grad=True)
        handle = dict(net.named_modules())[module].register_forward_hook(stop)
        try:
            with net.positive_linear() if isinstance(net, ScriptedModel) else _PositiveLinear():
                net(x)
        except _Reached:
            pass
        finally:
            handle.remove()
        return x

    try:  # the probe never reads the weights, so the model itself serves ...
        x = run(model)
    except RuntimeError:  # ... unless some op mixes its float parameters with the double input
        if isinstance(model, ScriptedModel):  # (its probe graph is float64 throughout)
            raise
        x = run(copy.deepcopy(model).double())
    out = captured["out"]
    sum(out[b, :, y, x_].sum() for b, (y, x_) in enumerate(positions)).backward()
    boxes = []
    for b in range(len(positions)):
        nz = x.grad[b].abs().sum(0) > 0
        rows = torch.nonzero(nz.any(1)).flatten()
        cols = torch.nonzero(nz.any(0)).flatten()
        boxes.append(None if len(rows) == 0 else
                     (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes


def probe_box(model: nn.Module, module: str, input_size: tuple[int, int],
              position: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """`probe_boxes` for one position."""
    return probe_boxes(model, module, input_size, [position])[0]


def probe_receptive_field(model: nn.Module, module: str, input_size: tuple[int, int],
                          feature_size: tuple[int, int]) -> ReceptiveField:
    """Receptive field of `module` measured by gradient probes alone (for layers the analytic walk
    cannot follow). Needs a unit whose field lies inside the image on each axis."""
    fh, fw = feature_size
    centre, below, right = probe_boxes(model, module, input_size,
                                       [(fh // 2, fw // 2), (min(fh // 2 + 1, fh - 1), fw // 2),
                                        (fh // 2, min(fw // 2 + 1, fw - 1))])
    if centre is None:
        raise UnknownReceptiveField(f"the centre unit of {module} sees no input pixel")
    axes = []
    for axis, n in ((0, fh), (1, fw)):
        lo, hi = centre[axis], centre[axis + 2]
        if lo == 0 or hi == input_size[axis]:
            raise UnknownReceptiveField(
                f"the field of {module} is larger than the {input_size} input on axis "
                f"{'yx'[axis]}; probe with a larger input")
        stride = 0
        if n > 1:
            stride = (below, right)[axis][axis] - lo
        p = (fh, fw)[axis] // 2
        axes.append(AxisRF(size=hi - lo, stride=stride, start=lo - stride * p))
    return ReceptiveField(*axes)


def check_against_probe(model: nn.Module, module: str, rf: ReceptiveField,
                        input_size: tuple[int, int], feature_size: tuple[int, int]) -> None:
    """Raise AssertionError unless the analytic field, clipped to the image, equals the probe's
    support at the corners and the centre of the feature map."""
    fh, fw = feature_size
    positions = sorted({(0, 0), (fh - 1, fw - 1), (fh // 2, fw // 2), (0, fw - 1)})
    for pos, got in zip(positions, probe_boxes(model, module, input_size, positions)):
        want = clipped(rf.box(*pos), input_size)
        if want != got:
            raise AssertionError(f"receptive field of {module} at {pos}: analytic {want} "
                                 f"but gradient probe {got}")


def feature_sizes(model: nn.Module, modules: Sequence[str],
                  input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each named module for one input of `input_size`."""
    named = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [named[m].register_forward_hook(
        lambda mod, inp, out, m=m: shapes.update({m: tuple(out.shape[1:])}))
        for m in modules]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, *input_size))
    finally:
        for h in handles:
            h.remove()
    return shapes
