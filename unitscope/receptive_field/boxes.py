"""Boxes for every element of a tensor of any shape, and how the ops the walk meets map them.

A `Boxes` holds, for every element of one tensor, its support (the bounding box of the image
pixels that can change it) and its display box (the same field extended into the padding), as
eight int64 planes y0, x0, y1, x1 of the support then of the display box. The planes are stored
broadcastable to the tensor's shape: a dimension along which every box is the same (the channels
of a plain convolution's output) is kept 1 wide, so a feature map costs H×W boxes, not C×H×W.

Layout ops (permutes, views, window partitions, slicing, concatenation, rolls) are followed
exactly by running the op itself on a tensor of element indices and gathering the boxes; window
ops (convolution, pooling, padding, resizing) act on the last two axes, a list of source
positions per output position along each, as before."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

EMPTY = 1 << 40  # a support with no pixel: y0 = x0 = EMPTY, y1 = x1 = -EMPTY
LO = np.array([True, True, False, False] * 2)  # which of the eight planes are lower edges
FILL = np.where(LO, EMPTY, -EMPTY).astype(np.int64)  # the planes of "no pixel"


@dataclass
class Boxes:
    """Support and display planes (8, *shape) broadcastable to the tensor they describe."""

    planes: np.ndarray

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> "Boxes":
        """The input image (N, 3, H, W): element (n, c, y, x) sees pixel (y, x)."""
        h, w = shape[-2:]
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        one = np.stack([ys, xs, ys + 1, xs + 1]).astype(np.int64)
        planes = np.concatenate([one, one]).reshape(8, *([1] * (len(shape) - 2)), h, w)
        return cls(planes)

    @classmethod
    def empty(cls, ndim: int) -> "Boxes":
        return cls(FILL.reshape(8, *([1] * ndim)).copy())

    @property
    def ndim(self) -> int:
        return self.planes.ndim - 1

    def full(self, shape: tuple[int, ...]) -> np.ndarray:
        """The planes broadcast to `shape` (a view; no copy)."""
        p = self.planes.reshape(8, *([1] * (len(shape) - self.ndim)), *self.planes.shape[1:])
        return np.broadcast_to(p, (8, *shape))

    def support_empty(self) -> np.ndarray:
        return self.planes[0] >= EMPTY // 2


def compress(planes: np.ndarray) -> np.ndarray:
    """The same planes with every dimension along which they do not change kept 1 wide."""
    for d in range(1, planes.ndim):
        if planes.shape[d] > 1:
            first = planes[(slice(None),) * d + (slice(0, 1),)]
            if (planes == first).all():
                planes = first
    return np.ascontiguousarray(planes)


def clip_display(planes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Display boxes reduced to what each element can see: a display edge may lie beyond its
    support only past the image border (padding), and an element that sees no pixel has no box.
    Used before any union, so that a branch whose window lies wholly in the padding does not
    stretch the union over image pixels no branch sees."""
    h, w = image_hw
    s, d = planes[:4], planes[4:]
    empty = s[0] >= EMPTY // 2
    out = np.empty_like(planes)
    out[:4] = s
    out[4] = np.where(s[0] <= 0, d[0], s[0])
    out[5] = np.where(s[1] <= 0, d[1], s[1])
    out[6] = np.where(s[2] >= h, d[2], s[2])
    out[7] = np.where(s[3] >= w, d[3], s[3])
    out[4:, empty] = FILL[4:, None] if empty.ndim else FILL[4:]
    return out


def union_all(parts: list[np.ndarray], image_hw: tuple[int, int]) -> np.ndarray:
    """The elementwise union of broadcastable plane arrays (of the same rank). Where every part
    sees no pixel, the display box is the union of the parts' (padding) boxes as they are."""
    raw = parts[0]
    clipped = clip_display(parts[0], image_hw)
    for p in parts[1:]:
        raw = np.where(LO.reshape(8, *([1] * (raw.ndim - 1))), np.minimum(raw, p), np.maximum(raw, p))
        c = clip_display(p, image_hw)
        clipped = np.where(LO.reshape(8, *([1] * (c.ndim - 1))), np.minimum(clipped, c),
                           np.maximum(clipped, c))
    empty = clipped[0] >= EMPTY // 2
    return np.where(empty, raw, clipped) if empty.any() else clipped


def union_over(planes: np.ndarray, dims: tuple[int, ...], image_hw: tuple[int, int],
               keepdim: bool = True) -> np.ndarray:
    """The union of the boxes along tensor dimensions `dims` (dimension d of the tensor is axis
    d + 1 of the planes)."""
    axes = tuple(d + 1 for d in dims if planes.shape[d + 1] > 1)
    if axes:
        lo = LO.reshape(8, *([1] * (planes.ndim - 1)))
        raw = np.where(lo, planes.min(axis=axes, keepdims=True), planes.max(axis=axes, keepdims=True))
        c = clip_display(planes, image_hw)
        big = np.where(lo, EMPTY, -EMPTY)
        c = np.where(c[0:1] >= EMPTY // 2, big, c)  # empty elements take no part
        clipped = np.where(lo, c.min(axis=axes, keepdims=True), c.max(axis=axes, keepdims=True))
        empty = clipped[0] >= EMPTY // 2
        planes = np.where(empty, raw, clipped) if empty.any() else clipped
    if not keepdim:
        planes = planes.reshape(planes.shape[0], *[n for i, n in enumerate(planes.shape[1:])
                                                   if i not in {d % (planes.ndim - 1) for d in dims}])
    return planes


def map_axis(planes: np.ndarray, dim: int, sources: np.ndarray, valid: np.ndarray,
             jump: Fraction, extend: bool) -> np.ndarray:
    """The planes after an op that, along tensor dimension `dim` (of full length in `planes`),
    makes output position o from the input positions sources[o, t] where valid[o, t]. Sources
    outside the input are padding: the display box extends the edge position's box by `jump`
    (with `extend`), the support ignores them."""
    axis = dim + 1
    n = planes.shape[axis]
    src = np.where(valid, sources, 0)
    inside = valid & (src >= 0) & (src < n)
    clip = np.clip(src, 0, n - 1)
    shift = np.floor((src - clip) * float(jump)).astype(np.int64)
    moved = np.moveaxis(planes, axis, -1)  # (8, ..., n)
    g = moved[..., clip]  # (8, ..., M, K)
    lo_c, hi_c = (0, 2) if dim == planes.ndim - 3 else (1, 3)
    out = np.empty(g.shape[:-1], np.int64)
    for c in range(8):
        use = inside if c < 4 or not extend else valid
        v = g[c]
        if c >= 4 and c - 4 in (lo_c, hi_c):
            v = v + np.where(use, shift, 0)
        v = np.where(use, v, FILL[c])
        out[c] = v.min(axis=-1) if LO[c] else v.max(axis=-1)
    return np.moveaxis(out, -1, axis)
