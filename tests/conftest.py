"""Shared helpers: tiny synthetic images and hand-made models with known filters."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
