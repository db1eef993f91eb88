"""Deconvnet and guided backpropagation against what they must equal by construction; clamps
pass the signal through their cap; the display scale is robust to one bright pixel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unitscope.models import MODELS, build_model
from unitscope.projections import DeconvnetUnsupported, deconvnet_refusal, project, to_display


def test_one_conv_layer_projection_is_the_filter_at_the_argmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding=0), nn.ReLU()).eval()
    x = torch.randn(1, 3, 20, 20)
    out = model(x)
    unit = 2
    pos = int(out[0, unit].flatten().argmax())
    y, x_ = divmod(pos, out.shape[-1])
    proj = project(model, "1", x, [unit], [y], [x_], "deconvnet")[0]
    expected = torch.zeros(3, 20, 20)
    expected[:, y:y + 5, x_:x_ + 5] = model[0].weight[unit].detach() * out[0, unit, y, x_]
    assert torch.allclose(proj, expected, atol=1e-5)


def test_without_relu_and_pooling_deconvnet_equals_the_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(6, 5, 3)).eval()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = model(x)
    units, ys, xs = [1, 4], [2, 3], [3, 1]
    signal = torch.zeros_like(out)
    for b in range(2):
        signal[b, units[b], ys[b], xs[b]] = out[b, units[b], ys[b], xs[b]]
    (grad,) = torch.autograd.grad(out, x, signal)
    proj = project(model, "1", x.detach(), units, ys, xs, "deconvnet")
    assert torch.allclose(proj, grad, atol=1e-5)


def test_switches_route_the_signal_back_to_the_max_location_only():
    model = nn.Sequential(nn.MaxPool2d(2, 2)).eval()
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 1, 0] = 5.0  # the maximum of the top-left 2×2 window of channel 0
    x[0, 0, 0, 1] = 1.0
    proj = project(model, "0", x, [0], [0], [0], "deconvnet")[0]
    assert proj[0, 1, 0] == 5.0
    assert torch.count_nonzero(proj) == 1


def test_deconvnet_ignores_the_forward_relu_mask_guided_backprop_keeps_it():
    """conv A gives channels (+r, -r); ReLU; conv B sums them; ReLU. At r = 3 channel 1 is off in
    the forward pass. Going down, B sends +3 into both channels: the deconvnet rectifies but lets
    channel 1 through (A's transpose then cancels it: 3 - 3 = 0); guided backpropagation also
    applies the forward mask (only channel 0: 3), as the plain gradient does."""
    model = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False),
                          nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]).view(2, 3, 1, 1))
        model[2].weight.fill_(1.0)
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 3.0
    deconv = project(model, "3", x, [0], [0], [0], "deconvnet")[0, 0, 0, 0]
    guided = project(model, "3", x, [0], [0], [0], "guided_backprop")[0, 0, 0, 0]
    assert float(deconv) == pytest.approx(0.0) and float(guided) == pytest.approx(3.0)


def test_deconvnet_refuses_residual_models_and_names_guided_backprop():
    model = build_model(MODELS["resnet18"], None)
    with pytest.raises(DeconvnetUnsupported, match="use projection: guided_backprop"):
        project(model, "layer1", torch.randn(1, 3, 64, 64), [0], [0], [0], "deconvnet")
    proj = project(model, "layer1", torch.randn(1, 3, 64, 64), [0], [3], [3], "guided_backprop")
    assert proj.shape == (1, 3, 64, 64) and torch.isfinite(proj).all()


def test_display_normalisation_maps_zero_to_mid_gray_and_ignores_one_bright_pixel():
    rng = np.random.default_rng(0)
    p = rng.normal(0, 1.0, (40, 40, 3)).astype(np.float32)
    p[0, 0, 0] = 1000.0  # one extreme value
    img, scale = to_display(p)
    assert scale == pytest.approx(np.percentile(np.abs(p), 99.5))
    assert scale < 5  # the outlier does not set the scale ...
    assert img[0, 0, 0] == 255  # ... it is clipped
    # so most of the image keeps its contrast: far more than 2% of pixels 16+ levels from gray
    assert (np.abs(img.astype(int) - 128) >= 16).any(2).mean() > 0.5
    zero, s0 = to_display(np.zeros((4, 4, 3)))
    assert s0 == 0 and (zero == 128).all()


def test_a_saturated_relu6_unit_still_gets_a_projection():
    """A unit at ReLU6's cap: the plain gradient is zero there (the backward pass stops at the
    cap), but the projection passes the signal through the cap as through a ReLU."""
    model = nn.Sequential(nn.Conv2d(3, 1, 3, bias=False), nn.ReLU6()).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    x = torch.full((1, 3, 6, 6), 2.0)  # conv output 54: far above the cap
    for method in ("guided_backprop", "deconvnet"):
        proj = project(model, "1", x, [0], [1], [1], method)[0]
        assert proj.abs().sum() > 0, method
        assert (proj[:, 1:4, 1:4] == 6.0).all() and proj[:, 0].abs().sum() == 0
    xg = x.clone().requires_grad_(True)
    model(xg)[0, 0, 1, 1].backward()
    assert xg.grad.abs().sum() == 0  # what the projection would be without the rule


def test_the_deconvnet_check_names_what_it_cannot_invert():
    spec = MODELS["resnet18"]
    assert "add" in deconvnet_refusal(build_model(spec, None), {"L": "layer1"}, 64)
    assert deconvnet_refusal(build_model(MODELS["alexnet"], None), {"L": "features.12"}, 224) is None
