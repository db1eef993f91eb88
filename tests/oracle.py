"""An independent check of receptive fields: the support of the input gradient, per position.

Neither the walk's rules nor the probe's "or" network are used. The model is copied to float64
with small positive weights and zero biases, and fed a positive image, so that ReLUs, pools and
normalisations cut no path by chance. Max-pooling becomes an average over the same window
(its gradient reaches the whole window, not the one switch a random image picks), and
activations that saturate (sigmoid, hard-sigmoid, tanh, ReLU6, clamps) the identity. For the
*local* field the global gates are detached: the output of every squeeze-and-excitation's global
pool (any module whose output is 1×1 over space and multiplied back) carries no gradient. An
attention logit masked by an added constant of -50 or less (Swin's -100) is made -inf, so that
its weight is exactly 0, as the model means it; every other non-zero gradient is a dependence.
Float64 by default: the far edges of a deep field contribute products of many small weights
(1e-40 and less at EfficientNet-B7's middle), which float32 rounds to zero.

Used by tests/test_networks.py, tests/test_zoo.py and bench/zoo.py."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

MASKED = -50.0  # an added attention mask at or below this is -inf here: exp(-inf) = 0 exactly


SATURATING = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "tanh", "tanh_", "relu6",
              "hardtanh", "hardtanh_", "clamp", "clamp_", "clip"}


def _soft(x: torch.Tensor, top: float) -> torch.Tensor:
    """A softsign into (-top, top): bounded like the function it stands for, its gradient never 0."""
    return top * x / (top + x.abs())


class _Unsaturated(TorchFunctionMode):
    """max_pool2d as avg_pool2d of the same window (padding, ceil_mode kept); activations that
    saturate as bounded ones that do not (sigmoid and hard-sigmoid 0.5 + a softsign, tanh,
    hardtanh and ReLU6 a softsign to their cap, clamps the identity): a gate's sigmoid at 40 has
    a zero gradient in floating point, though the gate depends on the whole image."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(getattr(func, "overloadpacket", func), "__name__", "")
        if name == "add" and len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args):
            for x, c in (args, args[::-1]):  # a constant mask added to attention logits: -inf
                if not c.requires_grad and c.is_floating_point() and bool((c <= MASKED).any()):
                    return torch.where(c <= MASKED, float("-inf"), x + c)
        if name in ("masked_fill", "masked_fill_") and len(args) >= 3 and not isinstance(
                args[2], torch.Tensor) and float(args[2]) <= MASKED:
            return args[0].masked_fill(args[1], float("-inf"))
        if name in SATURATING and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            if name.startswith(("sigmoid", "hardsigmoid")):
                return 0.5 + 0.5 * _soft(x, 1.0)
            if name.startswith(("tanh", "hardtanh")) or name == "relu6":
                top = 6.0 if name == "relu6" else float(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0))
                return _soft(x, abs(top) or 1.0)
            return x
        if func in (F.max_pool2d, torch.max_pool2d) or getattr(func, "__name__", "") in (
                "max_pool2d", "_max_pool2d", "max_pool2d_with_indices"):
            x = args[0]
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            a = dict(zip(names, args[1:]))
            a.update({k: v for k, v in kwargs.items() if k in names})
            k = a["kernel_size"]
            s = a.get("stride") or k
            out = F.avg_pool2d(x, k, s, a.get("padding", 0), bool(a.get("ceil_mode", False)),
                               count_include_pad=False)
            return (out, torch.zeros(out.shape, dtype=torch.long)) if a.get("return_indices") else out
        return func(*args, **kwargs)


def positive(model: nn.Module, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """A copy (float64 unless told) with small positive weights and zero biases (eval mode)."""
    m = copy.deepcopy(model).to(dtype).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                # divided by the fan-in, so that activations stay near 1 and attention's softmax
                # does not saturate (weights of exp(-50) would read as masked)
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_((0.5 + torch.rand(p.shape, generator=g, dtype=torch.float64)) / fan_in)
    return m


def detach_gates(model: nn.Module) -> list:
    """Hooks that detach every global gate: the output of a module inside a squeeze-and-
    excitation block that pools to 1×1 over space (torchvision's SqueezeExcitation, the SE of
    EfficientNet, MobileNet-V3, RegNetY). Returns the hook handles."""
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and _in_gate(model, name):
            handles.append(mod.register_forward_hook(lambda m, i, o: o.detach()))
    return handles


def _in_gate(model: nn.Module, name: str) -> bool:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    kind = type(parent).__name__.lower()
    return "squeeze" in kind or "excitation" in kind or kind in ("se", "selayer")


def gradient_boxes(model: nn.Module, module: str, size, view, positions=None,
                   local: bool = False, seed: int = 0, dtype=torch.float64) -> np.ndarray:
    """(4, n) bounding boxes y0, x0, y1, x1 of the input gradient's support at each of the layer's
    `positions` ((y, x) pairs on its N×C×H×W maps; default: all), with random positive channel
    weights; -1 where nothing reaches. `view` reads the layer's output (LayerView). Float32
    (`dtype`) is quicker for large models but can lose a deep field's far edges to underflow:
    check what it calls too large in float64."""
    m = positive(model, seed, dtype)
    handles = detach_gates(m) if local else []
    captured = {}
    h = m.get_submodule(module).register_forward_hook(lambda mod, i, o: captured.setdefault("o", o))
    g = torch.Generator().manual_seed(seed + 1)
    x = (0.5 + torch.rand(1, 3, *size, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    try:
        with _Unsaturated():
            m(x)
    finally:
        h.remove()
        for handle in handles:
            handle.remove()
    maps = view.maps(captured["o"])
    if positions is None:
        positions = [(y, xx) for y in range(maps.shape[2]) for xx in range(maps.shape[3])]
    w = (0.5 + torch.rand(maps.shape[1], generator=g, dtype=torch.float64)).to(dtype)
    boxes = np.full((4, len(positions)), -1, np.int64)
    for i, (y, xx) in enumerate(positions):
        grad, = torch.autograd.grad((maps[0, :, y, xx] * w).sum(), x, retain_graph=True)
        nz = grad[0].abs().sum(0) > 0
        rows, cols = torch.nonzero(nz.any(1)).flatten(), torch.nonzero(nz.any(0)).flatten()
        if len(rows):
            boxes[:, i] = [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]
    return boxes


def sample_positions(h: int, w: int, n: int = 12, seed: int = 0) -> list[tuple[int, int]]:
    """The four corners, the edge midpoints, the centre, and random positions up to `n`."""
    fixed = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, w // 2), (h // 2, 0),
             (h - 1, w // 2), (h // 2, w - 1), (h // 2, w // 2)]
    out = list(dict.fromkeys(fixed))
    rng = np.random.default_rng(seed)
    while len(out) < min(n, h * w):
        p = (int(rng.integers(h)), int(rng.integers(w)))
        if p not in out:
            out.append(p)
    return out


def judge(walk: np.ndarray, oracle: np.ndarray) -> str:
    """exact, too large (the walk's box holds the oracle's and more) or missing (the oracle
    reaches pixels outside the walk's box), for (4,) boxes; -1 boxes reach nothing."""
    if (walk == oracle).all():
        return "exact"
    if oracle[0] < 0:
        return "too large"
    if walk[0] < 0:
        return "missing"
    inside = walk[0] <= oracle[0] and walk[1] <= oracle[1] and walk[2] >= oracle[2] and walk[3] >= oracle[3]
    return "too large" if inside else "missing"
