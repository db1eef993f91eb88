"""Occlusion sensitivity (Fig. 7) and part correspondence (Fig. 8) against brute force: every map
equals a loop that greys each square and reruns the whole network (float64), a red-square
detector's map is low exactly where the square covers the red square, and Δ equals a hand
computation."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import plan_of
from unitscope.correspondence import hamming_delta, input_box, part_correspondence, read_parts
from unitscope.layers import layer_table
from unitscope.occlusion import (Runner, Settings, Squares, layer_geometry, occlude_examples,
                                 read_occlusion, write_occlusion)
from unitscope.plan import PlanError

MEAN, STD = (120.0, 110.0, 100.0), (50.0, 60.0, 70.0)


class Images:
    def __init__(self, images):
        self.images = images

    def __getitem__(self, i):
        return self.images[int(i)]

    def in_order(self, ids):
        return sorted(int(i) for i in ids)


class SamePad(nn.Module):
    """TensorFlow's SAME padding computed from the input's size (as EfficientNet-Lite's)."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        pads = []
        for n in (x.shape[-1], x.shape[-2]):
            total = max((-(-n // self.s) - 1) * self.s + self.k - n, 0)
            pads += [total // 2, total - total // 2]
        return nn.functional.pad(x, pads)


class Positional(nn.Module):
    """Adds a fixed tensor made for the whole input's map: a crop cannot run it."""

    def __init__(self, c, h, w):
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, c, h, w))

    def forward(self, x):
        return x + self.p


def net_of(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    body = {"plain": [nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 5, 3, 2, 1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(5, 6, 3, 1, 1), nn.ReLU()],
            "same": [SamePad(3, 2), nn.Conv2d(3, 4, 3, 2), nn.ReLU(), SamePad(3, 2), nn.Conv2d(4, 6, 3, 2),
                     nn.ReLU()],
            "positional": [nn.Conv2d(3, 4, 3, 2, 1), Positional(4, 16, 16), nn.ReLU(),
                           nn.Conv2d(4, 6, 3, 1, 1), nn.ReLU()]}[kind]
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 7)).double().eval()


def table_of(net, module: str, size: int):
    t, boxes = layer_table(copy.deepcopy(net).float(), {"L": module}, (size, size))
    row = t.iloc[0]
    return row, boxes["L"]


def brute_force(net, module, image, units, squares, classes_squares, fill=MEAN):
    """Every square greyed in turn, the whole network rerun, the maxima read off."""
    feats = {}
    h = dict(net.named_modules())[module].register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].double() - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    grey = ((torch.tensor(fill) - torch.tensor(MEAN)) / torch.tensor(STD)).double().view(3, 1, 1)
    out = np.zeros((len(units), squares.n, squares.n))
    m = classes_squares.n if classes_squares else 0
    prob, label = np.zeros((m, m)), np.zeros((m, m), int)
    with torch.no_grad():
        top = int(net(x).flatten(1).argmax())
        sp = squares.spans()
        for i in range(squares.n):
            for j in range(squares.n):
                xx = x.clone()
                xx[0, :, sp[i, 0]:sp[i, 1], sp[j, 0]:sp[j, 1]] = grey
                net(xx)
                out[:, i, j] = [float(feats["f"][0, u].max()) for u in units]
        sp = classes_squares.spans() if m else None
        for i in range(m):
            for j in range(m):
                xx = x.clone()
                xx[0, :, sp[i, 0]:sp[i, 1], sp[j, 0]:sp[j, 1]] = grey
                p = torch.softmax(net(xx), 1)[0]
                prob[i, j], label[i, j] = float(p[top]), int(p.argmax())
    h.remove()
    return out, prob, label, top


def examples_of(units, image_ids):
    n = len(units)
    return pd.DataFrame({"unit": units, "rank": [0] * n, "image_id": image_ids, "activation": [0.0] * n,
                         "y": [0] * n, "x": [0] * n, "y0": [0] * n, "x0": [0] * n, "y1": [1] * n,
                         "x1": [1] * n})


@pytest.mark.parametrize("kind, module, method", [("plain", "5", "local"), ("same", "4", "local"),
                                                   ("positional", "3", "whole")])
@pytest.mark.parametrize("size, stride", [(5, 3), (9, 4)])
def test_occlusion_maps_equal_a_brute_force_loop_over_every_square(kind, module, method, size, stride):
    net = net_of(kind)
    s = 32
    row, rf = table_of(net, module, s)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(2)]
    ex = examples_of([1, 3, 4], [0, 0, 1])
    runner = Runner(net, module, MEAN, STD, MEAN, dtype=torch.float64)
    r = occlude_examples(ex, Images(images), runner, rf, row, Settings(1, "all", size, stride, True), "L")
    assert r["method"] == method  # crops where the field proves them (and they check out), else whole images
    for image_id, rows in ((0, [0, 1]), (1, [2])):
        units = [int(ex.unit[k]) for k in rows]
        want, prob, label, top = brute_force(net, module, images[image_id], units, r["squares"],
                                             r["class_squares"])
        np.testing.assert_allclose(r["maps"][rows], want, rtol=0, atol=1e-12)
        got = {c[0]: c for c in r["class_rows"]}[image_id]
        np.testing.assert_allclose(got[1], prob, rtol=0, atol=1e-12)
        assert (got[2] == label).all() and got[3] == top


