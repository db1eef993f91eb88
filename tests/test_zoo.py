"""One torchvision classifier per family (random weights, a small input so that the sweep fits
in CI): three layers each (early, middle, late), the layer table's layout and fields, and at
twelve positions per layer the local and theoretical boxes against the gradient oracle
(tests/oracle.py). Marked slow: `make test-slow` and CI run them; `bench/zoo.py` sweeps every
model at its default size."""
from __future__ import annotations

import numpy as np
import pytest

import oracle
import torchvision_zoo

pytestmark = pytest.mark.slow

FAMILIES = [  # (model, input size, builder keywords, layout of the late layer, gated, cells)
    ("alexnet", 64, {}, "nchw", False, False),
    ("vgg11", 64, {}, "nchw", False, False),
    ("resnet18", 64, {}, "nchw", False, False),
    ("resnext50_32x4d", 64, {}, "nchw", False, False),
    ("densenet121", 64, {}, "nchw", False, False),
    ("googlenet", 64, {"aux_logits": False, "init_weights": False}, "nchw", False, False),
    ("inception_v3", 96, {"aux_logits": False, "init_weights": False}, "nchw", False, False),
    ("squeezenet1_1", 64, {}, "nchw", False, False),
    ("shufflenet_v2_x0_5", 64, {}, "nchw", False, False),
    ("mobilenet_v2", 64, {}, "nchw", False, False),
    ("mnasnet0_5", 64, {}, "nchw", False, False),
    ("mobilenet_v3_small", 64, {}, "nchw", True, False),
    ("efficientnet_b0", 64, {}, "nchw", True, False),
    ("efficientnet_v2_s", 64, {}, "nchw", False, False),
    ("regnet_x_400mf", 64, {}, "nchw", False, False),
    ("regnet_y_400mf", 64, {}, "nchw", True, False),
    ("convnext_tiny", 64, {}, "nchw", False, False),
    ("swin_t", 64, {}, "nhwc", False, True),
    ("swin_v2_t", 64, {}, "nhwc", False, True),
    ("vit_b_16", 64, {"image_size": 64}, "tokens", False, True),
]


@pytest.fixture(scope="module")
def tv():
    models = torchvision_zoo.models()
    if models is None:
        pytest.skip("torchvision is not installed")
    return models


@pytest.mark.parametrize("name, size, kw, layout, gated, cells", FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_a_family_agrees_with_the_gradient_oracle(tv, name, size, kw, layout, gated, cells):
    from unitscope.receptive_field import EMPTY, layer_fields

    net = tv.get_model(name, weights=None, **kw).eval()
    modules = torchvision_zoo.pick_layers(net)
    fields, shapes = layer_fields(net, modules, (size, size))
    late = fields["late"]
    assert late.view.layout == layout
    assert any(f.gated for f in fields.values()) == gated
    assert any(f.cell is not None for f in fields.values()) == cells
    for layer, f in fields.items():
        assert f.method == "analytic", (layer, f.reason)
        _, h, w = shapes[layer]
        positions = oracle.sample_positions(h, w, 12)
        for kind, walk in (("local", f.support), ("theory", f.theory)):
            if kind == "theory" and not f.gated:
                continue
            want = oracle.gradient_boxes(net, modules[layer], (size, size), f.view, positions,
                                         local=kind == "local")
            got = np.stack([walk[:, y, x] for y, x in positions], 1)
            got = np.where(got[0:1] >= EMPTY // 2, -1, got)
            verdicts = [oracle.judge(got[:, i], want[:, i]) for i in range(len(positions))]
            assert verdicts == ["exact"] * len(positions), (layer, kind, list(zip(positions, verdicts)))
