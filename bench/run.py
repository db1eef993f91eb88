"""The benchmark: every figure is a ratio against a baseline measured in the same run on the same
machine (these machines are noisy), printed as a table and written to bench/results/latest.json.

    python bench/run.py            # about 5 minutes on 2 cores
    python bench/run.py --quick    # smaller sizes, for trying the script itself

1. inference stage throughput / a bare PyTorch loop over the same in-memory tensors (target >= 0.90)
2. preprocessing stage throughput / a plain "PIL open, convert, resize, crop" loop (target >= 1.5)
3. top-k stage vs a naive pandas sort: time ratio (>= 10) and peak-memory ratio; and the stage's
   peak memory at 200,000 / at 20,000 images (target <= 1.2)
4. end-to-end wall time of the default pipeline per stage, at 1x and 4x the images (4x/1x <= 4.4)
5. snakemake --dry-run planning time for 500 shards x 5 layers (target < 10 s)
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
       "PYTHONPATH": str(REPO)}


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python (its own peak memory); it prints one JSON line last."""
    out = subprocess.run([PY, "-c", code, *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- 1. inference
INFERENCE = r"""
import json, sys, time, h5py, torch
from unitscope.activations import run_inference
from unitscope.models import MODELS, build_model
inputs, out_dir, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
layers = ["stem", "block1", "block3", "block7", "block15"]
spec = MODELS["efficientnet_lite0"]
torch.set_num_threads(threads)
images = torch.from_numpy(h5py.File(inputs, "r")["images"][:])
n = len(images)
# the bare loop: the same images already in memory as normalised tensors, the same model
model = build_model("efficientnet_lite0")
mean = torch.tensor(spec.mean).view(1, 3, 1, 1); std = torch.tensor(spec.std).view(1, 3, 1, 1)
batches = [(images[s:s + batch].permute(0, 3, 1, 2).float() - mean) / std for s in range(0, n, batch)]
with torch.inference_mode():
    model(batches[0])
    t = time.perf_counter()
    for b in batches:
        model(b)
    bare = n / (time.perf_counter() - t)
# the stage, from the inputs file to the activation files, model loading included
run_inference(inputs, "efficientnet_lite0", layers, [f"{out_dir}/warm-{l}.h5" for l in layers],
              batch_size=batch, device="cpu", threads=threads)
t = time.perf_counter()
run_inference(inputs, "efficientnet_lite0", layers, [f"{out_dir}/{l}.h5" for l in layers],
              batch_size=batch, device="cpu", threads=threads)
stage = n / (time.perf_counter() - t)
print(json.dumps({"images": n, "bare_img_s": bare, "stage_img_s": stage}))
"""


def bench_inference(tmp: Path, n: int) -> dict:
    import h5py

    from unitscope.datasets.index import index_images
    from unitscope.datasets.sources import candidates
    from unitscope.inputs import write_inputs

    index_images(candidates({"name": "sample", "max_images": n}), tmp / "m.parquet",
                 tmp / "r.parquet", 2)
    write_inputs(tmp / "m.parquet", tmp / "inputs.h5", 0, 1, 256, 224, threads=2)
    with h5py.File(tmp / "inputs.h5") as f:
        assert len(f["images"]) == n
    r = child(INFERENCE, str(tmp / "inputs.h5"), str(tmp), "32", "2")
    r["ratio"] = r["stage_img_s"] / r["bare_img_s"]
    return r


# ---------------------------------------------------------------- 2. preprocessing
def make_jpegs(folder: Path, n: int) -> list[Path]:
    """Real photographs (scikit-image's) resized to 500×375 and 1600×1200, saved as JPEG."""
    from PIL import Image

    from unitscope.datasets.sample import PHOTOS, skimage_data_dir

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(os.path.join(skimage_data_dir(), p)).convert("RGB") for p in PHOTOS]
    paths = []
    for i in range(n):
        size = (500, 375) if i % 2 == 0 else (1600, 1200)
        p = folder / f"img{i:04d}.jpg"
        photos[i % len(photos)].resize(size, Image.BICUBIC).save(p, quality=90)
        paths.append(p)
    return paths


def bench_preprocessing(tmp: Path, n: int) -> dict:
    from PIL import Image

    from unitscope.datasets import Candidate
    from unitscope.datasets.index import index_images
    from unitscope.inputs import write_inputs

    paths = make_jpegs(tmp / "jpegs", n)
    index_images([Candidate(str(p), p.name) for p in paths], tmp / "pm.parquet", tmp / "pr.parquet", 2)

    def plain():
        out = []
        for p in paths:
            im = Image.open(p).convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
            left, top = (im.width - 224) // 2, (im.height - 224) // 2
            out.append(np.asarray(im.crop((left, top, left + 224, top + 224))))
        return out

    plain()  # warm the file cache for both
    t = time.perf_counter()
    plain()
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    write_inputs(tmp / "pm.parquet", tmp / "pinputs.h5", 0, 1, 256, 224, threads=2)
    stage_s = time.perf_counter() - t
    return {"images": n, "plain_img_s": n / plain_s, "stage_img_s": n / stage_s,
            "ratio": plain_s / stage_s}


# ---------------------------------------------------------------- 3. top-k
TOPK_STAGE = r"""
import json, resource, sys, time
from unitscope.cli import shard_files
from unitscope.topk import select_topk
folder, shards = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
select_topk(shard_files([folder], shards), sys.argv[3], sys.argv[4], "L", k=9)
print(json.dumps({"s": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
TOPK_NAIVE = r"""
import json, resource, sys, time, h5py, numpy as np, pandas as pd
from unitscope.cli import shard_files
folder, shards = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
frames = []
for p in shard_files([folder], shards):
    with h5py.File(p) as f:
        ids, m = f["image_id"][:], f["max"][:]
        y, x = f["argmax_y"][:], f["argmax_x"][:]
    n, c = m.shape
    frames.append(pd.DataFrame({"image_id": np.repeat(ids, c), "unit": np.tile(np.arange(c), n),
                                "activation": m.ravel(), "y": y.ravel(), "x": x.ravel()}))
df = pd.concat(frames, ignore_index=True)
top = (df.sort_values(["unit", "activation", "image_id"], ascending=[True, False, True])
         .groupby("unit").head(9))
top["rank"] = top.groupby("unit").cumcount()
units = df.groupby("unit")["activation"].agg(["max", "mean"])
print(json.dumps({"s": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_activations(folder: Path, n: int, units: int, per_shard: int = 20000) -> tuple[Path, Path, int]:
    import h5py
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = 0
    for s in range(0, n, per_shard):
        m = min(per_shard, n - s)
        with h5py.File(folder / f"shard-{shards:03d}.h5", "w") as f:
            f["image_id"] = np.arange(s, s + m)
            f["max"] = rng.gamma(2.0, size=(m, units)).astype(np.float32)
            f["argmax_y"] = rng.integers(0, 14, (m, units), dtype=np.int32)
            f["argmax_x"] = rng.integers(0, 14, (m, units), dtype=np.int32)
        shards += 1
    manifest, layers = folder / "manifest.parquet", folder / "layers.parquet"
    pd.DataFrame({"image_id": np.arange(n), "group": np.arange(n).astype(str)}).to_parquet(manifest)
    pd.DataFrame([{"layer": "L", "module": "m", "channels": units, "height": 14, "width": 14,
                   "units": units, "activations": units * 196, "rf_size": 99, "rf_stride": 16,
                   "rf_offset": 7.5, "rf_start": -42, "rf_size_x": 99, "rf_stride_x": 16,
                   "rf_offset_x": 7.5, "rf_start_x": -42}]).to_parquet(layers)
    return manifest, layers, shards


def bench_topk(tmp: Path, small: int, large: int, units: int) -> dict:
    res = {"units": units, "images_small": small, "images_large": large}
    runs = {}
    for n in (small, large):
        manifest, layers, shards = write_activations(tmp / f"acts{n}", n, units)
        runs[n] = child(TOPK_STAGE, str(tmp / f"acts{n}"), str(shards), str(manifest), str(layers))
        if n == small:
            naive = child(TOPK_NAIVE, str(tmp / f"acts{n}"), str(shards))
    res.update(stage_s=runs[small]["s"], naive_s=naive["s"], speedup=naive["s"] / runs[small]["s"],
               stage_peak_mb=runs[small]["peak_mb"], naive_peak_mb=naive["peak_mb"],
               memory_ratio_vs_naive=naive["peak_mb"] / runs[small]["peak_mb"],
               stage_peak_mb_large=runs[large]["peak_mb"], stage_s_large=runs[large]["s"],
               memory_growth=runs[large]["peak_mb"] / runs[small]["peak_mb"])
    return res


# ---------------------------------------------------------------- 4. end to end
def run_pipeline(work: Path, max_images: int) -> dict:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(
        {"dataset": {"name": "sample", "max_images": max_images}, "device": "cpu"}))
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                        "config.yaml", "--cores", "2", "--quiet"], cwd=work, env=ENV,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    stages: dict[str, float] = {}
    for tsv in (work / "results").rglob("benchmarks/**/*.tsv"):
        stage = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        stages[stage] = stages.get(stage, 0.0) + float(row["s"])
    return {"images": max_images, "wall_s": wall, "stage_s": stages}


def bench_end_to_end(tmp: Path, n: int) -> dict:
    one = run_pipeline(tmp / "e2e1", n)
    four = run_pipeline(tmp / "e2e4", 4 * n)
    return {"1x": one, "4x": four, "ratio": four["wall_s"] / one["wall_s"]}


# ---------------------------------------------------------------- 5. planning
def bench_planning(tmp: Path, shards: int = 500) -> dict:
    import yaml

    work = tmp / "plan"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump({"shards": shards}))
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                        "config.yaml", "--dry-run"], cwd=work, env=ENV, capture_output=True,
                       text=True)
    s = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    jobs = r.stdout.count("\nrule ") + r.stdout.count("\nlocalrule ")
    return {"shards": shards, "layers": 5, "jobs": jobs, "s": s}


