"""The gallery in headless Chromium: every link resolves, every image loads, a layer page with
512 units renders and sorts, and a label of <script>alert(1)</script> shows as text."""
from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from unitscope.gallery import build_gallery
from unitscope.patches import cut_patches

REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script>"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("UNITSCOPE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip("no chromium on this machine (make test installs it)")
    pytest.importorskip("playwright")
    return path


def fake_results(tmp: Path, units: int = 512, k: int = 2, n_images: int = 6) -> Path:
    """A results/D/M folder for one layer of `units` units, built with the real stages' writers."""
    res = tmp / "results" / "D" / "M"
    (res / "topk").mkdir(parents=True)
    (res / "units").mkdir()
    (res / "patches").mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(res / "inputs.h5", "w") as f:
        f["images"] = rng.integers(0, 255, (n_images, 32, 32, 3), dtype=np.uint8)
        f["image_id"] = np.arange(n_images)
    pd.DataFrame({"image_id": np.arange(n_images), "path": [f"/data/img{i} <b>.jpg" for i in range(n_images)],
                  "group": [str(i) for i in range(n_images)],
                  "label": [EVIL] + [f"class {i}" for i in range(1, n_images)],
                  "width": 32, "height": 32}).to_parquet(tmp / "results" / "D" / "manifest.parquet")
    pd.DataFrame([{"layer": "conv", "module": "features.1", "channels": units, "height": 8,
                   "width": 8, "units": units, "activations": units * 64, "rf_size": 7,
                   "rf_stride": 4, "rf_offset": 2.5, "rf_start": -1, "rf_size_x": 7,
                   "rf_stride_x": 4, "rf_offset_x": 2.5, "rf_start_x": -1}]).to_parquet(res / "layers.parquet")
    rows = []
    for u in range(units):
        for r in range(k):
            y, x = rng.integers(0, 8, 2)
            rows.append(("conv", u, r, (u + r) % n_images, float(10 - r + u / 1000), y, x,
                         -1 + 4 * y, -1 + 4 * x, 6 + 4 * y, 6 + 4 * x))
    pd.DataFrame(rows, columns=["layer", "unit", "rank", "image_id", "activation", "y", "x", "y0",
                                "x0", "y1", "x1"]).to_parquet(res / "topk" / "conv.parquet")
    pd.DataFrame({"layer": "conv", "unit": np.arange(units), "max": rng.random(units) * 10,
                  "mean": 1.0, "q50": 1.0, "q90": 2.0, "q99": 3.0, "frac_active": 0.5}).to_parquet(
        res / "units" / "conv.parquet")
    cut_patches(res / "topk" / "conv.parquet", [res / "inputs.h5"], res / "patches" / "conv.h5")
    return res


def test_gallery_links_images_sorting_and_escaping_in_chromium(tmp_path):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    res = fake_results(tmp_path)
    index = build_gallery(res, tmp_path / "results/D/manifest.parquet", [str(res / "inputs.h5")],
                          res / "gallery", title="test gallery")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        seen, todo, broken_links, broken_images = set(), [index.as_uri()], [], []
        linked_files = set()
        while todo:
            url = todo.pop()
            if url in seen:
                continue
            seen.add(url)
            page.goto(url)
            broken_images += [(url, s) for s in page.evaluate(
                """async () => { const imgs = [...document.images];
                   imgs.forEach(i => i.loading = 'eager');
                   await Promise.all(imgs.map(i => i.complete ? null :
                       new Promise(r => { i.onload = i.onerror = r; })));
                   return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src); }""")]
            for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                target = Path(urllib.parse.unquote(urllib.parse.urlparse(href).path))
                if not target.exists():
                    broken_links.append((url, href))
                elif target.suffix == ".html":
                    todo.append(href)
                else:
                    linked_files.add(target.name)
        assert len(seen) == 1 + 1 + 512  # index, the layer page, every unit page
        assert broken_links == [] and broken_images == []
        assert len(linked_files) == 6  # every unit page links to its source images
        # the 512-unit layer page renders every thumbnail and sorts by max activation
        page.goto((res / "gallery/conv/index.html").as_uri())
        assert page.locator("#units > a").count() == 512
        page.click("text=max activation")
        maxima = page.eval_on_selector_all("#units > a", "els => els.map(e => +e.dataset.max)")
        assert maxima == sorted(maxima, reverse=True)
        page.click("text=unit id")
        assert page.eval_on_selector_all("#units > a", "els => els.map(e => +e.dataset.unit)") == list(range(512))
        shots = REPO / "results" / "test-artifacts"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "gallery-layer.png"))
        # unit 0's top image carries the hostile label: shown as text, never run
        page.goto((res / "gallery/conv/unit-0000.html").as_uri())
        assert EVIL in page.inner_text("body")
        assert "<b>.jpg" in page.inner_text("body")
        page.screenshot(path=str(shots / "gallery-unit.png"), full_page=True)
        browser.close()
    assert dialogs == []
