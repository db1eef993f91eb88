"""Receptive fields: hand-computed numbers, the paper's ZF-net numbers, analytic vs gradient probe
on adversarial stacks and on every layer of the built-in model, and pixel-influence checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from unitscope.models import MODELS, build_model, resolve_layers
from unitscope.receptive_field import (AxisRF, analytic_receptive_fields, check_against_probe,
                                       clipped, feature_sizes, probe_box, probe_receptive_field)


def fields(model, modules, size):
    return analytic_receptive_fields(model.eval(), modules, size)


def test_small_conv_pool_stack_matches_hand_computed_numbers():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                      nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 5, stride=2, padding=2))
    f = fields(m, ["1", "2", "3", "4"], (64, 64))
    # conv3 p1: size 3, jump 1, start -1; pool2: size 3+1=4, jump 2; conv3: 4+2·2=8;
    # conv5 s2 p2: 8+4·2=16, jump 4, start -1-2·2=-5
    assert f["1"].y == AxisRF(3, 1, -1)
    assert f["2"].y == AxisRF(4, 2, -1)
    assert f["3"].y == AxisRF(8, 2, -1)
    assert f["4"].y == AxisRF(16, 4, -5)
    assert f["4"].x == f["4"].y
    assert f["4"].box(2, 3) == (-5 + 8, -5 + 12, -5 + 8 + 16, -5 + 12 + 16)


def test_zfnet_conv1_and_conv2_fields_match_the_paper():
    # Zeiler & Fergus 2014, Fig. 3: conv1 7×7 stride 2 -> 110×110; pool 3/2 -> 55; conv2 5×5/2 -> 26
    zf = nn.Sequential(nn.Conv2d(3, 96, 7, 2, padding=1), nn.ReLU(),
                       nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(96, 256, 5, 2), nn.ReLU())
    f = fields(zf, ["1", "4"], (224, 224))
    shapes = feature_sizes(zf, ["1", "2", "4"], (224, 224))
    assert shapes["1"] == (96, 110, 110) and shapes["2"] == (96, 55, 55)
    assert shapes["4"] == (256, 26, 26)
    assert f["1"].y.size == 7 and f["4"].y.size == 27


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 5, padding=2)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class AsymmetricPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 2, 0)))  # left 0, right 1, top 2, bottom 0


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 7, padding=3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


ADVERSARIAL = {
    "dilation 2": nn.Sequential(nn.Conv2d(3, 3, 3, dilation=2, padding=2), nn.ReLU(),
                                nn.Conv2d(3, 3, 3, dilation=2)),
    "ceil_mode pooling": nn.Sequential(nn.Conv2d(3, 3, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       nn.Conv2d(3, 3, 3)),
    "stride 3": nn.Sequential(nn.Conv2d(3, 3, 5, stride=3), nn.Conv2d(3, 3, 3, stride=3)),
    "padding beyond half the kernel": nn.Sequential(nn.Conv2d(3, 3, 3, padding=4),
                                                    nn.AvgPool2d(2), nn.Conv2d(3, 3, 3, padding=3)),
    "residual branch": nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), Residual()),
    "asymmetric padding": nn.Sequential(AsymmetricPad(), nn.Conv2d(3, 3, 3)),
    "channel concat": nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), Concat()),
    "batchnorm and relu6": nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.BatchNorm2d(3),
                                         nn.ReLU6(), nn.MaxPool2d(2), nn.Conv2d(3, 3, 3)),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_analytic_field_agrees_with_gradient_probe_on_adversarial_stacks(name):
    model = ADVERSARIAL[name].eval()
    last = str(len(model) - 1)
    f = fields(model, [last], (41, 37))[last]
    _, h, w = feature_sizes(model, [last], (41, 37))[last]
    check_against_probe(model, last, f, (41, 37), (h, w))
    # the probe alone recovers the same field where it fits in the image
    probed = probe_receptive_field(model, last, (41, 37), (h, w))
    if f.y.size < 41 // 2 and f.x.size < 37 // 2:
        assert probed == f


def test_mismatched_probe_is_reported():
    model = ADVERSARIAL["stride 3"].eval()
    f = fields(model, ["1"], (40, 40))["1"]
    wrong = type(f)(AxisRF(f.y.size - 1, f.y.stride, f.y.start), f.x)
    with pytest.raises(AssertionError, match="gradient probe"):
        check_against_probe(model, "1", wrong, (40, 40), (4, 4))


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_analytic_field_agrees_with_probe_on_every_layer_of_built_in_models(model_name):
    spec = MODELS[model_name]
    model = build_model(model_name, weights=None)
    modules = resolve_layers(model_name, list(spec.aliases))
    size = (spec.input_size, spec.input_size)
    f = analytic_receptive_fields(model, list(modules.values()), size)
    shapes = feature_sizes(model, list(modules.values()), size)
    for layer, module in modules.items():
        assert not isinstance(f[module], str), f"{layer}: {f[module]}"
        check_against_probe(model, module, f[module], size, shapes[module][1:])


def test_box_covers_exactly_the_pixels_that_can_change_a_unit(red_spot_net):
    """Brute force on the trained-by-hand model: a pixel changes the unit iff it is in the box."""
    model = nn.Sequential(red_spot_net, nn.Conv2d(2, 1, 3, stride=2, padding=1)).eval()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    rf = fields(model, ["1"], (24, 24))["1"]
    y, x = 2, 3
    y0, x0, y1, x1 = clipped(rf.box(y, x), (24, 24))
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


def test_probe_box_is_clipped_to_the_image():
    model = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2)).eval()
    assert probe_box(model, "0", (10, 10), (0, 0)) == (0, 0, 3, 3)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_static_channel_table_matches_the_model(model_name):
    spec = MODELS[model_name]
    modules = resolve_layers(model_name, list(spec.channels))
    shapes = feature_sizes(build_model(model_name, weights=None), list(modules.values()),
                           (spec.input_size, spec.input_size))
    assert {a: shapes[m][0] for a, m in modules.items()} == spec.channels
