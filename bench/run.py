"""The benchmark: every figure is a ratio against a baseline measured in the same run on the same
machine (these machines are noisy), printed as a table and written to bench/results/latest.json.

    python bench/run.py            # about 15 minutes on 2 cores
    python bench/run.py --quick    # smaller sizes, for trying the script itself
    python bench/run.py --table [bench/results/latest.json]   # reprint an earlier run's table

1. scale: the whole pipeline on 5,000 and 20,000 JPEGs cut from photographs, with a small model
   (stream mode): the marginal cost of an image (cost(20k) - cost(5k)) / 15k against the bare
   forward pass (target <= 1.15x), timed inside the same runs (channels_last, stopped at the
   deepest layer: a shared VM's speed drifts by 20% within minutes, so a baseline measured at
   another moment is noise); beside it the ratios against the best separate plain loop (NCHW or
   channels_last) measured just before and after each run, in wall and CPU time; disk written per image per layer (<= 2 KB); each stage's peak memory at
   20,000 / at 5,000 images (<= 1.2).
2. inference stage throughput / a bare PyTorch loop over the same in-memory tensors (>= 0.90).
3. top-k stage with bottom-k, histograms and range examples vs a naive pandas sort at 20,000
   images x 256 units (>= 5x), and its peak memory at 200,000 / 20,000 images (<= 1.2).
4. snakemake --dry-run planning of 1,400 shards x 5 layers (< 15 s); the folder dataset's
   fingerprint (path, size, mtime of every file, taken at every parse) for 100,000 files (<= 3 s).
5. the default run (408 sample crops, EfficientNet-Lite0): wall time, and per layer the share of
   the figure's tile cells left empty — padding gray, or the margin around a tile that shows what
   the unit sees — (<= 0.35) and the share of shown projections with >= 2% of their pixels 16+
   grey levels from mid-grey (>= 0.90).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = sys.executable
ENV = {**os.environ, "PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", ""),
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])}
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
SMALL_LAYERS = ["s3", "s4"]


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python (its own peak memory); it prints one JSON line last."""
    out = subprocess.run([PY, "-c", code, *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def snakemake(work: Path, config: dict, *args: str) -> float:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                        "config.yaml", "--cores", "2", "--quiet", *args], cwd=work, env=ENV,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-3000:])
    return time.perf_counter() - t


def stage_records(work: Path) -> dict[str, dict[str, float]]:
    """Seconds and CPU seconds (summed over jobs, from Snakemake's benchmark files) and peak
    memory (MB, the largest job) of each stage: the peak each job logs at its end (the kernel's
    ru_maxrss: exact, where Snakemake's benchmark samples and misses short jobs' peaks)."""
    stages: dict[str, dict[str, float]] = {}
    for tsv in (work / "results").rglob("benchmarks/**/*.tsv"):
        stage = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rec = stages.setdefault(stage, {"s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0})
        rec["s"] += float(row["s"])
        rec["cpu_s"] += float(row.get("cpu_time") or 0)
    for log in (work / "results").rglob("logs/**/*.log"):
        stage = log.parent.name if log.parent.name != "logs" else log.stem
        for line in log.read_text().splitlines():
            if "; peak memory " in line and stage in stages:
                mb = float(line.rsplit("peak memory ", 1)[1].split()[0])
                stages[stage]["max_rss_mb"] = max(stages[stage]["max_rss_mb"], mb)
    return stages


# ---------------------------------------------------------------- 1. scale
def make_jpegs(folder: Path, n: int, size: int = 219) -> None:
    """n JPEGs cut from the colour photographs inside scikit-image (deterministic crops, so real
    photographic content), at the size the small model's preprocessing resizes to (219 = 192 /
    0.875): decoding is the only per-image cost before the network."""
    from PIL import Image

    from unitscope.datasets.sample import PHOTOS, skimage_data_dir

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(os.path.join(skimage_data_dir(), p)).convert("RGB") for p in PHOTOS]
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.size) + 1))
        x, y = (int(rng.integers(0, d - side + 1)) for d in photo.size)
        photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR).save(
            folder / f"{i:06d}.jpg", quality=90)


