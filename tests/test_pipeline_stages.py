"""The stages chained without Snakemake: a hand-made red detector on synthetic images with the
red spot at known places, and the real model's top-k against a plain torch forward + full sort."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import torch

from conftest import write_pngs
from unitscope.activations import read_layer, record_maxima, run_inference
from unitscope.datasets.index import folder_candidates, index_images
from unitscope.datasets.sources import candidates
from unitscope.inputs import write_inputs
from unitscope.layers import model_layer_table, write_layer_table
from unitscope.models import MODELS, build_model, resolve_layers
from unitscope.patches import cut_patches, read_index, read_patch
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
    inputs = tmp_path / "inputs.h5"
    write_inputs(manifest, inputs, 0, 1, resize_size=64, input_size=64)
    modules = {"pool": "pool"}
    layers = tmp_path / "layers.parquet"
    write_layer_table(model_layer_table(red_spot_net, modules, (64, 64)), layers)
    acts = tmp_path / "pool.h5"
    record_maxima(red_spot_net, modules, (0, 0, 0), (255, 255, 255), inputs, {"pool": acts},
                  batch_size=4, device="cpu")
    top, units = select_topk([acts], manifest, layers, "pool", k=3,
                             topk_out=tmp_path / "topk.parquet")
    red = top[top["unit"] == 0].sort_values("rank")
    # strongest red spot first: images 5, 4, 3 (names img005.png ...; image_id follows sorted paths)
    assert list(red["image_id"]) == [5, 4, 3]
    assert (red["y1"] - red["y0"] == 4).all()  # conv 3×3 + pool 2×2: a 4×4 field
    patches = tmp_path / "patches.h5"
    cut_patches(tmp_path / "topk.parquet", [inputs], patches)
    index = read_index(patches)
    for entry in index[index["unit"] == 0].itertuples():
        sy, sx = SPOTS[entry.image_id]
        box = (entry.y0, entry.x0, entry.y1, entry.x1)
        # the box overlaps the 3×3 spot ...
        assert box[0] < sy + 3 and sy < box[2] and box[1] < sx + 3 and sx < box[3], box
        rgb, mask = read_patch(patches, entry.Index)
        # ... and the patch shows red exactly where the spot lies inside the box
        for py in range(box[0], box[2]):
            for px in range(box[1], box[3]):
                if not (0 <= py < 64 and 0 <= px < 64):
                    assert not mask[py - box[0], px - box[1]]
                    continue
                is_spot = sy <= py < sy + 3 and sx <= px < sx + 3
                r, g, _ = rgb[py - box[0], px - box[1]].astype(int)
                assert (r - g > 80) == is_spot, (entry.image_id, py, px, r, g)


def brute_force_topk(model, module, images, mean, std, k):
    """Plain forward of every image at once, full maps, numpy argmax, Python sort."""
    maps = {}
    h = dict(model.named_modules())[module].register_forward_hook(
        lambda m, i, o: maps.update(out=o))
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
        order = sorted(range(n), key=lambda i: (-flat[i, u].max(), i))[:k]
        for rank, i in enumerate(order):
            pos = int(np.argmax(flat[i, u]))  # numpy: first maximum
            rows.append((u, rank, i, float(flat[i, u].max()), pos // ww, pos % ww))
    return pd.DataFrame(rows, columns=["unit", "rank", "image_id", "activation", "y", "x"])


def test_topk_of_the_real_model_matches_plain_forward_and_full_sort(tmp_path):
    manifest, rejected = tmp_path / "manifest.parquet", tmp_path / "rejected.parquet"
    index_images(candidates({"name": "sample", "max_images": 14, "seed": 1}), manifest, rejected,
                 threads=2)
    spec = MODELS["efficientnet_lite0"]
    shards = [tmp_path / f"inputs-{i}.h5" for i in range(3)]
    for i, p in enumerate(shards):
        write_inputs(manifest, p, i, 3, spec.resize_size, spec.input_size, threads=2)
    layers = ["block1", "block5"]
    table = tmp_path / "layers.parquet"
    write_layer_table(model_layer_table(build_model("efficientnet_lite0", None),
                                        resolve_layers("efficientnet_lite0", layers),
                                        (224, 224), probe=False), table)
    outs = {L: [] for L in layers}
    for i, p in enumerate(shards):
        paths = [tmp_path / L / f"shard-{i}.h5" for L in layers]
        run_inference(p, "efficientnet_lite0", layers, paths, batch_size=4, device="cpu", threads=2)
        for L, q in zip(layers, paths):
            outs[L].append(q)
    images = np.concatenate([h5py.File(p, "r")["images"][:] for p in shards])
    model = build_model("efficientnet_lite0")
    for layer, module in resolve_layers("efficientnet_lite0", layers).items():
        got, _ = select_topk(outs[layer], manifest, table, layer, k=4)
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
    model = build_model("efficientnet_lite0")
    preds = {}
    for name in ("chelsea.png", "coffee.png"):
        img = load_image(f"{skimage_data_dir()}/{name}", None, spec.resize_size, spec.input_size)
        x = (torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
             - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
        with torch.no_grad():
            preds[name] = int(model(x).argmax())
    assert 281 <= preds["chelsea.png"] <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert preds["coffee.png"] in (967, 968)  # espresso, cup