def test_squares_tile_the_input_centred_on_their_cells_and_cover_every_pixel():
    sq = Squares(56, 8, 224)
    assert sq.n == 28 and sq.covers_every_pixel()
    centres = (sq.starts() + sq.starts() + 56) / 2
    assert np.allclose(centres, np.arange(28) * 8 + 4)  # square i centred on cell [8i, 8i + 8)
    assert (sq.spans()[:, 0] >= 0).all() and (sq.spans()[:, 1] <= 224).all()
    assert not Squares(3, 8, 224).covers_every_pixel()
    assert Squares(3, 3, 224).covers_every_pixel()


def test_a_square_that_touches_no_field_runs_no_forward_pass():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 1, stride=4), nn.ReLU()).double().eval()  # sees 1 pixel in 16
    row, rf = table_of(net, "1", 16)
    geo = layer_geometry(Squares(1, 1, 16), rf, row)
    seen = np.zeros((16, 16), bool)
    seen[::4, ::4] = True
    assert (geo.touched == seen).all()
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    runner = Runner(net, "1", MEAN, STD, MEAN, dtype=torch.float64)
    r = occlude_examples(examples_of([0, 1], [0, 0]), Images([image]), runner, rf, row,
                         Settings(1, "all", 1, 1, False), "L")
    assert runner.copies == seen.sum()  # one crop per square that a field touches
    want, *_ = brute_force(net, "1", image, [0, 1], Squares(1, 1, 16), None)
    np.testing.assert_allclose(r["maps"], want, rtol=0, atol=1e-12)


def test_a_field_that_sees_everything_is_touched_by_every_square():
    """Whole images (no affine field): a square counts as touching when any of the 256 positions'
    boxes meets it, however many do."""
    rf = pd.DataFrame({"y": np.repeat(np.arange(16), 16), "x": np.tile(np.arange(16), 16)})
    for name, v in (("y0", -5), ("x0", -5), ("y1", 40), ("x1", 40)):
        rf[name] = v
        rf["t" + name] = v
    row = pd.Series({"height": 16, "width": 16, "rf_affine": False})
    geo = layer_geometry(Squares(4, 4, 32), rf, row)
    assert not geo.local and geo.touched.all()


def test_a_red_square_detectors_map_is_low_exactly_where_the_square_covers_the_red_square():
    net = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU()).double().eval()
    with torch.no_grad():  # redness on the normalised input: high only on the red square
        net[0].weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
        net[0].bias.fill_(-1.0)
    s = 48
    image = np.full((s, s, 3), MEAN, np.uint8)
    image[20:26, 12:18] = (250, 10, 10)  # the red square: rows 20..25, columns 12..17
    row, rf = table_of(net, "1", s)
    runner = Runner(net, "1", MEAN, STD, MEAN, dtype=torch.float64)
    r = occlude_examples(examples_of([0], [0]), Images([image]), runner, rf, row,
                         Settings(1, "all", 8, 2, False), "L")
    sp = r["squares"].spans()
    covers = ((sp[:, 0] <= 20) & (sp[:, 1] >= 26))[:, None] & ((sp[:, 0] <= 12) & (sp[:, 1] >= 18))[None, :]
    assert covers.any() and not covers.all()
    low = r["maps"][0] < 1e-9
    assert (low == covers).all()
    assert r["maps"][0][~covers].min() > 1


