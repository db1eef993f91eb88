"""Section scale: the whole pipeline on 5,000 and 20,000 JPEGs cut from photographs, with a small
model (stream mode): the marginal cost of an image against the bare forward pass timed inside the
same runs, disk written per image per layer, and each stage's peak memory at 20,000 / 5,000."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness import REPO, child, snakemake, stage_records

SMALL_LAYERS = ["s3", "s4"]


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


def rows(s: dict) -> list:
    return [
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
