"""Decode every candidate image once, in parallel threads; usable ones become the manifest, the
rest go to the rejects table with the reason."""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING


from ..atomic import atomic_path
from ..progress import Progress
from . import Candidate

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("unitscope")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def image_files(root: str | os.PathLike) -> list[tuple[str, os.stat_result]]:
    """(path relative to `root`, stat) of every file with an image suffix under `root`, sorted;
    folder symlinks are followed once per real folder, so a link loop (or two links to one
    folder) lists each file once; the folder listing and the index both read this."""
    root = str(root)
    seen = {os.path.realpath(root)}
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel)) as it:
                entries = list(it)
        except OSError as e:
            raise OSError(f"dataset folder {os.path.join(root, rel)!r} cannot be listed "
                          f"({e.strerror or e})") from None
        for e in entries:
            path = os.path.join(rel, e.name) if rel else e.name
            try:
                if e.is_dir(follow_symlinks=True):
                    real = os.path.realpath(e.path)
                    if real not in seen:
                        seen.add(real)
                        stack.append(path)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                    out.append((path, e.stat()))
            except OSError:  # a dangling or looping link: no file to read
                continue
    return sorted(out, key=lambda item: Path(item[0]).parts)


def folder_listing(root: str | os.PathLike) -> tuple[str, int]:
    """(sha256 of the sorted listing, number of image files) of every file with an image suffix
    under `root`: relative path, size and modification time in nanoseconds."""
    h = hashlib.sha256()
    files = image_files(root)
    for rel, st in files:
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest(), len(files)


def folder_candidates(root: str | os.PathLike) -> list[Candidate]:
    """Every file under `root` with an image suffix (see `image_files`), sorted; label and group
    = the sub-folder directly under `root` (none for files at the top), so class folders become
    labels."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist")
    out = []
    for rel, _ in image_files(root):
        parts = Path(rel).parts
        label = parts[0] if len(parts) > 1 else None
        out.append(Candidate(str(root / rel), group=rel, label=label))
    return out


def inspect(c: Candidate) -> tuple[int, int] | str:
    """(width, height) of the usable image a candidate names, or the reason it is not usable."""
    from PIL import Image, UnidentifiedImageError

    if c.reject:
        return c.reject
    try:
        if (c.size if c.offset is not None else os.path.getsize(c.path)) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with c.open() as f, Image.open(f) as im:
                size = im.size
                if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation turns 90°
                    size = size[::-1]
                im.draft("RGB", (8, 8))  # JPEG: decode at 1/8 scale, still reads all the data
                im.load()
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression bomb: {e}"
    except (OSError, SyntaxError, ValueError) as e:
        return f"cannot decode: {e}"
    if c.crop is not None:
        left, top, right, bottom = c.crop
        if not (0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]):
            return f"crop {c.crop} outside the {size[0]}x{size[1]} image"
        return right - left, bottom - top
    return size


def index_images(candidates: list[Candidate], manifest_out: str | os.PathLike,
                 rejected_out: str | os.PathLike, threads: int = 1) -> pd.DataFrame:
    """Write the manifest and rejects tables; returns the manifest. Fails if no image is usable."""
    import pandas as pd  # here, not at the top: the plan imports this module at every parse

    progress = Progress(len(candidates), "index")
    results = []
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        for s in range(0, len(candidates), 1024):  # a bounded number of tasks in flight
            part = candidates[s:s + 1024]
            results += pool.map(inspect, part)
            progress.update(len(part))
    ok = [(c, r) for c, r in zip(candidates, results) if not isinstance(r, str)]
    bad = [(c, r) for c, r in zip(candidates, results) if isinstance(r, str)]
    for c, r in bad:
        log.warning("set aside %s: %s", c.path, r)
    rejected = pd.DataFrame({"path": [c.path + (f"::{c.member}" if c.member else "") for c, _ in bad],
                             "reason": [r for _, r in bad]},
                            columns=["path", "reason"]).astype("string")
    if not ok:
        raise ValueError(f"the dataset has no usable image ({len(candidates)} candidates, "
                         f"{len(bad)} rejected)")

    def crop_col(i: int) -> pd.Series:
        return pd.array([c.crop[i] if c.crop else None for c, _ in ok], dtype="Int64")

    manifest = pd.DataFrame({
        "image_id": pd.array(range(len(ok)), dtype="int64"),
        "path": pd.array([c.path for c, _ in ok], dtype="string"),
        "group": pd.array([c.group for c, _ in ok], dtype="string"),
        "label": pd.array([c.label for c, _ in ok], dtype="string"),
        "width": pd.array([wh[0] for _, wh in ok], dtype="int64"),
        "height": pd.array([wh[1] for _, wh in ok], dtype="int64"),
        "crop_left": crop_col(0), "crop_top": crop_col(1),
        "crop_right": crop_col(2), "crop_bottom": crop_col(3),
        "member": pd.array([c.member for c, _ in ok], dtype="string"),
        "member_offset": pd.array([c.offset for c, _ in ok], dtype="Int64"),
        "member_size": pd.array([c.size for c, _ in ok], dtype="Int64"),
        "shard": pd.array([c.shard for c, _ in ok], dtype="Int64"),
        "tar_sha256": pd.array([c.stamp[0] if c.stamp else None for c, _ in ok], dtype="string"),
        **{name: pd.array([c.stamp[i] if c.stamp else None for c, _ in ok], dtype="Int64")
           for i, name in ((1, "tar_size"), (2, "tar_mtime_ns"), (3, "tar_ctime_ns"))},
    })
    for table, path in ((manifest, manifest_out), (rejected, rejected_out)):
        with atomic_path(path) as tmp:
            table.to_parquet(tmp, index=False)
    log.info("manifest: %d images from %d groups; %d set aside", len(manifest),
             manifest["group"].nunique(), len(rejected))
    return manifest