def test_the_file_reads_back(tmp_path):
    net = net_of("plain")
    row, rf = table_of(net, "5", 32)
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ex = examples_of([2], [0])
    runner = Runner(net, "5", MEAN, STD, (0.0, 0.0, 0.0), dtype=torch.float64)
    settings = Settings(1, "all", 8, 4, True, [0, 0, 0])
    r = occlude_examples(ex, Images([image]), runner, rf, row, settings, "L")
    write_occlusion(r, tmp_path / "o.h5", settings, (0.0, 0.0, 0.0), False, "L", "5")
    occ = read_occlusion(tmp_path / "o.h5")
    assert occ.attrs["size"] == 8 and occ.attrs["stride"] == 4 and occ.attrs["n"] == 8
    assert not occ.attrs["fill_mean"] and list(occ.attrs["fill"]) == [0, 0, 0]
    np.testing.assert_allclose(occ.maps, r["maps"].astype(np.float32))
    prob, label, top, _ = occ.class_maps_of(0)
    assert prob.shape == (8, 8) and top in occ.names and set(np.unique(label)) <= set(occ.names)


def test_delta_equals_a_hand_computation_on_three_images():
    # three images, four units: ε rows (the maxima before minus after occluding the part)
    eps = np.array([[1.0, -2.0, 0.0, 3.0],
                    [2.0, 1.0, 0.0, 1.0],
                    [-1.0, -1.0, 0.5, 2.0]])
    # signs: (+,-,0,+), (+,+,0,+), (-,-,+,+); Hamming: d01 = 1, d02 = 2, d12 = 3 (of 4 units);
    # ordered pairs i ≠ j: each twice -> Δ = 2·(1 + 2 + 3) / (4 units · 6 pairs) = 0.5
    delta, spread, pairs = hamming_delta(eps)
    assert pairs == 6 and delta == pytest.approx(0.5)
    assert spread == pytest.approx(np.std([0.25, 0.5, 0.75] * 2))


