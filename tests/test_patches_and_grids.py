"""Patch cropping against direct array slicing, and the figure against known patches: layout,
the facts its header states, marks for dead and saturated units, tiles for fields larger than the
input, and bounded sizes whatever k."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.grids import PATCH_GAP, UNIT_GAP, FigureFacts, draw_grids, header_lines, make_tile
from unitscope.inputs import ImageSource
from unitscope.patches import GRAY, crop_box, cut_patches, padded, read_index, read_patch, visible_box
from unitscope.shown import select_units


class ArrayImages(ImageSource):
    """Images from an array (image_id = row)."""

    def __init__(self, images):
        self.images = images
        self.input_size = images.shape[1]

    def __getitem__(self, image_id):
        return self.images[int(image_id)]


def test_crop_box_pads_with_gray_and_never_shifts():
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    patch, mask = crop_box(img, (-3, 8, 4, 15))  # reaches above and to the right
    assert patch.shape == (7, 7, 3)
    assert (patch[3:, :4] == img[0:4, 8:12]).all()  # image part at its true offset
    assert (patch[:3] == GRAY).all() and (patch[:, 4:] == GRAY).all()
    assert mask[3:, :4].all() and not mask[:3].any() and not mask[:, 4:].any()


def test_the_stored_visible_part_padded_again_is_the_padded_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    box = (-4, 13, 7, 26)
    vis = visible_box(box, (20, 20))
    assert vis == (0, 13, 7, 20)
    full, mask = padded(img[vis[0]:vis[2], vis[1]:vis[3]], box, vis, 1.0)
    want, want_mask = crop_box(img, box)
    assert (full == want).all() and (mask == want_mask).all()


def entries(rows):
    return pd.DataFrame(rows, columns=["kind", "unit", "rank", "image_id", "y", "x", "y0", "x0",
                                       "y1", "x1", "activation"])


def test_patches_file_holds_the_visible_part_of_every_box(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    rows = [("top", u, r, (u + r) % 4, 0, 0, -2 + 5 * u, 3 * r - 1, -2 + 5 * u + 9, 3 * r - 1 + 9, 1.0)
            for u in range(3) for r in range(2)]
    rows.append(("bottom", 1, 0, 2, 0, 0, 25, 25, 34, 34, -1.0))
    table = entries(rows)
    out = tmp_path / "patches.h5"
    assert cut_patches(table, ArrayImages(images), out, patch_max_px=128, layer="L") == 7
    index = read_index(out)
    assert (index[["kind", "unit", "rank", "image_id"]].to_numpy() ==
            table[["kind", "unit", "rank", "image_id"]].to_numpy()).all()
    for i, row in table.iterrows():
        rgb = read_patch(out, i)
        vy0, vx0, vy1, vx1 = visible_box((row.y0, row.x0, row.y1, row.x1), (32, 32))
        want = images[row.image_id][vy0:vy1, vx0:vx1]
        assert rgb.shape == want.shape
        assert np.abs(rgb.astype(int) - want.astype(int)).mean() < 12  # JPEG q95 of noise


def test_a_field_larger_than_patch_max_px_is_stored_shrunk(tmp_path):
    images = np.full((1, 64, 64, 3), 100, np.uint8)
    out = tmp_path / "p.h5"
    cut_patches(entries([("top", 0, 0, 0, 0, 0, -300, -250, 551, 601, 1.0)]), ArrayImages(images), out, 32)
    from unitscope.patches import file_attrs

    assert file_attrs(out)["shrink"] == pytest.approx(0.5)
    assert read_patch(out, 0).shape == (32, 32, 3)  # the visible part: the whole 64 px image


def test_select_units_picks_among_units_that_fire_and_refuses_clearly():
    units = pd.DataFrame({"unit": range(6), "max": [1.0, 5.0, 3.0, 5.0, 0.0, 2.0],
                          "frac_active": [0.5, 0.1, 0.9, 0.2, 0.0, 0.3],
                          "dead": [False, False, False, False, True, False]})
    assert select_units(units, 3, "top")[0] == [1, 3, 2]
    assert select_units(units, 2, "first")[0] == [0, 1]
    assert select_units(units, 2, "frequent")[0] == [2, 0]
    assert select_units(units, 2, "rare")[0] == [1, 3]
    assert select_units(units, 3, "random", seed=1)[0] == select_units(units, 3, "random", seed=1)[0]
    assert 4 not in select_units(units, 5, "random", seed=2)[0]  # the dead unit is never picked
    chosen, why, notes = select_units(units, 6, "top")
    assert 4 not in chosen and notes == ["6 units asked for, 5 of 6 fire on this dataset"]
    chosen, why, _ = select_units(units, [4, 0], "top")
    assert chosen == [4, 0] and why[4] == "never fires on this dataset"
    with pytest.raises(ValueError, match="only 6 channels"):
        select_units(units, 7)
    with pytest.raises(ValueError, match=r"units \[7\] do not exist.*0..5"):
        select_units(units, [7])
    with pytest.raises(ValueError, match="pick: pure needs labels"):
        select_units(units, 2, "pure")


def solid_patches(tmp_path, colors, k, size=16, kinds=("top",)):
    images = np.zeros((len(colors), size, size, 3), np.uint8)
    for u, c in colors.items():
        images[u] = c
    rows = [(kind, u, r, u, 0, 0, 0, 0, 4, 4, 9.0 - r) for kind in kinds for u in colors for r in range(k)]
    cut_patches(entries(rows), ArrayImages(images), tmp_path / "p.h5")
    return tmp_path / "p.h5"


def test_figure_places_each_units_patches_in_its_block(tmp_path):
    """Solid-colour patches: unit u's block must show colour u at every patch position."""
    colors = {0: (250, 0, 0), 1: (0, 250, 0), 2: (0, 0, 250), 3: (250, 250, 0)}
    k = 4
    patches = solid_patches(tmp_path, colors, k)
    units = pd.DataFrame({"layer": "L", "unit": list(colors), "max": [1.0, 4.0, 3.0, 2.0],
                          "min": 0.0, "dead": False, "saturated": False, "n_at_max": 1})
    units.to_parquet(tmp_path / "units.parquet")
    shown = {"units": [1, 2, 3, 0], "why": {}}
    draw_grids(patches, tmp_path / "units.parquet", shown, tmp_path / "L.png", tmp_path / "L",
               display_px=20, k=k, facts=FigureFacts(layer="L", shape=(4, 8, 8), rf=(4, 4), input_size=16))
    assert sorted(p.name for p in (tmp_path / "L").iterdir()) == [
        "unit-0000.png", "unit-0001.png", "unit-0002.png", "unit-0003.png"]
    fig = np.asarray(Image.open(tmp_path / "L.png").convert("RGB")).astype(int)
    boxes = {}
    for u, colour in colors.items():  # each unit's k patches: one 2×2 block of 20-px tiles
        ys, xs = np.nonzero((np.abs(fig - colour) < 20).all(2))
        assert len(ys) == k * 20 * 20, u
        boxes[u] = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        assert boxes[u][2] - boxes[u][0] == boxes[u][3] - boxes[u][1] == 2 * 20 + PATCH_GAP
    # units in the shown order, two per row: 1 2 / 3 0
    assert boxes[1][0] == boxes[2][0] < boxes[3][0] == boxes[0][0]
    assert boxes[1][1] == boxes[3][1] < boxes[2][1] == boxes[0][1]
    assert boxes[2][1] - boxes[1][3] >= UNIT_GAP


