"""Several models in one run and how their units change (Zeiler & Fergus, Fig. 4): the config's
models and checkpoint series, the comparison table against the per-model tables read
independently, and a checkpoint series of a tiny network trained inside the test, run through
the workflow: what adding a checkpoint replans, and what the comparison says."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import plan_of, planned_jobs, snakemake
from unitscope.compare import compare_table
from unitscope.compare_units import choose_units
from unitscope.plan import PlanError, build_run

TINY = textwrap.dedent('''
    """A tiny classifier the workflow test trains for a few steps."""
    from collections import OrderedDict

    import torch
    from torch import nn


    def net():
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, stride=2, padding=1), act1=nn.ReLU(),
            conv2=nn.Conv2d(6, 8, 3, padding=1), act2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(8, 3)))
''')


def _top(rng, units: int, k: int, images: int) -> pd.DataFrame:
    rows = []
    for u in range(units):
        ids = rng.choice(images, size=k, replace=False)
        acts = np.sort(rng.random(k))[::-1]
        for r, (i, a) in enumerate(zip(ids, acts)):
            y, x = rng.integers(0, 8, 2)
            rows.append({"layer": "L", "unit": u, "rank": r, "image_id": int(i), "activation": a,
                         "spatial_mean": 0.0, "y": y, "x": x, "y0": 4 * y, "x0": 4 * x,
                         "y1": 4 * y + 7, "x1": 4 * x + 7})
    return pd.DataFrame(rows)


def test_comparison_table_is_each_models_top_k_with_overlaps_computed_by_hand():
    rng = np.random.default_rng(0)
    tops = {m: _top(rng, units=5, k=4, images=9) for m in ("a", "b", "c")}
    table = compare_table(tops)
    for step, (m, top) in enumerate(tops.items()):
        mine = table[table["model"] == m]
        assert (mine["step"] == step).all()
        cols = ["unit", "rank", "image_id", "activation", "y", "x", "y0", "x0", "y1", "x1"]
        pd.testing.assert_frame_equal(mine[cols].reset_index(drop=True),
                                      top.sort_values(["unit", "rank"])[cols].reset_index(drop=True))
    for u in range(5):
        for prev, cur in (("a", "b"), ("b", "c")):
            A = set(tops[prev].loc[tops[prev]["unit"] == u, "image_id"])
            B = set(tops[cur].loc[tops[cur]["unit"] == u, "image_id"])
            row = table[(table["model"] == cur) & (table["unit"] == u)]
            assert np.allclose(row["jaccard"], len(A & B) / len(A | B))
            first = {m: int(tops[m].loc[(tops[m]["unit"] == u) & (tops[m]["rank"] == 0), "image_id"].iat[0])
                     for m in (prev, cur)}
            assert (row["top1_changed"] == (first[prev] != first[cur])).all()
        assert table[(table["model"] == "a") & (table["unit"] == u)]["jaccard"].isna().all()
        assert table[(table["model"] == "a") & (table["unit"] == u)]["top1_changed"].isna().all()


def test_a_model_with_another_channel_count_is_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="5 in a, 4 in b channels"):
        compare_table({"a": _top(rng, 5, 3, 9), "b": _top(rng, 4, 3, 9)})


def test_the_units_a_comparison_shows_do_not_depend_on_the_data():
    assert choose_units(40, 6, seed=0) == choose_units(40, 6, seed=0)
    assert choose_units(40, 6, seed=0) != choose_units(40, 6, seed=1)
    assert len(set(choose_units(40, 6))) == 6 and all(0 <= u < 40 for u in choose_units(40, 6))
    assert choose_units(4, 9) == [0, 1, 2, 3]
    assert choose_units(40, [3, 7]) == [3, 7]
    with pytest.raises(ValueError, match=r"\[40\] not a unit"):
        choose_units(40, [3, 40])


BASE = {"dataset": {"name": "sample", "max_images": 12}, "layers": ["stem", "block3"], "device": "cpu"}


def _ckpts(tmp_path: Path, n: int) -> str:
    from unitscope.models import MODELS, weights_file

    state = torch.load(weights_file(MODELS["efficientnet_lite0"], "imagenet"), weights_only=True)
    for e in range(1, n + 1):
        torch.save(state, tmp_path / f"epoch{e}.pth")
    return str(tmp_path / "epoch{epoch}.pth")


def test_a_series_expands_to_one_model_per_checkpoint_sharing_one_layer_table(tmp_path):
    weights = _ckpts(tmp_path, 3)
    run = build_run(_validated({**BASE, "models": {"series": {"name": "efficientnet_lite0", "weights": weights,
                                                              "epoch": [1, 2, 3]}},
                                "compare": {"models": "efficientnet_lite0"}}), check_results=False)
    ids = [f"efficientnet_lite0-epoch{e}" for e in (1, 2, 3)]
    assert run.ids == ids and run.series == {"efficientnet_lite0": ids}
    assert set(run.owners.values()) == {ids[0]}  # they differ only in weights
    assert [p.model.weights for p in run.plans.values()] == [weights.replace("{epoch}", str(e)) for e in (1, 2, 3)]
    assert run.compares["efficientnet_lite0"]["models"] == ids
    targets = run.targets()
    assert "results/sample/compare/efficientnet_lite0/block3.parquet" in targets
    assert "results/sample/compare/efficientnet_lite0/index.html" in targets
    assert "results/sample/efficientnet_lite0-epoch2/grids/stem.png" in targets


def test_the_shipped_example_compares_random_and_imagenet_weights_sharing_one_table():
    import yaml

    from conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(yaml.safe_load((REPO / "config/examples/lite0-training.yaml").read_text()))
    run = build_run(_validated(config), check_results=False)
    assert run.ids == ["lite0-random", "lite0-imagenet"]
    assert [p.model.weights for p in run.plans.values()] == ["none", "imagenet"]
    assert run.owners == {"lite0-random": "lite0-random", "lite0-imagenet": "lite0-random"}
    assert run.compares == {"training": {"models": ["lite0-random", "lite0-imagenet"],
                                         "layers": config["layers"], "units": 6, "seed": 0}}


def _validated(config):
    from conftest import validated

    return validated(config)


@pytest.mark.parametrize("extra, message", [
    ({"models": {"series": {"name": "efficientnet_lite0", "weights": "w.pth", "epoch": [1]}}},
     "has no {epoch} to put each epoch in"),
    ({"models": [{"id": "a"}, {"id": "a", "weights": "none"}]}, "two models have the id 'a'"),
    ({"models": [{"id": "compare"}]}, "'compare' cannot be a model id"),
    ({"models": [{"id": "a"}, {"id": "b", "weights": "none"}], "compare": {"models": "nope"}},
     "'nope' is not a series"),
    ({"models": [{"id": "a"}, {"id": "b", "weights": "none"}], "compare": {"models": ["a", "c"]}},
     "'c' not a model of this run; valid: a, b"),
    ({"models": [{"id": "a"}, {"id": "b", "weights": "none"}], "compare": {"models": ["a"]}},
     "a comparison needs two models or more"),
    ({"models": [{"id": "a"}, {"id": "b", "weights": "none"}], "compare": {"units": [3, 40]}},
     "unit 40 asked for but stem has 32 channels"),
    ({"models": [{"id": "a"}, {"id": "b", "name": "resnet18", "weights": "none"}],
      "layers": ["layer1"]}, "models\\[0\\] \\(a\\): config key 'layers': unknown layer"),
    ({"models": [{"id": "a", "weights": "none"}], "invariance": {"layers": ["block9"]}},
     "'invariance.layers': block9 not configured"),
])
def test_bad_models_and_comparisons_fail_by_name_before_any_job(extra, message):
    with pytest.raises(PlanError, match=message):
        plan_of({**BASE, **extra})


def test_models_whose_layer_differs_in_channels_are_not_compared(tmp_path):
    (tmp_path / "two_widths.py").write_text(textwrap.dedent('''
        from torch import nn
        def narrow():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        def wide():
            return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
    '''))
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        config = {**BASE, "layers": ["1"], "units": 2,
                  "models": [{"id": "n", "python": "two_widths:narrow", "input_size": 16, "weights": "none"},
                             {"id": "w", "python": "two_widths:wide", "input_size": 16, "weights": "none"}],
                  "compare": {"models": ["n", "w"]}}
        with pytest.raises(PlanError, match="layer 1 has 4 in n, 6 in w channels; a unit is a channel index"):
            plan_of(config)
        run = build_run(_validated({**config, "compare": []}), check_results=False)
        assert run.owners == {"n": "n", "w": "w"}  # other architectures: a table each
    finally:
        sys.path.remove(str(tmp_path))


# --- the workflow: a tiny network trained for a few steps, its checkpoints a series -----------

def _images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((220, 40, 40), (40, 200, 40), (40, 40, 220))):
        for i in range(6):
            im = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
            y, x = rng.integers(0, 28, 2)
            im[y:y + 12, x:x + 12] = colour
            (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(folder / f"c{c}" / f"{i}.png")


def _train(pythonpath: Path, folder: Path, ckpt: Path, steps: int) -> None:
    """Real checkpoints: the tiny net trained with SGD on the images, its state_dict saved with
    torch.save after each step."""
    import importlib
    import sys

    sys.path.insert(0, str(pythonpath))
    try:
        net = importlib.import_module("tinynet").net()
    finally:
        sys.path.remove(str(pythonpath))
    xs, ys = [], []
    for c in range(3):
        for p in sorted((folder / f"c{c}").glob("*.png")):
            im = np.asarray(Image.open(p).resize((32, 32)), np.float32)
            xs.append((torch.from_numpy(im).permute(2, 0, 1) - 124) / 58)
            ys.append(c)
    x, y = torch.stack(xs), torch.tensor(ys)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    ckpt.mkdir()
    for step in range(1, steps + 1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        torch.save(net.state_dict(), ckpt / f"step{step}.pth")


@pytest.mark.slow
@pytest.mark.workflow
def test_a_checkpoint_series_through_the_workflow(tmp_path):
    (tmp_path / "tinynet.py").write_text(TINY)
    folder, work = tmp_path / "images", tmp_path / "work"
    work.mkdir()
    _images(folder)
    _train(tmp_path, folder, tmp_path / "ckpt", 3)
    series = {"python": "tinynet:net", "input_size": 32, "id": "tiny",
              "weights": str(tmp_path / "ckpt" / "step{step}.pth")}
    config = {"dataset": {"name": "folder", "path": str(folder)}, "layers": ["act1", "act2"],
              "k": 4, "units": 3, "n_ranges": 0, "verify": False, "device": "cpu",
              "occlusion": {"examples": 0},
              "models": {"series": {**series, "step": [1, 2]}},
              "compare": {"models": "tiny", "units": 4},
              "invariance": {"models": ["tiny-step2"], "layers": ["act2"], "translation": [-8, 0, 8],
                             "scale": [1, 1.5], "rotation": [0, 90]}}
    r = snakemake(work, config, pythonpath=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    data = work / "results" / "images"
    ids = ["tiny-step1", "tiny-step2"]
    # one layer table, computed once (models that differ only in weights) and copied
    assert (data / "tiny-step1/logs/layers.log").exists() and not (data / "tiny-step2/logs/layers.log").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(data / "tiny-step1/layers.parquet"),
                                  pd.read_parquet(data / "tiny-step2/layers.parquet"))
    for layer in ("act1", "act2"):
        table = pd.read_parquet(data / f"compare/tiny/{layer}.parquet")
        tops = {m: pd.read_parquet(data / m / f"topk/{layer}.parquet") for m in ids}
        for step, m in enumerate(ids):  # each model's rows are its own top-k table, read apart
            mine = table[table["model"] == m].reset_index(drop=True)
            theirs = tops[m].sort_values(["unit", "rank"]).reset_index(drop=True)
            assert (mine["step"] == step).all()
            for col in ("unit", "rank", "image_id", "activation", "y0", "x0", "y1", "x1"):
                assert (mine[col].to_numpy() == theirs[col].to_numpy()).all(), (layer, m, col)
        for u, g in tops["tiny-step2"].groupby("unit"):
            A = set(tops["tiny-step1"].loc[tops["tiny-step1"]["unit"] == u, "image_id"])
            B = set(g["image_id"])
            row = table[(table["model"] == "tiny-step2") & (table["unit"] == u)]
            assert np.allclose(row["jaccard"], len(A & B) / len(A | B))
        assert Image.open(data / f"compare/tiny/{layer}.png").width > 200
    page = (data / "compare/tiny/index.html").read_text()
    assert all(f'href="../../{m}/gallery/index.html"' in page for m in ids) and 'src="act2.png"' in page
    # the compared units' strongest examples are projected in every model, shown or not
    units = choose_units(8, 4, 0)
    for m in ids:
        with __import__("h5py").File(data / m / "projections/act2.h5") as f:
            projected = {int(u) for u, k, r in zip(f["unit"][:], f["kind"][:], f["rank"][:]) if k == 0 and r == 0}
        assert set(units) <= projected
    inv = pd.read_parquet(data / "tiny-step2/invariance/act2.parquet")
    assert set(inv["transform"]) == {"translation", "scale", "rotation"}
    assert (inv.query("transform == 'translation' and amount == 0")["distance"] == 0).all()
    assert (data / "tiny-step1/filters.png").exists() and len(pd.read_parquet(data / "tiny-step1/filters.parquet")) == 6

    # adding a checkpoint plans only that checkpoint's jobs and the comparison
    config["models"]["series"]["step"] = [1, 2, 3]
    r = snakemake(work, config, "--dry-run", pythonpath=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout)
    others = {(rule, m) for rule, m, _ in jobs if m not in ("tiny-step3", "tiny") and rule != "all"}
    assert not others, others
    assert {rule for rule, m, _ in jobs if m == "tiny"} == {"compare", "compare_page"}
    assert ("shared_layers", "tiny-step3", "") in jobs and ("activations", "tiny-step3", "") in jobs
