"""The GPU benchmark: one prepared script for a machine with one CUDA GPU (a lent H200 with 16
cores, say). For VGG16 and EfficientNet-Lite0 at 224 px, random weights (no network needed):

1. bare forward img/s: a plain loop over in-memory batches on the GPU (fp32 and bf16 autocast,
   NCHW and channels_last, the best of each), stopped at the deepest benchmarked layer;
2. the inference stage's img/s on the same in-memory images (target >= 0.90 of bare), and the
   share of its time the GPU was busy;
3. end to end: the whole workflow on 50,000 synthetic JPEGs, 5 layers, streaming, device cuda,
   bf16 (target for VGG16: <= 2 min), with its stage times.

    python bench/gpu.py [--images 50000] [--out results.json]

It writes a JSON file and prints a table for the README's Performance section."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LAYERS = {"vgg16": ["conv1_2", "conv3_3", "conv4_3", "conv5_3", "pool5"],
          "efficientnet_lite0": ["stem", "block1", "block3", "block7", "block15"]}


def bare_and_stage(name: str, n: int, batch: int, device: str = "cuda") -> dict:
    import torch

    from unitscope.activations import record_maxima
    from unitscope.hooks import FirstCalls
    from unitscope.models import MODELS, build_model, resolve_layers

    spec = MODELS[name]
    modules = resolve_layers(spec, LAYERS[name])
    deepest = {"L": modules[LAYERS[name][-1]]}
    model = build_model(spec, None).to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    out = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        best = 0.0
        for fmt in (torch.contiguous_format, torch.channels_last):
            m = model.to(memory_format=fmt)
            gpu = torch.from_numpy(images).to(device)
            with torch.inference_mode(), FirstCalls(m, deepest, lambda l, o: None) as calls, \
                    torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                def go():
                    for s in range(0, n, batch):
                        x = ((gpu[s:s + batch].permute(0, 3, 1, 2).float() - mean) / std).contiguous(memory_format=fmt)
                        calls.run(m, x)
                go()
                sync()
                t = time.perf_counter()
                go()
                sync()
                best = max(best, n / (time.perf_counter() - t))
        batches = [(np.arange(s, min(s + batch, n)), images[s:s + batch]) for s in range(0, n, batch)]
        with tempfile.TemporaryDirectory() as d:
            outs = {layer: f"{d}/{layer}.h5" for layer in modules}
            record_maxima(model, modules, spec.mean, spec.std, iter(batches[:1]),
                          len(batches[0][0]), outs, device, precision)  # warm-up
            t = time.perf_counter()
            record_maxima(model, modules, spec.mean, spec.std, iter(batches), n, outs, device, precision)
            stage = n / (time.perf_counter() - t)
        out[precision] = {"bare_img_s": best, "stage_img_s": stage, "ratio": stage / best}
    return out


def make_jpegs(folder: Path, n: int, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = [np.clip(rng.normal(128, 40, (256, 256, 3)), 0, 255).astype(np.uint8) for _ in range(32)]

    def write(i):
        im = bases[i % 32].copy()
        y, x = (i * 37) % 200, (i * 91) % 200
        im[y:y + 40, x:x + 40] = (i % 255, 255 - i % 255, 80)
        Image.fromarray(im).save(folder / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write, range(n)))


def end_to_end(name: str, folder: Path, work: Path, cores: int, device: str = "cuda",
               projection: str = "guided_backprop") -> dict:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    config = {"dataset": {"name": "folder", "path": str(folder)},
              "model": {"name": name, "weights": "none"}, "layers": LAYERS[name],
              "device": device, "precision": "bf16", "batch_size": 256, "shards": 1,
              "projection": projection}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                        "--configfile", "config.yaml", "--cores", str(cores),
                        "--set-threads", f"activations={cores}", "--quiet"],
                       cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    stages = {}
    for tsv in (work / "results").rglob("benchmarks/**/*.tsv"):
        stage = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        s = float(tsv.read_text().splitlines()[1].split("\t")[0])
        stages[stage] = stages.get(stage, 0.0) + s
    busy = [line for log in (work / "results").rglob("logs/activations/*.log")
            for line in log.read_text().splitlines() if "busy" in line]
    return {"wall_s": wall, "stages": stages, "activations_log": busy}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--bare-images", type=int, default=4096)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu only to try the script itself (tiny --images)")
    p.add_argument("--models", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--projection", default="guided_backprop", choices=["guided_backprop", "none"])
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU; torch sees none", file=sys.stderr)
        return 1
    cores = os.cpu_count() or 1
    res = {"gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu)",
           "cores": cores, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "jpegs"
        t = time.perf_counter()
        make_jpegs(folder, args.images, cores)
        res["jpegs_s"] = time.perf_counter() - t
        for name in args.models:
            res["models"][name] = {
                "throughput": bare_and_stage(name, args.bare_images, 256 if args.device == "cuda" else 16, args.device),
                "end_to_end": end_to_end(name, folder, Path(d) / name, cores, args.device,
                                         args.projection)}
            print(name, json.dumps(res["models"][name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\n| model | precision | bare img/s | stage img/s | stage / bare | end to end, {args.images:,} JPEGs x 5 layers |")
    print("|---|---|---|---|---|---|")
    for name, r in res["models"].items():
        for prec, t in r["throughput"].items():
            e2e = r["end_to_end"].get("wall_s")
            print(f"| {name} | {prec} | {t['bare_img_s']:.0f} | {t['stage_img_s']:.0f} | {t['ratio']:.2f} | "
                  f"{f'{e2e:.0f} s (bf16)' if e2e and prec == 'bf16' else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
