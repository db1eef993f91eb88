"""Built-in architectures: torchvision's state_dict keys, the paper's layer sizes, and weights
fetched through torch.hub from a server on 127.0.0.1 (hash-checked) or read from a file."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading

import pytest
import torch

from unitscope.layers import format_table, layer_table
from unitscope.models import MODELS, build_model, get_spec, resolve_layers

# torchvision's parameter names (from its alexnet.py, vgg.py, resnet.py), written out by hand
TORCHVISION_KEYS = {
    "alexnet": [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]
    + [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")],
    "vgg16": [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
              for p in ("weight", "bias")]
    + [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")],
    "resnet18": ["conv1.weight", "fc.weight", "fc.bias"]
    + [f"bn1.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"layer{s}.{b}.{m}.{p}" for s in range(1, 5) for b in range(2) for m, ps in
       (("conv1", ("weight",)), ("bn1", ("weight", "bias", "running_mean", "running_var",
                                         "num_batches_tracked")),
        ("conv2", ("weight",)), ("bn2", ("weight", "bias", "running_mean", "running_var",
                                         "num_batches_tracked"))) for p in ps]
    + [f"layer{s}.0.downsample.{i}.{p}" for s in range(2, 5) for i, ps in
       ((0, ("weight",)), (1, ("weight", "bias", "running_mean", "running_var",
                               "num_batches_tracked"))) for p in ps],
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_keys_equal_torchvisions(name):
    assert sorted(build_model(name, None).state_dict()) == sorted(TORCHVISION_KEYS[name])


def test_zfnet_layer_table_reproduces_the_papers_sizes():
    t = layer_table("zfnet", ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"])
    shapes = [(r.height, r.width, r.channels) for r in t.itertuples()]
    assert shapes == [(110, 110, 96), (55, 55, 96), (26, 26, 256), (13, 13, 256), (13, 13, 384),
                      (13, 13, 384), (13, 13, 256), (6, 6, 256)]
    assert dict(zip(t["layer"], t["rf_size"]))["conv2"] == 27
    assert dict(zip(t["layer"], t["rf_size"]))["conv5"] == 139
    assert "110×110" in format_table(t)


@pytest.mark.parametrize("name, sizes", [
    ("alexnet", {"conv1": 11, "conv2": 51, "conv5": 163, "pool5": 195}),
    ("vgg16", {"conv5_3": 196, "pool5": 212}),
    ("zfnet", {"conv1": 7, "conv2": 27, "conv5": 139}),
])
def test_receptive_field_sizes_equal_published_values(name, sizes):
    t = layer_table(name, list(sizes), probe=False)
    assert dict(zip(t["layer"], t["rf_size"])) == sizes


def test_zfnet_has_no_public_weights_and_says_what_to_do():
    with pytest.raises(ValueError, match="no published ImageNet weights.*path"):
        build_model("zfnet", "imagenet")


def test_unknown_model_and_layer_list_the_valid_names():
    with pytest.raises(ValueError, match="valid models: efficientnet_lite0, zfnet, alexnet"):
        get_spec("lenet")
    with pytest.raises(ValueError, match="valid names: conv1, pool1, conv2"):
        resolve_layers("alexnet", ["conv9"])
    assert resolve_layers("alexnet", ["conv2", "features.3"]) == {"conv2": "features.4",
                                                                   "features.3": "features.3"}


@pytest.fixture
def weight_server(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def save_with_hash(model, folder, stem):
    tmp = folder / "tmp.pth"
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


def test_imagenet_weights_come_through_torch_hub_hash_checked(tmp_path, weight_server, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    root, url = weight_server
    reference = build_model("resnet18", None)
    path = save_with_hash(reference, root, "resnet18")
    spec = dataclasses.replace(MODELS["resnet18"], weights_url=f"{url}/{path.name}")
    loaded = build_model("resnet18", "imagenet", spec=spec)
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())  # cached
    # the same code path from a file:// URL and from a plain path
    assert build_model("resnet18", path.as_uri()) is not None
    assert build_model("resnet18", str(path)) is not None
    # a file whose content does not match the hash in its name is refused
    bad = root / "resnet18-00000000.pth"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(RuntimeError, match="cannot fetch weights from .*resnet18-00000000.pth"):
        build_model("resnet18", f"{url}/{bad.name}")
    with pytest.raises(RuntimeError, match="cannot fetch weights from .*missing-12345678.pth.*404"):
        build_model("resnet18", f"{url}/missing-12345678.pth")


def test_weights_of_another_architecture_are_refused_clearly(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_model("resnet18", None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit model 'alexnet'"):
        build_model("alexnet", str(path))


def test_own_python_model_with_module_path_layers(tmp_path):
    spec = get_spec("python:conftest:RedSpotNet", input_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert spec.input_size == 32 and spec.resize_size == 37
    t = layer_table("python:conftest:RedSpotNet", ["relu", "pool"], spec=spec)
    assert list(t["rf_size"]) == [3, 4] and list(t["channels"]) == [2, 2]
    with pytest.raises(ValueError, match="valid names: a module path: conv, relu, pool"):
        resolve_layers("python:conftest:RedSpotNet", ["conv9"], spec)