def table(res: dict) -> str:
    inf, pre, top, e2e, plan = (res[k] for k in ("inference", "preprocessing", "topk",
                                                   "end_to_end", "planning"))
    rows = [
        ("inference stage / bare PyTorch loop (throughput)",
         f"{inf['ratio']:.2f} ({inf['stage_img_s']:.1f} vs {inf['bare_img_s']:.1f} img/s)", ">= 0.90",
         inf["ratio"] >= 0.90),
        ("preprocessing stage / plain PIL loop (throughput)",
         f"{pre['ratio']:.2f} ({pre['stage_img_s']:.0f} vs {pre['plain_img_s']:.0f} img/s)", ">= 1.5",
         pre["ratio"] >= 1.5),
        (f"top-k speed-up vs naive pandas ({top['images_small']:,} img x {top['units']} units)",
         f"{top['speedup']:.1f}x ({top['stage_s']:.2f} vs {top['naive_s']:.2f} s)", ">= 10",
         top["speedup"] >= 10),
        ("top-k peak memory: naive pandas / stage",
         f"{top['memory_ratio_vs_naive']:.1f}x ({top['naive_peak_mb']:.0f} vs {top['stage_peak_mb']:.0f} MB)",
         "(reported)", True),
        (f"top-k peak memory {top['images_large']:,} / {top['images_small']:,} images",
         f"{top['memory_growth']:.2f} ({top['stage_peak_mb_large']:.0f} vs {top['stage_peak_mb']:.0f} MB)",
         "<= 1.2", top["memory_growth"] <= 1.2),
        (f"end to end {4 * e2e['1x']['images']} / {e2e['1x']['images']} images (wall time)",
         f"{e2e['ratio']:.2f} ({e2e['4x']['wall_s']:.0f} vs {e2e['1x']['wall_s']:.0f} s)", "<= 4.4",
         e2e["ratio"] <= 4.4),
        (f"dry-run planning, {plan['shards']} shards x {plan['layers']} layers ({plan['jobs']} jobs)",
         f"{plan['s']:.1f} s", "< 10 s", plan["s"] < 10),
    ]
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {'yes' if d else 'NO'} |" for a, b, c, d in rows]
    stages = ", ".join(f"{k} {e2e['4x']['stage_s'][k]:.1f}" for k in
                       ("dataset", "inputs", "layers", "activations", "topk", "patches",
                        "projections", "grids", "gallery") if k in e2e["4x"]["stage_s"])
    lines.append("")
    lines.append(f"Stage times at {4 * e2e['1x']['images']} images (s, summed over jobs): {stages}")
    return "\n".join(lines)


def print_table(path: str) -> None:
    """Print the table of an earlier run's JSON."""
    print(table(json.loads(Path(path).read_text())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (checks the script, not the targets)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    p.add_argument("--table", metavar="JSON", help="only print the table of an earlier run")
    args = p.parse_args()
    if args.table:
        return print_table(args.table)
    q = args.quick
    res = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "platform": platform.platform()},
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fn in (("inference", lambda: bench_inference(tmp, 32 if q else 192)),
                         ("preprocessing", lambda: bench_preprocessing(tmp, 16 if q else 96)),
                         ("topk", lambda: bench_topk(tmp, 2000 if q else 20000,
                                                     20000 if q else 200000, 256)),
                         ("end_to_end", lambda: bench_end_to_end(tmp, 20 if q else 100)),
                         ("planning", lambda: bench_planning(tmp, 500))):
            t = time.perf_counter()
            res[name] = fn()
            print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
