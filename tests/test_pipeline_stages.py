"""The stages chained without Snakemake: a hand-made red detector on synthetic images with the red
spot at known places, and the real model's top-k against a plain torch forward and a full sort."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from conftest import write_pngs
from unitscope import stages
from unitscope.activation_file import read_layer
from unitscope.activations import record_maxima
from unitscope.datasets.index import folder_candidates, index_images
from unitscope.datasets.sources import candidates
from unitscope.examples import layer_examples
from unitscope.inputs import DecodedImages, Preprocessing, decoded_batches
from unitscope.layers import layer_table, write_layer_table
from unitscope.models import MODELS, build_model, resolve_layers
from unitscope.patches import crop_box, cut_patches, read_index, read_patch
from unitscope.provenance import file_sha256
from unitscope.topk import select_topk

SPOTS = [(5, 7), (30, 40), (0, 0), (60, 61), (20, 2), (44, 18)]  # (y, x) of a 3×3 red spot


def red_spot_images():
    """Gray 64×64 images; image i has a red spot (R = 130 + 25·i) at SPOTS[i]."""
    out = []
    for i, (y, x) in enumerate(SPOTS):
        im = np.full((64, 64, 3), 120, np.uint8)
        im[y:y + 3, x:x + 3] = (130 + 25 * i, 60, 60)
        out.append(im)
    return out


def test_red_detector_top_patch_contains_the_spot_at_the_right_place(tmp_path, red_spot_net):
    write_pngs(tmp_path / "imgs", red_spot_images())
    manifest, rejected = tmp_path / "manifest.parquet", tmp_path / "rejected.parquet"
    index_images(folder_candidates(tmp_path / "imgs"), manifest, rejected)
    prep = Preprocessing(64, 64)
    modules = {"pool": "pool"}
    table, boxes = layer_table(red_spot_net, modules, (64, 64))
    write_layer_table(table, boxes, tmp_path / "layers.parquet", {"pool": tmp_path / "rf.parquet"})
    rows = pd.read_parquet(manifest)
    acts = tmp_path / "pool.h5"
    record_maxima(red_spot_net, modules, (0, 0, 0), (255, 255, 255),
                  decoded_batches(rows, prep, 4, 2), len(rows), {"pool": acts}, device="cpu",
                  meta={"shard": 0, "shards": 1, "manifest_sha256": file_sha256(manifest)})
    top, _, _ = select_topk([acts], manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet",
                            "pool", k=3)
    red = top[top["unit"] == 0].sort_values("rank")
    # strongest red spot first: images 5, 4, 3 (names img005.png ...; image_id follows sorted paths)
    assert list(red["image_id"]) == [5, 4, 3]
    assert (red["y1"] - red["y0"] == 4).all()  # conv 3×3 + pool 2×2: a 4×4 field
    patches = tmp_path / "patches.h5"
    images = DecodedImages(manifest, prep)
    cut_patches(layer_examples(top), images, patches)
    index = read_index(patches)
    for entry in index[index["unit"] == 0].itertuples():
        sy, sx = SPOTS[entry.image_id]
        box = (entry.y0, entry.x0, entry.y1, entry.x1)
        # the box overlaps the 3×3 spot ...
        assert box[0] < sy + 3 and sy < box[2] and box[1] < sx + 3 and sx < box[3], box
        # ... and the patch shows red exactly where the spot lies inside the box
        rgb = read_patch(patches, entry.Index)
        for py in range(entry.vy0, entry.vy1):
            for px in range(entry.vx0, entry.vx1):
                is_spot = sy <= py < sy + 3 and sx <= px < sx + 3
                r, g, _ = rgb[py - entry.vy0, px - entry.vx0].astype(int)
                assert (r - g > 80) == is_spot, (entry.image_id, py, px, r, g)
        assert (crop_box(images[entry.image_id], box)[0].shape[:2]) == (4, 4)


def brute_force_topk(model, module, images, mean, std, k):
    """Plain forward of every image at once, full maps, numpy argmax, Python sort."""
    maps = {}

    def hook(m, i, o):
        maps.setdefault("out", o)
    h = model.get_submodule(module).register_forward_hook(hook)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float()
         - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        model(x)
    h.remove()
    fmap = maps["out"].numpy()
    n, c, hh, ww = fmap.shape
    flat = fmap.reshape(n, c, -1)
    rows = []
    for u in range(c):
        order = sorted(range(n), key=lambda i: (-flat[i, u].max(), -flat[i, u].mean(), i))[:k]
        for rank, i in enumerate(order):
            pos = int(np.argmax(flat[i, u]))  # numpy: first maximum
            rows.append((u, rank, i, float(flat[i, u].max()), pos // ww, pos % ww))
    return pd.DataFrame(rows, columns=["unit", "rank", "image_id", "activation", "y", "x"])


def test_topk_of_the_real_model_matches_plain_forward_and_full_sort(tmp_path):
    manifest, rejected = tmp_path / "manifest.parquet", tmp_path / "rejected.parquet"
    index_images(candidates({"name": "sample", "max_images": 14, "seed": 1}), manifest, rejected,
                 threads=2)
    model_cfg = {"name": "efficientnet_lite0", "weights": "imagenet"}
    layers = ["block1", "block5"]
    stages.layers(model_cfg, layers, tmp_path / "layers.parquet",
                  [tmp_path / f"rf-{L}.parquet" for L in layers])
    outs = {L: [] for L in layers}
    for i in range(3):
        paths = [tmp_path / L / f"shard-{i}.h5" for L in layers]
        stages.activations(manifest, model_cfg, layers, paths, i, 3, batch_size=4, device="cpu",
                           threads=2)
        for L, q in zip(layers, paths):
            outs[L].append(q)
    spec = MODELS["efficientnet_lite0"]
    prep = Preprocessing.of(spec)
    images = np.stack([DecodedImages(manifest, prep)[i] for i in range(14)])
    model = build_model(spec)
    for layer, module in resolve_layers(spec, layers).items():
        got, _, _ = select_topk(outs[layer], manifest, tmp_path / "layers.parquet",
                                tmp_path / f"rf-{layer}.parquet", layer, k=4)
        want = brute_force_topk(model, module, images, spec.mean, spec.std, 4)
        assert len(got) == len(want)
        assert np.allclose(got["activation"], want["activation"], rtol=1e-4, atol=1e-4)
        same = got["image_id"].to_numpy() == want["image_id"].to_numpy()
        # where the ranking differs, it may only be a float near-tie between batchings
        assert np.all(same | np.isclose(got["activation"], want["activation"], atol=1e-4))
        assert same.mean() > 0.95
        pos_same = (got["y"].to_numpy() == want["y"].to_numpy()) & (got["x"].to_numpy() == want["x"].to_numpy())
        assert pos_same[same].mean() > 0.95
        stored = read_layer(outs[layer])
        assert list(stored["image_id"]) == list(range(14))


def test_imagenet_weights_classify_the_cat_and_the_coffee():
    """The ImageNet weights are wired right, with the preprocessing they were trained with."""
    from unitscope.datasets.sample import skimage_data_dir
    from unitscope.inputs import load_image

    spec = MODELS["efficientnet_lite0"]
    model = build_model(spec)
    preds = {}
    for name in ("chelsea.png", "coffee.png"):
        row = pd.Series({"path": f"{skimage_data_dir()}/{name}"})
        img = load_image(row, Preprocessing.of(spec))
        x = (torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
             - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
        with torch.no_grad():
            preds[name] = int(model(x).argmax())
    assert 281 <= preds["chelsea.png"] <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert preds["coffee.png"] in (967, 968)  # espresso, cup


class Relu6Net(torch.nn.Module):
    """Unit 0: 10·(R − G) through ReLU6, which saturates on any red; unit 1: never positive."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1], self.conv.weight[0, 1, 1, 1] = 10.0, -10.0
            self.conv.bias.copy_(torch.tensor([0.0, -100.0]))
        self.act = torch.nn.ReLU6()

    def forward(self, x):
        return self.act(self.conv(x))


