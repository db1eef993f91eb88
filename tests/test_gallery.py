"""The gallery in headless Chromium: every link resolves, every image loads, a layer page with
96 units renders and sorts, unit pages show the histogram, range examples, bottom-k and labels,
image pages are reached from every patch, and a label of <script>alert(1)</script> shows as text."""
from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import affine_boxes, layer_frame
from test_patches_and_grids import ArrayImages
from unitscope.activation_file import write_layer_file
from unitscope.examples import layer_examples
from unitscope.gallery import LayerFiles, build_gallery
from unitscope.inputs import Preprocessing
from unitscope.patches import cut_patches
from unitscope.provenance import file_sha256
from unitscope.ranges import histogram_and_ranges
from unitscope.shown import write_shown
from unitscope.topk import select_topk

EVIL = "<script>alert(1)</script>"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("UNITSCOPE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip("no chromium on this machine (make test installs it)")
    pytest.importorskip("playwright")
    return path


def fake_results(tmp: Path, units: int = 96, n_images: int = 6):
    """The files of one layer of `units` units, written by the real stages' writers."""
    res = tmp / "results" / "D" / "M"
    res.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n_images, 32, 32, 3), dtype=np.uint8)
    manifest = tmp / "results" / "D" / "manifest.parquet"
    pd.DataFrame({"image_id": np.arange(n_images), "path": [f"/data/img{i} <b>.jpg" for i in range(n_images)],
                  "group": [str(i) for i in range(n_images)],
                  "label": [EVIL] + [f"class {i % 2}" for i in range(1, n_images)],
                  "width": 32, "height": 32}).to_parquet(manifest)
    pd.DataFrame({"path": [], "reason": []}).to_parquet(tmp / "results" / "D" / "rejected.parquet")
    table = layer_frame("conv", units, 8, 8, 7, 4, -1)
    table["input_h"] = table["input_w"] = 32
    table.to_parquet(res / "layers.parquet")
    affine_boxes(8, 8, 7, 4, -1).to_parquet(res / "rf.parquet")
    values = rng.normal(1.0, 2.0, (n_images, units)).astype(np.float32)
    values[0, 0] = 100.0  # unit 0's top image carries the hostile label
    ys, xs = rng.integers(0, 8, (2, n_images, units))
    shard = res / "shard-000.h5"
    write_layer_file(shard, "conv", np.arange(n_images),
                     {"max": values, "argmax_y": ys, "argmax_x": xs, "min": values - 3,
                      "argmin_y": xs, "argmin_x": ys}, manifest_sha256=file_sha256(manifest))
    f = LayerFiles(topk=str(res / "topk.parquet"), units=str(res / "units.parquet"),
                   shown=str(res / "shown.json"), patches=str(res / "patches.h5"),
                   rf=str(res / "rf.parquet"), activations=[str(shard)],
                   bottomk=str(res / "bottomk.parquet"), hist=str(res / "hist.parquet"),
                   ranges=str(res / "ranges.parquet"))
    select_topk([shard], manifest, res / "layers.parquet", f.rf, "conv", k=9, topk_out=f.topk,
                units_out=f.units, bottomk_out=f.bottomk)
    write_shown(f.units, f.shown, [0, 1, 2], "top", 0)
    histogram_and_ranges([shard], manifest, res / "layers.parquet", f.rf, f.units, "conv",
                         [0, 1, 2], 3, 1, hist_out=f.hist, ranges_out=f.ranges)
    cut_patches(layer_examples(f.topk, f.bottomk, f.ranges), ArrayImages(images), f.patches, layer="conv")
    return res, manifest, f, images


def test_gallery_links_images_sorting_and_escaping_in_chromium(tmp_path):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    res, manifest, files, images = fake_results(tmp_path)
    index = build_gallery(res / "layers.parquet", manifest, {"conv": files}, ArrayImages(images),
                          Preprocessing(37, 32), res / "gallery", title="test gallery",
                          rejected=0, method="guided_backprop", k={"conv": 9})
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
        # index, the layer page, every unit page, and a page per image the patches show
        assert len(seen) == 1 + 1 + 96 + 6
        assert broken_links == [] and broken_images == []
        assert len(linked_files) == 6  # every unit page links to its source images
        # the layer page renders every thumbnail and sorts
        page.goto((res / "gallery/conv/index.html").as_uri())
        assert page.locator("#units > a").count() == 96
        page.click("text=max activation")
        maxima = page.eval_on_selector_all("#units > a", "els => els.map(e => +e.dataset.max)")
        assert maxima == sorted(maxima, reverse=True)
        page.click("text=label purity")
        purity = page.eval_on_selector_all("#units > a", "els => els.map(e => +e.dataset.purity)")
        assert purity == sorted(purity, reverse=True)
        page.click("text=unit id")
        assert page.eval_on_selector_all("#units > a", "els => els.map(e => +e.dataset.unit)") == list(range(96))
        page.screenshot(path=str(tmp_path / "gallery-layer.png"))
        # unit 0's page: histogram, bottom-k, range examples, labels; the hostile label as text
        page.goto((res / "gallery/conv/unit-0000.html").as_uri())
        body = page.inner_text("body")
        for heading in ("Histogram of its per-image maxima", "Top 6 images (6 of k=9 available)", "Most negative (bottom-k)",
                        "Across its range of activations", "Labels of its top images"):
            assert heading in body, heading
        assert page.locator("svg.hist rect").count() == 40
        assert page.locator("svg.hist line").count() >= 2  # the examples marked on it
        assert EVIL in body and "<b>.jpg" in body
        assert "in the file: y" in body
        page.screenshot(path=str(tmp_path / "gallery-unit.png"), full_page=True)
        # an image page: the units that fire most on it, their boxes drawn
        page.goto((res / "gallery/images/0000001.html").as_uri())
        assert page.locator(".frame .box").count() == 5 and "of its max" in page.inner_text("body")
        browser.close()
    assert dialogs == []


def test_pages_escape_dataset_text_by_default_and_layers_build_alone(tmp_path):
    """Without a browser: the templates escape a hostile label and file name; one layer's folder
    is written by itself, the index (inputs, image pages) by itself."""
    from unitscope.gallery import build_index, build_layer_pages

    res, manifest, files, images = fake_results(tmp_path, units=4)
    gallery = res / "gallery"
    build_layer_pages(res / "layers.parquet", "conv", files, manifest, Preprocessing(37, 32),
                      gallery / "conv", "guided_backprop", None, 9)
    assert sorted(p.name for p in gallery.iterdir()) == ["conv"]
    unit = (gallery / "conv" / "unit-0000.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in unit and EVIL not in unit
    assert "img0 &lt;b&gt;.jpg" in unit
    build_index(res / "layers.parquet", manifest, {"conv": files}, ArrayImages(images),
                Preprocessing(37, 32), gallery, "a <i>title</i>")
    assert sorted(p.name for p in gallery.iterdir()) == ["conv", "images", "index.html", "inputs", "style.css"]
    assert "a &lt;i&gt;title&lt;/i&gt;" in (gallery / "index.html").read_text()
    image_page = (gallery / "images" / "0000000.html").read_text()
    assert "&lt;script&gt;" in image_page and EVIL not in image_page
