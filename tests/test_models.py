"""Built-in architectures: torchvision's state_dict keys, the paper's layer sizes, weights fetched
through torch.hub from a server on 127.0.0.1 (hash-checked) or read from a file, every kind of
bad weights file refused with one line, and random weights that are the same in every job."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import pickle
import threading

import pytest
import torch

from unitscope.layers import format_table, layer_table
from unitscope.models import MODELS, ModelConfig, build_model, load_state_dict, resolve_layers

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


def spec(name: str):
    return MODELS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_keys_equal_torchvisions(name):
    assert sorted(build_model(spec(name), None).state_dict()) == sorted(TORCHVISION_KEYS[name])


def test_zfnet_layer_table_reproduces_the_papers_sizes():
    s = spec("zfnet")
    names = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    t, _ = layer_table(build_model(s, None), resolve_layers(s, names), (224, 224))
    shapes = [(r.height, r.width, r.channels) for r in t.itertuples()]
    assert shapes == [(110, 110, 96), (55, 55, 96), (26, 26, 256), (13, 13, 256), (13, 13, 384),
                      (13, 13, 384), (13, 13, 256), (6, 6, 256)]
    assert dict(zip(t["layer"], t["rf_size"]))["conv2"] == 27
    assert dict(zip(t["layer"], t["rf_size"]))["conv5"] == 139
    assert "110×110" in format_table(t)


@pytest.mark.parametrize("name, sizes", [
    ("alexnet", {"conv1": 11, "conv2": 51, "conv5": 163, "pool5": 195}),
    ("vgg16", {"conv5_3": 196, "pool5": 212}),
    ("resnet18", {"layer1.0": 27, "layer4": 435}),
    ("efficientnet_lite0", {"block3": 35, "block15": 851}),
])
def test_receptive_field_sizes_equal_published_values(name, sizes):
    s = spec(name)
    t, _ = layer_table(build_model(s, None), resolve_layers(s, list(sizes)), (224, 224), probe=False)
    assert dict(zip(t["layer"], t["rf_size"])) == sizes


def test_random_weights_are_the_same_in_every_job_and_follow_the_seed():
    a = build_model(spec("alexnet"), None, seed=0).state_dict()
    b = build_model(spec("alexnet"), "none", seed=0).state_dict()
    c = build_model(spec("alexnet"), None, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    # building the model does not disturb the caller's random stream
    torch.manual_seed(7)
    x = torch.rand(1)
    torch.manual_seed(7)
    build_model(spec("alexnet"), None, seed=3)
    assert torch.equal(torch.rand(1), x)


def test_unknown_model_and_layer_list_the_valid_names():
    with pytest.raises(ValueError, match="valid: efficientnet_lite0, zfnet, alexnet"):
        ModelConfig(name="lenet").spec()
    with pytest.raises(ValueError, match="valid names: conv1, pool1, conv2"):
        resolve_layers(spec("alexnet"), ["conv9"])
    assert resolve_layers(spec("alexnet"), ["conv2", "features.3"]) == {"conv2": "features.4",
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
    reference = build_model(spec("resnet18"), None, seed=5)
    path = save_with_hash(reference, root, "resnet18")
    s = dataclasses.replace(spec("resnet18"), weights_url=f"{url}/{path.name}")
    loaded = build_model(s, "imagenet")
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())  # cached
    # the same code path from a file:// URL and from a plain path
    assert torch.equal(build_model(s, path.as_uri()).fc.weight, reference.fc.weight)
    assert torch.equal(build_model(s, str(path)).fc.weight, reference.fc.weight)
    # a file whose content does not match the hash in its name is refused
    bad = root / "resnet18-00000000.pth"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(RuntimeError, match="cannot fetch weights from .*resnet18-00000000.pth"):
        build_model(s, f"{url}/{bad.name}")
    with pytest.raises(RuntimeError, match="cannot fetch weights from .*missing-12345678.pth.*404"):
        build_model(s, f"{url}/missing-12345678.pth")


class Sneaky:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("this would run",))


def test_every_kind_of_bad_weights_file_is_one_line_and_never_advises_unsafe_loading(tmp_path):
    s = spec("alexnet")
    torch.save({"model": Sneaky()}, tmp_path / "pickle.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    (tmp_path / "text.pth").write_text("hello")
    torch.save({"features.0.weight": 1}, tmp_path / "ints.pth")
    cases = {"pickle.pth": "not a plain state_dict: unitscope loads weights with "
                           "torch.load(weights_only=True) and runs no code from the file",
             "tensor.pth": "not a plain state_dict",
             "text.pth": "cannot be read as a PyTorch state_dict",
             "ints.pth": "not a plain state_dict"}
    for name, message in cases.items():
        with pytest.raises(ValueError) as e:
            load_state_dict(s, str(tmp_path / name))
        text = str(e.value)
        assert message in text and "\n" not in text and "weights_only=False" not in text, (name, text)
    with pytest.raises(FileNotFoundError, match="nowhere.pth' does not exist"):
        load_state_dict(s, str(tmp_path / "nowhere.pth"))
    with pytest.raises(ValueError, match="has no published ImageNet weights"):
        build_model(spec("zfnet"), "imagenet")


def test_weights_of_another_architecture_are_refused_clearly(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_model(spec("resnet18"), None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit model 'alexnet'"):
        build_model(spec("alexnet"), str(path))


def test_a_factory_that_returns_no_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text("def text():\n    return 'not a model'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = ModelConfig(python="my_models:text", input_size=32).spec()
    with pytest.raises(ValueError, match="my_models:text returned a str, not a torch.nn.Module"):
        build_model(s, None)
    with pytest.raises(ValueError, match="cannot import module 'nowhere_at_all'"):
        build_model(ModelConfig(python="nowhere_at_all:f", input_size=32).spec(), None)


def test_own_python_model_with_module_path_layers():
    cfg = ModelConfig(python="conftest:RedSpotNet", input_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    s = cfg.spec()
    assert s.input_size == 32 and s.resize_size == 37
    net = build_model(s, None)
    t, _ = layer_table(net, resolve_layers(s, ["relu", "pool"], model=net), (32, 32))
    assert list(t["rf_size"]) == [3, 4] and list(t["channels"]) == [2, 2]
    with pytest.raises(ValueError, match="valid names: a module path: conv, relu, pool"):
        resolve_layers(s, ["conv9"], model=net)


def test_pickle_error_type_is_the_one_torch_raises(tmp_path):
    """The refusal above relies on torch raising pickle.UnpicklingError for a pickled object."""
    torch.save({"x": Sneaky()}, tmp_path / "p.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "p.pth", weights_only=True)
