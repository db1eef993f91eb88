"""Section inference: the inference stage's throughput against a bare PyTorch loop over the same
in-memory tensors (>= 0.90)."""
from __future__ import annotations

from pathlib import Path

from harness import child


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


def rows(i: dict) -> list:
    return [("inference stage / bare PyTorch loop (throughput)",
             f"{i['ratio']:.2f} ({i['stage_img_s']:.1f} vs {i['bare_img_s']:.1f} img/s)",
             ">= 0.90", i["ratio"] >= 0.90)]