BARE = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[2])
from small_model import small
from unitscope.datasets.index import folder_candidates
from unitscope.hooks import FirstCalls
from unitscope.inputs import Preprocessing, load_image
import pandas as pd
torch.set_num_threads(2)
folder, n = sys.argv[1], int(sys.argv[3])
rows = pd.DataFrame({"path": [c.path for c in folder_candidates(folder)[:n]]})
prep = Preprocessing(219, 192)
images = torch.from_numpy(__import__("numpy").stack([load_image(r, prep) for r in rows.itertuples()]))
model = small().eval()
best = (float("inf"), float("inf"), "")
for layout in ("nchw", "channels_last"):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    m = model.to(memory_format=fmt)
    batches = [(images[s:s + 32].permute(0, 3, 1, 2).float() / 255).contiguous(memory_format=fmt)
               for s in range(0, len(images), 32)]
    with torch.inference_mode(), FirstCalls(m, {"s4": "s4"}, lambda l, o: None) as calls:
        calls.run(m, batches[0])
        t, c = time.perf_counter(), time.process_time()
        for b in batches:
            calls.run(m, b)
        per, cpu = (time.perf_counter() - t) / len(images), (time.process_time() - c) / len(images)
    best = min(best, (cpu, per, layout))
print(json.dumps({"bare_cpu_s_per_image": best[0], "bare_s_per_image": best[1], "layout": best[2]}))
"""


def bench_scale(tmp: Path, small: int, large: int) -> dict:
    """Each pipeline run is bracketed by two measurements of the bare forward pass, and its cost
    is counted in bare-image units (its CPU time / the bare CPU time of one image measured around
    it), so that a machine that slows down for a while (a shared VM) moves both alike."""
    folder = tmp / "jpegs"
    make_jpegs(folder, large)
    runs = {}
    for n in (small, large):
        config = {"dataset": {"name": "folder", "path": str(folder), "max_images": n},
                  "model": {"python": "small_model:small", "weights": "none", "input_size": 192,
                            "mean": [0, 0, 0], "std": [255, 255, 255]},
                  "layers": SMALL_LAYERS, "device": "cpu", "batch_size": 32, "projection": "none",
                  "n_ranges": 4, "per_range": 2, "units": 4, "k": 4}
        work = tmp / f"scale{n}"
        before = child(BARE, str(folder), str(REPO / "bench"), "800")
        wall = snakemake(work, config)
        after = child(BARE, str(folder), str(REPO / "bench"), "800")
        stages = stage_records(work)
        forward = sum(float(line.split("forward ")[1].split(" s")[0])
                      for log in (work / "results").rglob("logs/activations/*.log")
                      for line in log.read_text().splitlines() if "timing: forward" in line)
        acts = sum(f.stat().st_size for f in (work / "results").rglob("activations/**/*.h5"))
        written = sum(f.stat().st_size for f in (work / "results").rglob("*") if f.is_file())
        runs[n] = {"wall_s": wall, "cpu_s": sum(v["cpu_s"] for v in stages.values()),
                   "forward_s": forward,
                   "stages": stages, "activation_bytes": acts, "bytes_written": written,
                   "bare": [before, after],
                   "bare_cpu_s": (before["bare_cpu_s_per_image"] + after["bare_cpu_s_per_image"]) / 2,
                   "bare_s": (before["bare_s_per_image"] + after["bare_s_per_image"]) / 2}
    lo, hi = runs[small], runs[large]
    # the headline: against the forward pass timed inside the same runs (the same plain loop,
    # channels_last, stopped at the deepest layer), so that the machine's drift cancels
    ratio = (hi["wall_s"] - lo["wall_s"]) / (hi["forward_s"] - lo["forward_s"])
    cpu_ratio = (hi["cpu_s"] / hi["bare_cpu_s"] - lo["cpu_s"] / lo["bare_cpu_s"]) / (large - small)
    wall_ratio = (hi["wall_s"] / hi["bare_s"] - lo["wall_s"] / lo["bare_s"]) / (large - small)
    per_layer = (hi["bytes_written"] - lo["bytes_written"]) / (large - small) / len(SMALL_LAYERS)
    memory = {stage: hi["stages"][stage]["max_rss_mb"] / max(rec["max_rss_mb"], 1e-9)
              for stage, rec in lo["stages"].items()
              if stage in hi["stages"] and rec["max_rss_mb"] > 0}
    return {"images_small": small, "images_large": large, "runs": runs,
            "bare_cpu_s_per_image": (lo["bare_cpu_s"] + hi["bare_cpu_s"]) / 2,
            "layout": hi["bare"][0]["layout"], "marginal_ratio": ratio,
            "marginal_wall_ratio": wall_ratio, "marginal_cpu_ratio": cpu_ratio,
            "forward_s_per_image": (hi["forward_s"] - lo["forward_s"]) / (large - small),
            "pipeline_s_per_image": (hi["wall_s"] - lo["wall_s"]) / (large - small),
            "bytes_per_image_per_layer": per_layer,
            "activation_bytes_per_image_per_layer": hi["activation_bytes"] / large / len(SMALL_LAYERS),
            "memory_ratio": memory, "memory_ratio_max": max(memory.values())}


# ---------------------------------------------------------------- 2. inference
INFERENCE = r"""
import json, sys, time, torch, numpy as np, pandas as pd
from unitscope.activations import record_maxima
from unitscope.hooks import FirstCalls
from unitscope.inputs import Preprocessing, load_image
from unitscope.models import MODELS, build_model, resolve_layers
manifest, out_dir, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
spec = MODELS["efficientnet_lite0"]
layers = ["stem", "block1", "block3", "block7", "block15"]
modules = resolve_layers(spec, layers)
rows = pd.read_parquet(manifest)
images = np.stack([load_image(r, Preprocessing.of(spec)) for r in rows.itertuples()])
n = len(images)
model = build_model(spec)
mean = torch.tensor(spec.mean).view(1, 3, 1, 1); std = torch.tensor(spec.std).view(1, 3, 1, 1)
bare = 0
for fmt in (torch.contiguous_format, torch.channels_last):
    m = model.to(memory_format=fmt)
    batches = [((torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2).float() - mean) / std
                ).contiguous(memory_format=fmt) for s in range(0, n, batch)]
    with torch.inference_mode(), FirstCalls(m, {"L": modules["block15"]}, lambda l, o: None) as c:
        c.run(m, batches[0])
        t = time.perf_counter()
        for b in batches:
            c.run(m, b)
        bare = max(bare, n / (time.perf_counter() - t))
