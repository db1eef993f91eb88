"""Top-k selection against brute-force sorts, with ties, groups, chunks and shards."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from unitscope.topk import TopK, select_topk


def brute_force(values, image_id, ys, xs, k, groups=None):
    """Full sort per unit with Python's sorted(): activation desc, image_id asc."""
    rows = []
    n, c = values.shape
    for u in range(c):
        entries = sorted(range(n), key=lambda i: (-float(values[i, u]), int(image_id[i])))
        seen = set()
        rank = 0
        for i in entries:
            if groups is not None:
                if groups[i] in seen:
                    continue
                seen.add(groups[i])
            rows.append((u, rank, int(image_id[i]), float(values[i, u]), int(ys[i, u]), int(xs[i, u])))
            rank += 1
            if rank == k:
                break
    return pd.DataFrame(rows, columns=["unit", "rank", "image_id", "activation", "y", "x"])


def random_data(n, c, seed, levels=5):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, levels, size=(n, c)).astype(np.float32)  # many ties
    ys = rng.integers(0, 7, size=(n, c)).astype(np.int32)
    xs = rng.integers(0, 7, size=(n, c)).astype(np.int32)
    image_id = rng.permutation(n).astype(np.int64) + 100
    return values, image_id, ys, xs


@pytest.mark.parametrize("chunk", [1, 3, 17, 1000])
def test_streaming_topk_matches_brute_force_with_ties(chunk):
    values, image_id, ys, xs = random_data(60, 5, seed=chunk)
    top = TopK(9, 5)
    for s in range(0, 60, chunk):
        top.add(values[s:s + chunk], image_id[s:s + chunk], ys[s:s + chunk], xs[s:s + chunk])
    got = top.result()
    want = brute_force(values, image_id, ys, xs, 9)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)


@pytest.mark.parametrize("chunk", [2, 7, 100])
def test_distinct_group_keeps_one_patch_per_source(chunk):
    values, image_id, ys, xs = random_data(50, 4, seed=3, levels=20)
    groups = np.arange(50) % 6  # six source photos
    top = TopK(4, 4, distinct="group")
    for s in range(0, 50, chunk):
        top.add(values[s:s + chunk], image_id[s:s + chunk], ys[s:s + chunk], xs[s:s + chunk],
                groups[s:s + chunk])
    want = brute_force(values, image_id, ys, xs, 4, groups=groups)
    pd.testing.assert_frame_equal(top.result(), want, check_dtype=False)


def test_fewer_images_than_k_gives_fewer_ranks():
    values, image_id, ys, xs = random_data(3, 2, seed=1)
    top = TopK(9, 2)
    top.add(values, image_id, ys, xs)
    assert len(top.result()) == 6
    assert top.result()["rank"].max() == 2


def test_merging_shards_through_state_dict_equals_one_pass():
    values, image_id, ys, xs = random_data(40, 3, seed=5)
    whole = TopK(5, 3)
    whole.add(values, image_id, ys, xs)
    merged = TopK(5, 3)
    for part in np.array_split(np.arange(40), 7):  # includes shards smaller than k
        shard = TopK(5, 3)
        shard.add(values[part], image_id[part], ys[part], xs[part])
        state = shard.state_dict()
        merged.add(state["activation"], state["image_id"], state["y"], state["x"], state["group"])
    pd.testing.assert_frame_equal(merged.result(), whole.result())


def test_bad_k_and_distinct_are_named():
    with pytest.raises(ValueError, match="k must be at least 1"):
        TopK(0, 3)
    with pytest.raises(ValueError, match="valid: image, group"):
        TopK(3, 3, distinct="photo")


def write_shards(tmp_path, values, ys, xs, splits):
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(values)), splits)):
        p = tmp_path / f"shard-{i:03d}.h5"
        with h5py.File(p, "w") as f:
            f["image_id"] = part.astype(np.int64)
            f["max"] = values[part].reshape(len(part), values.shape[1])
            f["argmax_y"] = ys[part].reshape(len(part), values.shape[1])
            f["argmax_x"] = xs[part].reshape(len(part), values.shape[1])
        paths.append(p)
    return paths


