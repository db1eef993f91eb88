"""Architecture configuration lists and layer aliases of the built-in models, as plain data
(no torch), so that layer names can be checked without building a model."""
from __future__ import annotations

# ("C", out, kernel, stride, padding) convolution + ReLU; ("M", kernel, stride, padding) max-pool;
# ("N",) local response normalisation.
ZFNET = [("C", 96, 7, 2, 1), ("M", 3, 2, 1), ("N",), ("C", 256, 5, 2, 0), ("M", 3, 2, 1), ("N",),
         ("C", 384, 3, 1, 1), ("C", 384, 3, 1, 1), ("C", 256, 3, 1, 1), ("M", 3, 2, 0)]
ALEXNET = [("C", 64, 11, 4, 2), ("M", 3, 2, 0), ("C", 192, 5, 1, 2), ("M", 3, 2, 0),
           ("C", 384, 3, 1, 1), ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1), ("M", 3, 2, 0)]
VGG16 = [("C", c, 3, 1, 1) if c != "M" else ("M", 2, 2, 0) for c in
         [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]]


def feature_aliases(cfg: list[tuple], conv_names: list[str], pool_names: list[str]) -> dict[str, str]:
    """conv aliases name the ReLU after each convolution (the paper shows rectified maps);
    pool aliases name each max-pool."""
    aliases, idx, convs, pools = {}, 0, iter(conv_names), iter(pool_names)
    for item in cfg:
        if item[0] == "C":
            aliases[next(convs)] = f"features.{idx + 1}"
            idx += 2
        else:
            if item[0] == "M":
                aliases[next(pools)] = f"features.{idx}"
            idx += 1
    return aliases


ZFNET_ALIASES = feature_aliases(ZFNET, [f"conv{i}" for i in range(1, 6)], ["pool1", "pool2", "pool5"])
ZFNET_ALIASES.update({"norm1": "features.3", "norm2": "features.7"})
ALEXNET_ALIASES = feature_aliases(ALEXNET, [f"conv{i}" for i in range(1, 6)],
                                  ["pool1", "pool2", "pool5"])
VGG16_ALIASES = feature_aliases(
    VGG16, [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)],
    [f"pool{i}" for i in range(1, 6)])

RESNET18_ALIASES = {"conv1": "relu", "pool1": "maxpool", "layer1": "layer1", "layer2": "layer2",
                    "layer3": "layer3", "layer4": "layer4",
                    **{f"layer{s}.{b}": f"layer{s}.{b}" for s in range(1, 5) for b in range(2)}}
