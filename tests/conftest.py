"""Shared helpers: tiny synthetic images, hand-made models with known filters, a local HTTP
server, Snakemake runs in a temporary folder, and the plan of a config checked in-process."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
torch.set_num_threads(min(2, os.cpu_count() or 1))
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


class RedSpotNet(nn.Module):
    """conv 3×3 (pad 1) with channel 0 = R − G − B summed over the window (a red detector) and
    channel 1 = its negative, ReLU, 2×2 max-pool: a layer with a known filter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        w = torch.zeros(2, 3, 3, 3)
        w[0, 0], w[0, 1], w[0, 2] = 1.0, -1.0, -1.0
        w[1] = -w[0]
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.zero_()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x)))


@pytest.fixture
def server(tmp_path):
    """A test HTTP server on 127.0.0.1 serving tmp_path/served (see http_fixture.py)."""
    from http_fixture import LocalServer

    root = tmp_path / "served"
    root.mkdir()
    srv = LocalServer(root)
    yield srv
    srv.stop()


@pytest.fixture
def red_spot_net():
    return RedSpotNet().eval()


def write_pngs(folder: Path, images: list[np.ndarray], names: list[str] | None = None) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / (names[i] if names else f"img{i:03d}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


def validated(config: dict) -> dict:
    """A config checked against the schema with its defaults filled in, as Snakemake does."""
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(SCHEMA))
    return config


def plan_of(config: dict, **kw):
    """The plan of a config, in-process (the same checks the workflow makes before any job)."""
    from unitscope.plan import build_plan

    return build_plan(validated(config), **{"check_results": False, **kw})


def snakemake(workdir: Path, config: dict, *args: str, timeout: int = 900,
              pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` with `config` (`pythonpath`: where a model.python factory's
    module lies, for the main process and every job)."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "--configfile", "config.yaml", "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def planned(out: str) -> set[tuple[str, str]]:
    """(rule, layer) of every job a dry run plans."""
    return {(rule, layer) for rule, _, layer in planned_jobs(out)}


def planned_jobs(out: str) -> set[tuple[str, str, str]]:
    """(rule, model, layer) of every job a dry run plans ("" where the rule has no such wildcard;
    the comparison's name stands in for the model of a comparison's jobs)."""
    import re

    jobs, job = set(), None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            if job:
                jobs.add(tuple(job))
            job = [m.group(1), "", ""]
        m = re.match(r"^\s+wildcards: (.*)$", line)
        if m and job:
            w = dict(part.split("=", 1) for part in m.group(1).split(", ") if "=" in part)
            job[1] = w.get("model", w.get("compare", ""))
            job[2] = w.get("layer", "")
    if job:
        jobs.add(tuple(job))
    return jobs


def layer_frame(name: str, channels: int, height: int, width: int, size: int, stride: int,
                start: int, size_x: int | None = None, start_x: int | None = None) -> pd.DataFrame:
    """A one-row layer table of an affine field (for stage tests without a model)."""
    size_x = size if size_x is None else size_x
    start_x = start if start_x is None else start_x
    return pd.DataFrame([{
        "layer": name, "module": name, "channels": channels, "height": height, "width": width,
        "units": channels, "activations": channels * height * width, "input_h": 224,
        "input_w": 224, "rf_method": "analytic", "rf_affine": True, "rf_size": size,
        "rf_stride": stride, "rf_offset": start + size / 2, "rf_start": start, "rf_size_x": size_x,
        "rf_stride_x": stride, "rf_offset_x": start_x + size_x / 2, "rf_start_x": start_x,
        "rf_max_h": size, "rf_max_w": size_x}])


def affine_boxes(height: int, width: int, size: int, stride: int, start: int,
                 size_x: int | None = None, start_x: int | None = None) -> pd.DataFrame:
    """The rf table of an affine field."""
    from unitscope.layers import rf_frame

    size_x = size if size_x is None else size_x
    start_x = start if start_x is None else start_x
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    y0, x0 = start + stride * ys, start_x + stride * xs
    return rf_frame(np.stack([y0, x0, y0 + size, x0 + size_x]))
