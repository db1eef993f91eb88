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

import oracle
from unitscope.hooks import LayerOutputError
from unitscope.layers import layer_table
from unitscope.receptive_field import EMPTY, layer_fields


def gradient_boxes(model, module, size, field) -> np.ndarray:
    """(4, H, W) gradient-oracle boxes of every position of the layer (tests/oracle.py)."""
    return oracle.gradient_boxes(model, module, size, field.view).reshape(4, *field.support.shape[1:])


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
    want = gradient_boxes(model, "", (20, 20), f)
    assert (as_minus_one(f.support) == want).all()
    assert not f.gated and f.cell is None


def test_a_channels_last_stage_is_read_as_such_with_window_attention_fields():
    model = WindowStage().eval()
    fields, shapes = layer_fields(model, {"stage": "out"}, (16, 16))
    f = fields["stage"]
    assert f.method == "analytic" and f.view.layout == "nhwc" and shapes["stage"] == (8, 8, 8)
    want = gradient_boxes(model, "out", (16, 16), f)
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
    want = gradient_boxes(model, "block", (16, 16), f)
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


class ShiftedWindowStage(WindowStage):
    """Swin's shifted windows in miniature: the map rolled by half a window, attention inside
    4×4 windows with -100 added to the logits of token pairs from different regions of the
    unrolled map (torchvision's mask), rolled back."""

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        n, h, w, c = x.shape
        p, s = self.window, self.window // 2
        rolled = torch.roll(x, (-s, -s), (1, 2))
        region = torch.zeros(h, w)
        for i, rows in enumerate((slice(0, h - p), slice(h - p, h - s), slice(h - s, h))):
            for j, cols in enumerate((slice(0, w - p), slice(w - p, w - s), slice(w - s, w))):
                region[rows, cols] = 3 * i + j
        ids = region.view(h // p, p, w // p, p).permute(0, 2, 1, 3).reshape(-1, p * p)
        mask = (ids[:, None, :] != ids[:, :, None]).float() * -100.0
        win = rolled.view(n, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p, c)
        q, k, v = self.qkv(win).chunk(3, dim=-1)
        logits = (q @ k.transpose(-2, -1)).view(n, -1, p * p, p * p) + mask
        a = torch.softmax(logits.view(-1, p * p, p * p), dim=-1) @ v
        a = a.view(n, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return self.out(x + torch.roll(a, (s, s), (1, 2)))


def test_masked_logits_of_shifted_windows_are_no_dependence():
    model = ShiftedWindowStage().eval()
    fields, _ = layer_fields(model, {"stage": "out"}, (16, 16))  # the probe agrees, or it raises
    f = fields["stage"]
    want = gradient_boxes(model, "out", (16, 16), f)
    assert (as_minus_one(f.support) == want).all()
    # the corner's shifted window wraps round to the far side, but the mask keeps it to its own
    # 2×2 patches of 2 px: without the rule the field would span the whole map
    assert tuple(f.support[:, 0, 0]) == (0, 0, 4, 4)
    # an inner window (rolled rows and columns 0-3 are map rows 2-5), unmasked: 4×4 cells
    assert tuple(f.support[:, 3, 3]) == (4, 4, 12, 12)


class RedTokens(nn.Module):
    """Tokens with known filters: 4×4 patches, channel 0 the patch's red minus green, channel 1
    its green; a class token first, the mean of the patch tokens."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 2, 4, stride=4, bias=False)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[0, 0], self.embed.weight[0, 1] = 1 / 16, -1 / 16
            self.embed.weight[1, 1] = 1 / 16
        self.block = nn.Identity()

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.block(torch.cat([t.mean(1, keepdim=True), t], 1))


def test_token_layers_run_through_the_stages_read_on_the_patch_grid(tmp_path):
    """Maxima, positions, verification and projections of a token layer, against a brute force
    over the raw N×T×C output; class tokens read apart (tokens: cls, all)."""
    import h5py
    import pandas as pd

    from unitscope.activations import record_maxima
    from unitscope.projections import project
    from unitscope.receptive_field import LayerView

    model = RedTokens().eval()
    fields, shapes = layer_fields(model, {"t": "block"}, (16, 16))
    view = fields["t"].view
    assert (view.layout, view.first_token, view.grid) == ("tokens", 1, (4, 4))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (5, 16, 16, 3)).astype(np.uint8)
    spots = [(0, 0), (1, 3), (3, 2), (2, 2), (3, 0)]
    for i, (cy, cx) in enumerate(spots):  # a red patch in one cell of each image
        images[i, 4 * cy:4 * cy + 4, 4 * cx:4 * cx + 4, 0] = 200 + 10 * i
    out = tmp_path / "t.h5"
    record_maxima(model, {"t": "block"}, (0, 0, 0), (1, 1, 1), iter([(np.arange(5), images)]), 5,
                  {"t": out}, "cpu", views={"t": view})
    with torch.no_grad():
        raw = model(torch.from_numpy(images).permute(0, 3, 1, 2).float()).numpy()
    with h5py.File(out) as f:
        for i in range(5):
            for unit in range(2):
                patch = raw[i, 1:, unit]  # tokens 1..16, row-major on the 4×4 grid
                best = int(np.argmax(patch))
                assert f["max"][i, unit] == pytest.approx(patch[best], rel=1e-6)
                assert (f["argmax_y"][i, unit], f["argmax_x"][i, unit]) == divmod(best, 4)
            assert (f["argmax_y"][i, 0], f["argmax_x"][i, 0]) == spots[i]
    # the plain input gradient at a token (scaled by its activation) is its filter, in its cell only
    x = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float()
    g = project(model, "block", x, [0], [1], [3], "gradient", view)[0]
    act = float(raw[0, 1 + 4 * 1 + 3, 0])
    assert torch.allclose(g[0, 4:8, 12:16], torch.full((4, 4), act / 16))
    assert torch.allclose(g[1, 4:8, 12:16], torch.full((4, 4), -act / 16))
    assert g[:, :4].abs().sum() == 0 and g[:, :, :12].abs().sum() == 0
    # the effective field is centred on the token's cell, not on its whole-image field
    from unitscope.verify import effective_fields

    ex = pd.DataFrame({"unit": [0], "y": [1], "x": [3], "image_id": [0], "y0": [0], "x0": [0],
                       "y1": [16], "x1": [16]})
    on_box = effective_fields(ex, {0: images[0]}, model, "block", (0, 0, 0), (1, 1, 1), view=view)
    on_cell = effective_fields(ex.assign(cy0=4, cx0=12, cy1=8, cx1=16), {0: images[0]}, model,
                               "block", (0, 0, 0), (1, 1, 1), view=view)
    assert on_cell == [4] and on_box[0] > 8
    # tokens: cls reads the class token alone (a 1×1 row), all reads every token in order
    cls, every = view.reading("t", "cls"), view.reading("t", "all")
    assert cls.hw((17, 2)) == (2, 1, 1) and every.hw((17, 2)) == (2, 1, 17)
    t = torch.from_numpy(raw)
    assert torch.equal(cls.maps(t)[:, :, 0, 0], t[:, 0]) and torch.equal(every.maps(t)[:, :, 0], t.transpose(1, 2))
    with pytest.raises(LayerOutputError, match="no class token"):
        LayerView("tokens", 0, (4, 4)).reading("t", "cls")
    table, boxes = layer_table(model, {"t": "block"}, (16, 16), tokens={"t": "cls"})
    row = table.iloc[0]
    assert (row["tokens"], row["height"], row["width"], row["grid_h"]) == ("cls", 1, 1, 4)
    assert tuple(boxes["t"][["y0", "x0", "y1", "x1"]].iloc[0]) == (0, 0, 16, 16)  # the mean: all
    assert isinstance(boxes["t"], pd.DataFrame)


class NoClassToken(TinyViT):
    """TinyViT without its class token."""

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.block(x + self.mlp(x))


def test_the_plan_reads_token_layers_and_takes_the_gradient_behind_attention():
    from conftest import plan_of
    from unitscope.plan import PlanError

    base = {"dataset": {"name": "sample", "max_images": 20}, "device": "cpu",
            "model": {"python": "test_networks:TinyViT", "input_size": 16, "weights": "none"},
            "layers": ["block"], "units": 2, "k": 2}
    plan = plan_of(base)
    assert plan.projection == "gradient"
    view = plan.model.layer_views()["block"]
    assert (view.layout, view.first_token, view.grid, view.tokens) == ("tokens", 1, (4, 4), "patch")
    assert plan_of({**base, "tokens": "all"}).model.layer_views()["block"].tokens == "all"
    with pytest.raises(PlanError, match="config key 'tokens': layer block: tokens: cls, but its "
                                        "tokens are all patch tokens"):
        plan_of({**base, "model": {**base["model"], "python": "test_networks:NoClassToken"},
                 "tokens": "cls"})
    for method in ("guided_backprop", "deconvnet"):
        with pytest.raises(PlanError, match=f"config key 'projection': {method} is defined for "
                                            f"ReLU networks, not through attention"):
            plan_of({**base, "projection": method})
    with pytest.raises(PlanError, match="config key 'layouts' names layers that are not in 'layers': x"):
        plan_of({**base, "layouts": {"x": "nhwc"}})
    stage = plan_of({**base, "model": {"python": "test_networks:WindowStage", "input_size": 16,
                                       "weights": "none"}, "layers": ["out"]})
    assert stage.model.layer_views()["out"].layout == "nhwc" and stage.layer("out").channels == 8
