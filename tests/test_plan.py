"""The plan: every config mistake the config alone shows is one line naming the key, the bad value
and the valid ones, found in-process before any job; the results layout is derived once; paths
never leave results/."""
from __future__ import annotations

import os

import pytest
from snakemake.exceptions import WorkflowError

from conftest import REPO, plan_of, validated
from unitscope.plan import Layout, PlanError, default_dataset_id

BASE = {"dataset": {"name": "sample", "max_images": 20}, "layers": ["stem", "block3"],
        "device": "cpu"}


def error(config: dict) -> str:
    with pytest.raises((PlanError, WorkflowError)) as e:
        plan_of({**BASE, **config})
    text = str(e.value)
    return text


@pytest.mark.parametrize("change, message", [
    ({"kk": 3}, "'kk' was unexpected"),
    ({"k": "nine"}, "'nine' is not of type 'integer'"),
    ({"k": 0}, "0 is less than the minimum of 1"),
    ({"distinct": "photo"}, "'photo' is not one of ['image', 'group']"),
    ({"figure": "patches"}, "'patches' is not one of ['top', 'bottom', 'both']"),
    ({"layers": ["stem", "blockX"]}, "unknown layer(s) 'blockX' for model 'efficientnet_lite0'; valid names: stem, block0"),
    ({"overrides": {"block9": {"k": 3}}}, "names layers that are not in 'layers': block9"),
    ({"dataset": {"name": "folder"}}, "'dataset.path' is required"),
    ({"overrides": {"stem": {"units": 40}}}, "config key 'overrides.stem.units': 40 units asked for but stem has 32 channels"),
    ({"units": [3, 50]}, "config key 'units': 51 units asked for but stem has 32 channels"),
    ({"model": {"python": "conftest:RedSpotNet", "export": "x.pt2"}},
     "'model.python' and 'model.export' both name a model"),
    ({"model": {"weights": ""}}, "should be non-empty"),
    ({"model": {"name": "zfnet"}, "layers": ["conv1"]},
     "config key 'model.weights': model 'zfnet' has no published ImageNet weights"),
    ({"projection": "deconvnet"}, "config key 'projection': deconvnet is defined for conv/ReLU/max-pool/LRN networks (zfnet, alexnet, vgg16), not efficientnet_lite0"),
    ({"dataset": {"name": "url", "url": "ftp://example.org/a.tar"}}, "does not match '^(https?|file)://'"),
    ({"dataset": {"name": "url", "url": "file:///nowhere/at/all.tar"}},
     "config key 'dataset.url': 'file:///nowhere/at/all.tar' names no file"),
    ({"dataset": {"id": ".."}}, "does not match"),
    ({"dataset": {"name": "sample", "id": "."}}, "does not match"),
    ({"model": {"id": ".."}}, "does not match"),
    ({"layers": [".."]}, "does not match"),
    ({"model": {"weights": "/no/such/weights.pth"}},
     "config key 'model.weights': '/no/such/weights.pth' is not imagenet, none, a URL or an existing state_dict file"),
    ({"model": {"weights": "ftp://host/w.pth"}}, "config key 'model.weights': 'ftp://host/w.pth' has an unsupported scheme"),
    ({"model": {"python": "no_such_package.models:net", "input_size": 32}, "layers": ["conv"]},
     "config key 'model.python': cannot find module 'no_such_package.models'"),
    ({"model": {"python": "conftest:RedSpotNet"}, "layers": ["conv"]},
     "config key 'model.input_size' is required for a model.python model"),
])
def test_bad_config_is_one_line_naming_the_key(change, message):
    text = error(change)
    assert message in text, text


def test_layout_is_derived_once_and_stays_under_results():
    plan = plan_of(BASE)
    L = plan.layout
    assert L.res == "results/sample/efficientnet_lite0"
    assert L.topk("stem") == "results/sample/efficientnet_lite0/topk/stem.parquet"
    assert L.activations("stem", 3) == "results/sample/efficientnet_lite0/activations/stem/shard-003.h5"
    assert L.unit_grid("block3", 7) == "results/sample/efficientnet_lite0/grids/block3/unit-0007.png"
    assert Layout.of(L.res) == L
    for path in plan.targets():
        assert os.path.abspath(path).startswith(os.path.abspath("results") + os.sep)
    for bad in ("..", ".", "", "a/b"):
        with pytest.raises(PlanError, match="cannot name a folder under results/"):
            Layout(bad, "m")


def test_a_folder_dataset_is_named_after_its_folder_and_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "My Photos (2024)").mkdir()
    (tmp_path / "My Photos (2024)" / "a.png").write_bytes(b"")
    assert default_dataset_id({"name": "folder", "path": str(tmp_path / "My Photos (2024)")}) == "My_Photos_2024"
    (tmp_path / "file.jpg").write_bytes(b"")
    text = error({"dataset": {"name": "folder", "path": str(tmp_path / "file.jpg")}})
    assert "'dataset.path': " in text and "is a file, not a folder of images" in text


def test_too_many_shards_are_capped_with_a_warning(tmp_path):
    plan = plan_of({**BASE, "shards": 1000})
    assert plan.shards == 20
    assert any("shards: 1000 is more than the 20 images" in w for w in plan.warnings)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"x")
    plan = plan_of({**BASE, "dataset": {"name": "folder", "path": str(folder)}, "shards": 50})
    assert plan.shards == 3


def test_module_path_layers_are_checked_with_the_model():
    assert error({"layers": ["_blocks.3._bn1"], "units": 200}).startswith(
        "config key 'units': 200 units asked for but _blocks.3._bn1 has 144 channels")
    plan = plan_of({**BASE, "layers": ["_blocks.3._bn1", "stem"], "units": [5]})
    assert [lp.module for lp in plan.layers] == ["_blocks.3._bn1", "_stem_act"]
    assert plan.layer("_blocks.3._bn1").channels == 144


def test_a_layer_whose_output_is_not_a_feature_map_is_refused_by_name():
    class Split:
        pass

    assert "config key 'layers': layer _fc: an output of shape (1, 1000) is neither N×C×H×W, " \
        "N×H×W×C nor N×T×C" in error({"layers": ["_fc"], "units": 1})


def test_device_cuda_without_a_gpu_is_caught_before_any_job():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "config key 'device': cuda asked for but torch sees no GPU here" in error({"device": "cuda"})


def test_the_defaults_fill_every_key_and_the_shipped_config_is_valid():
    import yaml

    config = validated(yaml.safe_load((REPO / "config.yaml").read_text()))
    plan = plan_of(config)
    assert plan.layer_names == ["stem", "block1", "block3", "block7", "block15"]
    assert plan.inputs == "stream" and plan.verify == "shown" and plan.projection == "guided_backprop"
    lp = plan.layer("block3")
    assert (lp.k, lp.units, lp.pick, lp.figure, lp.panels, lp.n_ranges, lp.per_range) == (
        9, 9, "top", "top", "both", 10, 5)
