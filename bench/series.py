"""Section series: what a checkpoint series costs against separate runs.

Three checkpoints of EfficientNet-Lite0 (its ImageNet state_dict, each perturbed by a little
seeded noise and saved with torch.save: three real, different state_dicts) on the default data
and config. One model alone (the first checkpoint, `model:`) is run twice, before and after the
series (the machine's drift falls on both; the median is the baseline); the series runs once, as
`models: {series: ...}` with `compare: {models: <series>}`, so that its wall time also pays for
the comparison. The figure: (series wall) / (3 × one model's wall), target <= 1.0 (the series
shares the dataset and the layer table, and one Snakemake start), with each stage's time summed
over its jobs printed for both."""
from __future__ import annotations

import copy
import statistics
from pathlib import Path

import yaml

from harness import REPO, snakemake, stage_records

N, TARGET = 3, 1.0


def checkpoints(folder: Path, n: int) -> str:
    """n state_dicts: the shipped ImageNet weights, their convolution and linear weights plus 0.1%
    seeded noise (batch-norm statistics untouched: a variance must stay positive), as
    epoch1..n.pth."""
    import torch

    from unitscope.models import MODELS, weights_file

    state = torch.load(weights_file(MODELS["efficientnet_lite0"], "imagenet"), weights_only=True)
    folder.mkdir(parents=True, exist_ok=True)
    for e in range(1, n + 1):
        g = torch.Generator().manual_seed(e)
        torch.save({k: v + 1e-3 * v.std().nan_to_num() * torch.randn(v.shape, generator=g)
                    if v.is_floating_point() and v.dim() >= 2 else v for k, v in state.items()},
                   folder / f"epoch{e}.pth")
    return str(folder / "epoch{epoch}.pth")


def bench_series(tmp: Path, max_images: int | None = None) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if max_images:
        config["dataset"]["max_images"] = max_images
    weights = checkpoints(tmp / "ckpt", N)
    one = copy.deepcopy(config)
    one["model"] = {**config["model"], "weights": weights.replace("{epoch}", "1")}
    series = copy.deepcopy(config)
    series["models"] = {"series": {**config["model"], "weights": weights, "epoch": list(range(1, N + 1))}}
    series["compare"] = {"models": config["model"]["name"]}
    walls = []
    walls.append(snakemake(tmp / "one-0", one))
    series_wall = snakemake(tmp / "series", series)
    walls.append(snakemake(tmp / "one-1", one))
    base = statistics.median(walls)
    return {"n": N, "one_walls": walls, "series_wall": series_wall,
            "ratio": series_wall / (N * base),
            "one_stages": stage_records(tmp / "one-1"), "series_stages": stage_records(tmp / "series")}


def rows(res: dict) -> list[tuple]:
    base = statistics.median(res["one_walls"])
    return [(f"checkpoint series of {res['n']} (with its comparison) / {res['n']} x one model's run",
             f"{res['ratio']:.2f} ({res['series_wall']:.0f} vs {res['n']} x {base:.0f} s)",
             f"<= {TARGET}", res["ratio"] <= TARGET)]


def stage_lines(res: dict) -> list[str]:
    one, ser = res["one_stages"], res["series_stages"]
    names = sorted(set(one) | set(ser), key=lambda s: -ser.get(s, {}).get("s", 0))
    parts = [f"{s} {ser.get(s, {}).get('s', 0):.1f} vs {res['n']} x {one.get(s, {}).get('s', 0):.1f}"
             for s in names]
    return [f"Series of {res['n']} against one model, stage times (s, summed over jobs; stages "
            f"without benchmark files not listed): " + ", ".join(parts)]