def test_header_says_what_a_unit_is_why_k_patches_and_how_big(tmp_path):
    facts = FigureFacts(model="m", dataset="d", n_images=408, layer="block3", module="_blocks.3",
                        shape=(40, 28, 28), input_size=224, rf=(35, 35), erf=24, k=9,
                        picked="picked by top", method="guided_backprop")
    text = "\n".join(header_lines(facts, ["top"], 9, 9, 9, "both"))
    for phrase in ("m on d (408 images)", "layer block3 (module _blocks.3)",
                   "output 40x28x28: 40 units, each an 28x28 map", "input 224x224 px",
                   "receptive field 35 px (theoretical), effective ~ 24 px",
                   "its strongest 9 images", "9 units, picked by top",
                   "left: projections back to pixels (guided backprop; gray = 0)",
                   "gray: the part of a field outside the image"):
        assert phrase in text, phrase
    assert "×" not in text and "≈" not in text  # Pillow's built-in font has neither
    big = FigureFacts(layer="block15", shape=(320, 7, 7), input_size=224, rf=(851, 851), k=16)
    text = "\n".join(header_lines(big, ["top"], 16, 9, 9, "patches"))
    assert "RF 851 px > 224 px input" in text and "9 of k=16 available" in text


def test_a_field_larger_than_the_input_shows_the_whole_input_with_the_peak_marked():
    image = np.full((64, 64, 3), 90, np.uint8)
    entry = pd.Series({"y0": -400, "x0": -380, "y1": 451, "x1": 471, "vy0": 0, "vx0": 0, "vy1": 64, "vx1": 64})
    tile = np.asarray(make_tile(image, entry, 1.0, 64, 64, seen=True))
    assert tile.shape == (64, 64, 3) and not (tile == GRAY).all(2).any()  # no padding gray
    centre = ((-400 + 451) / 2, (-380 + 471) / 2)  # the peak's position (y, x) = (25.5, 45.5)
    red = np.argwhere((tile[..., 0] > 200) & (tile[..., 1] < 80))
    assert len(red) and abs(red[:, 0].mean() - centre[0]) < 2 and abs(red[:, 1].mean() - centre[1]) < 2
    padded_tile = np.asarray(make_tile(image, entry, 1.0, 64, 64, seen=False))
    assert (padded_tile == GRAY).all(2).mean() > 0.9  # what it would be: mostly padding


