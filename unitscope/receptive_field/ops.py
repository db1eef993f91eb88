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
