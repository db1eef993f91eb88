"""Receptive fields per position against an independent oracle, on a zoo of small models that
cover every case the walk has a rule for (and some it has not), on the five built-in networks,
and against hand-computed numbers and the paper's ZF-net sizes.

The oracle shares no code with unitscope: it copies the model, swaps its modules for a linear
positive network (convolutions with random positive weights, ReLUs and norms the identity,
max-pooling an average over the same window built with F.unfold), and runs one backward pass per
output position (batched), taking the bounding box of the non-zero input gradient."""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from unitscope.geometry import AxisRF
from unitscope.layers import layer_table
from unitscope.models import MODELS, build_model, resolve_layers
from unitscope.models.efficientnet_lite import Conv2dSame
from unitscope.receptive_field import EMPTY, FieldMismatch, feature_sizes, layer_fields


# ----------------------------------------------------------------------------- the oracle
class _AvgWindow(nn.Module):
    """A max-pool's windows (dilation, padding, ceil_mode) averaged, via F.unfold."""

    def __init__(self, pool: nn.MaxPool2d, out_hw):
        super().__init__()
        self.pool, self.out_hw = pool, out_hw

    def forward(self, x):
        p = self.pool
        k, s, pad, d = (v if isinstance(v, tuple) else (v, v) for v in
                        (p.kernel_size, p.stride or p.kernel_size, p.padding, p.dilation))
        n, c, h, w = x.shape
        need_h = (self.out_hw[0] - 1) * s[0] + d[0] * (k[0] - 1) + 1
        need_w = (self.out_hw[1] - 1) * s[1] + d[1] * (k[1] - 1) + 1
        x = F.pad(x, (pad[1], max(pad[1], need_w - w - pad[1]), pad[0], max(pad[0], need_h - h - pad[0])))
        cols = F.unfold(x.reshape(n * c, 1, *x.shape[-2:]), k, dilation=d, stride=s)
        out = cols.mean(1).reshape(n, c, -1)
        oh, ow = self.out_hw
        return out[:, :, :oh * ow].reshape(n, c, oh, ow) if out.shape[-1] >= oh * ow else out


IDENTITY_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.Sigmoid, nn.SiLU, nn.GELU,
                    nn.Tanh, nn.BatchNorm2d, nn.LocalResponseNorm, nn.Dropout, nn.GroupNorm)


class _Stop(Exception):
    pass


def linearised(model: nn.Module, size, thin: bool = False) -> nn.Module:
    """The oracle's network: positive weights, identity nonlinearities, averaged max-pools. With
    `thin`, every convolution maps one channel to one channel (which pixels reach a position does
    not depend on the channels; chains of convolutions and additions only, no concatenation)."""
    m = copy.deepcopy(model).double().eval()
    g = torch.Generator().manual_seed(0)
    for name, mod in list(m.named_modules()):
        parent = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
        leaf = name.rpartition(".")[2]
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            if thin:
                mod.in_channels = mod.out_channels = mod.groups = 1
                mod.weight = nn.Parameter(torch.zeros(1, 1, *mod.weight.shape[-2:], dtype=torch.float64))
                mod.bias = None
            with torch.no_grad():
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g, dtype=torch.float64))
                if mod.bias is not None:
                    mod.bias.zero_()
        elif isinstance(mod, IDENTITY_MODULES) and name:
            setattr(parent, leaf, nn.Identity())
        elif isinstance(mod, nn.AdaptiveMaxPool2d):
            setattr(parent, leaf, nn.AdaptiveAvgPool2d(mod.output_size))
    # max-pools become averages over the same windows: their output sizes first
    shapes = {}

    def record(name):
        def hook(mod, i, o):
            shapes.setdefault(name, o.shape[-2:])
        return hook

    hooks = [mod.register_forward_hook(record(name))
             for name, mod in m.named_modules() if isinstance(mod, nn.MaxPool2d)]
    try:
        with torch.no_grad():
            m(torch.zeros(1, 1 if thin else 3, *size, dtype=torch.float64))
    except RuntimeError:
        pass  # a thin network cannot run its classifier: the shapes before it are recorded
    for h in hooks:
        h.remove()
    for name, mod in list(m.named_modules()):
        if isinstance(mod, nn.MaxPool2d):
            parent = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
            setattr(parent, name.rpartition(".")[2], _AvgWindow(mod, tuple(shapes[name])))
    return m