def test_topk_stage_is_identical_for_1_and_7_shards_and_boxes_follow_the_field(tmp_path):
    n, c = 30, 4
    values, _, ys, xs = random_data(n, c, seed=11)
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"image_id": np.arange(n), "group": [f"g{i % 4}" for i in range(n)]}).to_parquet(manifest)
    layers = tmp_path / "layers.parquet"
    pd.DataFrame([{"layer": "L", "module": "m", "channels": c, "height": 7, "width": 7, "units": c,
                   "activations": c * 49, "rf_size": 11, "rf_stride": 4, "rf_offset": 3.5,
                   "rf_start": -2, "rf_size_x": 13, "rf_stride_x": 4, "rf_offset_x": 2.5,
                   "rf_start_x": -4}]).to_parquet(layers)
    tables = []
    for splits in (1, 7):
        d = tmp_path / f"s{splits}"
        d.mkdir()
        paths = write_shards(d, values, ys, xs, splits)
        top, units = select_topk(paths, manifest, layers, "L", k=6, chunk=3)  # shards of 4-5 < k
        tables.append(top)
    pd.testing.assert_frame_equal(tables[0], tables[1])
    top = tables[0]
    assert (top["y0"] == -2 + 4 * top["y"]).all() and (top["y1"] - top["y0"] == 11).all()
    assert (top["x0"] == -4 + 4 * top["x"]).all() and (top["x1"] - top["x0"] == 13).all()
    # unit statistics against numpy over all maxima
    assert np.allclose(units["max"], values.max(0))
    assert np.allclose(units["mean"], values.mean(0))
    assert np.allclose(units["q90"], np.quantile(values, 0.9, axis=0))
    assert np.allclose(units["frac_active"], (values > 0).mean(0))
    assert list(top.columns) == ["layer", "unit", "rank", "image_id", "activation", "y", "x",
                                 "y0", "x0", "y1", "x1"]


def test_empty_shards_are_skipped(tmp_path):
    values, _, ys, xs = random_data(4, 2, seed=2)
    paths = write_shards(tmp_path, values, ys, xs, 6)  # two of six shards are empty
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"image_id": np.arange(4), "group": list("abcd")}).to_parquet(manifest)
    layers = tmp_path / "layers.parquet"
    pd.DataFrame([{"layer": "L", "module": "m", "channels": 2, "height": 7, "width": 7, "units": 2,
                   "activations": 98, "rf_size": 3, "rf_stride": 1, "rf_offset": 0.5,
                   "rf_start": -1, "rf_size_x": 3, "rf_stride_x": 1, "rf_offset_x": 0.5,
                   "rf_start_x": -1}]).to_parquet(layers)
    top, _ = select_topk(paths, manifest, layers, "L", k=3)
    want = brute_force(values, np.arange(4), ys, xs, 3)
    pd.testing.assert_frame_equal(top[want.columns].reset_index(drop=True), want, check_dtype=False)


def test_unit_quantiles_are_exact_below_the_reservoir_and_close_beyond():
    from unitscope.unit_stats import UnitStats

    rng = np.random.default_rng(4)
    values = rng.gamma(2.0, size=(5000, 3)).astype(np.float32)
    exact = UnitStats(3, reservoir=8192)
    sampled = UnitStats(3, reservoir=1000)
    for s in range(0, 5000, 333):
        exact.add(values[s:s + 333])
        sampled.add(values[s:s + 333])
    for name, q in (("q50", 0.5), ("q90", 0.9), ("q99", 0.99)):
        want = np.quantile(values, q, axis=0)
        assert np.allclose(exact.result()[name], want, rtol=1e-6)
        # a 1000-image uniform sample: the rank of its quantile is within 3 % of q
        ranks = (values < sampled.result()[name].to_numpy()).mean(axis=0)
        assert np.all(np.abs(ranks - q) < 0.03), (name, ranks)
    assert np.allclose(sampled.result()["max"], values.max(0))
    assert len(sampled.sample) == 1000
