"""Indexing: usable images go to the manifest, broken ones to the rejects table with a reason."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.datasets import Candidate
from unitscope.datasets.index import folder_candidates, index_images
from unitscope.datasets.sample import PHOTOS, sample_candidates
from unitscope.datasets.sources import candidates
from unitscope.inputs import Preprocessing, load_image


def load(path, crop, resize, size):
    """load_image of a manifest-like row."""
    row = pd.Series({"path": str(path), "crop_left": crop[0] if crop else None,
                     "crop_top": crop[1] if crop else None, "crop_right": crop[2] if crop else None,
                     "crop_bottom": crop[3] if crop else None})
    return load_image(row, Preprocessing(resize, size))


def jpeg_bytes(size=(40, 30), color=(200, 30, 30), mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_broken_files_are_set_aside_with_the_reason(tmp_path):
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "cats" / "good.jpg").write_bytes(jpeg_bytes())
    Image.new("L", (20, 10), 7).save(root / "dogs" / "grey.png")
    Image.new("P", (20, 10)).save(root / "dogs" / "palette.gif")
    good = jpeg_bytes((200, 200))
    (root / "cats" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    (root / "dogs" / "truncated.png").write_bytes(png.getvalue()[:-200])
    (root / "cats" / "notes.jpg").write_text("this is not an image")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    manifest = index_images(folder_candidates(root), tmp_path / "m.parquet", tmp_path / "r.parquet")
    rejected = pd.read_parquet(tmp_path / "r.parquet")
    reasons = dict(zip(rejected["path"].str.rsplit("/", n=1).str[-1], rejected["reason"]))
    assert set(reasons) == {"truncated.jpg", "truncated.png", "notes.jpg", "empty.jpg"}
    assert reasons["empty.jpg"] == "empty file"
    assert "not an image" in reasons["notes.jpg"]
    assert "cannot decode" in reasons["truncated.png"]
    assert list(manifest.columns[:6]) == ["image_id", "path", "group", "label", "width", "height"]
    assert list(manifest["image_id"]) == [0, 1, 2]
    assert sorted(manifest["label"]) == ["cats", "dogs", "dogs"]
    assert pd.read_parquet(tmp_path / "m.parquet").equals(manifest)
    # every manifest image loads as RGB, whatever its mode
    for p in manifest["path"]:
        assert load(p, None, 32, 32).shape == (32, 32, 3)


def test_an_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.jpg").write_text("nope")
    with pytest.raises(ValueError, match="no usable image"):
        index_images(folder_candidates(tmp_path / "imgs"), tmp_path / "m.parquet", tmp_path / "r.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_candidates(tmp_path / "nowhere")


def test_exif_rotation_is_applied_to_size_and_pixels(tmp_path):
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    manifest = index_images([Candidate(str(p), "g")], tmp_path / "m.parquet", tmp_path / "r.parquet")
    assert (manifest["width"].iat[0], manifest["height"].iat[0]) == (20, 60)
    # turned upright, the red stripe is at the top: the top 10 rows are red, the rest blue
    top = load(p, (0, 0, 20, 20), 20, 20).astype(int)
    assert top.shape == (20, 20, 3)
    assert (top[:8, :, 0] > 200).all() and (top[:8, :, 2] < 60).all()
    assert (top[12:, :, 2] > 200).all() and (top[12:, :, 0] < 60).all()


def test_sample_dataset_is_deterministic_and_grouped_by_photo(tmp_path):
    a, b = sample_candidates(), sample_candidates()
    assert a == b and 200 <= len(a) <= 600
    assert {c.group for c in a} == {n.rsplit(".", 1)[0] for n in PHOTOS}
    sub = candidates({"name": "sample", "max_images": 20, "seed": 3})
    assert sub == candidates({"name": "sample", "max_images": 20, "seed": 3}) and len(sub) == 20
    assert pd.Series([c.group for c in sub]).value_counts().tolist() == [3, 3, 3, 3, 2, 2, 2, 2]
    manifest = index_images(sub, tmp_path / "m.parquet", tmp_path / "r.parquet", threads=2)
    assert len(manifest) == 20 and (manifest["width"] == manifest["height"]).all()
    assert (manifest["crop_right"] - manifest["crop_left"] == manifest["width"]).all()


def test_cmyk_jpeg_and_16_bit_png_become_correct_rgb(tmp_path):
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red
    grey16 = np.full((20, 20), 32896, dtype=np.uint16)  # half of 65535: should be ~128, not 255
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    manifest = index_images(folder_candidates(tmp_path), tmp_path / "m.parquet", tmp_path / "r.parquet")
    assert len(manifest) == 3
    red = load(tmp_path / "cmyk.jpg", None, 16, 16).astype(int)
    assert red[..., 0].min() > 200 and red[..., 1].max() < 60
    grey = load(tmp_path / "grey16.png", None, 16, 16).astype(int)
    assert np.abs(grey - 128).max() <= 2
    green = load(tmp_path / "alpha.png", None, 16, 16).astype(int)
    assert (green[..., 1] == 200).all() and (green[..., 0] == 0).all()


def test_decompression_bomb_is_set_aside(tmp_path, monkeypatch):
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 300×300 is then a "bomb"
    Image.new("RGB", (50, 50)).save(tmp_path / "small.png")
    index_images(folder_candidates(tmp_path), tmp_path / "m.parquet", tmp_path / "r.parquet")
    rejected = pd.read_parquet(tmp_path / "r.parquet")
    assert list(rejected["path"].str.rsplit("/", n=1).str[-1]) == ["big.png"]
    assert "decompression bomb" in rejected["reason"].iat[0]


def test_subset_is_deterministic_and_class_stratified():
    from unitscope.datasets.sources import subset

    cands = [Candidate(f"/d/{c}/{i}.jpg", f"{c}{i}", c) for c in "abc" for i in range(10 if c != "c" else 2)]
    s1 = subset(cands, max_images=7, per_class=None, seed=5)
    assert s1 == subset(cands, max_images=7, per_class=None, seed=5)
    counts = pd.Series([c.label for c in s1]).value_counts().to_dict()
    assert counts == {"a": 3, "b": 2, "c": 2} or counts == {"a": 2, "b": 3, "c": 2}
    s2 = subset(cands, max_images=None, per_class=4, seed=1)
    assert pd.Series([c.label for c in s2]).value_counts().to_dict() == {"a": 4, "b": 4, "c": 2}
    assert [c.path for c in s2] == sorted([c.path for c in s2], key=[c.path for c in cands].index)
