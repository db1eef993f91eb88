"""TorchScript models (`torchscript:path`): scripted, traced and frozen files give the same layer
outputs and the same receptive fields as the Python model they were made from, the analytic walk
over ATen ops agrees with the gradient probe over the rewritten graph, and what cannot be recorded
is refused with the module's name."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from test_receptive_field import ADVERSARIAL

from unitscope.cli import main
from unitscope.layers import layer_table
from unitscope.models import MODELS, build_model, get_spec, projection_method, resolve_layers
from unitscope.models.torchscript import load_torchscript
from unitscope.projections import project
from unitscope.receptive_field import (analytic_receptive_fields, check_against_probe,
                                       feature_sizes, probe_receptive_field)

KINDS = ["script", "trace"]


def save_torchscript(model: nn.Module, kind: str, path, size) -> str:
    """torch.jit.save of `model` scripted, traced on a zero image, or scripted and frozen (which
    keeps no module structure once saved)."""
    model = model.eval()
    if kind == "trace":
        ts = torch.jit.trace(model, torch.zeros(1, 3, *size))
    else:
        ts = torch.jit.script(model)
        if kind == "frozen":
            ts = torch.jit.freeze(ts)
    torch.jit.save(ts, str(path))
    return str(path)


class Blocks(nn.Module):
    """What TorchScript makes awkward: blocks called in a loop over a ModuleList (the call
    hierarchy then skips the list), one ReLU module called twice, cross-channel normalisation
    (LRN becomes 5-D ops in the graph), a residual addition and an asymmetric pad."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.norm = nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0)
        self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1, dilation=1),
                                     nn.Conv2d(8, 8, 3, padding=2, dilation=2)])
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.head = nn.Conv2d(8, 4, 3, stride=3)

    def forward(self, x):
        x = self.norm(self.relu(self.stem(x)))
        for block in self.blocks:
            x = self.relu(block(x)) + x
        x = self.pool(F.pad(x, (0, 1, 2, 0)))
        return self.head(x)


MODULES = ["stem", "relu", "norm", "blocks.0", "blocks.1", "pool", "head"]


def hooked_outputs(model: nn.Module, modules: list[str], x: torch.Tensor) -> dict:
    got = {}
    handles = [model.get_submodule(m).register_forward_hook(
        lambda mod, inp, out, m=m: got.__setitem__(m, out)) for m in modules]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_see_the_same_layer_outputs_as_on_the_python_model(kind, tmp_path):
    torch.manual_seed(0)
    model = Blocks().eval()
    scripted = load_torchscript(save_torchscript(model, kind, tmp_path / "m.pt", (45, 39)))
    x = torch.randn(2, 3, 45, 39)
    want, got = hooked_outputs(model, MODULES, x), hooked_outputs(scripted, MODULES, x)
    for m in MODULES:  # `relu` runs three times: the hook keeps the last call, as in Python
        torch.testing.assert_close(got[m], want[m], rtol=1e-5, atol=1e-5)
    # the model's own output is unchanged by the recording
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_receptive_fields_equal_the_python_models_and_pass_the_probe(kind, tmp_path):
    size = (45, 39)
    model = Blocks().eval()
    scripted = load_torchscript(save_torchscript(model, kind, tmp_path / "m.pt", size))
    modules = ["stem", "blocks.1", "pool", "head"]
    want = analytic_receptive_fields(model, modules, size)
    got = analytic_receptive_fields(scripted, modules, size)
    shapes = feature_sizes(scripted, modules, size)
    assert shapes == feature_sizes(model, modules, size)
    for m in modules:
        assert got[m] == want[m], m
        check_against_probe(scripted, m, got[m], size, shapes[m][1:])
    # the probe alone, on the rewritten graph, finds the same field where it fits the image
    assert probe_receptive_field(scripted, "blocks.1", size, shapes["blocks.1"][1:]) == want["blocks.1"]


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_stacks_agree_with_the_probe_when_traced(name, tmp_path):
    model = ADVERSARIAL[name].eval()
    last = str(len(model) - 1)
    scripted = load_torchscript(save_torchscript(model, "trace", tmp_path / "m.pt", (41, 37)))
    f = analytic_receptive_fields(scripted, [last], (41, 37))[last]
    assert f == analytic_receptive_fields(model, [last], (41, 37))[last]
    _, h, w = feature_sizes(scripted, [last], (41, 37))[last]
    check_against_probe(scripted, last, f, (41, 37), (h, w))


def test_a_wrong_field_is_caught_by_the_probe_of_the_graph(tmp_path):
    from unitscope.geometry import AxisRF, ReceptiveField

    scripted = load_torchscript(save_torchscript(Blocks(), "script", tmp_path / "m.pt", (45, 39)))
    f = analytic_receptive_fields(scripted, ["blocks.1"], (45, 39))["blocks.1"]
    wrong = ReceptiveField(f.y, AxisRF(f.x.size + 2, f.x.stride, f.x.start - 1))
    with pytest.raises(AssertionError, match="gradient probe"):
        check_against_probe(scripted, "blocks.1", wrong, (45, 39), (22, 19))


@pytest.mark.parametrize("name, kind", [("zfnet", "script"), ("resnet18", "trace"),
                                        ("efficientnet_lite0", "trace")])
def test_built_in_models_saved_as_torchscript_give_the_same_layer_table(name, kind, tmp_path):
    spec = MODELS[name]
    path = save_torchscript(build_model(name, None), kind, tmp_path / f"{name}.pt",
                            (spec.input_size, spec.input_size))
    want = layer_table(name, list(spec.aliases))
    got = layer_table(f"torchscript:{path}", list(spec.aliases.values()))  # probe-checked
    assert list(got["module"]) == list(want["module"])
    columns = [c for c in want.columns if c != "layer"]
    assert got[columns].equals(want[columns])
    if name == "zfnet":  # the paper's Fig. 3, through the TorchScript path
        assert [(r.height, r.width, r.channels) for r in got.itertuples()][:4] == [
            (110, 110, 96), (55, 55, 96), (26, 26, 256), (13, 13, 256)]
        assert list(got["rf_size"])[:3] == [7, 11, 27]


