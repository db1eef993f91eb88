"""Forward hooks that see the **first call** of each named module in a forward pass.

A module can run more than once per forward pass (a shared `nn.ReLU`, a block applied twice);
every stage (layer table, activations, projections, verification) takes the output of its first
call, so that all of them describe the same tensor. A module whose output is not one feature-map
tensor (a tuple, a dict) is refused with its name. A layer of another layout (channels-last,
tokens) is read through its view (`receptive_field.LayerView`), which gives N×C×H×W maps."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class LayerOutputError(ValueError):
    """A layer's module does not return one N×C×H×W tensor."""


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every wanted module has run."""


def check_output(layer: str, module: str, output) -> torch.Tensor:
    """The module's output if it is a 4-D tensor, else LayerOutputError naming the module."""
    if not isinstance(output, torch.Tensor):
        raise LayerOutputError(
            f"layer {layer!r} (module {module!r}) returns a {type(output).__name__}, not a "
            f"feature-map tensor; choose the submodule that makes the tensor you want")
    if output.dim() != 4:
        raise LayerOutputError(
            f"layer {layer!r} (module {module!r}) returns a tensor of shape "
            f"{tuple(output.shape)}, not N×C×H×W; choose a convolutional layer")
    return output


class FirstCalls:
    """Hooks on `modules` (layer name -> module path) that call `seen(layer, output)` at each
    module's first call of a forward pass, and stop the pass (StopForward) once all have run when
    `stop` is True. Use as a context manager; `run(model, x)` does one pass."""

    def __init__(self, model: nn.Module, modules: dict[str, str],
                 seen: Callable[[str, torch.Tensor], None], stop: bool = True,
                 any_shape: bool = False, views: dict | None = None):
        named = dict(model.named_modules())
        missing = [m for m in modules.values() if m not in named]
        if missing:
            raise ValueError(f"the model has no module {missing[0]!r}")
        self.modules, self.seen, self.stop = dict(modules), seen, stop
        self.any_shape = any_shape  # the raw output, whatever its shape (the field walk)
        self.views = views or {}  # layer -> LayerView: how to read a non-N×C×H×W layer
        self.done: set[str] = set()
        self.handles = [named[m].register_forward_hook(self._hook(layer, m))
                        for layer, m in self.modules.items()]

    def _hook(self, layer: str, module: str):
        def hook(mod, inputs, output):
            if layer in self.done:
                return None  # a later call of the same module: not the layer's output
            self.done.add(layer)
            if self.any_shape:
                if not isinstance(output, torch.Tensor):
                    check_output(layer, module, output)
                self.seen(layer, output)
            else:
                view = self.views.get(layer)
                if view is not None and view.layout != "nchw" and isinstance(output, torch.Tensor):
                    want = 3 if view.layout == "tokens" else 4
                    if output.dim() != want:
                        raise LayerOutputError(
                            f"layer {layer!r} (module {module!r}) returns a tensor of shape "
                            f"{tuple(output.shape)}, not the {view.layout} output its layer "
                            f"table describes")
                    output = view.maps(output)
                self.seen(layer, check_output(layer, module, output))
            if self.stop and len(self.done) == len(self.modules):
                raise StopForward
            return None
        return hook

    def run(self, model: nn.Module, x: torch.Tensor):
        """One forward pass; returns the model's output (None when stopped early)."""
        self.done = set()
        try:
            out = model(x)
        except StopForward:
            out = None
        missing = [layer for layer in self.modules if layer not in self.done]
        if missing:
            raise LayerOutputError(
                f"layer {missing[0]!r} (module {self.modules[missing[0]]!r}) never ran in the "
                f"forward pass")
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "FirstCalls":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def layer_outputs(model: nn.Module, modules: dict[str, str], x: torch.Tensor,
                  views: dict | None = None) -> dict[str, torch.Tensor]:
    """The first-call output of each layer for input `x` (one pass, stopped after the last), as
    N×C×H×W maps (through `views`, layer -> LayerView, for other layouts)."""
    outputs: dict[str, torch.Tensor] = {}
    with FirstCalls(model, modules, outputs.__setitem__, views=views) as calls:
        calls.run(model, x)
    return outputs
