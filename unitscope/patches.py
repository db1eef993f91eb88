"""Cut each top-k patch from the very pixels the network saw (the inputs store), at the unit's
true receptive-field box. Parts of the box outside the image are filled with neutral gray and
marked False in the mask; the patch is never shifted to fit.

Patches file (`patches/L.h5`), one entry per top-k row, in the top-k table's order:
`unit`, `rank`, `image_id` (P,), `box` (P×4: y0, x0, y1, x1 in input pixels), `jpeg` (P,
variable-length uint8: the RGB patch as a JPEG, quality 95, no chroma subsampling), `mask`
(P×h×w bool: True where the pixel comes from the image). Attributes: `rf_size` (h, w of the
true box), `size` (stored h, w), `scale` (stored / true; 1 unless the box is larger than
`patch_max_px`). `read_patch` decodes one entry."""
from __future__ import annotations

import io
import logging
import os

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .inputs import InputImages
from .progress import Progress

log = logging.getLogger("unitscope")

GRAY = 128


def crop_box(image: np.ndarray, box: tuple[int, int, int, int],
             fill=GRAY) -> tuple[np.ndarray, np.ndarray]:
    """The box (y0, x0, y1, x1; may reach outside) of an H×W×C image, padded with `fill` (neutral
    gray), and the mask of the pixels that come from the image."""
    y0, x0, y1, x1 = box
    h, w = image.shape[:2]
    patch = np.full((y1 - y0, x1 - x0, image.shape[2]), fill, dtype=image.dtype)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        mask[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = True
    return patch, mask


def crop_box_scaled(image: np.ndarray, box: tuple[int, int, int, int],
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`crop_box` shrunk to `size` (h, w), resizing only the part inside the image: the same
    picture as shrinking the padded crop, at the cost of the image part alone."""
    from PIL import Image

    y0, x0, y1, x1 = box
    h, w = image.shape[:2]
    sy, sx = size[0] / (y1 - y0), size[1] / (x1 - x0)
    patch = np.full((*size, 3), GRAY, dtype=np.uint8)
    mask = np.zeros(size, dtype=bool)
    iy0, ix0, iy1, ix1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if iy1 > iy0 and ix1 > ix0:
        dy0, dx0 = round((iy0 - y0) * sy), round((ix0 - x0) * sx)
        dy1, dx1 = max(dy0 + 1, round((iy1 - y0) * sy)), max(dx0 + 1, round((ix1 - x0) * sx))
        part = Image.fromarray(np.ascontiguousarray(image[iy0:iy1, ix0:ix1]))
        patch[dy0:dy1, dx0:dx1] = np.asarray(part.resize((dx1 - dx0, dy1 - dy0), Image.LANCZOS))
        mask[dy0:dy1, dx0:dx1] = True
    return patch, mask


def stored_size(rf_size: tuple[int, int], patch_max_px: int) -> tuple[tuple[int, int], float]:
    """(h, w) a patch is stored at and its scale: true size up to `patch_max_px`, else shrunk so
    that the longer side is `patch_max_px`."""
    h, w = rf_size
    scale = min(1.0, patch_max_px / max(h, w))
    return (max(1, round(h * scale)), max(1, round(w * scale))), scale


def encode_jpeg(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as JPEG bytes: quality 95, no chroma subsampling (small patches keep
    their colours)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=0)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def write_entries(f: h5py.File, table: pd.DataFrame, boxes: np.ndarray,
                  jpegs: list[np.ndarray]) -> None:
    """The datasets patches and projections files share: unit, rank, image_id, box, jpeg."""
    jpeg = f.create_dataset("jpeg", (len(table),), dtype=h5py.vlen_dtype(np.uint8))
    for i, data in enumerate(jpegs):
        jpeg[i] = data
    for name in ("unit", "rank", "image_id"):
        f.create_dataset(name, data=table[name].to_numpy(np.int64))
    f.create_dataset("box", data=boxes)


def cut_patches(topk_path: str | os.PathLike, input_paths: list[str | os.PathLike],
                out_path: str | os.PathLike, patch_max_px: int = 128) -> int:
    """Write the patches file for one layer's top-k table; returns the number of patches."""
    if patch_max_px < 1:
        raise ValueError(f"patch_max_px must be at least 1, got {patch_max_px}")
    table = pd.read_parquet(topk_path)
    boxes = table[["y0", "x0", "y1", "x1"]].to_numpy(np.int64)
    rf = (int(boxes[0, 2] - boxes[0, 0]), int(boxes[0, 3] - boxes[0, 1])) if len(table) else (1, 1)
    (sh, sw), scale = stored_size(rf, patch_max_px)
    progress = Progress(len(table), f"patches {table['layer'].iat[0] if len(table) else ''}",
                        unit="patches")
    jpegs: list[np.ndarray] = [np.zeros(0, np.uint8)] * len(table)
    masks = np.zeros((len(table), sh, sw), dtype=bool)
    with InputImages(input_paths) as images:
        missing = sorted(set(int(i) for i in table["image_id"]) - set(images.where))
        if missing:
            raise ValueError(f"image_ids {missing[:5]} of {topk_path} are in no inputs shard")
        by_image = table.groupby("image_id").indices
        for image_id in images.in_storage_order(by_image):  # one read per image, in order
            image = images[image_id]
            for i in by_image[image_id]:
                if scale < 1.0:
                    patch, mask = crop_box_scaled(image, tuple(boxes[i]), (sh, sw))
                else:
                    patch, mask = crop_box(image, tuple(boxes[i]))
                jpegs[i] = encode_jpeg(patch)
                masks[i] = mask
                progress.update(1)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        write_entries(f, table, boxes, jpegs)
        f.create_dataset("mask", data=masks, compression="gzip",
                         chunks=(1, sh, sw) if len(table) else None)
        f.attrs.update(rf_size=rf, size=(sh, sw), scale=scale, patch_max_px=patch_max_px,
                       layer=str(table["layer"].iat[0]) if len(table) else "")
    log.info("patches: %d at %d×%d px (true RF %d×%d, scale %.3f)", len(table), sh, sw, *rf, scale)
    return len(table)


def read_patches(path: str | os.PathLike, indices) -> list[np.ndarray]:
    """The RGB images of several entries of a patches (or projections) file, one file open."""
    from PIL import Image

    with h5py.File(path, "r") as f:
        data = f["jpeg"]
        return [np.asarray(Image.open(io.BytesIO(data[i].tobytes())).convert("RGB"))
                for i in indices]


def read_patch(path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB h×w×3 uint8, mask h×w bool) of entry `index` of a patches file (or of a
    projections file, which has no mask: None)."""
    from PIL import Image

    with h5py.File(path, "r") as f:
        data = f["jpeg"][index]
        mask = f["mask"][index] if "mask" in f else None
    return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB")), mask


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """unit, rank, image_id, y0, x0, y1, x1 of every entry of a patches file (row = entry index)."""
    with h5py.File(path, "r") as f:
        box = f["box"][:]
        return pd.DataFrame({"unit": f["unit"][:], "rank": f["rank"][:],
                             "image_id": f["image_id"][:], "y0": box[:, 0], "x0": box[:, 1],
                             "y1": box[:, 2], "x1": box[:, 3]})
