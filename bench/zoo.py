"""The layer table of every torchvision classifier at its default input size: three layers per model
(early, middle, late: the first, middle and last child of its feature stack), each model in a fresh
Python so that one's memory does not weigh on the next. Records per model the seconds the layer
table took (walk + probe check, the target is ≤ 60 s on 2 cores), and per layer its layout, shape,
field method and whether global gates or token cells make its kinds differ.

    python bench/zoo.py [--models resnet50 swin_t ...] [--out bench/results/zoo.json]

Needs torchvision (tests/torchvision_zoo.py imports it on a CPU-only torch)."""
from __future__ import annotations

import argparse
import json
import sys

from harness import REPO, child

CODE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import torch
torch.set_num_threads(2)
from tests.torchvision_zoo import build
from unitscope.layers import layer_table
name = sys.argv[1]
net = build(name)
size = {"inception_v3": 299}.get(name, 224)
try:
    from torchvision.models import get_model_weights
    size = get_model_weights(name).DEFAULT.transforms().crop_size[0]
except Exception:
    pass
stack = None
for attr in ("features", "layers", "encoder.layers", "blocks", "stages", "trunk_output"):
    try:
        stack = net.get_submodule(attr)
        break
    except AttributeError:
        continue
if stack is not None:
    kids = [f"{attr}.{n}" for n, _ in stack.named_children()]
else:  # ResNet-style: the top-level layers with spatial outputs
    kids = [n for n in ("layer1", "layer2", "layer3", "layer4", "Mixed_5b", "Mixed_6a", "Mixed_7c",
                        "inception3a", "inception4c", "inception5b", "stage2", "stage3", "stage4",
                        "conv5") if hasattr(net, n)]
picks = {"early": kids[min(1, len(kids) - 1)], "middle": kids[len(kids) // 2], "late": kids[-1]}
mods = {k: v for k, v in picks.items()}
t = time.perf_counter()
try:
    table, _ = layer_table(net, mods, (size, size))
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in table[["layer", "module", "layout", "channels", "height", "width",
                            "rf_method", "rf_gated", "rf_cell", "rf_max_h", "rf_theory_max_h"]
                           ].to_dict("records")]
    error = None
except Exception as e:  # one model's failure is a row of the table, not the end of the sweep
    rows, error = [], f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
print(json.dumps({"model": name, "size": size, "seconds": round(time.perf_counter() - t, 1),
                  "layers": rows, "error": error}, default=str))
"""


def main() -> int:
    sys.path.insert(0, str(REPO))
    from tests.torchvision_zoo import classifier_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "zoo.json"))
    args = ap.parse_args()
    names = args.models or classifier_names()
    results = []
    for name in names:
        try:
            r = child(CODE, name, str(REPO))
        except RuntimeError as e:
            r = {"model": name, "error": str(e).strip().splitlines()[-1][:300]}
        results.append(r)
        kinds = ", ".join(f"{x['layer']} {x['layout']} {x['channels']}×{x['height']}×{x['width']}"
                          f"{' gated' if x['rf_gated'] else ''}{' cell' if x['rf_cell'] else ''}"
                          for x in r.get("layers", []))
        print(f"{name:24} {r.get('seconds', '-'):>6} s  {r.get('error') or kinds}", flush=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
