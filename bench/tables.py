"""Section topk: the top-k stage with bottom-k, histograms and range examples against a naive
pandas sort at 20,000 images x 256 units (>= 5x), and its peak memory at 200,000 / 20,000 images
(<= 1.2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import child


TOPK_STAGE = r"""
import json, resource, sys, time, glob
from unitscope.ranges import histogram_and_ranges
from unitscope.topk import select_topk
folder = sys.argv[1]
paths = sorted(glob.glob(folder + "/shard-*.h5"))
t = time.perf_counter()
select_topk(paths, folder + "/manifest.parquet", folder + "/layers.parquet", folder + "/rf.parquet",
            "L", k=9, units_out=folder + "/units.parquet", topk_out=folder + "/topk.parquet",
            bottomk_out=folder + "/bottomk.parquet")
histogram_and_ranges(paths, folder + "/manifest.parquet", folder + "/layers.parquet",
                     folder + "/rf.parquet", folder + "/units.parquet", "L", list(range(9)), 10, 5,
                     hist_out=folder + "/hist.parquet", ranges_out=folder + "/ranges.parquet")
print(json.dumps({"s": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
TOPK_NAIVE = r"""
import json, resource, sys, time, glob, h5py, numpy as np, pandas as pd
folder = sys.argv[1]
t = time.perf_counter()
frames = []
for p in sorted(glob.glob(folder + "/shard-*.h5")):
    with h5py.File(p) as f:
        ids, m, lo = f["image_id"][:], f["max"][:], f["min"][:]
        y, x = f["argmax_y"][:], f["argmax_x"][:]
    n, c = m.shape
    frames.append(pd.DataFrame({"image_id": np.repeat(ids, c), "unit": np.tile(np.arange(c), n),
                                "activation": m.ravel(), "minimum": lo.ravel(),
                                "y": y.ravel(), "x": x.ravel()}))
df = pd.concat(frames, ignore_index=True)
top = df.sort_values(["unit", "activation", "image_id"], ascending=[False, False, True]).groupby("unit").head(9)
bottom = df.sort_values(["unit", "minimum", "image_id"]).groupby("unit").head(9)
stats = df.groupby("unit")["activation"].agg(["max", "mean", "min"])
df["bin"] = df.groupby("unit")["activation"].transform(lambda v: pd.cut(v, 40, labels=False))
hist = df.groupby(["unit", "bin"]).size()
print(json.dumps({"s": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_activations(folder: Path, n: int, units: int, per_shard: int = 20000) -> None:
    import pandas as pd

    from unitscope.activation_file import write_layer_file
    from unitscope.layers import rf_frame
    from unitscope.provenance import file_sha256

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pd.DataFrame({"image_id": np.arange(n), "group": np.arange(n).astype(str)}).to_parquet(folder / "manifest.parquet")
    pd.DataFrame([{"layer": "L", "module": "m", "channels": units, "height": 14, "width": 14,
                   "units": units, "activations": units * 196, "input_h": 224, "input_w": 224,
                   "rf_method": "analytic", "rf_affine": True, "rf_size": 99, "rf_stride": 16,
                   "rf_offset": 7.5, "rf_start": -42, "rf_size_x": 99, "rf_stride_x": 16,
                   "rf_offset_x": 7.5, "rf_start_x": -42, "rf_max_h": 99, "rf_max_w": 99}]
                 ).to_parquet(folder / "layers.parquet")
    ys, xs = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
    rf_frame(np.stack([-42 + 16 * ys, -42 + 16 * xs, 57 + 16 * ys, 57 + 16 * xs])).to_parquet(folder / "rf.parquet")
    sha = file_sha256(folder / "manifest.parquet")
    shards = -(-n // per_shard)
    for i, s in enumerate(range(0, n, per_shard)):
        m = min(per_shard, n - s)
        values = rng.gamma(2.0, size=(m, units)).astype(np.float32)
        write_layer_file(folder / f"shard-{i:03d}.h5", "L", np.arange(s, s + m),
                         {"max": values, "min": values - 3, "mean": values / 2,
                          "argmax_y": rng.integers(0, 14, (m, units)),
                          "argmax_x": rng.integers(0, 14, (m, units))},
                         shard=i, shards=shards, manifest_sha256=sha)


def bench_topk(tmp: Path, small: int, large: int, units: int) -> dict:
    runs = {}
    for n in (small, large):
        write_activations(tmp / f"acts{n}", n, units)
        runs[n] = child(TOPK_STAGE, str(tmp / f"acts{n}"))
    naive = child(TOPK_NAIVE, str(tmp / f"acts{small}"))
    return {"units": units, "images_small": small, "images_large": large,
            "stage_s": runs[small]["s"], "naive_s": naive["s"],
            "speedup": naive["s"] / runs[small]["s"], "stage_peak_mb": runs[small]["peak_mb"],
            "naive_peak_mb": naive["peak_mb"],
            "memory_ratio_vs_naive": naive["peak_mb"] / runs[small]["peak_mb"],
            "stage_peak_mb_large": runs[large]["peak_mb"], "stage_s_large": runs[large]["s"],
            "memory_growth": runs[large]["peak_mb"] / runs[small]["peak_mb"]}


def rows(t: dict) -> list:
    return [
        (f"top-k stage with bottom-k, histograms, ranges vs naive pandas "
         f"({t['images_small']:,} img x {t['units']} units)",
         f"{t['speedup']:.1f}x ({t['stage_s']:.2f} vs {t['naive_s']:.2f} s)", ">= 5", t["speedup"] >= 5),
        ("its peak memory: naive pandas / stage",
         f"{t['memory_ratio_vs_naive']:.1f}x ({t['naive_peak_mb']:.0f} vs {t['stage_peak_mb']:.0f} MB)",
         "(reported)", True),
        (f"its peak memory {t['images_large']:,} / {t['images_small']:,} images",
         f"{t['memory_growth']:.2f} ({t['stage_peak_mb_large']:.0f} vs {t['stage_peak_mb']:.0f} MB)",
         "<= 1.2", t["memory_growth"] <= 1.2)]
