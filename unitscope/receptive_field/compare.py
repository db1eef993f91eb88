"""Both together: the walk's support must equal the probe's at every position of a layer, for each
kind of field the layer has (else a one-line error naming the layer, the kind, the position and
both boxes); where the walk cannot follow a layer, the probe's boxes are its field (display box =
support). Where the walk follows every layer, the probe checks its boxes at the thresholds that
decide them (`verify_elements`) and measures in full only a kind that fails."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..geometry import UnknownReceptiveField
from .boxes import EMPTY
from .layout import LayerView, find_view
from .probe import probe_elements, verify_elements
from .walk import Traced, Unknown, trace_tensors


@dataclass
class LayerField:
    """A layer's field per position (4, H, W arrays of y0, x0, y1, x1): `boxes` and `support`
    are the local field's display box and support (what patches are cut to); `theory` and
    `theory_boxes` the theoretical field (differs where global gates modulate the unit); `cell`
    the token's cell (None where it equals the local field). `method` is analytic or probe."""

    boxes: np.ndarray
    support: np.ndarray
    method: str
    reason: str = ""
    jump: tuple[int | None, int | None] = (None, None)
    theory: np.ndarray | None = None
    theory_boxes: np.ndarray | None = None
    cell: np.ndarray | None = None
    view: LayerView = LayerView()

    def __post_init__(self):
        if self.theory is None:
            self.theory, self.theory_boxes = self.support, self.boxes

    @property
    def gated(self) -> bool:
        """Whether the whole image also modulates the unit through global gates."""
        return not np.array_equal(self.theory, self.support)


class FieldMismatch(ValueError):
    """The walk and the probe disagree about a layer's field."""


def layer_fields(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int],
                 probe: bool = True, layouts: dict[str, str] | None = None,
                 tokens: dict[str, str] | None = None
                 ) -> tuple[dict[str, LayerField], dict[str, tuple[int, int, int]]]:
    """Each layer's field and output shape (C, H, W as the layer's view reads it). With
    `probe`, the walk's support is checked against the probe's at every position, for every kind
    of field that differs from the local one; layers the walk cannot follow take the probe's.
    `layouts` decides a layer's layout where its fields cannot; `tokens` which tokens of a token
    layer are its positions (patch, cls, all; default patch)."""
    layouts, tokens = layouts or {}, tokens or {}
    traced, raw_shapes = trace_tensors(model, modules, input_size)
    unknown = {layer for layer, f in traced.items() if isinstance(f, Unknown)}
    if not probe and unknown:
        layer = sorted(unknown)[0]
        raise UnknownReceptiveField(f"layer {layer}: {traced[layer].reason} (the probe is off)")
    image_hw = tuple(input_size)
    views, walked = {}, {}
    for layer, f in traced.items():
        if isinstance(f, Traced):
            shape = (1, *raw_shapes[layer])
            views[layer] = find_view(layer, f.kind("cell").planes, shape, layouts.get(layer)
                                     ).reading(layer, tokens.get(layer, "patch"))
            v = views[layer]
            walked[layer] = {k: v.positions(f.kind(k).planes, shape, image_hw)
                             for k in ("theory", "local", "cell")}
    kinds = ["local"]
    if unknown or any(not np.array_equal(w["theory"][:4], w["local"][:4]) for w in walked.values()):
        kinds.append("theory")
    if unknown or any(views[lay].layout == "tokens" or not np.array_equal(w["cell"][:4], w["local"][:4])
                      for lay, w in walked.items()):
        kinds.append("cell")
    if probe and not unknown:
        # the walk knows every layer: the probe checks its boxes at the thresholds that decide
        # them; only a kind that fails is measured in full, for the message naming the position
        expect = {k: {layer: f.kind(k).planes[:4] for layer, f in traced.items()} for k in kinds}
        kinds = [k for k in kinds if not verify_elements(model, modules, input_size, k, expect[k])]
    probed = probe_elements(model, modules, input_size, tuple(kinds)) if probe and kinds else {}
    result, shapes = {}, {}
    for layer in modules:
        shape = (1, *raw_shapes[layer])
        if layer in unknown:
            views[layer] = find_view(layer, probed["cell"][layer], shape, layouts.get(layer)
                                     ).reading(layer, tokens.get(layer, "patch"))
            v = views[layer]
            sup = {k: v.positions(probed[k][layer], shape, image_hw) for k in ("theory", "local", "cell")}
            cell = sup["cell"] if not np.array_equal(sup["cell"], sup["local"]) else None
            result[layer] = LayerField(sup["local"], sup["local"], "probe", traced[layer].reason,
                                       theory=sup["theory"], theory_boxes=sup["theory"],
                                       cell=cell, view=v)
        else:
            w, v = walked[layer], views[layer]
            if probe:
                for kind in kinds:
                    _check(layer, modules[layer], kind, w[kind][:4],
                           v.positions(probed[kind][layer], shape, image_hw))
            jump = tuple(int(j) if j.denominator == 1 else None for j in traced[layer].jump)
            cell = w["cell"][:4] if not np.array_equal(w["cell"][:4], w["local"][:4]) else None
            if v.layout != "nchw":
                jump = (None, None) if v.layout == "tokens" else jump
            result[layer] = LayerField(w["local"][4:], w["local"][:4], "analytic", jump=jump,
                                       theory=w["theory"][:4], theory_boxes=w["theory"][4:],
                                       cell=cell, view=v)
        shapes[layer] = views[layer].hw(raw_shapes[layer])
    return result, shapes


def _check(layer: str, module: str, kind: str, walk: np.ndarray, probed: np.ndarray) -> None:
    empty_w, empty_p = walk[0] >= EMPTY // 2, probed[0] >= EMPTY // 2
    differ = (walk != probed).any(0) & ~(empty_w & empty_p)
    if differ.any():
        y, x = (int(v) for v in np.argwhere(differ)[0])

        def show(b, e):
            return "nothing" if e[y, x] else f"{tuple(int(v) for v in b[:, y, x])}"
        what = {"local": "receptive field", "theory": "theoretical receptive field",
                "cell": "token cell"}[kind]
        raise FieldMismatch(
            f"{what} of layer {layer} (module {module}) at position ({y}, {x}): the "
            f"walk finds {show(walk, empty_w)} but the probe {show(probed, empty_p)} "
            f"(y0, x0, y1, x1; {int(differ.sum())} positions differ)")


def feature_sizes(model: nn.Module, modules: Iterable[str] | dict[str, str],
                  input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each named module (first call) for one input of `input_size`."""
    from ..hooks import layer_outputs

    mods = modules if isinstance(modules, dict) else {m: m for m in modules}
    with torch.inference_mode():
        outs = layer_outputs(model, mods, torch.zeros(1, 3, *input_size))
    return {k: tuple(int(s) for s in v.shape[1:]) for k, v in outs.items()}
