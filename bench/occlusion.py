"""Section occlusion: what the occlusion stage costs.

- Default run: the default config from nothing with its occlusion settings and with
  `occlusion: {examples: 0}` (no occlusion stage), alternated twice so that the machine's drift
  falls on both; the ratio of the medians (target <= 1.25).
- Stage cost: per layer of the default run, the occlusion stage (in-process, the network already
  built) against the bare forward passes of exactly the batches it ran (same shapes, same
  network, stopped at the layer where the stage stopped, channels_last, inference mode), timed
  alternately three times each, the best of each; and the stage's time over the forward passes
  timed inside it (the same passes at the same moment: what the stage adds beyond them, free of
  the machine's drift). The target (<= 1.1: no work beyond the forward passes) is judged on the
  second: on this 2-core VM the separate replay moves by ±30% between runs (block15: 1.21 in one
  run, 0.89 in the next), in both directions. Also the occluded copies, and whether they were
  crops of the field."""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import yaml

from harness import REPO, snakemake

LAYERS_TARGET, RUN_TARGET = 1.1, 1.25


def bench_occlusion(tmp: Path, max_images: int | None = None) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if max_images:
        config["dataset"]["max_images"] = max_images
    off = copy.deepcopy(config)
    off["occlusion"] = {"examples": 0}
    walls: dict[str, list[float]] = {"without": [], "with": []}
    for i in range(2):
        for name, cfg in (("without", off), ("with", config)):
            work = tmp / f"{name}-{i}"
            walls[name].append(snakemake(work, cfg))
    res = {"walls": walls, "ratio": statistics.median(walls["with"]) / statistics.median(walls["without"]),
           "settings": config.get("occlusion", {}), "layers": {}}
    work = tmp / "with-1"
    for layer in config["layers"]:
        res["layers"][layer] = stage_against_forward(work, config, layer)
    return res


def stage_against_forward(work: Path, config: dict, layer: str) -> dict:
    import torch

    from unitscope import stages
    from unitscope.hooks import FirstCalls
    from unitscope.inputs import Preprocessing, image_source
    from unitscope.occlusion import Settings, occlusion_stage
    from unitscope.plan import Layout

    torch.set_num_threads(1)  # as the workflow's occlusion jobs
    L = Layout("sample", "efficientnet_lite0", str(work / "results"))
    model = {"name": config["model"]["name"], "weights": config["model"]["weights"]}
    spec, net, module, view = stages._network(model, layer, 1)
    settings = Settings.from_dict(config.get("occlusion"))
    stage_s, bare_s, inside, record = [], [], [], None
    for _ in range(3):
        with image_source(L.manifest, Preprocessing.of(spec)) as images:
            images[0]  # decoded once before the clock: the stage's own first image is timed
            t = time.perf_counter()
            record = occlusion_stage(L.topk(layer), L.shown(layer), L.rf(layer), L.layers_table,
                                     L.manifest, images, net, module, spec.mean, spec.std, layer,
                                     str(work / f"bench-{layer}.h5"), settings, view)
            stage_s.append(time.perf_counter() - t)
            inside.append(stage_s[-1] / record["forward_s"])
        batches = [(torch.randn(b, 3, h, w).contiguous(memory_format=torch.channels_last), full)
                   for b, h, w, full in record["shapes"]]
        t = time.perf_counter()
        with torch.inference_mode():
            for x, full in batches:
                with FirstCalls(net, {"layer": module}, lambda *_: None, stop=not full) as calls:
                    calls.run(net, x)
        bare_s.append(time.perf_counter() - t)
    return {"stage_s": min(stage_s), "bare_forward_s": min(bare_s), "ratio": min(stage_s) / min(bare_s),
            "over_own_forward": min(inside),
            "copies": record["copies"], "method": record["method"],
            "passes": len(record["shapes"])}


def rows(res: dict) -> list[tuple]:
    out = [(f"default run with occlusion ({res['settings']}) / without (medians of 2 alternated)",
            f"{res['ratio']:.2f} ({statistics.median(res['walls']['with']):.0f} vs "
            f"{statistics.median(res['walls']['without']):.0f} s)", f"<= {RUN_TARGET}",
            res["ratio"] <= RUN_TARGET)]
    for layer, r in res["layers"].items():
        own = r.get("over_own_forward", float("nan"))
        out.append((f"occlusion stage {layer} ({r['copies']} occluded copies, "
                    f"{'crops of the field' if r['method'] == 'local' else 'whole images'}): its time / "
                    f"the forward passes timed inside it",
                    f"{own:.2f} (against a bare replay of the same batches: {r['ratio']:.2f}, "
                    f"{r['stage_s']:.2f} vs {r['bare_forward_s']:.2f} s)", f"<= {LAYERS_TARGET}",
                    own <= LAYERS_TARGET))
    return out
