"""The Snakemake workflow end to end on a tiny config: every file of the contract, per-layer
replanning from `--dry-run` output, and config errors that name the bad key."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RES = "results/sample/efficientnet_lite0"
LAYERS = ["stem", "block3"]
TINY = {"dataset": {"name": "sample", "max_images": 24, "seed": 2}, "layers": LAYERS, "shards": 2,
        "batch_size": 8, "device": "cpu", "projection": "none"}


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "--configfile", "config.yaml", "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


def planned(out: str) -> set[tuple[str, str]]:
    """(rule, layer) of every job a dry run plans."""
    jobs, rule = set(), None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            jobs.add((rule, ""))
        m = re.match(r"^\s+wildcards: .*layer=([\w.]+)", line)
        if m and rule:
            jobs.discard((rule, ""))
            jobs.add((rule, m.group(1)))
    return jobs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    r = snakemake(work, TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return work


def test_every_contract_file_is_written_with_its_columns(finished_run):
    w = finished_run
    manifest = pd.read_parquet(w / "results/sample/manifest.parquet")
    assert list(manifest["image_id"]) == list(range(24))
    assert {"image_id", "path", "group", "label", "width", "height"} <= set(manifest.columns)
    assert list(pd.read_parquet(w / "results/sample/rejected.parquet").columns) == ["path", "reason"]
    ids = []
    for shard in ("000", "001"):
        with h5py.File(w / RES / f"inputs/shard-{shard}.h5") as f:
            assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (224, 224, 3)
            ids.append(f["image_id"][:])
    assert list(np.concatenate(ids)) == list(range(24)) and len(ids[0]) == 12  # contiguous
    layers = pd.read_parquet(w / RES / "layers.parquet")
    assert list(layers["layer"]) == LAYERS
    for col in ("module", "channels", "height", "width", "units", "activations", "rf_size",
                "rf_stride", "rf_offset"):
        assert col in layers.columns
    assert (layers["activations"] == layers["channels"] * layers["height"] * layers["width"]).all()
    assert list(layers["rf_size"]) == [3, 35]
    assert "receptive fields" in (w / RES / "logs/layers.log").read_text()  # table in the log
    for row in layers.itertuples():
        L = row.layer
        for shard, n in (("000", 12), ("001", 12)):
            with h5py.File(w / RES / f"activations/{L}/shard-{shard}.h5") as f:
                assert f["max"].shape == (n, row.channels) and f["max"].dtype == np.float32
                assert (f["argmax_y"][:] < row.height).all() and (f["argmax_x"][:] < row.width).all()
        top = pd.read_parquet(w / RES / f"topk/{L}.parquet")
        assert list(top.columns) == ["layer", "unit", "rank", "image_id", "activation", "y", "x",
                                     "y0", "x0", "y1", "x1"]
        assert (top.groupby("unit").size() == 9).all() and top["unit"].nunique() == row.channels
        units = pd.read_parquet(w / RES / f"units/{L}.parquet")
        assert list(units.columns) == ["layer", "unit", "max", "mean", "q50", "q90", "q99", "frac_active"]
        with h5py.File(w / RES / f"patches/{L}.h5") as f:
            assert len(f["jpeg"]) == len(top) and tuple(f.attrs["rf_size"]) == (row.rf_size,) * 2
        fig = Image.open(w / RES / f"grids/{L}.png")
        assert fig.width > 3 * 3 * 64
        assert len(list((w / RES / f"grids/{L}").glob("unit-*.png"))) == 9
        for stage in ("topk", "patches", "grids"):
            assert (w / RES / f"logs/{stage}/{L}.log").exists()


def test_gallery_and_report_are_made(finished_run):
    import zipfile

    gallery = finished_run / RES / "gallery"
    assert (gallery / "index.html").exists()
    for L, units in (("stem", 32), ("block3", 40)):
        assert len(list((gallery / L).glob("unit-*.html"))) == units
    r = snakemake(finished_run, TINY, "--report", "report.zip")
    assert r.returncode == 0, r.stderr[-3000:]
    with zipfile.ZipFile(finished_run / "report.zip") as z:
        names = z.namelist()
        html = z.read("report/report.html").decode()
    assert sum(n.endswith(("/stem.png", "/block3.png")) for n in names) == 2
    assert '"RF": "35x35 px"' in html and "picked by" in html


def test_show_prints_a_units_top_images(finished_run):
    r = subprocess.run([sys.executable, "-m", "unitscope", "show", "--layer", "block3", "--unit", "0"],
                       cwd=finished_run, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    top = pd.read_parquet(finished_run / RES / "topk/block3.parquet").query("unit == 0")
    lines = r.stdout.splitlines()
    assert lines[0] == "block3 unit 0: top 9 images"
    for line, row in zip(lines[1:10], top.itertuples()):
        assert f"image {row.image_id} " in line and f"box y {row.y0}..{row.y1} x {row.x0}..{row.x1}" in line
    assert any(line.startswith("gallery: ") for line in lines)


def test_changing_one_layers_setting_replans_only_that_layer(finished_run):
    r = snakemake(finished_run, TINY, "--dry-run")
    assert "Nothing to be done" in r.stdout + r.stderr
    r = snakemake(finished_run, {**TINY, "overrides": {"block3": {"k": 4}}}, "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert planned(r.stdout) == {("topk", "block3"), ("patches", "block3"), ("grids", "block3"),
                                 ("gallery", ""), ("all", "")}
    r = snakemake(finished_run, {**TINY, "overrides": {"stem": {"units": [0, 1, 2, 3]}}}, "--dry-run")
    assert planned(r.stdout) == {("grids", "stem"), ("all", "")}
    r = snakemake(finished_run, {**TINY, "overrides": {"stem": {"distinct": "group"}}}, "--dry-run")
    assert planned(r.stdout) == {("topk", "stem"), ("patches", "stem"), ("grids", "stem"),
                                 ("gallery", ""), ("all", "")}


def test_one_layers_figure_builds_that_layers_chain_only(tmp_path):
    r = snakemake(tmp_path, TINY, "--dry-run", f"{RES}/grids/block3.png")
    assert r.returncode == 0, r.stderr[-3000:]
    assert planned(r.stdout) == {("dataset", ""), ("inputs", ""), ("layers", ""), ("activations", ""),
                                 ("topk", "block3"), ("patches", "block3"), ("grids", "block3")}


@pytest.mark.parametrize("change, message", [
    ({"kk": 3}, "'kk' was unexpected"),
    ({"k": "nine"}, "'nine' is not of type 'integer'"),
    ({"k": 0}, "0 is less than the minimum of 1"),
    ({"distinct": "photo"}, "'photo' is not one of ['image', 'group']"),
    ({"layers": ["stem", "blockX"]}, "unknown layer(s) 'blockX' for model 'efficientnet_lite0'; valid names: stem, block0"),
    ({"overrides": {"block9": {"k": 3}}}, "names layers that are not in 'layers': block9"),
    ({"dataset": {"name": "folder"}}, "'dataset.path' is required"),
    ({"overrides": {"stem": {"units": 40}}}, "'units': 40 units asked for but stem has 32 channels"),
    ({"units": [3, 50]}, "'units': 51 units asked for but stem has 32 channels"),
    ({"model": {"torchscript": "nowhere.pt"}}, "config key 'model.torchscript': no file 'nowhere.pt'"),
    ({"model": {"torchscript": "config.yaml"}}, "'config.yaml' is not a TorchScript file"),
    ({"model": {"python": "conftest:RedSpotNet", "torchscript": "x.pt"}},
     "'model.python' and 'model.torchscript' both name a model"),
])
def test_bad_config_fails_before_any_work_and_names_the_key(tmp_path, change, message):
    r = snakemake(tmp_path, {**TINY, **change}, "--dry-run")
    assert r.returncode != 0
    assert message in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def alexnet_run(tmp_path_factory):
    """The pipeline with AlexNet on a local weights file (random weights, seed 0)."""
    import torch

    from unitscope.models import build_model

    tmp_path = tmp_path_factory.mktemp("alexnet")
    torch.manual_seed(0)
    torch.save(build_model("alexnet", None).state_dict(), tmp_path / "alexnet.pth")
    config = {"dataset": {"name": "sample", "max_images": 10},
              "model": {"name": "alexnet", "weights": str(tmp_path / "alexnet.pth")},
              "layers": ["conv2", "pool5"], "k": 4, "units": 4, "device": "cpu"}
    r = snakemake(tmp_path, config)
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp_path


def test_pipeline_runs_with_alexnet_on_a_local_weights_file(alexnet_run):
    tmp_path = alexnet_run
    layers = pd.read_parquet(tmp_path / "results/sample/alexnet/layers.parquet")
    assert list(layers["rf_size"]) == [51, 195]
    top = pd.read_parquet(tmp_path / "results/sample/alexnet/topk/pool5.parquet")
    assert (top.groupby("unit").size() == 4).all() and top["unit"].nunique() == 256
    # projection auto = the deconvnet for AlexNet; the figure shows projections beside patches
    with h5py.File(tmp_path / "results/sample/alexnet/projections/pool5.h5") as f:
        assert f.attrs["method"] == "deconvnet" and len(f["jpeg"]) == 16
    fig = Image.open(tmp_path / "results/sample/alexnet/grids/conv2.png")
    assert fig.width > 2 * 2 * (2 * 64)


def test_a_torchscript_file_of_the_same_network_gives_the_same_tables(alexnet_run, tmp_path):
    """The same AlexNet traced to TorchScript, its layers named by module path: the same layer
    table and the same top-k, through hooks the script itself cannot take; projections by guided
    backpropagation."""
    import torch

    from unitscope.models import build_model

    model = build_model("alexnet", str(alexnet_run / "alexnet.pth"))
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), tmp_path / "alexnet.pt")
    config = {"dataset": {"name": "sample", "max_images": 10},
              "model": {"torchscript": str(tmp_path / "alexnet.pt"), "input_size": 224},
              "layers": ["features.4", "features.12"], "k": 4, "units": 4, "device": "cpu"}
    r = snakemake(tmp_path, config)
    assert r.returncode == 0, r.stderr[-4000:]
    py, ts = alexnet_run / "results/sample/alexnet", tmp_path / "results/sample/alexnet"
    columns = ["channels", "height", "width", "rf_size", "rf_stride", "rf_offset", "rf_start"]
    assert pd.read_parquet(ts / "layers.parquet")[columns].equals(
        pd.read_parquet(py / "layers.parquet")[columns])
    for alias, module in (("conv2", "features.4"), ("pool5", "features.12")):
        want = pd.read_parquet(py / f"topk/{alias}.parquet")
        got = pd.read_parquet(ts / f"topk/{module}.parquet")
        same = [c for c in want.columns if c != "layer"]  # ids, positions exact; values to 1e-5
        pd.testing.assert_frame_equal(got[same], want[same], rtol=1e-5)
    assert (ts / "grids/features.4.png").exists()
    with h5py.File(ts / "projections/features.12.h5") as f:  # auto = guided backprop for scripts
        assert f.attrs["method"] == "guided_backprop" and len(f["jpeg"]) == 16
    bad = {**config, "projection": "deconvnet"}
    r = snakemake(tmp_path, bad, "--dry-run")
    assert r.returncode != 0 and "config key 'projection'" in r.stdout + r.stderr


def test_imagenette_runs_end_to_end_from_a_local_copy_of_its_archive(tmp_path):
    from http_fixture import LocalServer
    from test_sources import mini_imagenette

    root = tmp_path / "served"
    root.mkdir()
    server = LocalServer(root)
    try:
        md5 = mini_imagenette(root / "imagenette2-160.tgz", per_class=4)
        config = {"dataset": {"name": "imagenette", "size": 160, "split": "val", "max_images": 500,
                              "mirror": server.url, "md5": md5},
                  "layers": ["stem"], "k": 4, "units": 4, "device": "cpu"}
        (tmp_path / "work").mkdir()
        r = snakemake(tmp_path / "work", config)
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr[-4000:]
    res = tmp_path / "work/results/imagenette-160-val"
    manifest = pd.read_parquet(res / "manifest.parquet")
    assert len(manifest) == 40 and manifest["label"].str.contains(r"\(n0\d+\)").all()
    assert len(pd.read_parquet(res / "rejected.parquet")) == 1
    assert (tmp_path / "work/resources/imagenette2-160.tgz").exists()
    assert (res / "efficientnet_lite0/grids/stem.png").exists()


def test_one_shard_and_seven_shards_give_identical_topk_tables(tmp_path):
    """Through the whole chain (preprocessing, inference in batches, merge): shards of 1-2 images,
    fewer than k, change nothing."""
    config = {"dataset": {"name": "sample", "max_images": 12, "seed": 4}, "layers": ["block3"],
              "k": 4, "projection": "none", "batch_size": 8, "device": "cpu"}
    tables = []
    for shards in (1, 7):
        work = tmp_path / f"s{shards}"
        work.mkdir()
        r = snakemake(work, {**config, "shards": shards}, f"{RES}/topk/block3.parquet")
        assert r.returncode == 0, r.stderr[-3000:]
        tables.append(pd.read_parquet(work / RES / "topk/block3.parquet"))
    assert len(list((tmp_path / "s7" / RES / "activations/block3").glob("shard-*.h5"))) == 7
    pd.testing.assert_frame_equal(tables[0], tables[1])
