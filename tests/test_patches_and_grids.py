"""Patch cropping against direct array slicing, and the figure layout against known patches."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.grids import PATCH_GAP, TITLE_H, UNIT_GAP, draw_grids, select_units
from unitscope.patches import GRAY, crop_box, crop_box_scaled, cut_patches, read_index, read_patch


def test_crop_box_pads_with_gray_and_never_shifts():
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    patch, mask = crop_box(img, (-3, 8, 4, 15))  # reaches above and to the right
    assert patch.shape == (7, 7, 3)
    assert (patch[3:, :4] == img[0:4, 8:12]).all()  # image part at its true offset
    assert (patch[:3] == GRAY).all() and (patch[:, 4:] == GRAY).all()
    assert mask[3:, :4].all() and not mask[:3].any() and not mask[:, 4:].any()


def test_scaled_crop_matches_shrinking_the_padded_crop():
    rng = np.random.default_rng(0)
    img = (rng.random((224, 224, 3)) * 40 + 100).astype(np.uint8)
    box = (-300, -250, 551, 601)  # an 851-px field around the image
    small, mask = crop_box_scaled(img, box, (128, 128))
    full, full_mask = crop_box(img, box)
    ref = np.asarray(Image.fromarray(full).resize((128, 128), Image.LANCZOS)).astype(int)
    ref_mask = np.asarray(Image.fromarray(full_mask).resize((128, 128), Image.NEAREST))
    assert (mask != ref_mask).sum() <= 2 * 128  # at most a row/column of rounding at the edges
    inner = mask & ref_mask
    inner[:, :] &= np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    assert np.abs(small.astype(int) - ref)[inner].mean() < 3


def make_inputs(tmp_path, n=4, size=32):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    p = tmp_path / "inputs.h5"
    with h5py.File(p, "w") as f:
        f["images"] = images
        f["image_id"] = np.arange(n)
    return p, images


def test_patches_file_holds_the_true_box_of_every_row(tmp_path):
    inputs, images = make_inputs(tmp_path)
    rows = [("L", u, r, (u + r) % 4, 1.0, 0, 0, -2 + 5 * u, 3 * r - 1, -2 + 5 * u + 9, 3 * r - 1 + 9)
            for u in range(3) for r in range(2)]
    table = pd.DataFrame(rows, columns=["layer", "unit", "rank", "image_id", "activation", "y", "x",
                                        "y0", "x0", "y1", "x1"])
    table.to_parquet(tmp_path / "topk.parquet")
    out = tmp_path / "patches.h5"
    assert cut_patches(tmp_path / "topk.parquet", [inputs], out, patch_max_px=128) == 6
    index = read_index(out)
    assert (index[["unit", "rank", "image_id"]].to_numpy() == table[["unit", "rank", "image_id"]].to_numpy()).all()
    for i, row in table.iterrows():
        rgb, mask = read_patch(out, i)
        want, want_mask = crop_box(images[row.image_id], (row.y0, row.x0, row.y1, row.x1))
        assert (mask == want_mask).all()
        assert np.abs(rgb.astype(int) - want.astype(int)).mean() < 12  # JPEG q95 of noise
    with h5py.File(out) as f:
        assert tuple(f.attrs["rf_size"]) == (9, 9) and f.attrs["scale"] == 1.0
    # a field larger than patch_max_px is stored shrunk, with its scale
    cut_patches(tmp_path / "topk.parquet", [inputs], out, patch_max_px=6)
    with h5py.File(out) as f:
        assert tuple(f.attrs["size"]) == (6, 6) and f.attrs["scale"] == pytest.approx(6 / 9)


def test_select_units_picks_and_refuses_clearly():
    units = pd.DataFrame({"unit": range(5), "max": [1.0, 5.0, 3.0, 5.0, 0.0]})
    assert select_units(units, 3, "top") == [1, 3, 2]
    assert select_units(units, 2, "first") == [0, 1]
    assert select_units(units, 3, "random", seed=1) == select_units(units, 3, "random", seed=1)
    assert select_units(units, [4, 0], "top") == [4, 0]
    with pytest.raises(ValueError, match="only 5 channels"):
        select_units(units, 6)
    with pytest.raises(ValueError, match=r"units \[7\] do not exist.*0..4"):
        select_units(units, [7])


def test_figure_places_each_units_patches_in_its_block(tmp_path):
    """Solid-colour patches: unit u's block must show colour u at every patch position."""
    colors = {0: (250, 0, 0), 1: (0, 250, 0), 2: (0, 0, 250), 3: (250, 250, 0)}
    k = 4
    images = np.zeros((len(colors), 8, 8, 3), np.uint8)
    for u, c in colors.items():
        images[u] = c
    with h5py.File(tmp_path / "inputs.h5", "w") as f:
        f["images"] = images
        f["image_id"] = np.arange(len(colors))
    rows = [("L", u, r, u, 9.0 - r, 0, 0, 0, 0, 4, 4) for u in colors for r in range(k)]
    pd.DataFrame(rows, columns=["layer", "unit", "rank", "image_id", "activation", "y", "x",
                                "y0", "x0", "y1", "x1"]).to_parquet(tmp_path / "topk.parquet")
    cut_patches(tmp_path / "topk.parquet", [tmp_path / "inputs.h5"], tmp_path / "p.h5")
    units = pd.DataFrame({"layer": "L", "unit": list(colors), "max": [1.0, 4.0, 3.0, 2.0]})
    units.to_parquet(tmp_path / "units.parquet")
    chosen = draw_grids(tmp_path / "p.h5", tmp_path / "units.parquet", tmp_path / "L.png",
                        tmp_path / "L", how_many=4, pick="top", display_px=20, k=k)
    assert chosen == [1, 2, 3, 0]
    assert sorted(p.name for p in (tmp_path / "L").iterdir()) == [
        "unit-0000.png", "unit-0001.png", "unit-0002.png", "unit-0003.png"]
    fig = np.asarray(Image.open(tmp_path / "L.png").convert("RGB")).astype(int)
    block = np.asarray(Image.open(tmp_path / "L" / "unit-0001.png").convert("RGB"))
    bw, bh = block.shape[1], block.shape[0]
    for i, u in enumerate(chosen):  # 2×2 units, each a 2×2 block of 20-px patches
        r, c = divmod(i, 2)
        ox, oy = UNIT_GAP + c * (bw + UNIT_GAP), TITLE_H + UNIT_GAP + r * (bh + UNIT_GAP)
        for p in range(k):
            pr, pc = divmod(p, 2)
            cy = oy + pr * (20 + PATCH_GAP) + 10
            cx = ox + pc * (20 + PATCH_GAP) + 10
            assert np.abs(fig[cy, cx] - np.array(colors[u])).max() < 20, (u, p, fig[cy, cx])
    assert (fig[oy + 20, ox:ox + 40] > 240).all()  # the white gap under the first patch row