def test_figures_stay_bounded_and_mark_dead_and_saturated_units(tmp_path):
    colors = {0: (200, 10, 10), 1: (10, 200, 10)}
    patches = solid_patches(tmp_path, colors, 100)
    pd.DataFrame({"layer": "L", "unit": [0, 1], "max": [6.0, 0.0], "min": 0.0,
                  "dead": [False, True], "saturated": [True, False],
                  "n_at_max": [50, 100]}).to_parquet(tmp_path / "units.parquet")
    draw_grids(patches, tmp_path / "units.parquet", {"units": [0, 1], "why": {}}, tmp_path / "L.png",
               tmp_path / "L", display_px=16, k=100000,
               facts=FigureFacts(layer="L", shape=(2, 8, 8), rf=(4, 4), input_size=16))
    fig = Image.open(tmp_path / "L.png")
    # at most 64 patches per unit: an 8×8 block of 16 px, not a 317×317 one
    assert fig.width < 2 * (8 * 18 + 40) + 700 and fig.height < 8 * 18 + 400
    block = np.asarray(Image.open(tmp_path / "L" / "unit-0001.png").convert("RGB"))
    red_text = ((block[..., 0] > 200) & (block[..., 1] < 60) & (block[..., 2] < 60)).sum()
    assert red_text > 20  # "never fires on this dataset" is drawn in red


def test_layers_prints_its_table_once(tmp_path, capsys):
    from unitscope.cli import main

    assert main(["layers", "--model", "zfnet", "--layers", "conv1", "--table",
                 str(tmp_path / "layers.parquet")]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("features.1") == 1


def test_a_token_tile_outlines_its_cell_and_the_effective_field_around_it():
    """A token whose field is the whole 64-px input: the tile is the input, the token's cell
    (rows 16-24, columns 40-48) outlined in red exactly there, the 20-px effective field in
    yellow around the cell's centre."""
    from unitscope.grids import ERF_MARK, MARK

    image = np.full((64, 64, 3), 90, np.uint8)
    entry = pd.Series({"y0": 0, "x0": 0, "y1": 64, "x1": 64, "vy0": 0, "vx0": 0, "vy1": 64,
                       "vx1": 64, "cy0": 16, "cx0": 40, "cy1": 24, "cx1": 48})
    tile = np.asarray(make_tile(image, entry, 1.0, 64, 64, seen=True, erf=20))
    red = np.argwhere((tile == MARK).all(2))
    assert (red.min(0) == (16, 40)).all() and (red.max(0) == (23, 47)).all()
    yellow = np.argwhere((tile == ERF_MARK).all(2))
    assert (yellow.min(0) == (10, 34)).all() and (yellow.max(0) == (30, 54)).all()  # 20 px, centred at (20, 44)
    assert (tile[18:22, 42:46] == 90).all()  # the cell's inside is the image
    facts = FigureFacts(layer="enc", shape=(8, 4, 4), input_size=64, rf=(64, 64), cell=True, erf=20,
                        layout="tokens", tokens="patch", method="gradient")
    text = "\n".join(header_lines(facts, ["top"], 9, 9, 4, "both"))
    for phrase in ("token layer: 8 units (channels) read over its 4x4 grid of patch tokens",
                   "each tile is the whole input the unit sees, the red square is the peak token's cell",
                   "the yellow one the effective field", "plain input gradient"):
        assert phrase in text, phrase
