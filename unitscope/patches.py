"""Cut each shown example's patch from the very pixels the network saw, at the unit's true
receptive-field box. A box may reach outside the image: the patch file keeps the part inside it
(`visible`) and the box, so a figure can draw the patch padded with neutral gray — never shifted —
or, where the field covers the whole input, show what the unit sees at full size.

Patches file (`patches/L.h5`), one entry per example (top-k of every unit, bottom-k of every
unit, activation-range examples of the shown units): `kind` (P,: 0 top, 1 bottom, 2 range),
`unit`, `rank` (the example's place in its list), `image_id`, `box` (P×4: y0, x0, y1, x1 in input
pixels, the unclipped field), `visible` (P×4: the box clipped to the image), `cell` (P×4, only
for layers behind attention: the position's token cell, what the token itself stands for), `jpeg` (P,
variable-length uint8: the visible part as RGB JPEG, quality 95, no chroma subsampling).
Attributes: `shrink` (stored size / true size, 1 unless a visible part is larger than
`patch_max_px`), `input_size`, `layer`. `read_patches` decodes entries; `padded` draws one
with its gray padding."""
from __future__ import annotations

import io
import logging
import os

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .inputs import ImageSource
from .progress import Progress
from .provenance import open_checked, stamp

log = logging.getLogger("unitscope")

GRAY = 128
KINDS = ("top", "bottom", "range")
ENTRY_COLUMNS = ["kind", "unit", "rank", "image_id", "y", "x", "y0", "x0", "y1", "x1"]


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


