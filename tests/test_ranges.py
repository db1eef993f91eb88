"""Histograms and activation-range examples against brute force over the stored activations, and
independent of how the images were split into shards."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from test_topk import write_stage_inputs
from unitscope.ranges import bin_edges, histogram_and_ranges, image_hash
from unitscope.topk import select_topk


def brute_histogram(values: np.ndarray, bins: int) -> np.ndarray:
    """np.histogram of each unit over [its smallest, its largest value] (the last bin closed)."""
    out = []
    for u in range(values.shape[1]):
        v = values[:, u].astype(np.float64)
        edges = bin_edges(np.array([v.min()]), np.array([v.max()]), bins)[0]
        out.append(np.histogram(v, edges)[0])
    return np.array(out)


def brute_ranges(values, unit, n_ranges, per_range):
    """For one unit: its positive values split into n_ranges equal intervals, the per_range
    images with the smallest splitmix64 hash in each (a plain Python sort)."""
    v = values[:, unit].astype(np.float64)
    pos = v[v > 0]
    edges = bin_edges(np.array([pos.min()]), np.array([v.max()]), n_ranges)[0]
    out = []
    for r in range(n_ranges):
        lo, hi = edges[r], edges[r + 1]
        inside = [i for i in range(len(v)) if v[i] > 0 and lo <= v[i] and (v[i] < hi or (r == n_ranges - 1 and v[i] <= hi))]
        chosen = sorted(inside, key=lambda i: (int(image_hash(np.array([i]))[0]), i))[:per_range]
        out += [(r, i) for i in sorted(chosen, key=lambda i: (-v[i], i))]
    return out


def run(tmp, values, splits, shown, n_ranges=4, per_range=3):
    n, c = values.shape
    arrays = {"max": values, "mean": values / 2}
    manifest, paths = write_stage_inputs(tmp, n, c, splits, arrays)
    select_topk(paths, manifest, tmp / "layers.parquet", tmp / "rf.parquet", "L", k=4,
                units_out=tmp / "units.parquet")
    return histogram_and_ranges(paths, manifest, tmp / "layers.parquet", tmp / "rf.parquet",
                                tmp / "units.parquet", "L", shown, n_ranges, per_range, bins=8,
                                chunk=7)


def test_histogram_and_ranges_equal_brute_force_and_do_not_depend_on_shards(tmp_path):
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(1.0, 2.0, size=(90, 5)), 1).astype(np.float32)  # ties, negatives
    results = []
    for splits in (1, 4, 9):
        d = tmp_path / f"s{splits}"
        d.mkdir()
        results.append(run(d, values, splits, shown=[1, 3]))
    for hist, ranges in results[1:]:
        pd.testing.assert_frame_equal(hist, results[0][0])
        pd.testing.assert_frame_equal(ranges, results[0][1])
    hist, ranges = results[0]
    assert (hist.groupby("unit")["count"].sum() == 90).all()  # every image counted once
    counts = hist.pivot(index="unit", columns="bin", values="count").to_numpy()
    assert (counts == brute_histogram(values, 8)).all()
    assert set(ranges["unit"]) == {1, 3}
    for unit in (1, 3):
        got = ranges[ranges["unit"] == unit]
        assert list(zip(got["range"], got["image_id"])) == brute_ranges(values, unit, 4, 3)
        assert list(got["rank"]) == list(range(len(got)))
        assert np.allclose(got["activation"], values[got["image_id"], unit])
        assert ((got["activation"] >= got["lo"] - 1e-6) & (got["activation"] <= got["hi"] + 1e-6)).all()
    assert list(ranges.columns) == ["layer", "unit", "range", "lo", "hi", "rank", "image_id",
                                    "activation", "spatial_mean", "y", "x", "y0", "x0", "y1", "x1"]


def test_a_unit_that_never_fires_gets_no_range_examples(tmp_path):
    values = np.stack([-np.ones(20), np.linspace(0.5, 3, 20)], axis=1).astype(np.float32)
    hist, ranges = run(tmp_path, values, 2, shown=[0, 1], n_ranges=2, per_range=2)
    assert set(ranges["unit"]) == {1} and len(ranges) == 4
    assert hist[hist["unit"] == 0]["count"].tolist()[0] == 20  # a constant unit: one bin


def test_the_tree_merge_of_blocks_of_shards_equals_one_pass(tmp_path):
    """Nine shards in blocks of 4, 4 and 1: partial results merged give the same top-k, bottom-k,
    unit statistics (quantiles aside: they come from merged samples), histograms and ranges."""
    from unitscope.ranges import partial_ranges
    from unitscope.topk import partial_topk

    rng = np.random.default_rng(1)
    values = np.round(rng.normal(1.0, 2.0, size=(90, 5)), 1).astype(np.float32)
    arrays = {"max": values, "mean": values / 2, "min": values - 4}
    manifest, paths = write_stage_inputs(tmp_path, 90, 5, 9, arrays)
    table, rf = tmp_path / "layers.parquet", tmp_path / "rf.parquet"
    whole = select_topk(paths, manifest, table, rf, "L", k=4, units_out=tmp_path / "units.parquet")
    blocks = [(0, 4), (4, 8), (8, 9)]
    parts = []
    for b, (lo, hi) in enumerate(blocks):
        parts.append(tmp_path / f"topk-{b}.h5")
        partial_topk(paths[lo:hi], manifest, table, "L", lo, 9, k=4, out=parts[-1])
    tree = select_topk(None, manifest, table, rf, "L", k=4, parts=parts, total=9)
    pd.testing.assert_frame_equal(tree[0], whole[0])
    pd.testing.assert_frame_equal(tree[2], whole[2])
    exact = [c for c in whole[1].columns if c not in ("q50", "q90", "q99")]
    pd.testing.assert_frame_equal(tree[1][exact], whole[1][exact])
    want = histogram_and_ranges(paths, manifest, table, rf, tmp_path / "units.parquet", "L",
                                [0, 2, 4], 3, 2, bins=8)
    rparts = []
    for b, (lo, hi) in enumerate(blocks):
        rparts.append(tmp_path / f"ranges-{b}.h5")
        partial_ranges(paths[lo:hi], manifest, table, rf, tmp_path / "units.parquet", "L",
                       [0, 2, 4], lo, 9, 3, 2, bins=8, out=rparts[-1])
    got = histogram_and_ranges(None, manifest, table, rf, tmp_path / "units.parquet", "L",
                               [0, 2, 4], 3, 2, bins=8, parts=rparts, total=9)
    pd.testing.assert_frame_equal(got[0], want[0])
    pd.testing.assert_frame_equal(got[1], want[1])
    # a missing block is an error, not a smaller table
    with pytest.raises(ValueError, match="cover 8 of 9 shards"):
        select_topk(None, manifest, table, rf, "L", k=4, parts=parts[:2], total=9)
