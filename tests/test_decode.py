"""Preprocessing fidelity: by default the network sees what the model's reference preprocessing
gives (full decode, antialiased resize, centre crop) — torchvision's Resize + CenterCrop of the same
interpolation, within 1 grey level; `decode: fast` (JPEG draft mode) is opt-in and differs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.torchvision_zoo import models
from unitscope.geometry import resized_crop, source_box
from unitscope.inputs import Preprocessing, load_image


def _photo(path, size, seed=0):
    """A camera-size JPEG with detail at every scale (noise over smooth gradients)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (w + h))], -1)
    img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=92)
    return path


@pytest.mark.parametrize("size", [(3000, 2000), (1999, 2601), (640, 480)])
@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_default_decode_equals_torchvisions_resize_and_centre_crop(tmp_path, size, resample):
    models()  # imports torchvision the way the zoo does
    transforms = pytest.importorskip("torchvision.transforms")
    path = _photo(tmp_path / "photo.jpg", size)
    prep = Preprocessing(256, 224, resample)
    ours = load_image(SimpleNamespace(path=str(path)), prep)
    mode = {"bilinear": transforms.InterpolationMode.BILINEAR,
            "bicubic": transforms.InterpolationMode.BICUBIC}[resample]
    ref = transforms.Compose([transforms.Resize(256, interpolation=mode),
                              transforms.CenterCrop(224)])(Image.open(path).convert("RGB"))
    ref = np.asarray(ref)
    assert ours.shape == ref.shape == (224, 224, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_fast_decode_is_opt_in_and_differs(tmp_path):
    path = _photo(tmp_path / "photo.jpg", (3000, 2000))
    full = load_image(SimpleNamespace(path=str(path)), Preprocessing(256, 224, "bilinear"))
    fast = load_image(SimpleNamespace(path=str(path)), Preprocessing(256, 224, "bilinear", "fast"))
    assert Preprocessing(256, 224).decode == "full"
    assert full.shape == fast.shape
    assert np.abs(full.astype(int) - fast.astype(int)).max() > 1  # draft mode is not the reference


@pytest.mark.parametrize("w,h", [(3000, 2000), (2000, 3000), (257, 999), (500, 500), (301, 256)])
def test_crop_arithmetic_matches_the_box_mapping(w, h):
    """resized_crop is what both the decoder and source_box use: the network input's pixel box
    (0, 0, 224, 224) maps back to the centre of the file with the same offsets."""
    nw, nh, left, top = resized_crop(w, h, 256, 224)
    assert min(nw, nh) == 256 and max(nw, nh) == int(256 * max(w, h) / min(w, h))
    y0, x0, y1, x1 = source_box((0, 0, 224, 224), (w, h), None, 256, 224)
    assert x0 == pytest.approx(left * w / nw) and y0 == pytest.approx(top * h / nh)
    assert x1 - x0 == pytest.approx(224 * w / nw) and y1 - y0 == pytest.approx(224 * h / nh)


def test_model_decode_setting_is_checked():
    from unitscope.models import ModelConfig

    assert ModelConfig.from_dict({"decode": "fast"}).spec().decode == "fast"
    with pytest.raises(ValueError, match="model.decode 'draft'.*full, fast"):
        ModelConfig.from_dict({"decode": "draft"}).spec()
