"""Receptive-field geometry as plain data (no torch). Coordinates are pixel edges: pixel i spans
[i, i+1); a box is (y0, x0, y1, x1) with exclusive ends and may reach outside the image.

A layer's field is a box per feature position (`rf/L.parquet`). Where it is affine — position
(y, x) sees rows [start + stride·y, start + stride·y + size), the same for columns — the layer
table also gives size, stride and start per axis (`AffineField`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnknownReceptiveField(ValueError):
    """The analytic walk met an operation whose effect on the field it cannot compute."""


@dataclass(frozen=True)
class AxisRF:
    """An affine field along one axis: `size` pixels, `stride` pixels between neighbouring
    positions, `start` = first input pixel seen by position 0."""

    size: int
    stride: int
    start: int

    @property
    def offset(self) -> float:
        """Input-pixel centre of position 0 (pixel i spans [i, i+1))."""
        return self.start + self.size / 2

    def span(self, position: int) -> tuple[int, int]:
        lo = self.start + self.stride * position
        return lo, lo + self.size


@dataclass(frozen=True)
class AffineField:
    """An affine field on both axes (y = rows, x = columns)."""

    y: AxisRF
    x: AxisRF

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        y0, y1 = self.y.span(y)
        x0, x1 = self.x.span(x)
        return y0, x0, y1, x1


def affine_of(boxes: np.ndarray, jump: tuple[int | None, int | None] = (None, None)) -> AffineField | None:
    """The AffineField that gives exactly these (4, H, W) boxes, or None. `jump` is the stride
    to report along an axis of length 1 (where no neighbour shows it)."""
    y0, x0, y1, x1 = boxes
    axes = []
    for lo, hi, other_axis, axis, j in ((y0, y1, 1, 0, jump[0]), (x0, x1, 0, 1, jump[1])):
        size = hi - lo
        if (size != size.flat[0]).any() or (lo != np.take(lo, [0], axis=other_axis)).any():
            return None
        line = np.take(lo, 0, axis=other_axis)
        steps = np.diff(line)
        if len(steps) and (steps != steps[0]).any():
            return None
        stride = int(steps[0]) if len(steps) else int(j or 0)
        axes.append(AxisRF(int(size.flat[0]), stride, int(line[0])))
    return AffineField(*axes)


def clipped(box: tuple[int, int, int, int],
            input_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """A box clipped into an image of `input_size` (H, W); None if nothing of it is inside."""
    y0, x0, y1, x1 = box
    h, w = input_size
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None


def resized_crop(width: int, height: int, resize_size: int, input_size: int
                 ) -> tuple[int, int, int, int]:
    """(new width, new height, left, top) of the reference preprocessing, with torchvision's
    arithmetic: the shorter side resized to `resize_size`, the longer side to
    int(resize_size · long / short) (truncated), then the centre crop's offsets
    int(round((new − input_size) / 2)); a side shorter than the crop is resized up to it."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = resize_size, int(resize_size * long / short)
    nw, nh = (new_short, new_long) if width <= height else (new_long, new_short)
    nw, nh = max(input_size, nw), max(input_size, nh)
    return nw, nh, int(round((nw - input_size) / 2.0)), int(round((nh - input_size) / 2.0))


def source_box(box: tuple[int, int, int, int], file_size: tuple[int, int],
               crop: tuple[int, int, int, int] | None, resize_size: int,
               input_size: int) -> tuple[float, float, float, float]:
    """A box in network-input pixels as (y0, x0, y1, x1) in the pixels of the original file
    (after its EXIF orientation), through the preprocessing: the optional crop (left, top, right,
    bottom), the resize of the shorter side to `resize_size`, the centre crop to `input_size`.
    `file_size` is the (width, height) of the image the manifest records (after the crop)."""
    w, h = file_size
    nw, nh, left, top = resized_crop(w, h, resize_size, input_size)
    sx, sy = w / nw, h / nh
    ox, oy = (crop[0], crop[1]) if crop is not None else (0, 0)
    y0, x0, y1, x1 = box
    return (oy + (y0 + top) * sy, ox + (x0 + left) * sx, oy + (y1 + top) * sy, ox + (x1 + left) * sx)