def oracle_boxes(model: nn.Module, module: str, size, positions=None, chunk=256,
                 thin: bool = False) -> np.ndarray:
    """(4, H, W) bounding box of the non-zero input gradient of every output position (all
    channels) of the first call of `module`; -1 where none."""
    m = linearised(model, size, thin)
    target = m.get_submodule(module) if module else m
    channels = 1 if thin else 3

    def forward(x):
        out = {}

        def hook(mod, i, o):
            if "o" not in out:
                out["o"] = o
                raise _Stop
        h = target.register_forward_hook(hook)
        try:
            m(x)
        except _Stop:
            pass
        h.remove()
        return out["o"]

    with torch.no_grad():
        oh, ow = forward(torch.ones(1, channels, *size, dtype=torch.float64)).shape[-2:]
    positions = positions or [(y, x) for y in range(oh) for x in range(ow)]
    boxes = np.full((4, oh, ow), -1, np.int64)
    for s in range(0, len(positions), chunk):
        part = positions[s:s + chunk]
        x = torch.ones(len(part), channels, *size, dtype=torch.float64, requires_grad=True)
        out = forward(x)
        sum(out[b, :, y, xx].sum() for b, (y, xx) in enumerate(part)).backward()
        nz = x.grad.abs().sum(1) > 0
        for b, (y, xx) in enumerate(part):
            rows = torch.nonzero(nz[b].any(1)).flatten()
            cols = torch.nonzero(nz[b].any(0)).flatten()
            if len(rows):
                boxes[:, y, xx] = [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]
    return boxes


# ----------------------------------------------------------------------------- the zoo
class TwoStrides(nn.Module):
    """A stride-2 branch added to a stride-3 branch (resized to meet), then a conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(3, 4, 3, stride=3)
        self.up = nn.Upsample(size=(12, 12))
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c(self.a(x) + self.up(self.b(x)))


class PaddedStrides(nn.Module):
    """A stride-2 branch added to a stride-3 branch with so much padding that its border windows
    lie wholly in the padding, one side of the image while the other branch's lie inside."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, stride=2)
        self.b = nn.Conv2d(3, 4, 1, stride=3, padding=6)
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(self.a(x) + self.b(x))


class InceptionStem(nn.Module):
    """Inception-v3's stem (valid 3×3 convs, stride-2 max-pools)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2)
        self.c2 = nn.Conv2d(8, 8, 3)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.p1 = nn.MaxPool2d(3, 2)
        self.c4 = nn.Conv2d(8, 8, 1)
        self.c5 = nn.Conv2d(8, 8, 3)
        self.p2 = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return self.p2(self.c5(self.c4(self.p1(self.c3(self.c2(self.c1(x)))))))


class AsymmetricSame(nn.Module):
    """An asymmetric pad, then TensorFlow "SAME" convolutions (stride 2 and depthwise)."""

    def __init__(self):
        super().__init__()
        self.a = Conv2dSame(3, 6, 3, stride=2)
        self.b = Conv2dSame(6, 6, 5, stride=2, groups=6)

    def forward(self, x):
        return self.b(self.a(F.pad(x, (0, 1, 2, 0))))


class PaddedConcat(nn.Module):
    """An Inception-style concatenation whose 1×1 branch sees only padding at the border."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.one = nn.Conv2d(4, 2, 1, padding=1)
        self.five = nn.Conv2d(4, 2, 5, padding=3)
        self.pool = nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([self.one(x), self.five(x), F.pad(self.pool(x), (1, 1, 1, 1))], 1)


class Shared(nn.Module):
    """One conv block applied twice (a shared module): its field is its first call's."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.down = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x):
        return self.block(self.down(self.block(self.stem(x))))


class Residual(nn.Module):
    """A ResNet basic block with a strided 1×1 projection."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(3, 4, 1, stride=2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.down(x))


class Crop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.after = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.after(self.conv(x)[:, :, 2:-3, 1:])


class SqueezeExcite(nn.Module):
    """A global pool gating every position: each position depends on the whole input
    (theoretically); its local field is the convolution's 3×3. With `local` the gate is detached
    (for the oracle: the gradient then flows through the local path only)."""

    local = False

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.gate = nn.Conv2d(4, 4, 1)
        self.after = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        g = self.gate(x.mean((2, 3), keepdim=True))
        return self.after(x * (g.detach() if self.local else g))


def local_variant(model: nn.Module) -> nn.Module:
    """The model with its global gates detached (where it has a `local` switch)."""
    if not hasattr(model, "local"):
        return model
    m = copy.deepcopy(model)
    m.local = True
    return m


