"""Re-verification of the shown examples: it passes on honest tables, stops naming the unit, rank and
image on any stored activation the network does not give, and measures the effective receptive
field against maps with a known mass."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from test_patches_and_grids import ArrayImages
from unitscope.verify import VerificationError, effective_size, verify_examples


def examples_of(model, images, module="1", k=3):
    """The true top-k rows of a model's layer, by a plain forward pass."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        fmap = model[: int(module) + 1](x)
    rows = []
    n, c, h, w = fmap.shape
    for u in range(c):
        flat = fmap[:, u].reshape(n, -1)
        order = torch.argsort(flat.amax(1), descending=True)[:k]
        for rank, i in enumerate(order.tolist()):
            pos = int(flat[i].argmax())
            y, xx = divmod(pos, w)
            rows.append(("top", u, rank, i, float(flat[i].max()), y, xx, y - 1, xx - 1, y + 2, xx + 2))
    return pd.DataFrame(rows, columns=["kind", "unit", "rank", "image_id", "activation", "y", "x",
                                       "y0", "x0", "y1", "x1"])


def test_honest_rows_pass_and_a_wrong_value_stops_naming_unit_rank_and_image():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    rows = examples_of(model, images)
    table = verify_examples(rows, ArrayImages(images), model, "1", (0, 0, 0), (255, 255, 255))
    assert table["ok"].all() and len(table) == len(rows)
    assert (table["recomputed"] - rows["activation"]).abs().max() < 1e-5
    bad = rows.copy()
    bad.loc[5, "activation"] = 1e30
    r = bad.loc[5]
    with pytest.raises(VerificationError, match=f"unit {r.unit} top rank {r['rank']} image {r.image_id}: "
                                                f"stored activation 1e\\+30"):
        verify_examples(bad, ArrayImages(images), model, "1", (0, 0, 0), (255, 255, 255))
    moved = rows.copy()  # the right value at a position that is not the maximum
    moved.loc[0, ["y", "x"]] = [(moved.loc[0, "y"] + 7) % 16, (moved.loc[0, "x"] + 7) % 16]
    with pytest.raises(VerificationError, match="unit 0 top rank 0"):
        verify_examples(moved, ArrayImages(images), model, "1", (0, 0, 0), (255, 255, 255))


def test_effective_size_holds_the_share_of_the_mass():
    mass = np.zeros((64, 64))
    mass[30:34, 30:34] = 1.0  # all the mass in a 4×4 square at the centre
    assert effective_size(mass, (32, 32)) == 4
    yy, xx = np.mgrid[0:64, 0:64]
    gauss = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 5.0 ** 2))
    side = effective_size(gauss, (32, 32))
    half = side // 2
    inside = gauss[32 - half:32 + half, 32 - half:32 + half].sum() / gauss.sum()
    smaller = gauss[32 - half + 1:32 + half - 1, 32 - half + 1:32 + half - 1].sum() / gauss.sum()
    assert inside >= 0.9 > smaller
    assert effective_size(np.zeros((8, 8)), (4, 4)) == 0
