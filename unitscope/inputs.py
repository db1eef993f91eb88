"""The images exactly as the network sees them: EXIF-oriented, RGB, cropped to the manifest's box,
shorter side resized to the model's `resize_size`, centre-cropped to `input_size`. One HDF5 file per
shard: `images` (N×H×W×3 uint8) and `image_id` (N,). Inference and patch cropping both read it."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .progress import Progress

log = logging.getLogger("unitscope")


RESAMPLE = {"bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


def shard_range(n_images: int, shard: int, shards: int) -> tuple[int, int]:
    """The contiguous image_id range [lo, hi) of shard `shard` out of `shards`."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} outside 0..{shards - 1}")
    return shard * n_images // shards, (shard + 1) * n_images // shards


def load_image(path: str, crop: tuple[int, int, int, int] | None, resize_size: int,
               input_size: int, resample: str = "bicubic") -> np.ndarray:
    """One image as the network sees it (H×W×3 uint8); `resample` names the Pillow filter
    (bilinear, bicubic, lanczos) of the resize the weights were trained with."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if crop is None and im.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves enough pixels.
            w, h = im.size
            s = resize_size / min(w, h)
            im.draft("RGB", (int(w * s) + 1, int(h * s) + 1))
        im = to_rgb(ImageOps.exif_transpose(im))
        if crop is not None:
            im = im.crop(crop)
        w, h = im.size
        s = resize_size / min(w, h)
        nw, nh = max(input_size, round(w * s)), max(input_size, round(h * s))
        im = im.resize((nw, nh), RESAMPLE[resample], reducing_gap=3.0)
        left, top = (nw - input_size) // 2, (nh - input_size) // 2
        im = im.crop((left, top, left + input_size, top + input_size))
        return np.asarray(im, dtype=np.uint8)


def to_rgb(im):
    """Any Pillow image as 8-bit RGB: greyscale, palette, CMYK and alpha images converted (alpha
    dropped), 16- and 32-bit integer images scaled down from their full range, not clipped."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):  # I;16, I;16B, I (PNG 16-bit greyscale arrives as I or I;16)
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr * 255.0 / top + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr * 255.0 / top + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("P", "PA", "LA", "RGBA") or "A" in im.getbands():
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def _crop_of(row) -> tuple[int, int, int, int] | None:
    if pd.isna(row.crop_left):
        return None
    return int(row.crop_left), int(row.crop_top), int(row.crop_right), int(row.crop_bottom)


def write_inputs(manifest_path: str | os.PathLike, out_path: str | os.PathLike, shard: int,
                 shards: int, resize_size: int, input_size: int, threads: int = 1,
                 resample: str = "bicubic") -> int:
    """Preprocess the images of one shard into `out_path`; returns how many it holds."""
    manifest = pd.read_parquet(manifest_path)
    lo, hi = shard_range(len(manifest), shard, shards)
    rows = manifest.iloc[lo:hi]
    progress = Progress(len(rows), f"inputs shard {shard}")
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset("images", (len(rows), input_size, input_size, 3), dtype="uint8",
                                  chunks=(1, input_size, input_size, 3) if len(rows) else None)
        f.create_dataset("image_id", data=rows["image_id"].to_numpy(dtype=np.int64))
        f.attrs.update(resize_size=resize_size, input_size=input_size, shard=shard, shards=shards,
                       resample=resample)

        def work(row):
            return load_image(row.path, _crop_of(row), resize_size, input_size, resample)

        with ThreadPoolExecutor(max(threads, 1)) as pool:
            for i, arr in enumerate(pool.map(work, rows.itertuples(index=False))):
                images[i] = arr
                progress.update(1)
    log.info("inputs shard %d: images %d..%d", shard, lo, hi - 1)
    return len(rows)


class InputImages:
    """The images of an inputs store by image_id, across its shard files (each opened once).
    Use as a context manager; `in_storage_order` sorts ids for sequential reads."""

    def __init__(self, input_paths: list[str | os.PathLike]):
        self.where = input_locations([str(p) for p in input_paths])
        self._files: dict[str, h5py.File] = {}

    def __enter__(self) -> "InputImages":
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self.where

    def __getitem__(self, image_id: int) -> np.ndarray:
        path, row = self.where[int(image_id)]
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        return self._files[path]["images"][row]

    def in_storage_order(self, image_ids) -> list[int]:
        return sorted((int(i) for i in image_ids), key=lambda i: self.where[i])


def input_locations(input_paths: list[str]) -> dict[int, tuple[str, int]]:
    """image_id -> (shard file, row) over a set of input shards."""
    where = {}
    for p in input_paths:
        with h5py.File(p, "r") as f:
            for row, image_id in enumerate(f["image_id"][:]):
                where[int(image_id)] = (p, row)
    return where
