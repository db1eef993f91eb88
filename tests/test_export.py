"""Models saved with torch.export (`model: {export: model.pt2}`): the same layer table, receptive
fields, activations and projections as the Python model they were exported from; files that are
not such programs refused with one line."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

from conftest import plan_of
from unitscope.activations import record_maxima
from unitscope.layers import layer_table
from unitscope.models import MODELS, ModelConfig, build_model, resolve_layers
from unitscope.models.export import load_exported
from unitscope.plan import PlanError
from unitscope.projections import project

warnings.filterwarnings("ignore", category=FutureWarning)


def export(model: nn.Module, path, size=(224, 224), dynamic=True) -> str:
    x = torch.zeros(2 if dynamic else 1, 3, *size)
    shapes = {"x": {0: Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=shapes), str(path))
    return str(path)


class Blocks(nn.Module):
    """A shared ReLU called three times, LRN, a residual add, an asymmetric pad, a ceil-mode pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.norm = nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0)
        self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1),
                                     nn.Conv2d(8, 8, 3, padding=2, dilation=2)])
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.head = nn.Conv2d(8, 4, 3, stride=3)

    def forward(self, x):
        x = self.norm(self.relu(self.stem(x)))
        for block in self.blocks:
            x = self.relu(block(x)) + x
        x = self.pool(nn.functional.pad(x, (0, 1, 2, 0)))
        return self.head(x)


MODULES = {m: m for m in ["stem", "relu", "norm", "blocks.0", "blocks.1", "pool", "head"]}


def test_an_exported_built_in_gives_the_same_layer_table(tmp_path):
    """EfficientNet-Lite0: blocks looped over in a ModuleList, TF-SAME pads, residual adds."""
    spec = MODELS["efficientnet_lite0"]
    net = build_model(spec, None)
    path = export(net, tmp_path / "efficientnet_lite0.pt2")
    exported = load_exported(path)
    layers = ["stem", "block1", "block3", "block15"]
    modules = resolve_layers(spec, layers)
    want, want_boxes = layer_table(net, modules, (224, 224))
    got, got_boxes = layer_table(exported, modules, (224, 224))  # walk + probe on ATen ops
    assert got.equals(want)
    for layer in layers:
        assert got_boxes[layer].equals(want_boxes[layer])


def test_activations_and_projections_equal_the_python_models(tmp_path):
    torch.manual_seed(0)
    model = Blocks().eval()
    path = export(model, tmp_path / "blocks.pt2", (48, 48))
    exported = load_exported(path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 48, 48, 3), dtype=np.uint8)
    batches = [(np.arange(5), images)]
    results = {}
    for name, net in (("python", model), ("export", exported)):
        outs = {layer: tmp_path / f"{name}-{layer}.h5" for layer in MODULES}
        record_maxima(net, MODULES, (0, 0, 0), (255, 255, 255), iter(batches), 5, outs, "cpu")
        results[name] = outs
    import h5py

    for layer in MODULES:  # `relu` runs three times: both take its first call
        with h5py.File(results["python"][layer]) as a, h5py.File(results["export"][layer]) as b:
            for key in ("max", "argmax_y", "argmax_x", "min", "mean"):
                np.testing.assert_allclose(a[key][:], b[key][:], rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 3, 48, 48)
    for layer in ("pool", "blocks.1"):
        want = project(model, layer, x, [0, 3, 2], [1, 2, 3], [2, 1, 0], "guided_backprop")
        got = project(exported, layer, x, [0, 3, 2], [1, 2, 3], [2, 1, 0], "guided_backprop")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # the guided rule matters: the plain gradient differs
        xg = x.clone().requires_grad_(True)
        out = {}

        def first(m, i, o):
            out.setdefault("o", o)
        h = model.get_submodule(layer).register_forward_hook(first)
        model(xg)
        h.remove()
        b = torch.arange(3)
        u, yy, xx = torch.tensor([0, 3, 2]), torch.tensor([1, 2, 3]), torch.tensor([2, 1, 0])
        out["o"][b, u, yy, xx].sum().backward()
        assert not torch.allclose(xg.grad, want, atol=1e-6)


def test_the_export_file_keeps_its_weights_unless_given_a_state_dict(tmp_path):
    torch.manual_seed(1)
    model = Blocks().eval()
    path = export(model, tmp_path / "blocks.pt2", (32, 32))
    spec = ModelConfig(export=path, mean=(0, 0, 0), std=(1, 1, 1)).spec()
    assert spec.name == "blocks"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(build_model(spec, "imagenet")(x), model(x))
        other = Blocks().eval()
        torch.save(other.state_dict(), tmp_path / "other.pth")
        torch.testing.assert_close(build_model(spec, str(tmp_path / "other.pth"))(x), other(x))


def test_files_that_are_not_export_programs_are_refused_in_one_line(tmp_path):
    torch.jit.save(torch.jit.trace(Blocks().eval(), torch.zeros(1, 3, 32, 32)), str(tmp_path / "ts.pt"))
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is a TorchScript file; unitscope reads models saved with torch.export"):
        load_exported(tmp_path / "ts.pt")
    with pytest.raises(ValueError, match="junk.pt2' is not a torch.export file"):
        load_exported(tmp_path / "junk.pt2")
    base = {"dataset": {"name": "sample"}, "layers": ["stem"]}
    with pytest.raises(PlanError, match="config key 'model.export': .*ts.pt' is a TorchScript file"):
        plan_of({**base, "model": {"export": str(tmp_path / "ts.pt")}})
    with pytest.raises(PlanError, match="config key 'model.export': no file"):
        plan_of({**base, "model": {"export": str(tmp_path / "none.pt2")}})


def test_the_plan_takes_the_input_size_from_the_program_and_checks_layers(tmp_path, capsys):
    path = export(Blocks(), tmp_path / "blocks.pt2", (40, 40), dynamic=False)
    plan = plan_of({"dataset": {"name": "sample"}, "model": {"export": path},
                    "layers": ["pool", "head"], "units": 4})
    assert plan.spec.input_size == 40 and plan.model.input_size == 40
    assert [lp.channels for lp in plan.layers] == [8, 4]
    with pytest.raises(PlanError, match="unknown layer.*'nope'"):
        plan_of({"dataset": {"name": "sample"}, "model": {"export": path}, "layers": ["nope"]})
    with pytest.raises(PlanError, match="'model.input_size': input size 64 asked for, but the program was exported for 40"):
        plan_of({"dataset": {"name": "sample"}, "model": {"export": path, "input_size": 64},
                 "layers": ["pool"]})
    # the command line takes the program's size as the plan does
    from unitscope.cli import main

    assert main(["layers", "--model", str(path), "--layers", "pool", "head"]) == 0
    table = capsys.readouterr().out
    reference, _ = layer_table(Blocks().eval(), {"pool": "pool", "head": "head"}, (40, 40))
    for row in reference.itertuples():
        assert f"{row.channels}×{row.height}×{row.width}" in table
    # a program exported with a fixed batch of 1 still runs (one image at a time)
    exported = load_exported(path)
    table, _ = layer_table(exported, {"head": "head"}, (40, 40))
    assert table["rf_method"].iat[0] == "analytic"
