"""Where a layer keeps its channels and its positions, read off its per-element fields.

A layer's output is N×C×H×W (`nchw`, convolutions), N×H×W×C (`nhwc`, the channels-last blocks
of Swin, ConvNeXt and MaxViT) or N×T×C (`tokens`, ViT: a token per cell of the patch grid, plus
class tokens that sit on no cell). The positional axes are those along which the centre of the
elements' fields moves; channels are the rest (concatenated branches may change a field's size
along the channels, never its centre). `LayerView.maps` turns an output into N×C×H×W maps, so every
later stage (maxima, top-k, projections) reads any layout the same way.

A token layer's units are read over its patch tokens (`tokens: patch`, the grid is the map), its
class tokens alone (`cls`: a 1×T map, T the number of class tokens) or every token (`all`: a 1×T
map in token order, class tokens first)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..hooks import LayerOutputError
from .boxes import EMPTY, union_over

LAYOUTS = ("nchw", "nhwc", "tokens")
TOKENS = ("patch", "cls", "all")


@dataclass(frozen=True)
class LayerView:
    """How to read a layer's output: `layout`; for tokens, the index of the first patch token,
    the patch grid (gh, gw) the patch tokens fill in row-major order, and which tokens count."""

    layout: str = "nchw"
    first_token: int = 0
    grid: tuple[int, int] = (0, 0)
    tokens: str = "patch"

    def _span(self) -> tuple[int, int]:
        """The tokens read, [start, stop), and whether they form the grid."""
        gh, gw = self.grid
        return {"patch": (self.first_token, self.first_token + gh * gw),
                "cls": (0, self.first_token), "all": (0, self.first_token + gh * gw)}[self.tokens]

    def maps(self, out: torch.Tensor) -> torch.Tensor:
        """The output as N×C×H×W maps (for tokens: the grid of patch tokens, or a 1×T row)."""
        if self.layout == "nchw":
            return out
        if self.layout == "nhwc":
            return out.permute(0, 3, 1, 2)
        a, b = self._span()
        h, w = self.hw((out.shape[1], out.shape[2]))[1:]
        return out[:, a:b, :].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)

    def as_dict(self) -> dict:
        """Plain values (for a config and a table row)."""
        return {"layout": self.layout, "first_token": self.first_token,
                "grid": list(self.grid), "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerView":
        return cls(d.get("layout", "nchw"), int(d.get("first_token", 0)),
                   tuple(int(v) for v in d.get("grid", (0, 0))), d.get("tokens", "patch"))

    def reading(self, layer: str, tokens: str) -> "LayerView":
        """This view reading `tokens` (patch, cls, all); a layer without class tokens has no cls."""
        if tokens not in TOKENS:
            raise ValueError(f"tokens {tokens!r}; valid: {', '.join(TOKENS)}")
        if self.layout != "tokens":
            return self
        if tokens == "cls" and self.first_token == 0:
            raise LayerOutputError(f"layer {layer}: tokens: cls, but its tokens are all patch "
                                   f"tokens (no class token); use tokens: patch")
        return dataclasses.replace(self, tokens=tokens)

    def positions(self, planes: np.ndarray, shape: tuple[int, ...], image_hw) -> np.ndarray:
        """Per-element planes (k, *shape) (shape with the batch axis) as per-position (k, H, W):
        the union over a position's channels."""
        k = planes.shape[0]
        p = planes.reshape(k, *([1] * (len(shape) - planes.ndim + 1)), *planes.shape[1:])
        p = np.broadcast_to(p, (k, *shape))[:, :1]
        if k == 4:  # support only: pad to the eight planes union_over works on
            p = np.concatenate([p, p])
        channel = {"nchw": 1, "nhwc": 3, "tokens": 2}[self.layout]
        p = union_over(np.ascontiguousarray(p), (channel,), image_hw, keepdim=False)[:k]
        if self.layout == "nchw":
            return p[:, 0]
        if self.layout == "nhwc":
            return p[:, 0]
        a, b = self._span()
        _, h, w = self.hw(shape[1:])
        return p[:, 0, a:b].reshape(k, h, w)

    def hw(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H, W) of an output of `shape` (without the batch axis)."""
        if self.layout == "nchw":
            return tuple(shape)
        if self.layout == "nhwc":
            return shape[2], shape[0], shape[1]
        if self.tokens == "patch":
            return shape[1], self.grid[0], self.grid[1]
        a, b = self._span()
        return shape[1], 1, b - a


def find_view(layer: str, planes: np.ndarray, shape: tuple[int, ...], hint: str | None = None
              ) -> LayerView:
    """The layer's view, from per-element cell planes (8 or 4, ...) of an output of `shape`
    (with the batch axis); `hint` (a layout name) decides where the fields cannot."""
    nd = len(shape)
    k = planes.shape[0]
    p = planes.reshape(k, *([1] * (nd - planes.ndim + 1)), *planes.shape[1:])
    box = p[4:8] if k == 8 else p[:4]
    moves = {d: max(_moves_along(box[a] + box[b], d) for a, b in ((0, 2), (1, 3)))
             for d in range(1, nd)}
    most = max(moves.values(), default=0.0)
    positional = {d for d, m in moves.items() if m > 0 and m >= most / 3}
    if hint is not None:
        if hint not in LAYOUTS:
            raise ValueError(f"layer {layer}: layout {hint!r}; valid: {', '.join(LAYOUTS)}")
        want = 3 if hint == "tokens" else 4
        if nd != want:
            raise LayerOutputError(f"layer {layer}: layout {hint} needs a {want}-D output, not "
                                   f"{tuple(shape)}")
        if hint != "tokens":
            return LayerView(hint)
    if nd == 4 and hint is None:
        if shape[2] == shape[3] == 1 and shape[1] > 1:  # one position: channels on axis 1
            return LayerView("nchw")  # (concatenated branches may still differ along them)
        nchw, nhwc = positional <= {2, 3}, positional <= {1, 2}
        if nchw and nhwc:
            if shape[2] == shape[3] == 1 or (shape[3] == 1 and shape[1] > 1):
                return LayerView("nchw")
            if shape[1] == shape[2] == 1:
                return LayerView("nhwc")
        elif nchw or nhwc:
            return LayerView("nchw" if nchw else "nhwc")
        raise LayerOutputError(
            f"layer {layer}: cannot tell which axes of its {tuple(shape[1:])} output hold the "
            f"positions; say so with layout: nchw or layout: nhwc")
    if nd == 3 and positional <= {1}:
        return _token_view(layer, np.broadcast_to(box, (4, *shape)), shape)
    if nd == 3:
        raise LayerOutputError(f"layer {layer}: a {tuple(shape[1:])} output whose tokens are not "
                               f"along the second axis (batch first: N×T×C)")
    raise LayerOutputError(f"layer {layer}: an output of shape {tuple(shape)} is neither N×C×H×W, "
                           f"N×H×W×C nor N×T×C; choose a layer of feature maps or tokens")


def _moves_along(centre: np.ndarray, d: int) -> float:
    """How often field centres move between neighbours along axis `d` (0 to 1). Along the
    positions at every step (every other, after a 2× nearest upsampling); along channels only
    where concatenated branches meet, and only at border positions, where a branch's window is
    clipped: an axis counts as positional when its centres move at least a third as often as
    along the axis where they move most."""
    n = centre.shape[d]
    if n < 2:
        return 0.0
    step = centre.take(range(1, n), axis=d) != centre.take(range(n - 1), axis=d)
    return float(step.mean())


def _token_view(layer: str, box: np.ndarray, shape) -> LayerView:
    """Class tokens first (no cell, or one that is not a cell of the grid: a pooled token), then
    the patch tokens in row-major order on a grid."""
    cell = np.stack([box[0].min(-1)[0], box[1].min(-1)[0], box[2].max(-1)[0], box[3].max(-1)[0]])
    on_grid = cell[0] < EMPTY // 2
    if not on_grid.any():
        raise LayerOutputError(f"layer {layer}: no token sits on a patch cell")
    first = int(np.argmax(on_grid))
    if not on_grid[first:].all():
        raise LayerOutputError(f"layer {layer}: its tokens do not follow the class tokens on a "
                               f"patch grid (no cell for token {first + int(np.argmin(on_grid[first:]))})")
    for start in range(first, min(first + 9, cell.shape[1])):
        patch = cell[:, start:]
        ys, xs = np.unique(patch[0]), np.unique(patch[1])
        gh, gw = len(ys), len(xs)
        if gh * gw == patch.shape[1] and (patch[0] == np.repeat(ys, gw)).all() and \
                (patch[1] == np.tile(xs, gh)).all():
            return LayerView("tokens", start, (gh, gw))
    raise LayerOutputError(f"layer {layer}: its {cell.shape[1] - first} patch tokens do not fill a "
                           f"grid in row-major order")
