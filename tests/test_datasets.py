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
from unitscope.inputs import load_image


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
        assert load_image(p, None, 32, 32).shape == (32, 32, 3)


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
    top = load_image(str(p), (0, 0, 20, 20), 20, 20).astype(int)
    assert top.shape == (20, 20, 3)
    assert (top[:8, :, 0] > 200).all() and (top[:8, :, 2] < 60).all()
    assert (top[12:, :, 2] > 200).all() and (top[12:, :, 0] < 60).all()


def test_sample_dataset_is_deterministic_and_grouped_by_photo(tmp_path):
    a, b = sample_candidates(), sample_candidates()
    assert a == b and 200 <= len(a) <= 600
    assert {c.group for c in a} == {n.rsplit(".", 1)[0] for n in PHOTOS}
    sub = sample_candidates(max_images=20, seed=3)
    assert sub == sample_candidates(max_images=20, seed=3) and len(sub) == 20
    assert len({c.group for c in sub}) > 3
    manifest = index_images(sub, tmp_path / "m.parquet", tmp_path / "r.parquet", threads=2)
    assert len(manifest) == 20 and (manifest["width"] == manifest["height"]).all()
    assert (manifest["crop_right"] - manifest["crop_left"] == manifest["width"]).all()
