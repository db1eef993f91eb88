"""The networks people use, in miniature: channels-last blocks (ConvNeXt's permutes, Swin's N×H×W×C
stages and window partitions), token sequences (ViT: a class token and patch tokens), and global
gates. Each layer's layout, units and positions are read off the fields, and every position's
theoretical, local and cell support is compared with an independent gradient oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from unitscope.hooks import LayerOutputError
from unitscope.layers import layer_table
from unitscope.receptive_field import EMPTY, layer_fields


def gradient_boxes(model, module, size, view, detach=lambda t: False) -> np.ndarray:
    """(4, H, W) bounding box of the non-zero input gradient of each position of the layer's
    maps (random positive channel weights), in float64 with ReLUs and norms kept: positive
    weights and inputs keep every pre-activation positive, so no path is cut."""
    m = _positive(model)
    out_hw = None
    captured = {}

    def hook(mod, i, o):
        captured.setdefault("o", o)
    h = m.get_submodule(module).register_forward_hook(hook)
    x = (0.5 + torch.rand(1, 3, *size, dtype=torch.float64)).requires_grad_(True)
    m(x)
    h.remove()
    maps = view.maps(captured["o"])
    out_hw = maps.shape[-2:]
    boxes = np.full((4, *out_hw), -1, np.int64)
    w = 0.5 + torch.rand(maps.shape[1], dtype=torch.float64)
    for y in range(out_hw[0]):
        for xx in range(out_hw[1]):
            g, = torch.autograd.grad((maps[0, :, y, xx] * w).sum(), x, retain_graph=True)
            nz = g[0].abs().sum(0) > 0
            rows, cols = torch.nonzero(nz.any(1)).flatten(), torch.nonzero(nz.any(0)).flatten()
            if len(rows):
                boxes[:, y, xx] = [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]
    return boxes


def _positive(model):
    import copy

    m = copy.deepcopy(model).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                # small, so that attention's softmax does not saturate to exact zeros
                p.copy_((0.5 + torch.rand(p.shape, generator=g, dtype=torch.float64)) / p.shape[-1])
    return m


def as_minus_one(a):
    a = a.copy()
    a[:, a[0] >= EMPTY // 2] = -1
    return a


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: a 7×7 depthwise conv, then channels-last: norm, two linear maps."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + y


class WindowStage(nn.Module):
    """A Swin-like stage: patches, then N×H×W×C with attention inside 4×4 windows (a view and a
    permute that tile space); its output stays channels-last."""

    def __init__(self, c=8, window=4):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 2, stride=2)
        self.qkv = nn.Linear(c, 3 * c)
        self.window = window
        self.out = nn.Identity()

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # N, H, W, C
        n, h, w, c = x.shape
        p = self.window
        win = x.view(n, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p, c)
        q, k, v = self.qkv(win).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        a = a.view(n, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return self.out(x + a)


class TinyViT(nn.Module):
    """ViT in miniature: a 4×4 patch embedding, a class token first, one encoder layer
    (nn.MultiheadAttention, batch first) and an MLP."""

    def __init__(self, c=8):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, c))
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.block = nn.Identity()

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.block(x + self.mlp(x))


def test_convnext_permutes_keep_the_field_and_the_layout():
    model = ConvNeXtBlock().eval()
    fields, shapes = layer_fields(model, {"block": ""}, (20, 20))
    f = fields["block"]
    assert f.method == "analytic" and f.view.layout == "nchw" and shapes["block"] == (8, 10, 10)
    want = gradient_boxes(model, "", (20, 20), f.view)
    assert (as_minus_one(f.support) == want).all()
    assert not f.gated and f.cell is None


def test_a_channels_last_stage_is_read_as_such_with_window_attention_fields():
    model = WindowStage().eval()
    fields, shapes = layer_fields(model, {"stage": "out"}, (16, 16))
    f = fields["stage"]
    assert f.method == "analytic" and f.view.layout == "nhwc" and shapes["stage"] == (8, 8, 8)
    want = gradient_boxes(model, "out", (16, 16), f.view)
    assert (as_minus_one(f.support) == want).all()
    # a position sees exactly its 4×4 window of 2-px patches: 8×8 px
    assert ((f.support[2] - f.support[0]) == 8).all() and ((f.support[3] - f.support[1]) == 8).all()
    # the cell (attention's query side only) is the position's own patch
    assert f.cell is not None and ((f.cell[2] - f.cell[0]) == 2).all()
    table, _ = layer_table(model, {"stage": "out"}, (16, 16))
    assert table.iloc[0]["layout"] == "nhwc" and table.iloc[0]["channels"] == 8


def test_tokens_are_read_on_the_patch_grid_with_the_class_token_apart():
    model = TinyViT().eval()
    fields, shapes = layer_fields(model, {"tokens": "block"}, (16, 16))
    f = fields["tokens"]
    assert f.view.layout == "tokens" and f.view.first_token == 1 and f.view.grid == (4, 4)
    assert shapes["tokens"] == (8, 4, 4)
    want = gradient_boxes(model, "block", (16, 16), f.view)
    assert (as_minus_one(f.support) == want).all()
    assert (f.support == np.array([0, 0, 16, 16])[:, None, None]).all()  # attention: everything
    ys, xs = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    assert (f.cell == np.stack([4 * ys, 4 * xs, 4 * ys + 4, 4 * xs + 4])).all()
    maps = f.view.maps(torch.arange(17 * 8.0).reshape(1, 17, 8))
    assert maps.shape == (1, 8, 4, 4) and maps[0, 0, 0, 0] == 8 and maps[0, 3, 1, 2] == 8 * 7 + 3


def test_a_layout_that_cannot_be_told_is_one_line_asking_for_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(3)).eval()

    class Odd(nn.Module):  # 3×3 positions along both a would-be channel axis and a spatial one
        def forward(self, x):
            return model(x).permute(0, 2, 1, 3)
    with pytest.raises(LayerOutputError, match="cannot tell which axes.*layout: nchw or layout: nhwc") as e:
        layer_fields(Odd(), {"odd": ""}, (9, 9))
    assert "\n" not in str(e.value)


def test_the_plan_refuses_a_channels_last_layer_by_name(tmp_path):
    from unitscope.plan import _check_layouts

    with pytest.raises(LayerOutputError, match="layer 'stage'.*channels-last.*N×C×H×W"):
        _check_layouts(WindowStage().eval(), {"stage": "out"}, 16)