def visible_box(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of a box inside an image of `size` (H, W); an empty box at the nearest edge when
    nothing of it is inside."""
    y0, x0, y1, x1 = (int(v) for v in box)
    h, w = size
    vy0, vx0 = min(max(y0, 0), h), min(max(x0, 0), w)
    return vy0, vx0, max(vy0, min(y1, h)), max(vx0, min(x1, w))


def stored_shrink(visible: np.ndarray, patch_max_px: int) -> float:
    """One scale for a layer's patches: 1, or what brings the largest visible part to
    `patch_max_px`."""
    if patch_max_px < 1:
        raise ValueError(f"patch_max_px must be at least 1, got {patch_max_px}")
    if len(visible) == 0:
        return 1.0
    largest = int(max((visible[:, 2] - visible[:, 0]).max(), (visible[:, 3] - visible[:, 1]).max()))
    return min(1.0, patch_max_px / max(largest, 1))


def encode_jpeg(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as JPEG bytes: quality 95, no chroma subsampling (small patches keep
    their colours). An empty image is stored as no bytes."""
    from PIL import Image

    if image.size == 0:
        return np.zeros(0, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=95, subsampling=0)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def entry_frame(table: pd.DataFrame) -> pd.DataFrame:
    """kind, unit, rank, image_id of example rows (kind 'top' where the table has none)."""
    out = table.copy()
    if "kind" not in out:
        out["kind"] = "top"
    return out


def write_entries(f: h5py.File, table: pd.DataFrame, boxes: np.ndarray, visible: np.ndarray,
                  jpegs: list[np.ndarray]) -> None:
    """The datasets patches and projections files share."""
    jpeg = f.create_dataset("jpeg", (len(table),), dtype=h5py.vlen_dtype(np.uint8))
    for i, data in enumerate(jpegs):
        jpeg[i] = data
    f.create_dataset("kind", data=np.array([KINDS.index(k) for k in table["kind"]], np.int8))
    for name in ("unit", "rank", "image_id"):
        f.create_dataset(name, data=table[name].to_numpy(np.int64))
    f.create_dataset("box", data=np.asarray(boxes, np.int64).reshape(-1, 4))
    f.create_dataset("visible", data=np.asarray(visible, np.int64).reshape(-1, 4))


CELL = ["cy0", "cx0", "cy1", "cx1"]


def with_cells(entries: pd.DataFrame, rf_path: str | os.PathLike) -> pd.DataFrame:
    """The entries with their position's token cell (cy0, cx0, cy1, cx1 from the rf table) where
    the layer has cells that differ from its fields (attention); unchanged elsewhere."""
    rf = pd.read_parquet(rf_path)
    if "cy0" not in rf or (rf[CELL].to_numpy() == rf[["y0", "x0", "y1", "x1"]].to_numpy()).all():
        return entries
    return entries.merge(rf[["y", "x", *CELL]], on=["y", "x"], how="left", validate="many_to_one")


def cut_patches(entries: pd.DataFrame, images: ImageSource, out_path: str | os.PathLike,
                patch_max_px: int = 128, layer: str = "") -> int:
    """Write the patches file of one layer's examples (columns kind, unit, rank, image_id, y0, x0,
    y1, x1, and the token cell cy0…cx1 where given); returns the number of patches."""
    entries = entry_frame(entries).reset_index(drop=True)
    size = images.input_size
    boxes = entries[["y0", "x0", "y1", "x1"]].to_numpy(np.int64).reshape(-1, 4)
    visible = np.array([visible_box(b, (size, size)) for b in boxes], np.int64).reshape(-1, 4)
    shrink = stored_shrink(visible, patch_max_px)
    progress = Progress(len(entries), f"patches {layer}", unit="patches")
    jpegs: list[np.ndarray] = [np.zeros(0, np.uint8)] * len(entries)
    by_image = entries.groupby("image_id").indices
    for image_id in images.in_order(by_image):  # one read per image
        image = images[image_id]
        encoded: dict[tuple, np.ndarray] = {}  # one encoding per distinct part of the image
        for i in by_image[image_id]:
            part = tuple(int(v) for v in visible[i])
            if part not in encoded:
                vy0, vx0, vy1, vx1 = part
                encoded[part] = encode_jpeg(_shrunk(image[vy0:vy1, vx0:vx1], shrink))
            jpegs[i] = encoded[part]
            progress.update(1)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        write_entries(f, entries, boxes, visible, jpegs)
        if "cy0" in entries:
            f.create_dataset("cell", data=entries[CELL].to_numpy(np.int64))
        stamp(f, "patches", layer=layer, shrink=shrink, input_size=size,
              patch_max_px=patch_max_px)
    log.info("patches of %s: %d (stored at %.3f of their true size)", layer, len(entries), shrink)
    return len(entries)


def _shrunk(part: np.ndarray, shrink: float) -> np.ndarray:
    if shrink >= 1.0 or part.size == 0:
        return part
    from PIL import Image

    h, w = part.shape[:2]
    return np.asarray(Image.fromarray(np.ascontiguousarray(part)).resize(
        (max(1, round(w * shrink)), max(1, round(h * shrink))), Image.LANCZOS))


def read_index(path: str | os.PathLike, kind: str = "patches") -> pd.DataFrame:
    """kind, unit, rank, image_id, box (y0, x0, y1, x1) and visible part (vy0, vx0, vy1, vx1) of
    every entry of a patches (or projections) file, and the token cell (cy0, cx0, cy1, cx1) where
    the file has one; row = entry index."""
    with open_checked(path, kind) as f:
        box, vis = f["box"][:], f["visible"][:]
        cells = {c: f["cell"][:, i] for i, c in enumerate(CELL)} if "cell" in f else {}
        return pd.DataFrame({"kind": [KINDS[k] for k in f["kind"][:]], "unit": f["unit"][:],
                             "rank": f["rank"][:], "image_id": f["image_id"][:],
                             "y0": box[:, 0], "x0": box[:, 1], "y1": box[:, 2], "x1": box[:, 3],
                             "vy0": vis[:, 0], "vx0": vis[:, 1], "vy1": vis[:, 2], "vx1": vis[:, 3],
                             **cells})


def file_attrs(path: str | os.PathLike, kind: str = "patches") -> dict:
    with open_checked(path, kind) as f:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def read_patches(path: str | os.PathLike, indices, kind: str = "patches") -> list[np.ndarray]:
    """The stored RGB images (visible parts) of several entries of a patches or projections file."""
    from PIL import Image

    out = []
    with open_checked(path, kind) as f:
        data = f["jpeg"]
        for i in indices:
            raw = data[int(i)].tobytes()
            out.append(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")) if raw
                       else np.zeros((0, 0, 3), np.uint8))
    return out


def read_patch(path: str | os.PathLike, index: int, kind: str = "patches") -> np.ndarray:
    return read_patches(path, [index], kind)[0]


def padded(image: np.ndarray, box, visible, shrink: float, fill=GRAY) -> tuple[np.ndarray, np.ndarray]:
    """A stored visible part placed in its whole box, gray outside the image, at the stored scale;
    and the mask of the pixels from the image."""
    y0, x0, y1, x1 = (int(v) for v in box)
    vy0, vx0, vy1, vx1 = (int(v) for v in visible)
    h, w = max(1, round((y1 - y0) * shrink)), max(1, round((x1 - x0) * shrink))
    out = np.full((h, w, 3), fill, np.uint8)
    mask = np.zeros((h, w), bool)
    if image.size:
        ty, tx = round((vy0 - y0) * shrink), round((vx0 - x0) * shrink)
        ih, iw = min(image.shape[0], h - ty), min(image.shape[1], w - tx)
        out[ty:ty + ih, tx:tx + iw] = image[:ih, :iw]
        mask[ty:ty + ih, tx:tx + iw] = True
    return out, mask
