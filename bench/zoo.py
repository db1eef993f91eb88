"""The layer table of every torchvision classifier at its default input size, checked against an
independent oracle: three layers per model (early, middle, late: the second, middle and last child
of its feature stack), each model in a fresh Python so that one's memory does not weigh on the
next. Records per model the seconds the layer table took (walk + probe check; the target is
≤ 60 s on 2 cores) and per layer its layout, shape and kinds of field, and at twelve positions
(corners, edge midpoints, centre, random) whether the walk's local and theoretical boxes are
exact, too large or missing against the gradient oracle of tests/oracle.py (float32 here, and
float64 again where float32 disagrees: a deep field's far edges can underflow in float32).

    python bench/zoo.py [--models resnet50 swin_t ...] [--no-oracle] [--out bench/results/zoo.json]
                        [--markdown FILE]   # the README's table

Needs torchvision (tests/torchvision_zoo.py imports it on a CPU-only torch). The JSON is
rewritten after every model, so a long sweep can be read as it goes."""
from __future__ import annotations

import argparse
import json
import sys

from harness import REPO, child

CODE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np
import torch
torch.set_num_threads(2)
from tests.oracle import gradient_boxes, judge, sample_positions
from tests.torchvision_zoo import build, pick_layers
from unitscope.layers import layer_table
from unitscope.receptive_field import EMPTY, layer_fields
name, oracle = sys.argv[1], sys.argv[3] == "1"
net = build(name)
size = {"inception_v3": 299}.get(name, 224)
try:
    from torchvision.models import get_model_weights
    size = get_model_weights(name).DEFAULT.transforms().crop_size[0]
except Exception:
    pass
size = getattr(net, "image_size", size)  # a ViT built without weights takes its own size only
mods = pick_layers(net)
t = time.perf_counter()
try:
    fields, shapes = layer_fields(net, mods, (size, size))
    seconds = round(time.perf_counter() - t, 1)
    rows = []
    for layer, f in fields.items():
        c, h, w = shapes[layer]
        row = {"layer": layer, "module": mods[layer], "layout": f.view.layout, "channels": c,
               "height": h, "width": w, "method": f.method, "gated": f.gated,
               "cell": f.cell is not None,
               "max_h": int((f.support[2] - f.support[0]).max()),
               "theory_max_h": int((f.theory[2] - f.theory[0]).max())}
        if oracle:
            pos = sample_positions(h, w, 12)
            for kind, walk in (("local", f.support), ("theory", f.theory)):
                if kind == "theory" and not f.gated:
                    row["theory"] = row["local"]
                    continue
                wb = np.stack([walk[:, y, x] for y, x in pos], 1)
                wb = np.where(wb[0:1] >= EMPTY // 2, -1, wb)
                for dtype in (torch.float32, torch.float64):  # float64 where float32 underflows
                    o = gradient_boxes(net, mods[layer], (size, size), f.view, pos,
                                       local=kind == "local", dtype=dtype)
                    verdicts = [judge(wb[:, i], o[:, i]) for i in range(len(pos))]
                    if set(verdicts) == {"exact"}:
                        break
                row[kind] = {v: verdicts.count(v) for v in ("exact", "too large", "missing")}
        rows.append(row)
    error = None
except Exception as e:  # one model's failure is a row of the table, not the end of the sweep
    rows, seconds, error = [], round(time.perf_counter() - t, 1), f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
print(json.dumps({"model": name, "size": size, "seconds": seconds, "layers": rows,
                  "error": error}, default=str))
"""


def main() -> int:
    sys.path.insert(0, str(REPO))
    from tests.torchvision_zoo import classifier_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "zoo.json"))
    ap.add_argument("--no-oracle", action="store_true", help="time the layer tables only")
    ap.add_argument("--markdown", default=None, help="also write the README table here")
    args = ap.parse_args()
    names = args.models or classifier_names()
    results = []
    for name in names:
        try:
            r = child(CODE, name, str(REPO), "0" if args.no_oracle else "1")
        except RuntimeError as e:
            r = {"model": name, "error": str(e).strip().splitlines()[-1][:300]}
        results.append(r)
        with open(args.out, "w") as fh:  # after every model: a long sweep can be read as it goes
            json.dump(results, fh, indent=1)
        kinds = ", ".join(f"{x['layer']} {x['layout']} {x['channels']}×{x['height']}×{x['width']}"
                          f"{' gated' if x['gated'] else ''}{' cell' if x['cell'] else ''}"
                          f" {_verdict(x)}" for x in r.get("layers", []))
        print(f"{name:24} {r.get('seconds', '-'):>6} s  {r.get('error') or kinds}", flush=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown(results))
    return 0


def _verdict(layer: dict) -> str:
    """'local 12/12 theory 12/12' (exact of sampled), with what is not exact."""
    out = []
    for kind in ("local", "theory"):
        v = layer.get(kind)
        if v:
            n = sum(v.values())
            bad = ", ".join(f"{c} {k}" for k, c in v.items() if c and k != "exact")
            out.append(f"{kind} {v['exact']}/{n}" + (f" ({bad})" if bad else ""))
    return " ".join(out)


def markdown(results: list[dict]) -> str:
    """The README's table: one row per model and layer."""
    lines = ["| model | s | layer | layout | output C×H×W | field | local (exact/12) | theoretical |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r.get('seconds', '-')} | – | – | – | {r['error']} | – | – |")
            continue
        for i, x in enumerate(r["layers"]):
            field = f"≤{x['max_h']} px" + (f", gated (theoretical ≤{x['theory_max_h']})" if x["gated"] else "") \
                + (", token cells" if x["cell"] else "") + (", probed" if x["method"] == "probe" else "")
            cells = []
            for kind in ("local", "theory"):
                v = x.get(kind) or {}
                n = sum(v.values())
                bad = ", ".join(f"{c} {k}" for k, c in v.items() if c and k != "exact")
                cells.append(f"{v.get('exact', '-')}/{n}" + (f" ({bad})" if bad else "") if v else "–")
            lines.append(f"| {r['model'] if i == 0 else ''} | {r['seconds'] if i == 0 else ''} | "
                         f"{x['module']} | {x['layout']} | {x['channels']}×{x['height']}×{x['width']} | "
                         f"{field} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
