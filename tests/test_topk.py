"""Top-k and bottom-k selection against brute-force sorts, with ties, the secondary score, groups,
chunks and shards; unit statistics against numpy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import affine_boxes, layer_frame
from unitscope.activation_file import write_layer_file
from unitscope.inputs import shard_range
from unitscope.provenance import file_sha256
from unitscope.topk import TopK, select_topk


def brute_force(values, image_id, ys, xs, k, groups=None, score=None):
    """Full sort per unit with Python's sorted(): activation desc, score desc, image_id asc."""
    rows = []
    n, c = values.shape
    score = np.zeros_like(values) if score is None else score
    for u in range(c):
        entries = sorted(range(n), key=lambda i: (-float(values[i, u]), -float(score[i, u]),
                                                  int(image_id[i])))
        seen = set()
        rank = 0
        for i in entries:
            if groups is not None:
                if groups[i] in seen:
                    continue
                seen.add(groups[i])
            rows.append((u, rank, int(image_id[i]), float(values[i, u]), float(score[i, u]),
                         int(ys[i, u]), int(xs[i, u])))
            rank += 1
            if rank == k:
                break
    return pd.DataFrame(rows, columns=["unit", "rank", "image_id", "activation", "spatial_mean",
                                       "y", "x"])


def random_data(n, c, seed, levels=5):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, levels, size=(n, c)).astype(np.float32)  # many ties
    ys = rng.integers(0, 7, size=(n, c)).astype(np.int32)
    xs = rng.integers(0, 7, size=(n, c)).astype(np.int32)
    image_id = rng.permutation(n).astype(np.int64) + 100
    score = rng.integers(0, 3, size=(n, c)).astype(np.float32)  # ties in the score too
    return values, image_id, ys, xs, score


@pytest.mark.parametrize("chunk", [1, 3, 17, 1000])
def test_streaming_topk_matches_brute_force_with_ties_ordered_by_the_secondary_score(chunk):
    values, image_id, ys, xs, score = random_data(60, 5, seed=chunk)
    top = TopK(9, 5)
    for s in range(0, 60, chunk):
        top.add(values[s:s + chunk], image_id[s:s + chunk], ys[s:s + chunk], xs[s:s + chunk],
                score=score[s:s + chunk])
    want = brute_force(values, image_id, ys, xs, 9, score=score)
    pd.testing.assert_frame_equal(top.result().reset_index(drop=True), want, check_dtype=False)


def test_images_tied_at_the_cap_are_ordered_by_the_score_not_by_image_id():
    """A ReLU6 unit: five images reach 6.0; the one whose map fires most broadly comes first."""
    values = np.array([[6.0], [6.0], [6.0], [2.0], [6.0], [6.0]], np.float32)
    score = np.array([[0.1], [0.5], [0.3], [0.9], [0.2], [0.4]], np.float32)
    top = TopK(3, 1)
    top.add(values, np.arange(6), np.zeros((6, 1)), np.zeros((6, 1)), score=score)
    assert list(top.result()["image_id"]) == [1, 5, 2]


@pytest.mark.parametrize("chunk", [2, 7, 100])
def test_distinct_group_keeps_one_patch_per_source(chunk):
    values, image_id, ys, xs, score = random_data(50, 4, seed=3, levels=20)
    groups = np.arange(50) % 6  # six source photos
    top = TopK(4, 4, distinct="group")
    for s in range(0, 50, chunk):
        top.add(values[s:s + chunk], image_id[s:s + chunk], ys[s:s + chunk], xs[s:s + chunk],
                groups[s:s + chunk], score[s:s + chunk])
    want = brute_force(values, image_id, ys, xs, 4, groups=groups, score=score)
    pd.testing.assert_frame_equal(top.result(), want, check_dtype=False)


def test_fewer_images_than_k_gives_fewer_ranks():
    values, image_id, ys, xs, _ = random_data(3, 2, seed=1)
    top = TopK(9, 2)
    top.add(values, image_id, ys, xs)
    assert len(top.result()) == 6
    assert top.result()["rank"].max() == 2


def test_merging_shards_through_state_dict_equals_one_pass():
    values, image_id, ys, xs, score = random_data(40, 3, seed=5)
    whole = TopK(5, 3)
    whole.add(values, image_id, ys, xs, score=score)
    merged = TopK(5, 3)
    for part in np.array_split(np.arange(40), 7):  # includes shards smaller than k
        shard = TopK(5, 3)
        shard.add(values[part], image_id[part], ys[part], xs[part], score=score[part])
        merged.add_state(shard.state_dict())
    pd.testing.assert_frame_equal(merged.result(), whole.result())


def test_bad_k_and_distinct_are_named():
    with pytest.raises(ValueError, match="k must be at least 1"):
        TopK(0, 3)
    with pytest.raises(ValueError, match="valid: image, group"):
        TopK(3, 3, distinct="photo")


def write_stage_inputs(tmp_path, n, c, splits, arrays, size=11, stride=4, start=-2, size_x=13,
                       start_x=-4, groups=None):
    """A manifest, a layer table, an rf table and `splits` stamped activation shards."""
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"image_id": np.arange(n), "path": [f"/d/{i}.png" for i in range(n)],
                  "group": groups if groups is not None else [f"g{i % 4}" for i in range(n)],
                  "label": [f"class {i % 3}" for i in range(n)]}).to_parquet(manifest)
    layer_frame("L", c, 7, 7, size, stride, start, size_x, start_x).to_parquet(tmp_path / "layers.parquet")
    affine_boxes(7, 7, size, stride, start, size_x, start_x).to_parquet(tmp_path / "rf.parquet")
    paths = []
    for i in range(splits):
        lo, hi = shard_range(n, i, splits)
        p = tmp_path / f"shard-{i:03d}.h5"
        write_layer_file(p, "L", np.arange(lo, hi), {k: v[lo:hi] for k, v in arrays.items()},
                         shard=i, shards=splits, manifest_sha256=file_sha256(manifest))
        paths.append(p)
    return manifest, paths