def test_a_saturating_relu6_unit_is_ordered_by_how_much_fires_and_still_projects(tmp_path):
    """Images with red squares of sizes 2..12 px: every one drives unit 0 to the cap 6.0, so the
    top-k is ordered by the spatial mean (the biggest square first), the unit is marked
    saturated, its projections are not blank; unit 1 never fires: marked dead, never picked."""
    from unitscope.projections import project
    from unitscope.shown import select_units

    sizes = [4, 12, 2, 8, 6, 10]
    images = []
    for s in sizes:
        im = np.full((32, 32, 3), 100, np.uint8)
        im[8:8 + s, 8:8 + s] = (250, 20, 20)
        images.append(im)
    write_pngs(tmp_path / "imgs", images)
    manifest = tmp_path / "manifest.parquet"
    index_images(folder_candidates(tmp_path / "imgs"), manifest, tmp_path / "rejected.parquet")
    model = Relu6Net().eval()
    table, boxes = layer_table(model, {"act": "act"}, (32, 32))
    write_layer_table(table, boxes, tmp_path / "layers.parquet", {"act": tmp_path / "rf.parquet"})
    rows = pd.read_parquet(manifest)
    record_maxima(model, {"act": "act"}, (0, 0, 0), (255, 255, 255),
                  decoded_batches(rows, Preprocessing(32, 32), 4, 1), len(rows),
                  {"act": tmp_path / "act.h5"}, "cpu",
                  meta={"shard": 0, "shards": 1, "manifest_sha256": file_sha256(manifest)})
    top, units, _ = select_topk([tmp_path / "act.h5"], manifest, tmp_path / "layers.parquet",
                                tmp_path / "rf.parquet", "act", k=4)
    red = top[top["unit"] == 0]
    assert (red["activation"] == 6.0).all()
    assert [sizes[i] for i in red["image_id"]] == [12, 10, 8, 6]  # by red area, not image id
    assert bool(units.loc[0, "saturated"]) and units.loc[0, "n_at_max"] == 6
    assert bool(units.loc[1, "dead"]) and not bool(units.loc[1, "saturated"])
    assert select_units(units, 2, "top")[0] == [0]  # the dead unit is never picked
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    for r in red.itertuples():
        proj = project(model, "act", x[r.image_id:r.image_id + 1], [0], [r.y], [r.x], "guided_backprop")
        assert proj.abs().sum() > 0
