"""Both together: the walk's support must equal the probe's at every position of a layer (else a
one-line error naming the layer, the position and both boxes); where the walk cannot follow a
layer, the probe's boxes are its field (display box = support)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..geometry import UnknownReceptiveField
from .fields import EMPTY, Unknown
from .probe import probe_supports
from .walk import trace_fields


@dataclass
class LayerField:
    """A layer's field: `boxes` (4, H, W) display boxes, `support` (4, H, W), `method` (analytic
    or probe) and, for probe fields, the reason the walk stopped."""

    boxes: np.ndarray
    support: np.ndarray
    method: str
    reason: str = ""
    jump: tuple[int | None, int | None] = (None, None)


class FieldMismatch(ValueError):
    """The walk and the probe disagree about a layer's field."""


def layer_fields(model: nn.Module, modules: dict[str, str], input_size: tuple[int, int],
                 probe: bool = True) -> tuple[dict[str, LayerField], dict[str, tuple[int, int, int]]]:
    """Each layer's field and output shape. With `probe`, the walk's support is checked against
    the probe's at every position; layers the walk cannot follow take the probe's boxes."""
    fields, shapes = trace_fields(model, modules, input_size)
    unknown = {layer for layer, f in fields.items() if isinstance(f, Unknown)}
    if not probe and unknown:
        layer = sorted(unknown)[0]
        raise UnknownReceptiveField(f"layer {layer}: {fields[layer].reason} (the probe is off)")
    probed = probe_supports(model, modules, input_size) if probe else {}
    result = {}
    for layer, f in fields.items():
        if isinstance(f, Unknown):
            support = probed[layer]
            result[layer] = LayerField(support, support, "probe", f.reason)
            continue
        if probe:
            _check(layer, modules[layer], f.support, probed[layer])
        jump = tuple(int(j) if j.denominator == 1 else None for j in f.jump)
        result[layer] = LayerField(f.display, f.support, "analytic", jump=jump)
    return result, shapes


def _check(layer: str, module: str, walk: np.ndarray, probed: np.ndarray) -> None:
    empty_w, empty_p = walk[0] >= EMPTY // 2, probed[0] >= EMPTY // 2
    differ = (walk != probed).any(0) & ~(empty_w & empty_p)
    if differ.any():
        y, x = (int(v) for v in np.argwhere(differ)[0])

        def show(b, e):
            return "nothing" if e[y, x] else f"{tuple(int(v) for v in b[:, y, x])}"
        raise FieldMismatch(
            f"receptive field of layer {layer} (module {module}) at position ({y}, {x}): the "
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