def test_layers_command_prints_the_table_of_a_torchscript_file(tmp_path, capsys):
    path = save_torchscript(Blocks(), "trace", tmp_path / "blocks.pt", (64, 64))
    assert main(["layers", "--model", f"torchscript:{path}", "--input-size", "64",
                 "--layers", "stem", "blocks.1", "head"]) in (0, None)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    # stem 5×5 stride 2: 5 px; blocks 3×3 and 3×3 dilated 2 at stride 2: 5 + 2·2 + 4·2 = 17;
    # pool 3×3 stride 2: 17 + 2·2 = 21 at stride 4; head 3×3 stride 3: 21 + 2·4 = 29 at stride 12
    assert rows["stem"][2:4] == ["8×31×31", "8"] and rows["stem"][4] == "5"
    assert rows["blocks.1"][4] == "17" and rows["head"][4:7] == ["29", "px", "12"]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3)
        self.b = nn.Conv2d(3, 3, 3)
        self.same = nn.Identity()

    def forward(self, x):
        if bool(x.sum() > 0):
            y = self.a(x)
        else:
            y = self.b(x)
        return self.same(y)


def test_modules_whose_output_the_graph_cannot_return_are_refused_by_name(tmp_path):
    path = save_torchscript(Branchy(), "script", tmp_path / "branchy.pt", (16, 16))
    ref = f"torchscript:{path}"
    spec = get_spec(ref, input_size=16)
    with pytest.raises(ValueError, match="module 'a' is made inside a branch"):
        resolve_layers(ref, ["a"], spec)
    with pytest.raises(ValueError, match="module 'same' makes no operation of its own"):
        resolve_layers(ref, ["same"], spec)
    with pytest.raises(ValueError, match="unknown layer.*'c'.*valid names: a module path: a, b, same"):
        resolve_layers(ref, ["c"], spec)


def test_torchscript_files_are_checked_and_keep_their_own_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_model("torchscript:" + str(tmp_path / "missing.pt"), None)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt' is not a TorchScript file"):
        build_model("torchscript:" + str(tmp_path / "junk.pt"), None)
    frozen = save_torchscript(Blocks(), "frozen", tmp_path / "frozen.pt", (32, 32))
    with pytest.raises(ValueError, match="keeps no module structure.*before freezing"):
        build_model(f"torchscript:{frozen}", None)
    torch.manual_seed(1)
    model = Blocks().eval()
    path = save_torchscript(model, "script", tmp_path / "blocks.pt", (32, 32))
    spec = get_spec(f"torchscript:{path}", input_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert spec.name == "blocks" and spec.input_size == 32
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        kept = build_model(f"torchscript:{path}", "imagenet", spec)
        torch.testing.assert_close(kept(x), model(x))
        other = Blocks().eval()  # a state_dict replaces the file's weights, strictly
        torch.save(other.state_dict(), tmp_path / "other.pth")
        replaced = build_model(f"torchscript:{path}", str(tmp_path / "other.pth"), spec)
        torch.testing.assert_close(replaced(x), other(x))
    torch.save({"stem.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit model 'blocks'"):
        build_model(f"torchscript:{path}", str(tmp_path / "bad.pth"), spec)


@pytest.mark.parametrize("kind", KINDS)
def test_guided_backprop_through_a_script_equals_the_python_models(kind, tmp_path):
    """The ReLU hooks on the autograd graph give what the TorchFunctionMode gives the Python
    model, on the unit maxima of a layer behind ReLUs, LRN, a residual add and max-pooling; and
    they matter: the plain gradient differs."""
    torch.manual_seed(3)
    model = Blocks().eval()
    scripted = load_torchscript(save_torchscript(model, kind, tmp_path / "m.pt", (48, 48)))
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        fmap = hooked_outputs(model, ["pool"], x)["pool"]
    units = [0, 3, 7]
    flat = fmap[torch.arange(3), units].flatten(1).argmax(1)
    ys, xs = (flat // fmap.shape[-1]).tolist(), (flat % fmap.shape[-1]).tolist()
    for _ in range(3):  # also once TorchScript's profiling executor would have optimised the graph
        got = project(scripted, "pool", x, units, ys, xs, "guided_backprop")
    want = project(model, "pool", x, units, ys, xs, "guided_backprop")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    out = {}
    h = model.pool.register_forward_hook(lambda m, i, o: out.__setitem__("pool", o))
    model(xg)
    h.remove()
    signal = torch.zeros_like(out["pool"])
    signal[torch.arange(3), units, ys, xs] = out["pool"].detach()[torch.arange(3), units, ys, xs]
    (plain,) = torch.autograd.grad(out["pool"], xg, signal)
    assert not torch.allclose(plain, want, atol=1e-6)


def test_deconvnet_is_refused_for_torchscript_and_auto_means_guided_backprop(tmp_path):
    path = save_torchscript(Blocks(), "trace", tmp_path / "m.pt", (32, 32))
    assert projection_method(f"torchscript:{path}", "auto") == "guided_backprop"
    with pytest.raises(ValueError, match="deconvnet is not available for TorchScript.*guided_backprop"):
        projection_method(f"torchscript:{path}", "deconvnet")
    with pytest.raises(ValueError, match="deconvnet is not available for TorchScript"):
        project(load_torchscript(path), "head", torch.zeros(1, 3, 32, 32), [0], [0], [0], "deconvnet")