def test_topk_stage_is_identical_for_1_and_7_shards_and_boxes_follow_the_field(tmp_path):
    n, c = 30, 4
    values, _, ys, xs, score = random_data(n, c, seed=11)
    minima = -np.abs(values) * (np.arange(n) % 3 == 0)[:, None]  # some images inhibit the unit
    arrays = {"max": values, "argmax_y": ys, "argmax_x": xs, "mean": score, "min": minima,
              "argmin_y": xs, "argmin_x": ys}
    tables = []
    for splits in (1, 7):
        d = tmp_path / f"s{splits}"
        d.mkdir()
        manifest, paths = write_stage_inputs(d, n, c, splits, arrays)
        # shards of 4-5 images, fewer than k
        top, units, bottom = select_topk(paths, manifest, d / "layers.parquet", d / "rf.parquet",
                                         "L", k=6, chunk=3)
        tables.append((top, units, bottom))
    pd.testing.assert_frame_equal(tables[0][0], tables[1][0])
    pd.testing.assert_frame_equal(tables[0][2], tables[1][2])
    top, units, bottom = tables[0]
    want = brute_force(values, np.arange(n), ys, xs, 6, score=score)
    pd.testing.assert_frame_equal(top[want.columns].reset_index(drop=True), want, check_dtype=False)
    assert (top["y0"] == -2 + 4 * top["y"]).all() and (top["y1"] - top["y0"] == 11).all()
    assert (top["x0"] == -4 + 4 * top["x"]).all() and (top["x1"] - top["x0"] == 13).all()
    # the bottom-k: the most negative spatial minima (brute force), ties by mean ascending
    low = brute_force(-minima, np.arange(n), xs, ys, 6, score=-score)
    low = low[low["activation"] > 0]
    assert list(zip(bottom["unit"], bottom["image_id"])) == list(zip(low["unit"], low["image_id"]))
    assert np.allclose(bottom["activation"], -low["activation"]) and (bottom["activation"] < 0).all()
    # unit statistics against numpy over all maxima
    assert np.allclose(units["max"], values.max(0))
    assert np.allclose(units["mean"], values.mean(0))
    assert np.allclose(units["q90"], np.quantile(values, 0.9, axis=0))
    assert np.allclose(units["frac_active"], (values > 0).mean(0))
    assert np.allclose(units["min"], np.minimum(minima, values).min(0))
    assert list(units["n_at_max"]) == [int((values[:, u] == values[:, u].max()).sum()) for u in range(c)]
    assert list(units["dead"]) == list(values.max(0) <= 0)
    assert list(top.columns) == ["layer", "unit", "rank", "image_id", "activation", "spatial_mean",
                                 "y", "x", "y0", "x0", "y1", "x1"]
    # labels: the most common label among each unit's top-k, and its share
    for u in range(c):
        labels = pd.Series([f"class {i % 3}" for i in top[top["unit"] == u]["image_id"]])
        counts = labels.value_counts()
        best = sorted(counts[counts == counts.max()].index)[0]
        assert units.loc[u, "label"] == best
        assert units.loc[u, "purity"] == pytest.approx(counts.max() / len(labels))


def test_dead_and_saturated_units_are_marked(tmp_path):
    n = 12
    values = np.zeros((n, 3), np.float32)
    values[:, 0] = 6.0                  # saturated: every image at the cap
    values[:, 1] = -np.arange(n)        # dead: never positive
    values[:, 2] = np.arange(n)         # ordinary
    manifest, paths = write_stage_inputs(tmp_path, n, 3, 2, {"max": values})
    _, units, _ = select_topk(paths, manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet", "L")
    assert list(units["saturated"]) == [True, False, False]
    assert list(units["dead"]) == [False, True, False]
    assert list(units["n_at_max"]) == [12, 1, 1]


def test_empty_shards_are_skipped(tmp_path):
    values, _, ys, xs, score = random_data(4, 2, seed=2)
    manifest, paths = write_stage_inputs(tmp_path, 4, 2, 6, {"max": values, "argmax_y": ys,
                                                             "argmax_x": xs, "mean": score})
    top, _, _ = select_topk(paths, manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet", "L", k=3)
    want = brute_force(values, np.arange(4), ys, xs, 3, score=score)
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


def test_a_unit_that_never_fires_gets_no_label():
    from unitscope.topk import label_purity

    manifest = pd.DataFrame({"image_id": range(4), "label": ["cat", "cat", "dog", "bird"]})
    top = pd.DataFrame({"unit": [0, 0, 1, 1], "image_id": [0, 1, 0, 1]})  # unit 1: the lowest ids
    units = pd.DataFrame({"unit": [0, 1], "dead": [False, True]})
    out = label_purity(units, top, manifest).set_index("unit")
    assert out.loc[0, "label"] == "cat" and out.loc[0, "purity"] == 1.0
    assert pd.isna(out.loc[1, "label"]) and np.isnan(out.loc[1, "purity"])
    tie = label_purity(units.assign(dead=False), top.assign(image_id=[2, 3, 0, 1]), manifest)
    assert tie.set_index("unit").loc[0, "label"] == "bird"  # a tie: the alphabetically first
