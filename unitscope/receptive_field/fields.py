"""Source positions along one axis: for each output position of an op, the input positions it
reads (and which of them are real), for windows, transposed windows, adaptive pooling and every
interpolation mode, with PyTorch's own arithmetic."""
from __future__ import annotations

import numpy as np

from ..geometry import UnknownReceptiveField


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
