"""Invariance curves (Zeiler & Fergus, Fig. 5) of a hand-made network whose response to a shift is
known, and the first layer's filter statistics (Fig. 6) of hand-set filters."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from unitscope.filters import filter_stats, first_convolution, high_frequency_share, write_filters
from unitscope.invariance import invariance_rows, sweep_image, transformed
from unitscope.occlusion import Runner

BLACK = (0.0, 0.0, 0.0)


def _original() -> tuple[np.ndarray, int, int]:
    """A black 96×64 'resized original' with a 3×3 pure-red spot at rows 48..50, cols 30..32;
    its 32-px centre crop starts at (32, 16), so the spot sits at rows 16..18 of the crop."""
    image = np.zeros((96, 64, 3), np.uint8)
    image[48:51, 30:33] = (255, 0, 0)
    return image, 32, 16


def test_transformations_start_from_the_original_and_say_where_the_border_is():
    image, top, left = _original()
    crop = image[top:top + 32, left:left + 32]
    for t, identity in (("translation", 0), ("scale", 1), ("rotation", 0), ("rotation", 360)):
        x, border = transformed(image, top, left, 32, t, identity, BLACK)
        assert np.array_equal(x, crop) and border == 0  # the identity is the standard crop
    x, border = transformed(image, top, left, 32, "translation", 10, BLACK)
    assert np.array_equal(x, image[42:74, 16:48]) and border == 0  # real image comes in
    x, border = transformed(image, top, left, 32, "translation", 40, (9, 9, 9))
    assert border == 8 / 32 and (x[24:] == 9).all()  # rows 72..104 of a 96-row image
    x, border = transformed(image, top, left, 32, "scale", 0.25, BLACK)  # 24×16: smaller than 32
    assert border == pytest.approx(1 - 24 * 16 / 32 ** 2)
    square = np.full((32, 32, 3), 200, np.uint8)  # an original no larger than the crop
    _, border = transformed(square, 0, 0, 32, "rotation", 45, BLACK)
    # a square turned by 45° about its centre covers 2(√2 − 1) of itself: the rest is border
    assert border == pytest.approx(1 - 2 * (np.sqrt(2) - 1), abs=0.02)
    _, border = transformed(square, 0, 0, 32, "rotation", 90, BLACK)
    assert border == pytest.approx(0, abs=0.01)


def test_a_max_pooled_spot_detector_is_invariant_to_shifts_until_the_spot_leaves(red_spot_net):
    image, top, left = _original()
    runner = Runner(red_spot_net, "pool", BLACK, (1.0, 1.0, 1.0), BLACK)
    sweeps = {"translation": [-40, -8, 0, 8, 13, 40], "scale": [1, 2], "rotation": [0]}
    sweep = sweep_image(runner, image, top, left, 32, sweeps)
    rows = invariance_rows(sweep, [0, 1], image_id=7, of_unit=0)
    unit0 = rows[rows["unit"] == 0].set_index(["transform", "amount"])
    full = 9 * 255.0  # unit 0 sums R − G − B over its 3×3 window: the whole spot
    for shift in (-8, 0, 8, 13):  # the spot moves within the crop: the max does not change
        assert unit0.loc[("translation", shift), "activation"] == full
        assert unit0.loc[("translation", shift), "distance"] == 0
    for shift in (-40, 40):  # the spot has left the crop: nothing is left of the vector
        assert unit0.loc[("translation", shift), "activation"] == 0
        assert unit0.loc[("translation", shift), "distance"] == 1
    assert unit0.loc[("translation", 40), "border"] == 8 / 32
    assert unit0.loc[("scale", 2.0), "activation"] == full  # a larger spot fills the window still
    assert (rows[rows["unit"] == 1]["activation"] == 0).all()  # its negative never fires here
    assert (rows["top_class"] == -1).all() and rows["p_top"].isna().all()  # no classifier


def test_the_untransformed_top_class_is_followed_under_the_transformations():
    class Classifier(torch.nn.Module):  # logits: the mean red and the mean blue of the input
        def __init__(self):
            super().__init__()
            self.feat = torch.nn.Identity()

        def forward(self, x):
            f = self.feat(x)
            return torch.stack([f[:, 0].mean((1, 2)), f[:, 2].mean((1, 2))], 1) * 10

    image = np.zeros((64, 64, 3), np.uint8)
    image[:32, :, 0] = 255  # red above, blue below
    image[32:, :, 2] = 255
    runner = Runner(Classifier().eval(), "feat", BLACK, (255.0, 255.0, 255.0), BLACK)
    sweep = sweep_image(runner, image, 16, 16, 32, {"translation": [-16, 0, 16], "scale": [], "rotation": []})
    rows = invariance_rows(sweep, [0], 0, 0).set_index("amount")
    assert (rows["top_class"] == 0).all() or (rows["top_class"] == 1).all()
    p = rows["p_top"]
    # moving the crop up shows more red, down more blue: p(class of the untransformed) is monotone
    assert p[-16.0] != p[16.0] and (p[-16.0] - p[0.0]) * (p[0.0] - p[16.0]) > 0


def test_filter_statistics_of_hand_set_filters():
    constant = np.ones((3, 7, 7))
    checker = np.indices((7, 7)).sum(0) % 2 * 2 - 1.0  # ±1 alternating
    assert high_frequency_share(constant) == pytest.approx(0, abs=1e-12)
    assert high_frequency_share(np.stack([checker] * 3)) > 0.9
    smooth = np.outer(np.hanning(7), np.hanning(7))
    assert high_frequency_share(smooth[None]) < 0.1
    weights = np.stack([constant, np.stack([checker] * 3), 1e-4 * constant, 2 * constant])
    stats = filter_stats(weights)
    assert list(stats["filter"]) == [0, 1, 2, 3]
    assert np.allclose(stats["norm"], [np.sqrt(147), np.sqrt(147), 1e-4 * np.sqrt(147), 2 * np.sqrt(147)])
    assert list(stats["dead"]) == [False, False, True, False]  # below 1% of the median norm


def test_the_first_convolutions_filters_are_written_with_their_figure(red_spot_net, tmp_path):
    net = torch.nn.Sequential(torch.nn.Identity(), red_spot_net)
    name, conv = first_convolution(net)
    assert name == "1.conv" and conv is red_spot_net.conv
    table = write_filters(net, tmp_path / "filters.parquet", tmp_path / "filters.png", "hand-made")
    stored = pd.read_parquet(tmp_path / "filters.parquet")
    pd.testing.assert_frame_equal(stored, table)
    assert list(stored["module"].unique()) == ["1.conv"] and list(stored["kernel"].unique()) == ["3x3"]
    # R − G − B constant over the window: all its energy at zero frequency
    assert stored["high_freq"].tolist() == pytest.approx([0, 0], abs=1e-12) and not stored["dead"].any()
    fig = np.asarray(Image.open(tmp_path / "filters.png").convert("RGB"))
    assert fig.shape[1] >= 2 * 54  # two tiles of 3×18 px at least
    # the red detector's tile: normalised to its own range, R is its highest weight
    assert ((fig[..., 0] == 255) & (fig[..., 1] == 0) & (fig[..., 2] == 0)).sum() >= 54 * 54
    empty = write_filters(torch.nn.Linear(2, 2), tmp_path / "none.parquet", tmp_path / "none.png", "mlp")
    assert empty.empty and Image.open(tmp_path / "none.png").width > 0