class Shuffle(nn.Module):
    """PixelShuffle: a layout op (followed exactly by running it on element indices)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.b = nn.Conv2d(2, 4, 3)

    def forward(self, x):
        return self.b(self.shuffle(self.a(x)))


class Cumulative(nn.Module):
    """A cumulative sum down the rows: an op the walk has no rule for (the probe measures it)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=2))


def seq(*mods):
    return nn.Sequential(*mods)


# name -> (model, input size, modules checked)
ZOO = {
    "nearest upsample": (seq(nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2),
                             nn.Conv2d(4, 4, 3, padding=1)), (16, 16), ["1", "2"]),
    "bilinear upsample 2.5x": (seq(nn.Conv2d(3, 4, 3, stride=2), nn.Upsample(scale_factor=2.5, mode="bilinear"),
                                   nn.Conv2d(4, 4, 3)), (21, 19), ["1", "2"]),
    "adaptive avg pool 6 on 16x16": (seq(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(6),
                                         nn.Conv2d(4, 4, 3, padding=1)), (16, 16), ["1", "2"]),
    "stride-2 plus stride-3 branch": (TwoStrides(), (24, 24), ["c"]),
    "stride-3 branch wholly in the padding": (PaddedStrides(), (23, 23), ["out"]),
    "3x3 dilation 2 padding 1": (seq(nn.Conv2d(3, 4, 3, dilation=2, padding=1),
                                     nn.Conv2d(4, 4, 3, dilation=2, padding=1)), (15, 15), ["0", "1"]),
    "inception-v3 stem": (InceptionStem(), (47, 47), ["c3", "p2"]),
    "TF-SAME after an asymmetric pad": (AsymmetricSame(), (21, 18), ["a", "b"]),
    "concat whose border sees only padding": (PaddedConcat(), (19, 19), ["one", ""]),
    "dilated max-pool, ceil_mode": (seq(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True),
                                        nn.Conv2d(4, 4, 3)), (23, 23), ["1", "2"]),
    "transposed convolution": (seq(nn.Conv2d(3, 4, 3, stride=2), nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
                                   nn.Conv2d(4, 4, 3)), (15, 15), ["1", "2"]),
    "shared module called twice": (Shared(), (17, 17), ["block"]),
    "reflect and replicate padding": (seq(nn.ReflectionPad2d(2), nn.Conv2d(3, 4, 3), nn.ReplicationPad2d((1, 2, 0, 3)),
                                          nn.Conv2d(4, 4, 3, stride=2)), (13, 15), ["1", "3"]),
    "LRN and ceil-mode max-pool": (seq(nn.Conv2d(3, 4, 5, stride=2, padding=1), nn.ReLU(), nn.LocalResponseNorm(3),
                                       nn.MaxPool2d(3, 2, ceil_mode=True)), (30, 30), ["3"]),
    "residual block": (Residual(), (16, 16), ["relu"]),
    "adaptive max-pool, non-divisible": (seq(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d((5, 3))), (20, 17), ["1"]),
    "spatial slicing": (Crop(), (14, 14), ["after"]),
    "squeeze-and-excitation gate": (SqueezeExcite(), (12, 12), ["", "conv"]),
    "pixel shuffle": (Shuffle(), (10, 10), ["b"]),
    "cumulative sum (probed)": (Cumulative(), (10, 10), ["b"]),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_position_agrees_with_the_oracle_on_the_zoo(name):
    model, size, modules = ZOO[name]
    model = model.eval()
    mods = {m or "model": m for m in modules}
    fields, _ = layer_fields(model, mods, size)  # the walk, checked by the probe everywhere
    for layer, module in mods.items():
        f = fields[layer]
        want_theory = oracle_boxes(model, module, size)
        theory = np.where(f.theory >= EMPTY // 2, -1, f.theory)
        theory[:, f.theory[0] >= EMPTY // 2] = -1
        assert (theory == want_theory).all(), (name, layer, np.argwhere((theory != want_theory).any(0))[:3])
        want = oracle_boxes(local_variant(model), module, size)
        support = np.where(f.support >= EMPTY // 2, -1, f.support)
        support[:, f.support[0] >= EMPTY // 2] = -1
        assert (support == want).all(), (name, layer, np.argwhere((support != want).any(0))[:3])
        assert f.gated == (not np.array_equal(want, want_theory))
        # the display box, clipped to the image, holds the support (it adds only padding)
        d = f.boxes
        seen = want[0] >= 0
        assert (np.maximum(d[0], 0)[seen] <= want[0][seen]).all()
        assert (np.minimum(d[2], size[0])[seen] >= want[2][seen]).all()
        assert (np.maximum(d[1], 0)[seen] <= want[1][seen]).all()
        assert (np.minimum(d[3], size[1])[seen] >= want[3][seen]).all()
        if "dilat" not in name:
            # ... and only padding: where branches of different strides meet, a branch whose
            # window lies wholly in the padding does not stretch the box over unseen pixels
            clipped = np.stack([np.maximum(d[0], 0), np.maximum(d[1], 0),
                                np.minimum(d[2], size[0]), np.minimum(d[3], size[1])])
            assert (clipped[:, seen] == want[:, seen]).all(), (name, layer)
        if "probed" in name:
            assert f.method == "probe"
        else:
            assert f.method == "analytic"


def test_a_wrong_rule_is_one_line_naming_layer_position_and_both_boxes(monkeypatch):
    import unitscope.receptive_field.walk as rf

    model = seq(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3)).eval()
    real = rf._window_sources
    monkeypatch.setattr(rf, "_window_sources",
                        lambda n, k, s, p, d: (lambda a, b: (a + 1, b))(*real(n, k, s, p, d)))
    with pytest.raises(FieldMismatch) as e:
        layer_fields(model, {"L": "1"}, (20, 20))
    message = str(e.value)
    assert "\n" not in message
    assert "layer L (module 1) at position (0, 0): the walk finds (3, 3, 10, 10) but the probe (0, 0, 7, 7)" in message


def test_non_affine_fields_say_so_and_affine_ones_give_size_stride_start():
    model = ZOO["nearest upsample"][0].eval()
    table, boxes = layer_table(model, {"up": "1", "conv": "0"}, (16, 16))
    up, conv = table.iloc[0], table.iloc[1]
    assert not up["rf_affine"] and pd.isna(up["rf_size"]) and up["rf_max_h"] == 3
    assert conv["rf_affine"] and (conv["rf_size"], conv["rf_stride"], conv["rf_start"]) == (3, 1, -1)
    rf = boxes["up"]
    assert list(rf.columns)[:6] == ["y", "x", "y0", "x0", "y1", "x1"] and len(rf) == 32 * 32
    # nearest ×2: output rows 2i and 2i+1 see the same input row i
    assert list(rf[rf["x"] == 5]["y0"][:6]) == [-1, -1, 0, 0, 1, 1]


def test_small_conv_pool_stack_matches_hand_computed_numbers():
    m = seq(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 3),
            nn.Conv2d(4, 4, 5, stride=2, padding=2)).eval()
    table, boxes = layer_table(m, {"1": "1", "2": "2", "3": "3", "4": "4"}, (64, 64))
    # conv3 p1: size 3, jump 1, start -1; pool2: size 4, jump 2; conv3: 8; conv5 s2 p2: 16, jump 4, start -5
    got = [(r.rf_size, r.rf_stride, r.rf_start) for r in table.itertuples()]
    assert got == [(3, 1, -1), (4, 2, -1), (8, 2, -1), (16, 4, -5)]
    b = boxes["4"].set_index(["y", "x"])[["y0", "x0", "y1", "x1"]].loc[(2, 3)]
    assert tuple(b) == (-5 + 8, -5 + 12, -5 + 8 + 16, -5 + 12 + 16)


def test_zfnet_conv1_and_conv2_fields_match_the_paper():
    # Zeiler & Fergus 2014, Fig. 3: conv1 7×7 stride 2 -> 110×110; pool 3/2 -> 55; conv2 5×5/2 -> 26
    spec = MODELS["zfnet"]
    net = build_model(spec, None)
    table, _ = layer_table(net, resolve_layers(spec, ["conv1", "pool1", "conv2"]), (224, 224))
    assert [(r.height, r.channels) for r in table.itertuples()] == [(110, 96), (55, 96), (26, 256)]
    assert list(table["rf_size"]) == [7, 11, 27]


def test_the_command_line_writes_every_positions_box_as_the_workflow_does(tmp_path, capsys):
    """`layers --boxes-out DIR`: one file per layer with every position's box, at the paper's
    sizes and strides (ZF-net conv1 7 px / 2, conv2 27 px / 8)."""
    from unitscope.cli import main

    out = tmp_path / "boxes"
    assert main(["layers", "--model", "zfnet", "--layers", "conv1", "conv2", "--boxes-out", str(out)]) == 0
    assert "conv2" in capsys.readouterr().out
    for layer, (n, size, stride) in {"conv1": (110, 7, 2), "conv2": (26, 27, 8)}.items():
        b = pd.read_parquet(out / f"{layer}.parquet")
        assert len(b) == n * n and list(b.columns)[:6] == ["y", "x", "y0", "x0", "y1", "x1"]
        assert ((b.y1 - b.y0) == size).all() and ((b.x1 - b.x0) == size).all()
        assert (b.y0 - b.y0.min() == stride * b.y).all() and (b.x0 - b.x0.min() == stride * b.x).all()


def _sample_positions(h: int, w: int) -> list[tuple[int, int]]:
    """Every border position and a stride-7 grid inside: all of a small map."""
    rows = sorted({0, 1, 2, h - 3, h - 2, h - 1, *range(0, h, 7)} & set(range(h)))
    cols = sorted({0, 1, 2, w - 3, w - 2, w - 1, *range(0, w, 7)} & set(range(w)))
    return [(y, x) for y in rows for x in cols]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_built_in_models_agree_with_the_oracle(model_name):
    """Every alias of every built-in at 96 px (where even the deepest maps keep 3×3 positions):
    the support box of each position against the (thin) oracle, at every border position and a
    grid inside."""
    spec = MODELS[model_name]
    net = build_model(spec, None)
    size = (96, 96)
    modules = resolve_layers(spec, list(spec.aliases))
    fields, shapes = layer_fields(net, modules, size)
    for layer, module in modules.items():
        f = fields[layer]
        assert f.method == "analytic", layer
        positions = _sample_positions(*shapes[layer][1:])
        want = oracle_boxes(net, module, size, positions, thin=True)
        for y, x in positions:
            assert tuple(f.support[:, y, x]) == tuple(want[:, y, x]), (layer, y, x)


def test_box_covers_exactly_the_pixels_that_can_change_a_unit(red_spot_net):
    """Brute force on the trained-by-hand model: a pixel changes the unit iff it is in the box."""
    model = seq(red_spot_net, nn.Conv2d(2, 1, 3, stride=2, padding=1)).eval()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    _, boxes = layer_table(model, {"L": "1"}, (24, 24))
    y, x = 2, 3
    b = boxes["L"].set_index(["y", "x"]).loc[(y, x)]
    y0, x0, y1, x1 = max(b.y0, 0), max(b.x0, 0), min(b.y1, 24), min(b.x1, 24)
    base = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.2
    base[:, 0] += 0.5  # reddish everywhere so that every ReLU is active
    with torch.no_grad():
        ref = model(base)[0, 0, y, x]
        for py in range(24):
            for px in range(24):
                img = base.clone()
                img[0, :, py, px] += torch.tensor([3.0, -0.3, -0.3])
                changed = (model(img)[0, 0, y, x] - ref).abs() > 1e-6
                inside = y0 <= py < y1 and x0 <= px < x1
                assert bool(changed) == inside, (py, px)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_static_channel_table_matches_the_model(model_name):
    spec = MODELS[model_name]
    modules = resolve_layers(spec, list(spec.channels))
    shapes = feature_sizes(build_model(spec, weights=None), modules, (spec.input_size, spec.input_size))
    assert {a: shapes[a][0] for a in modules} == spec.channels


def test_affine_summary_of_an_axis():
    assert AxisRF(11, 4, -3).offset == 2.5 and AxisRF(11, 4, -3).span(2) == (5, 16)
    assert math.isclose(AxisRF(3, 1, -1).offset, 0.5)


def test_the_probe_checks_each_box_at_the_thresholds_that_decide_it():
    """verify_elements runs only the thresholds at each element's edges (and one beyond): any
    edge of any one element moved by one pixel either way is caught; the true boxes pass."""
    from unitscope.receptive_field.probe import probe_elements, verify_elements

    model = seq(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, dilation=2)).eval()
    modules = {"L": "1"}
    full = probe_elements(model, modules, (20, 20))["local"]["L"]
    assert verify_elements(model, modules, (20, 20), "local", {"L": full})
    shape = np.broadcast_shapes(full.shape[1:], (1, 1, 6, 6))
    rng = np.random.default_rng(0)
    for edge in range(4):
        for _ in range(3):
            y, x = (int(v) for v in rng.integers(0, 6, 2))
            for step in (-1, 1):
                wrong = np.array(np.broadcast_to(full, (4, *shape)))
                wrong[edge, 0, :, y, x] += step
                assert not verify_elements(model, modules, (20, 20), "local", {"L": wrong}), (edge, y, x, step)
