"""A model file is data: a .pt2 whose sample inputs, pickled weight, pickled constant, opaque
constant, shape expression or guard code carries a payload is refused in one line naming the file
and the part, and the payload never runs — in the loader, the plan, `layers`, `show`, a dry run
and a full run — unless the user says `model.trust_code: true`. Each payload is shown to be live
under torch.export.load, so the tests would fail if the reader ran it."""
from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import torch

import pt2_payloads as P
from conftest import plan_of, snakemake, write_pngs
from unitscope.models import MODELS, ModelConfig, build_model, resolve_layers
from unitscope.models.export import UnsafeModelFile, load_exported
from unitscope.plan import PlanError

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return P.clean(tmp_path_factory.mktemp("pt2") / "net.pt2")


def _live(path: str, marker) -> bool:
    """Whether torch's own reader runs the payload (loading, building and calling the module)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.load(path).module()(torch.zeros(2, 3, 32, 32))
    except Exception:
        pass
    return os.path.exists(marker)


@pytest.mark.parametrize("valid", [True, False], ids=["still-valid", "broken"])
@pytest.mark.parametrize("part", P.PARTS)
def test_a_payload_in_any_part_is_refused_naming_the_part_and_never_runs(clean, tmp_path, part, valid):
    marker = tmp_path / "ran"
    path = P.hostile(clean, tmp_path / "model.pt2", part, marker, valid)
    with pytest.raises(UnsafeModelFile) as err:
        load_exported(path)
    message = str(err.value)
    assert "\n" not in message and "model.pt2" in message and "model.trust_code: true" in message
    assert {"sample_inputs": "sample inputs", "pickled_weight": "weight 'conv.weight'",
            "pickled_constant": "constant 'lifted_tensor_0'", "opaque_constant": "constant 'opaque'",
            "shape_expression": "shape expression", "guard_code": "guard code"}[part] in message
    with pytest.raises(PlanError, match=r"config key 'model.export': .*model.pt2"):
        plan_of({"dataset": {"name": "sample"}, "model": {"export": path}, "layers": ["head"]})
    from unitscope.cli import main

    assert main(["layers", "--model", path, "--layers", "head"]) == 1
    assert not marker.exists()
    assert _live(path, marker), "the payload must be live, or this test proves nothing"


def test_trust_code_reads_a_file_with_torch_export_load(clean, tmp_path):
    marker = tmp_path / "ran"
    path = P.hostile(clean, tmp_path / "model.pt2", "pickled_constant", marker, valid=True)
    plan = plan_of({"dataset": {"name": "sample"}, "layers": ["head"], "units": 2,
                    "model": {"export": path, "trust_code": True}})
    assert plan.spec.trust_code and plan.layers[0].channels == 2
    assert marker.exists()  # the opt-in does what it says


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_a_clean_export_of_each_built_in_gives_identical_activations(tmp_path, name):
    spec = MODELS[name]
    net = build_model(spec, None)
    size = 224 if name == "zfnet" else 64
    path = tmp_path / f"{name}.pt2"
    ep = torch.export.export(net, (torch.zeros(2, 3, size, size),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(path))
    exported = build_model(ModelConfig(export=str(path)).spec(), "imagenet")
    layers = list(spec.aliases)[:: max(1, len(spec.aliases) // 4)]
    modules = resolve_layers(spec, layers)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    got = {}
    for tag, model in (("python", net), ("export", exported)):
        outs, hooks = {}, []
        for layer, module in modules.items():
            hooks.append(model.get_submodule(module).register_forward_hook(
                lambda m, i, o, layer=layer: outs.setdefault(layer, o.detach())))
        with torch.no_grad():
            outs["logits"] = model(x)
        for h in hooks:
            h.remove()
        got[tag] = outs
    for key, value in got["python"].items():
        assert torch.equal(got["export"][key], value), f"{name} {key}"


def test_weights_given_to_an_export_file_do_not_change_the_file_read_earlier(clean, tmp_path):
    spec = ModelConfig(export=clean).spec()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = build_model(spec, "imagenet")(x)
        other = P.Net().eval()
        torch.save(other.state_dict(), tmp_path / "other.pth")
        torch.testing.assert_close(build_model(spec, str(tmp_path / "other.pth"))(x), other(x))
        torch.testing.assert_close(build_model(spec, "imagenet")(x), before)  # read once, kept


@pytest.mark.workflow
@pytest.mark.slow
def test_no_payload_runs_in_a_dry_run_a_full_run_layers_or_show(clean, tmp_path, monkeypatch):
    """The clean file plans; each hostile file at the same path is refused by every door."""
    from test_silent_answers import fake_results
    from unitscope.cli import main
    from unitscope.provenance import file_sha256

    rng = np.random.default_rng(0)
    write_pngs(tmp_path / "images", [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                                     for _ in range(6)])
    model = tmp_path / "net.pt2"
    model.write_bytes(open(clean, "rb").read())
    work = tmp_path / "work"
    work.mkdir()
    config = {"dataset": {"name": "folder", "path": str(tmp_path / "images")},
              "model": {"export": str(model)}, "layers": ["relu", "head"], "k": 2, "units": 2,
              "device": "cpu"}
    r = snakemake(work, config, "--dry-run")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    monkeypatch.chdir(work)
    res = fake_results(work, "")  # results to show (show reads tables, never the model)
    with h5py.File(res / "activations" / "L" / "shard-000.h5", "a") as f:
        f.attrs["manifest_sha256"] = file_sha256(work / "results" / "D" / "manifest.parquet")
    # every part is refused by the plan (above); here the doors, with a payload that leaves the
    # file valid and one that breaks it
    for i, (part, valid) in enumerate((("sample_inputs", True), ("opaque_constant", False))):
        marker = tmp_path / f"ran-{part}"
        P.hostile(clean, model, part, marker, valid=valid)
        for args in (["--dry-run"], ["--forceall"]) if i == 0 else (["--dry-run"],):
            r = snakemake(work, config, *args)
            out = r.stdout + r.stderr
            assert r.returncode != 0 and "config key 'model.export'" in out, out[-2000:]
        assert main(["layers", "--model", str(model), "--layers", "head"]) == 1
        assert main(["show", "--results", str(res), "--layer", "L", "--unit", "0"]) == 0
        assert not marker.exists(), part
