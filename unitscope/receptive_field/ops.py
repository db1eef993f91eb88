"""What the walk and the probe both need of an intercepted torch call: its op's name (`conv2d` for
F.conv2d and aten.conv2d.default alike), its arguments by position or name, and the op families."""
from __future__ import annotations

from typing import Sequence

import torch

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


def conv_args(name: str, args, kwargs) -> tuple:
    """(transposed, stride, padding, dilation, groups, output_padding) of an intercepted
    convolution call (F.conv2d, F.conv_transpose2d, aten.convolution), by position or name."""
    if name in ("convolution", "_convolution"):
        stride, padding, dilation = (call_arg(args, kwargs, i, n) for i, n in
                                     ((3, "stride"), (4, "padding"), (5, "dilation")))
        return (bool(call_arg(args, kwargs, 6, "transposed", False)), stride, padding, dilation,
                call_arg(args, kwargs, 8, "groups", 1), call_arg(args, kwargs, 7, "output_padding", 0))
    if name == "conv_transpose2d":
        return (True, call_arg(args, kwargs, 3, "stride", 1), call_arg(args, kwargs, 4, "padding", 0),
                call_arg(args, kwargs, 7, "dilation", 1), call_arg(args, kwargs, 6, "groups", 1),
                call_arg(args, kwargs, 5, "output_padding", 0))
    return (False, call_arg(args, kwargs, 3, "stride", 1), call_arg(args, kwargs, 4, "padding", 0),
            call_arg(args, kwargs, 5, "dilation", 1), call_arg(args, kwargs, 6, "groups", 1), 0)
