"""A field: for every position of one feature map, two boxes in input pixels (y0, x0, y1, x1;
end-exclusive) — the *support* (the pixels that can change it) and the *display box* (the same
field extended into the padding, the box patches are cut to) — and how one op, acting on each
spatial axis as a list of source positions per output position, maps a field to the next."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..geometry import UnknownReceptiveField

EMPTY = 1 << 40  # a support with no pixel: y0 = x0 = EMPTY, y1 = x1 = -EMPTY


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