def test_delta_of_a_part_that_drives_units_is_below_its_random_control():
    """Three images of random coloured blocks with the same red square (the part) at different
    places, and units that weigh the image's mean colour: greying the part removes the same red
    in every image, so every unit moves the same way each time; greying a random box moves each
    unit by how that box's colours differ from the grey, up in one image and down in another."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 1), nn.AdaptiveAvgPool2d(1)).double().eval()
    rng = np.random.default_rng(3)
    images, rows = {}, []
    for i, (y, x) in enumerate(((4, 4), (20, 30), (36, 10))):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        im = np.repeat(np.repeat(blocks, 12, 0), 12, 1)
        im[y:y + 8, x:x + 8] = (250, 5, 5)
        images[f"im{i}"] = im
        rows.append({"image": f"im{i}", "part": "red", "iy0": y, "ix0": x, "iy1": y + 8, "ix1": x + 8})
    t = part_correspondence(images, pd.DataFrame(rows), net, {"L": "1"}, MEAN, STD, MEAN, draws=20,
                            seed=0, dtype=torch.float64)
    part = t[~t["control"]].iloc[0]
    control = t[t["control"]].iloc[0]
    assert part.pairs == 6 and control.draws == 20 and part.images == 3
    assert part.delta == 0 and control.delta > 2 * control["std"] > 0


def test_input_box_follows_the_resize_and_centre_crop():
    # a 400×200 file: the shorter side 200 -> 256 (x1.28), 512×256, centre crop 224 at left 144, top 16
    assert input_box((200, 100, 210, 110), (400, 200), 256, 224) == (112, 112, 125, 125)
    with pytest.raises(ValueError, match="outside the centre crop"):
        input_box((0, 0, 50, 50), (400, 200), 256, 224)


def test_the_parts_csv_is_checked_in_one_line(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / name)
    csv = tmp_path / "parts.csv"
    cases = [("image,part,x0,y0,x1\na.png,eye,1,1,5\n", "lacks the columns y1"),
             ("image,part,x0,y0,x1,y1\na.png,eye,1,1,5,5\nc.png,eye,1,1,5,5\n", "no image file 'c.png'"),
             ("image,part,x0,y0,x1,y1\na.png,eye,1,1,70,5\nb.png,eye,1,1,5,5\n", "not inside the 60×40"),
             ("image,part,x0,y0,x1,y1\na.png,eye,1,1,5,5\nb.png,nose,1,1,5,5\n", "at least 2"),
             ("image,part,x0,y0,x1,y1\na.png,eye,1,1,x,5\nb.png,eye,1,1,5,5\n", "is not a number")]
    for text, message in cases:
        csv.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_parts(csv)
    csv.write_text("image,part,x0,y0,x1,y1\na.png,eye,1,1,5,5\nb.png,eye,2,2,6,6\n")
    parts = read_parts(csv)
    assert list(parts["path"]) == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    plan = plan_of({"correspondence": {"images": str(csv)}})
    assert plan.correspondence["layers"] == plan.layer_names and plan.correspondence["draws"] == 10
    assert set(plan.correspondence_files) == {str(csv), str(tmp_path / "a.png"), str(tmp_path / "b.png")}
    assert plan.layout.correspondence in plan.targets()
    csv.write_text("image,part,x0,y0,x1,y1\na.png,eye,1,1,5,5\n")
    with pytest.raises(PlanError, match="config key 'correspondence.images'.*at least 2"):
        plan_of({"correspondence": {"images": str(csv)}})
    with pytest.raises(PlanError, match="config key 'correspondence.layers'"):
        plan_of({"correspondence": {"images": str(csv), "layers": ["stem", "nope"]}})


def test_occlusion_settings_are_checked_before_any_job():
    plan = plan_of({})
    assert plan.occluded and plan.occlusion["examples"] == 3 and plan.occlusion["fill"] == "mean"
    assert all(plan.layout.occlusion_grid(layer) in plan.targets() for layer in plan.layer_names)
    assert not plan_of({"occlusion": {"examples": 0}}).occluded
    assert not any("occlusion" in t for t in plan_of({"occlusion": {"examples": 0}}).targets())
    with pytest.raises(PlanError, match="config key 'occlusion.size': 300 px is larger than the 224-px"):
        plan_of({"occlusion": {"size": 300}})
    with pytest.raises(PlanError, match="config key 'occlusion.stride': 40 px is more than the 30-px"):
        plan_of({"occlusion": {"size": 30, "stride": 40}})
    with pytest.raises(PlanError, match="would share its figure's name"):
        plan_of({"layers": ["stem", "stem-occlusion"]})


def test_the_correspondence_stage_writes_its_table(tmp_path):
    from PIL import Image

    from unitscope import stages
    from unitscope.correspondence import COLUMNS

    rng = np.random.default_rng(0)
    lines = ["image,part,x0,y0,x1,y1"]
    for i in range(3):
        im = rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)
        im[20:40, 30 + 10 * i:50 + 10 * i] = (250, 0, 0)
        Image.fromarray(im).save(tmp_path / f"dog{i}.png")
        lines.append(f"dog{i}.png,nose,{30 + 10 * i},20,{50 + 10 * i},40")
    (tmp_path / "parts.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "correspondence.parquet"
    stages.correspondence(str(tmp_path / "parts.csv"), {"name": "efficientnet_lite0", "weights": "none"},
                          ["stem", "block3"], str(out), draws=3, control_seed=1)
    t = pd.read_parquet(out)
    assert list(t.columns) == COLUMNS and len(t) == 4
    assert list(t["layer"]) == ["stem", "stem", "block3", "block3"] and list(t["control"]) == [False, True] * 2
    assert ((t["delta"] >= 0) & (t["delta"] <= 1)).all() and (t["pairs"] == 6).all()
