"""The Snakemake workflow end to end on tiny data: one shared run whose every config string is
hostile to a shell (quotes, $(…), ;, spaces, non-ASCII), then what it wrote, what reruns when an
input changes, what a damaged cache does, and that `snakemake --lint` stays quiet.

Marked `workflow`: `pytest -m "not workflow"` runs the rest in seconds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, planned, snakemake
from unitscope.occlusion import read_occlusion

pytestmark = pytest.mark.workflow

HOSTILE = "we'ird \"$(touch pwned)\"; ü"
LAYERS = ["stem", "block3"]


def hostile_dataset(root: Path) -> tuple[Path, Path]:
    """16 images in two class folders whose names (the labels) would break a shell, under a folder
    whose path would too, and a weights file named the same way."""
    folder = root / HOSTILE / "images"
    rng = np.random.default_rng(0)
    for c, label in enumerate(("cats; rm -rf ~", "dogs $(touch pwned)")):
        for i in range(8):
            im = np.full((96, 128, 3), 40 + 60 * c, np.uint8)
            y, x = rng.integers(0, 80, 2)
            im[y:y + 16, x:x + 16] = rng.integers(0, 255, 3)
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(folder / label / f"{i}.png")
    from unitscope.models import MODELS, weights_file

    weights = root / f"w '{HOSTILE}'.pth"
    shutil.copy(weights_file(MODELS["efficientnet_lite0"], "imagenet"), weights)
    return folder, weights


def config_of(folder: Path, weights: Path) -> dict:
    return {"dataset": {"name": "folder", "path": str(folder)},
            "model": {"name": "efficientnet_lite0", "weights": str(weights)},
            "layers": LAYERS, "shards": 2, "batch_size": 8, "device": "cpu", "k": 4, "units": 4,
            "n_ranges": 2, "per_range": 2, "verify": "all",
            "occlusion": {"examples": 1, "units": 2, "stride": 56}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    folder, weights = hostile_dataset(root)
    work = root / "work"
    work.mkdir()
    config = config_of(folder, weights)
    r = snakemake(work, config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return work, config, r


def res_of(work: Path) -> Path:
    return work / "results" / "images" / "efficientnet_lite0"


def test_no_config_value_reaches_a_shell(run):
    work, config, r = run
    assert not list(work.parent.rglob("pwned")) and not list(Path.cwd().glob("pwned"))
    manifest = pd.read_parquet(work / "results/images/manifest.parquet")
    assert set(manifest["label"]) == {"cats; rm -rf ~", "dogs $(touch pwned)"}
    assert "unitscope: done." in r.stderr and "gallery:" in r.stderr  # the closing summary


def test_every_contract_file_is_written_with_its_columns(run):
    work, config, _ = run
    res = res_of(work)
    manifest = pd.read_parquet(work / "results/images/manifest.parquet")
    assert list(manifest["image_id"]) == list(range(16))
    assert {"image_id", "path", "group", "label", "width", "height", "member", "shard"} <= set(manifest.columns)
    layers = pd.read_parquet(res / "layers.parquet")
    assert list(layers["layer"]) == LAYERS and list(layers["rf_size"]) == [3, 35]
    assert (layers["rf_affine"]).all() and (layers["rf_method"] == "analytic").all()
    assert "receptive fields" in (res / "logs/layers.log").read_text()
    for row in layers.itertuples():
        L = row.layer
        rf = pd.read_parquet(res / f"rf/{L}.parquet")
        assert list(rf.columns) == ["y", "x", "y0", "x0", "y1", "x1", "ty0", "tx0", "ty1", "tx1",
                                    "cy0", "cx0", "cy1", "cx1"] and len(rf) == row.height * row.width
        for shard, n in (("000", 8), ("001", 8)):
            with h5py.File(res / f"activations/{L}/shard-{shard}.h5") as f:
                assert f["max"].shape == (n, row.channels) and f["max"].dtype == np.float32
                assert f.attrs["unitscope_kind"] == "activations" and f.attrs["shard"] == int(shard)
                assert (f["argmax_y"][:] < row.height).all() and (f["argmax_x"][:] < row.width).all()
        top = pd.read_parquet(res / f"topk/{L}.parquet")
        assert list(top.columns) == ["layer", "unit", "rank", "image_id", "activation", "spatial_mean",
                                     "y", "x", "y0", "x0", "y1", "x1"]
        assert (top.groupby("unit").size() == 4).all() and top["unit"].nunique() == row.channels
        # every box is the rf table's box of the row's position
        boxes = rf.set_index(["y", "x"])
        assert (boxes.loc[list(zip(top["y"], top["x"]))][["y0", "x0", "y1", "x1"]].to_numpy()
                == top[["y0", "x0", "y1", "x1"]].to_numpy()).all()
        units = pd.read_parquet(res / f"units/{L}.parquet")
        assert {"max", "mean", "q50", "q90", "q99", "frac_active", "min", "n_at_max", "dead",
                "saturated", "label", "purity"} <= set(units.columns)
        hist = pd.read_parquet(res / f"hist/{L}.parquet")
        assert (hist.groupby("unit")["count"].sum() == 16).all()
        verify = pd.read_parquet(res / f"verify/{L}.parquet")
        shown_units = json.loads((res / f"shown/{L}.json").read_text())["units"]
        shown_rows = verify[verify["unit"].isin(shown_units) & (verify["kind"] == "top")]
        assert verify["ok"].all() and len(shown_rows) == 16  # the shown units' 4 examples each
        measured = verify[verify["erf_px"] >= 0]  # effective fields: each shown unit's strongest
        assert sorted(measured["unit"]) == sorted(shown_units) and (measured["rank"] == 0).all()
        assert (measured["erf_px"] > 0).all()
        tops = verify[(verify["kind"] == "top") & (verify["rank"] == 0)]  # verify: all
        assert sorted(tops["unit"]) == list(range(row.channels))
        fig = Image.open(res / f"grids/{L}.png")
        assert fig.width > 2 * 2 * 64
        assert len(list((res / f"grids/{L}").glob("unit-*.png"))) == 4
        occ = read_occlusion(res / f"occlusion/{L}.h5")  # each of 2 shown units' strongest image
        assert list(occ.examples["unit"]) == shown_units[:2] and (occ.examples["rank"] == 0).all()
        assert occ.maps.shape[0] == 2 and np.isfinite(occ.maps).all()
        assert np.allclose(occ.examples["unoccluded"], occ.examples["activation"], rtol=1e-4, atol=1e-4)
        assert occ.attrs["classes"] and set(occ.class_prob) == set(occ.examples["image_id"])
        assert Image.open(res / f"grids/{L}-occlusion.png").width > 5 * 128
        assert len(list((res / f"grids/{L}-occlusion").glob("unit-*-rank-00.png"))) == 2
        page = (res / f"gallery/{L}/unit-{shown_units[0]:04d}.html").read_text()
        assert "occlusion" in page and f"img/occ-unit-{shown_units[0]:04d}-rank-00.png" in page
        for stage in ("topk", "shown", "ranges", "patches", "projections", "verify", "grids", "occlusion"):
            assert (res / f"logs/{stage}/{L}.log").exists()


def test_gallery_report_show_and_image(run):
    import zipfile

    work, config, _ = run
    res = res_of(work)
    gallery = res / "gallery"
    assert (gallery / "index.html").exists()
    for L, units in (("stem", 32), ("block3", 40)):
        assert len(list((gallery / L).glob("unit-*.html"))) == units
    assert list((gallery / "images").glob("*.html"))
    r = snakemake(work, config, "--report", "report.zip")
    assert r.returncode == 0, r.stderr[-3000:]
    with zipfile.ZipFile(work / "report.zip") as z:
        names = z.namelist()
        html = z.read("report/report.html").decode()
    assert sum(n.endswith(("/stem.png", "/block3.png")) for n in names) == 2
    assert '"RF": "35x35 px"' in html
    assert "gallery-report" in html  # the whole gallery, one entry of the report
    open_reports_gallery(work / "report.zip", work / "unpacked")
    r = subprocess.run([sys.executable, "-m", "unitscope", "show", "--layer", "block3", "--unit", "0"],
                       cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    top = pd.read_parquet(res / "topk/block3.parquet").query("unit == 0")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("block3 unit 0: top 4 images")
    for line, row in zip(lines[1:5], top.itertuples()):
        assert f"image {row.image_id} " in line and f"input y {row.y0}..{row.y1} x {row.x0}..{row.x1}" in line
        assert "file y " in line
    r = subprocess.run([sys.executable, "-m", "unitscope", "image", "--image-id", "3"], cwd=work,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "stem:" in r.stdout and "of its max" in r.stdout, r.stderr


def open_reports_gallery(report: Path, to: Path) -> None:
    """Unpack the report, find the gallery inside it and open it in headless Chromium: its index,
    each layer's page, a unit's and an image's page, and the filters figure, every image loaded
    and every link inside the unpacked report."""
    import urllib.parse
    import zipfile

    from test_gallery import chromium

    exe = chromium()
    from playwright.sync_api import sync_playwright

    with zipfile.ZipFile(report) as z:
        z.extractall(to)
    found = [p for p in to.rglob("index.html") if (p.parent / "stem" / "index.html").exists()]
    assert len(found) == 1, found
    index = found[0]
    assert (index.parent / "filters.png").exists()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        pages = [index, index.parent / "stem" / "index.html", index.parent / "block3" / "index.html",
                 index.parent / "block3" / "unit-0000.html", next((index.parent / "images").glob("*.html"))]
        for path in pages:
            page.goto(path.as_uri())
            broken = page.evaluate(
                """async () => { const imgs = [...document.images];
                   imgs.forEach(i => i.loading = 'eager');
                   await Promise.all(imgs.map(i => i.complete ? null :
                       new Promise(r => { i.onload = i.onerror = r; })));
                   return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src); }""")
            assert not broken, (path, broken[:3])
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            for href in hrefs:
                target = Path(urllib.parse.unquote(urllib.parse.urlparse(href).path))
                assert target.exists() and to in target.parents, (path, href)
        page.goto(index.as_uri())
        assert page.eval_on_selector_all("a[href$='/index.html']", "els => els.length") == 2
        page.click("text=filters")
        assert page.url.endswith("/filters.png")
        browser.close()


def test_changing_one_layers_setting_replans_only_that_layer(run):
    work, config, _ = run
    r = snakemake(work, config, "--dry-run")
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
    r = snakemake(work, {**config, "overrides": {"block3": {"k": 3}}}, "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    # that layer's chain and its gallery pages, and the gallery's one small index job
    assert planned(r.stdout) == {(s, "block3") for s in ("topk", "shown", "ranges", "patches", "projections",
                                                          "verify", "occlusion", "grids", "gallery_layer")} | {
        ("gallery_index", ""), ("gallery_report", ""), ("all", "")}
    r = snakemake(work, {**config, "overrides": {"stem": {"n_ranges": 3}}}, "--dry-run")
    # range examples are not projected by default (range_projections: false)
    assert planned(r.stdout) == {(s, "stem") for s in ("ranges", "patches", "grids", "gallery_layer")} | {
        ("gallery_index", ""), ("gallery_report", ""), ("all", "")}
    r = snakemake(work, {**config, "range_projections": True, "overrides": {"stem": {"n_ranges": 3}}},
                  "--dry-run")
    assert ("projections", "stem") in planned(r.stdout)  # asked for: they are projected too
    r = snakemake(work, {**config, "overrides": {"stem": {"display_px": 48}}}, "--dry-run")
    # the figures (and the occlusion rows its gallery pages copy) of that layer
    assert planned(r.stdout) == {("grids", "stem"), ("gallery_layer", "stem"), ("gallery_report", ""),
                                 ("all", "")}


def test_every_input_from_outside_results_is_compared(run, tmp_path):
    work, config, _ = run
    folder = Path(config["dataset"]["path"])
    extra = folder / "cats; rm -rf ~" / "new.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(extra)
    r = snakemake(work, config, "--dry-run")
    assert ("dataset", "") in planned(r.stdout) and "Params have changed" in r.stdout, r.stdout[-2000:]
    extra.unlink()  # the same listing again: nothing to do
    r = snakemake(work, config, "--dry-run")
    assert "Nothing to be done" in r.stdout + r.stderr
    weights = Path(config["model"]["weights"])
    stat = weights.stat()
    weights.touch()  # a new weights file at the same path
    try:
        r = snakemake(work, config, "--dry-run")
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    jobs = planned(r.stdout)
    assert ("activations", "") in jobs and ("classes", "") in jobs
    assert ("dataset", "") not in jobs and ("layers", "") not in jobs  # the table needs no weights


def test_a_damaged_shard_stops_the_run_naming_it_and_forcerun_recovers_identical_tables(run, tmp_path):
    work, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    res = res_of(copy)
    shard = res / "activations/block3/shard-001.h5"
    before = pd.read_parquet(res / "topk/block3.parquet")
    with h5py.File(shard, "r+") as f:
        f["max"][2, 5] = 1e30
    r = snakemake(copy, config, res.relative_to(copy).as_posix() + "/topk/block3.parquet")
    assert r.returncode != 0
    log = (res / "logs/topk/block3.log").read_text()
    rel = "results/images/efficientnet_lite0/activations/block3/shard-001.h5"
    assert f"{rel}: its values are not the ones it was written with; rebuild it with: snakemake --forcerun {rel}" in log
    assert "Traceback" not in log
    r = snakemake(copy, config, "--forcerun", rel, "--", "results/images/efficientnet_lite0/topk/block3.parquet")
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(res / "topk/block3.parquet"), before)


def test_one_layers_figure_builds_that_layers_chain_only(tmp_path):
    config = {"dataset": {"name": "sample", "max_images": 12}, "layers": LAYERS, "device": "cpu"}
    r = snakemake(tmp_path, config, "--dry-run", "results/sample/efficientnet_lite0/grids/block3.png")
    assert r.returncode == 0, r.stderr[-3000:]
    assert planned(r.stdout) == {("dataset", ""), ("layers", ""), ("activations", "")} | {
        (s, "block3") for s in ("topk", "shown", "ranges", "patches", "projections", "verify", "occlusion",
                                "grids")}
    assert not (tmp_path / "results").exists()
    r = snakemake(tmp_path, config, "--dry-run",
                  "results/sample/efficientnet_lite0/grids/block3-occlusion.png")
    assert r.returncode == 0, r.stderr[-3000:]
    assert planned(r.stdout) == {("dataset", ""), ("layers", ""), ("activations", "")} | {
        (s, "block3") for s in ("topk", "shown", "ranges", "patches", "projections", "verify", "occlusion",
                                "grids")}


def test_a_bad_config_fails_before_any_job_in_one_line(tmp_path):
    r = snakemake(tmp_path, {"layers": ["stem", "blockX"]}, "--dry-run")
    assert r.returncode != 0
    assert "config key 'layers': unknown layer(s) 'blockX'" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Lints for" not in r.stdout + r.stderr
