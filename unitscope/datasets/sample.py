"""The offline default dataset: the colour photographs that ship inside the scikit-image wheel,
cut deterministically into square crops at several scales and positions (group = source photo)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from . import Candidate

# file in skimage/data -> label shown in the gallery
PHOTOS = {
    "astronaut.png": "astronaut",
    "chelsea.png": "cat",
    "coffee.png": "coffee",
    "rocket.jpg": "rocket",
    "motorcycle_left.png": "motorcycle",
    "hubble_deep_field.jpg": "galaxies",
    "ihc.png": "tissue",
    "retina.jpg": "retina",
}
# (side as a fraction of the photo's shorter side, positions per axis)
SCALES = ((1.0, 1), (0.6, 3), (0.4, 4), (0.25, 5))


def skimage_data_dir() -> str:
    """The folder of images inside the installed scikit-image package (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'sample' dataset needs scikit-image installed (pip install scikit-image)")
    return os.path.join(os.path.dirname(spec.origin), "data")


def photo_files() -> list[str]:
    """The photographs the sample dataset is cut from (its inputs outside results/)."""
    folder = skimage_data_dir()
    return [os.path.join(folder, name) for name in PHOTOS]


def crops(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Square crop boxes (left, top, right, bottom) covering a width×height photo at every scale."""
    boxes = []
    short = min(width, height)
    for frac, n in SCALES:
        side = int(round(short * frac))
        xs = np.linspace(0, width - side, n).round().astype(int) if n > 1 else [(width - side) // 2]
        ys = np.linspace(0, height - side, n).round().astype(int) if n > 1 else [(height - side) // 2]
        boxes += [(int(x), int(y), int(x) + side, int(y) + side) for y in ys for x in xs]
    return boxes


def sample_candidates() -> list[Candidate]:
    """Every crop of every photo (label = the photo's subject, group = the photo)."""
    from PIL import Image

    folder = skimage_data_dir()
    out: list[Candidate] = []
    for name, label in PHOTOS.items():
        path = os.path.join(folder, name)
        with Image.open(path) as im:
            width, height = im.size
        group = os.path.splitext(name)[0]
        out += [Candidate(path, group, label, box) for box in crops(width, height)]
    return out
