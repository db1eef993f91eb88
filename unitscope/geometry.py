"""Receptive-field geometry as plain data (no torch): a field's size, stride and start per axis,
and the input box a unit at a feature position sees. Coordinates are pixel edges: pixel i spans
[i, i+1); a box is (y0, x0, y1, x1) with exclusive ends and may reach outside the image."""
from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd


class UnknownReceptiveField(Exception):
    """The analytic walk met an operation whose effect on the field it cannot compute."""


@dataclass(frozen=True)
class AxisRF:
    """Receptive field along one axis: `size` pixels, `stride` pixels between neighbouring
    positions, `start` = first input pixel seen by position 0."""

    size: int
    stride: int
    start: int

    @property
    def offset(self) -> float:
        """Input-pixel centre of position 0 (pixel i spans [i, i+1))."""
        return self.start + self.size / 2

    def span(self, position: int) -> tuple[int, int]:
        """Input pixels [lo, hi) seen by feature position `position`."""
        lo = self.start + self.stride * position
        return lo, lo + self.size

    def through(self, kernel: int, stride: int, pad_before: int, dilation: int = 1) -> "AxisRF":
        """The field after a sliding window (conv or pool) applied on top of this one."""
        return AxisRF(size=self.size + (kernel - 1) * dilation * self.stride,
                      stride=self.stride * stride,
                      start=self.start - pad_before * self.stride)

    def union(self, other: "AxisRF") -> "AxisRF":
        """Smallest field covering both (branches that meet in an add or a concat)."""
        if other.stride != self.stride:
            raise UnknownReceptiveField(
                f"branches with different strides meet ({self.stride} vs {other.stride})")
        start = min(self.start, other.start)
        end = max(self.start + self.size, other.start + other.size)
        return AxisRF(size=end - start, stride=self.stride, start=start)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one layer's units, per axis (y = rows, x = columns)."""

    y: AxisRF
    x: AxisRF

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1): the input pixels a unit at feature position (y, x) sees, exclusive
        ends, not clipped to the image."""
        y0, y1 = self.y.span(y)
        x0, x1 = self.x.span(x)
        return y0, x0, y1, x1

    def union(self, other: "ReceptiveField") -> "ReceptiveField":
        return ReceptiveField(self.y.union(other.y), self.x.union(other.x))


IDENTITY = ReceptiveField(AxisRF(1, 1, 0), AxisRF(1, 1, 0))


def clipped(box: tuple[int, int, int, int],
            input_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """A box clipped into an image of `input_size` (H, W); None if nothing of it is inside."""
    y0, x0, y1, x1 = box
    h, w = input_size
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None




def field_of(row) -> ReceptiveField:
    """The ReceptiveField of one row of the layer table."""
    return ReceptiveField(AxisRF(int(row["rf_size"]), int(row["rf_stride"]), int(row["rf_start"])),
                          AxisRF(int(row["rf_size_x"]), int(row["rf_stride_x"]),
                                 int(row["rf_start_x"])))


def layer_row(table_path: str | os.PathLike, layer: str) -> pd.Series:
    """One layer's row of a layers.parquet file."""
    table = pd.read_parquet(table_path)
    hit = table[table["layer"] == layer]
    if hit.empty:
        raise ValueError(f"layer {layer!r} not in {table_path}; it has {', '.join(table['layer'])}")
    return hit.iloc[0]
