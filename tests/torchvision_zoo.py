"""torchvision's classifiers for the tests and `bench/zoo.py`, with no hard dependency on it.

torchvision==0.28.0 matches torch 2.13, but on a CPU-only build its compiled ops fail to load
("operator torchvision::nms does not exist") while its `_meta_registrations` module registers
kernels for them. No classifier needs those ops, so that one module is replaced by an empty one
before torchvision is imported. Factories here (`python:tests.torchvision_zoo:vit_b_16`) build a
model with random weights, as any torchvision model builder does with `weights=None`."""
from __future__ import annotations

import sys
import types


def models():
    """torchvision.models, or None where torchvision is not installed."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations",
                               types.ModuleType("torchvision._meta_registrations"))
    try:
        import torchvision.models as tv_models
    except ImportError:
        return None
    return tv_models


def classifier_names() -> list[str]:
    """Every classification architecture torchvision lists (not detection, video, ...)."""
    tv = models()
    return [] if tv is None else sorted(tv.list_models(module=tv))


def build(name: str):
    """torchvision.models.<name> with random weights, in eval mode."""
    return models().get_model(name, weights=None).eval()


def pick_layers(net) -> dict[str, str]:
    """Three layers (early, middle, late): the second, middle and last child of the model's
    feature stack (features, layers, encoder.layers, blocks, stages, trunk_output), else the
    top-level stages of ResNet-, Inception- and ShuffleNet-style models."""
    for attr in ("features", "layers", "encoder.layers", "blocks", "stages", "trunk_output"):
        try:
            stack = net.get_submodule(attr)
        except AttributeError:
            continue
        kids = [f"{attr}.{n}" for n, _ in stack.named_children()]
        break
    else:
        kids = [n for n in ("layer1", "layer2", "layer3", "layer4", "Mixed_5b", "Mixed_6a",
                            "Mixed_7c", "inception3a", "inception4c", "inception5b", "stage2",
                            "stage3", "stage4", "conv5") if hasattr(net, n)]
    return {"early": kids[min(1, len(kids) - 1)], "middle": kids[len(kids) // 2], "late": kids[-1]}


def __getattr__(name: str):
    """`tests.torchvision_zoo:<name>` as a model factory (random weights)."""
    if name.startswith("_"):
        raise AttributeError(name)
    return lambda: build(name)