batches = [(np.arange(s, min(s + batch, n)), images[s:s + batch]) for s in range(0, n, batch)]
record_maxima(model, modules, spec.mean, spec.std, iter(batches[:1]), len(batches[0][0]),
              {l: f"{out_dir}/warm-{l}.h5" for l in layers}, "cpu")
t = time.perf_counter()
record_maxima(model, modules, spec.mean, spec.std, iter(batches), n,
              {l: f"{out_dir}/{l}.h5" for l in layers}, "cpu")
stage = n / (time.perf_counter() - t)
print(json.dumps({"images": n, "bare_img_s": bare, "stage_img_s": stage}))
"""


def bench_inference(tmp: Path, n: int) -> dict:
    from unitscope.datasets.index import index_images
    from unitscope.datasets.sources import candidates

    index_images(candidates({"name": "sample", "max_images": n}), tmp / "m.parquet",
                 tmp / "r.parquet", 2)
    r = child(INFERENCE, str(tmp / "m.parquet"), str(tmp), "32")
    r["ratio"] = r["stage_img_s"] / r["bare_img_s"]
    return r


# ---------------------------------------------------------------- 3. top-k
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


# ---------------------------------------------------------------- 4. planning
def bench_planning(tmp: Path, shards: int = 1400) -> dict:
    import tarfile

    work = tmp / "plan"
    work.mkdir()
    tarfile.open(work / "a.tar", "w").close()  # a url dataset: no image count known to cap shards
    config = {"dataset": {"name": "url", "url": (work / "a.tar").as_uri()}, "shards": shards}
    t = time.perf_counter()
    snakemake(work, config, "--dry-run")
    return {"shards": shards, "layers": 5, "s": time.perf_counter() - t}


# ---------------------------------------------------------------- 4b. a folder's listing
def bench_listing(tmp: Path, files: int = 100_000) -> dict:
    """The fingerprint of a folder dataset (relative path, size, mtime of every image file), taken
    at every parse of the workflow: its cost for `files` files in folders of 100."""
    from unitscope.datasets.index import folder_listing

    root = tmp / "folder"
    for i in range(files):
        if i % 100 == 0:
            sub = root / f"class-{i // 100:04d}"
            sub.mkdir(parents=True)
        (sub / f"img-{i:06d}.jpg").write_bytes(b"")
    folder_listing(root)  # warm the directory cache, as the parse after the first one finds it
    t = time.perf_counter()
    _, count = folder_listing(root)
    return {"files": count, "s": time.perf_counter() - t}


# ---------------------------------------------------------------- 5. the default run
def bench_default(tmp: Path, max_images: int | None) -> dict:
    import yaml

    from unitscope.plan import Layout

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if max_images:
        config["dataset"]["max_images"] = max_images
    work = tmp / "default"
    wall = snakemake(work, config)
    layers = {}
    L = Layout("sample", "efficientnet_lite0", str(work / "results"))
    for layer in config["layers"]:
        layers[layer] = figure_shares(L, layer)
    return {"wall_s": wall, "images": max_images or 408, "stages": stage_records(work),
            "layers": layers}


def figure_shares(L, layer: str) -> dict:
    """Share of the shown top tiles' cells left empty (padding gray, or around a tile that shows what
    the unit sees) and the share of shown projections with >= 2% of pixels 16+ levels from mid-grey."""
    import pandas as pd

    from unitscope.patches import read_index, read_patches
    from unitscope.shown import read_shown

    shown = read_shown(L.shown(layer))["units"]
    table = pd.read_parquet(L.layers_table).set_index("layer").loc[layer]
    field = (table.rf_size, table.rf_size_x) if table.rf_affine else (table.rf_max_h, table.rf_max_w)
    seen = 2 * min(field) >= table.input_h
    idx = read_index(L.patches(layer))
    t = idx[(idx["kind"] == "top") & idx["unit"].isin(shown)]
    box = (t.y1 - t.y0) * (t.x1 - t.x0)
    vis = (t.vy1 - t.vy0) * (t.vx1 - t.vx0)
    if seen:  # a tile keeps the visible part's aspect: the cell's empty share is 1 - short/long side
        h, w = t.vy1 - t.vy0, t.vx1 - t.vx0
        padding = float((1 - np.minimum(h, w) / np.maximum(h, w)).mean())
    else:
        padding = float((1 - vis / box).mean())
    pidx = read_index(L.projections(layer), "projections")
    pt = pidx[pidx["kind"] == "top"]
    images = read_patches(L.projections(layer), pt.index, "projections")
    lively = [float((np.abs(im.astype(int) - 128) >= 16).any(2).mean() >= 0.02) for im in images]
    return {"padding_share": padding, "projection_share": float(np.mean(lively)),
            "rf": int(max(field)), "tiles": "what the unit sees" if seen else "padded box"}


# ---------------------------------------------------------------- the table
def table(res: dict) -> str:
    rows = []
    if "scale" in res:
        s = res["scale"]
        rows += [
            (f"marginal cost of an image, whole pipeline / bare forward ({s['images_large']:,} vs "
             f"{s['images_small']:,} images)",
             f"{s['marginal_ratio']:.2f} ({1000 * s['pipeline_s_per_image']:.2f} vs "
             f"{1000 * s['forward_s_per_image']:.2f} ms, forward timed in the same runs; against "
             f"a separate best plain loop ({s['layout']}) {s['marginal_wall_ratio']:.2f} wall, "
             f"{s['marginal_cpu_ratio']:.2f} CPU)", "<= 1.15", s["marginal_ratio"] <= 1.15),
            ("disk written per image per layer (stream mode)",
             f"{s['bytes_per_image_per_layer'] / 1024:.2f} KB (activations "
             f"{s['activation_bytes_per_image_per_layer'] / 1024:.2f} KB)", "<= 2 KB",
             s["bytes_per_image_per_layer"] <= 2048),
            (f"peak memory of every stage, {s['images_large']:,} / {s['images_small']:,} images",
             f"{s['memory_ratio_max']:.2f} (worst: "
             f"{max(s['memory_ratio'], key=s['memory_ratio'].get)})", "<= 1.2",
             s["memory_ratio_max"] <= 1.2)]
    if "inference" in res:
        i = res["inference"]
        rows.append(("inference stage / bare PyTorch loop (throughput)",
                     f"{i['ratio']:.2f} ({i['stage_img_s']:.1f} vs {i['bare_img_s']:.1f} img/s)",
                     ">= 0.90", i["ratio"] >= 0.90))
    if "topk" in res:
        t = res["topk"]
        rows += [
            (f"top-k stage with bottom-k, histograms, ranges vs naive pandas "
             f"({t['images_small']:,} img x {t['units']} units)",
             f"{t['speedup']:.1f}x ({t['stage_s']:.2f} vs {t['naive_s']:.2f} s)", ">= 5", t["speedup"] >= 5),
            ("its peak memory: naive pandas / stage",
             f"{t['memory_ratio_vs_naive']:.1f}x ({t['naive_peak_mb']:.0f} vs {t['stage_peak_mb']:.0f} MB)",
             "(reported)", True),
            (f"its peak memory {t['images_large']:,} / {t['images_small']:,} images",
             f"{t['memory_growth']:.2f} ({t['stage_peak_mb_large']:.0f} vs {t['stage_peak_mb']:.0f} MB)",
             "<= 1.2", t["memory_growth"] <= 1.2)]
    if "planning" in res:
        p = res["planning"]
        rows.append((f"dry-run planning, {p['shards']:,} shards x {p['layers']} layers",
                     f"{p['s']:.1f} s", "< 15 s", p["s"] < 15))
    if "listing" in res:
        f = res["listing"]
        rows.append((f"folder dataset fingerprint (every parse), {f['files']:,} files",
                     f"{f['s']:.2f} s", "<= 3 s", f["s"] <= 3))
    if "default" in res:
        d = res["default"]
        for layer, f in d["layers"].items():
            rows.append((f"default run, {layer} (RF {f['rf']} px, tiles: {f['tiles']}): padding share "
                         f"/ lively projections", f"{f['padding_share']:.2f} / {f['projection_share']:.2f}",
                         "<= 0.35 / >= 0.90", f["padding_share"] <= 0.35 and f["projection_share"] >= 0.90))
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {'yes' if d else 'NO'} |" for a, b, c, d in rows]
    if "default" in res:
        d = res["default"]
        stages = ", ".join(f"{k} {v['s']:.1f}" for k, v in sorted(d["stages"].items(), key=lambda kv: -kv[1]["s"]))
        lines += ["", f"Default run ({d['images']} images, 5 layers): {d['wall_s']:.0f} s wall; stage "
                      f"times (s, summed over jobs): {stages}"]
    return "\n".join(lines)


def print_table(path: str) -> int:
    """Print the table of an earlier run's JSON (or say there is none)."""
    p = Path(path)
    if not p.exists():
        print(f"no benchmark results at {p}: run python bench/run.py first", file=sys.stderr)
        return 1
    print(table(json.loads(p.read_text())))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (checks the script, not the targets)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--table", nargs="?", const=str(DEFAULT_OUT), metavar="JSON",
                   help="only print the table of an earlier run")
    p.add_argument("--only", nargs="+", choices=["scale", "inference", "topk", "planning", "listing", "default"],
                   help="run only these sections (merged into an existing --out file)")
    args = p.parse_args()
    if args.table:
        return print_table(args.table)
    q = args.quick
    out = Path(args.out)
    res = json.loads(out.read_text()) if args.only and out.exists() else {}
    res |= {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "platform": platform.platform()}, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    sections = {"planning": lambda tmp: bench_planning(tmp, 200 if q else 1400),
                "listing": lambda tmp: bench_listing(tmp, 10_000 if q else 100_000),
                "topk": lambda tmp: bench_topk(tmp, 2000 if q else 20000, 20000 if q else 200000, 256),
                "inference": lambda tmp: bench_inference(tmp, 32 if q else 192),
                "scale": lambda tmp: bench_scale(tmp, 200 if q else 5000, 800 if q else 20000),
                "default": lambda tmp: bench_default(tmp, 40 if q else None)}
    with tempfile.TemporaryDirectory() as d:
        for name, fn in sections.items():
            if args.only and name not in args.only:
                continue
            t = time.perf_counter()
            (Path(d) / name).mkdir()
            res[name] = fn(Path(d) / name)
            print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
