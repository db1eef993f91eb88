"""The images exactly as the network sees them: EXIF-oriented, RGB, cropped to the manifest's box,
shorter side resized to the model's `resize_size`, centre-cropped to `input_size` — one function,
`load_image`, used by every stage, so that every stage sees bit-identical pixels.

Two ways to get them (`inputs:` in the config):
- stream: `DecodedImages` decodes from the source files on demand; inference decodes its shard
  with parallel workers (`decoded_batches`); no copy of the dataset is written.
- store: `write_inputs` writes each shard once to `inputs/shard-XXX.h5` (`images` N×H×W×3 uint8,
  `image_id` (N,), stamped with its provenance); `StoredImages` reads it."""
from __future__ import annotations

import functools
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterator

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path, check_free_space
from .geometry import resized_crop
from .progress import Progress
from .provenance import Digest, StaleFileError, manifest_sha256, open_checked, stamp

log = logging.getLogger("unitscope")

RESAMPLE = {"bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input."""

    resize_size: int
    input_size: int
    resample: str = "bicubic"
    decode: str = "full"  # full: what the reference preprocessing sees; fast: JPEG draft decode

    @classmethod
    def of(cls, spec) -> "Preprocessing":
        return cls(spec.resize_size, spec.input_size, spec.resample, getattr(spec, "decode", "full"))


def shard_range(n_images: int, shard: int, shards: int) -> tuple[int, int]:
    """The contiguous image_id range [lo, hi) of shard `shard` out of `shards`."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} outside 0..{shards - 1}")
    return shard * n_images // shards, (shard + 1) * n_images // shards


def shard_rows(manifest: pd.DataFrame, shard: int, shards: int) -> pd.DataFrame:
    """The manifest rows of one shard: for tar shards the images of that tar, otherwise a
    contiguous range of image ids."""
    if "shard" in manifest and manifest["shard"].notna().any():
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} outside 0..{shards - 1}")
        return manifest[manifest["shard"] == shard]
    lo, hi = shard_range(len(manifest), shard, shards)
    return manifest.iloc[lo:hi]


def _opened(row):
    """The image bytes a manifest row names: a file, or a member inside a tar (the tar checked to
    be the one the manifest was made from)."""
    offset = getattr(row, "member_offset", None)
    if offset is None or pd.isna(offset):
        return open(row.path, "rb")
    sha = getattr(row, "tar_sha256", None)
    if sha is not None and not pd.isna(sha):
        from .datasets.tars import check_tar

        check_tar(row.path, sha, row.tar_size, row.tar_mtime_ns, row.tar_ctime_ns)
    with open(row.path, "rb") as f:
        f.seek(int(offset))
        data = f.read(int(row.member_size))
    if len(data) != int(row.member_size):
        raise ValueError(f"tar shard {row.path} member {row.member}: {len(data)} of "
                         f"{int(row.member_size)} bytes could be read (the tar is cut short)")
    return io.BytesIO(data)


def _crop_of(row) -> tuple[int, int, int, int] | None:
    left = getattr(row, "crop_left", None)
    if left is None or pd.isna(left):
        return None
    return int(row.crop_left), int(row.crop_top), int(row.crop_right), int(row.crop_bottom)


def load_image(row, prep: Preprocessing) -> np.ndarray:
    """One image (a manifest row: path, optional crop box and tar member) as the network sees it
    (H×W×3 uint8); an image that cannot be read is one error naming the file (and the member)."""
    image, top, left = load_resized(row, prep)
    n = prep.input_size
    return image[top:top + n, left:left + n]


def load_resized(row, prep: Preprocessing) -> tuple[np.ndarray, int, int]:
    """One image resized as the preprocessing resizes it, before its centre crop (H×W×3 uint8),
    and the (top, left) of that crop: what a transformation of the original image starts from."""
    try:
        return _resized(row, prep)
    except (OSError, SyntaxError) as e:
        if getattr(e, "errno", None) in (28, 122):  # a full disk is said as such upstream
            raise
        member = getattr(row, "member", None)
        where = row.path if member is None or pd.isna(member) else f"tar shard {row.path} member {member}"
        raise ValueError(f"{where}: cannot read the image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _resized(row, prep: Preprocessing) -> tuple[np.ndarray, int, int]:
    crop = _crop_of(row)
    if crop is not None:  # crops of one photo follow each other: the photo is decoded once
        im = _whole_image(*_source_key(row)).crop(crop)
    else:
        im = _upright_rgb(row, prep)
    w, h = im.size
    nw, nh, left, top = resized_crop(w, h, prep.resize_size, prep.input_size)
    if (nw, nh) != (w, h):
        # full: Pillow's antialiased resize over all pixels, as torchvision's Resize does;
        # fast: a box reduction first down to 3x the size (Pillow's reducing_gap)
        im = im.resize((nw, nh), RESAMPLE[prep.resample],
                       reducing_gap=3.0 if prep.decode == "fast" else None)
    return np.asarray(im, dtype=np.uint8), top, left


def _upright_rgb(row, prep: Preprocessing | None):
    """The image a row names, EXIF-oriented, as RGB. With `decode: fast` a JPEG is decoded at the
    smallest scale (1/2 … 1/8) that still leaves `prep`'s resize enough pixels; otherwise (and
    for None) at full size, as the model's reference preprocessing sees it."""
    from PIL import Image, ImageOps

    with _opened(row) as fh, Image.open(fh) as im:
        if prep is not None and prep.decode == "fast" and im.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves enough pixels.
            w, h = im.size
            s = prep.resize_size / min(w, h)
            im.draft("RGB", (int(w * s) + 1, int(h * s) + 1))
        if im.getexif().get(0x0112, 1) != 1:  # an EXIF orientation other than upright
            im = ImageOps.exif_transpose(im)
        im = to_rgb(im)
        im.load()
        return im


def _source_key(row) -> tuple:
    """What identifies the bytes a row's file holds (path, member, and the file's size and
    modification time), so that a cached decode is never served for a changed file."""
    st = os.stat(row.path)
    fields = ("member", "member_offset", "member_size", "tar_sha256", "tar_size",
              "tar_mtime_ns", "tar_ctime_ns")
    extra = tuple(None if pd.isna(v := getattr(row, k, None)) else v for k in fields)
    return (row.path, st.st_size, st.st_mtime_ns, *extra)


@functools.lru_cache(maxsize=2)
def _whole_image(path, size, mtime_ns, member, member_offset, member_size, *tar):
    """The whole photo a crop is cut from, decoded once while its crops are read."""
    row = SimpleNamespace(path=path, member=member, member_offset=member_offset,
                          member_size=member_size, **dict(zip(("tar_sha256", "tar_size",
                                                               "tar_mtime_ns", "tar_ctime_ns"), tar)))
    return _upright_rgb(row, None)


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


def decoded_batches(rows: pd.DataFrame, prep: Preprocessing, batch_size: int, workers: int,
                    prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image_ids, N×H×W×3 uint8) batches of the given manifest rows, in order, decoded by a pool
    of `workers` threads (Pillow releases the GIL while decoding) up to `prefetch` batches ahead.
    With prefetch 0 each batch is decoded when asked for, by all workers at once: on a CPU that
    also runs the network, decoding beside it only slows the network's threads down."""
    items = list(rows.itertuples(index=False))
    starts = list(range(0, len(items), batch_size))
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        def submit(s):
            part = items[s:s + batch_size]
            return [r.image_id for r in part], [pool.submit(load_image, r, prep) for r in part]

        pending = [submit(s) for s in starts[:prefetch]]
        for i in range(len(starts)):
            ids, futures = pending.pop(0) if pending else submit(starts[i])
            if prefetch and i + prefetch < len(starts):
                pending.append(submit(starts[i + prefetch]))
            yield np.asarray(ids, np.int64), np.stack([f.result() for f in futures])


def write_inputs(manifest_path: str | os.PathLike, out_path: str | os.PathLike, shard: int,
                 shards: int, prep: Preprocessing, threads: int = 1) -> int:
    """Preprocess the images of one shard into `out_path`; returns how many it holds."""
    manifest = pd.read_parquet(manifest_path)
    rows = shard_rows(manifest, shard, shards)
    n = prep.input_size
    check_free_space(out_path, len(rows) * n * n * 3)
    progress = Progress(len(rows), f"inputs shard {shard}")
    digest = Digest()
    ids = rows["image_id"].to_numpy(dtype=np.int64)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset("images", (len(rows), n, n, 3), dtype="uint8",
                                  chunks=(1, n, n, 3) if len(rows) else None)
        f.create_dataset("image_id", data=ids)
        digest.update("image_id", ids)
        i = 0
        for _, batch in decoded_batches(rows, prep, 16, threads):
            images[i:i + len(batch)] = batch
            digest.update("images", batch)
            i += len(batch)
            progress.update(len(batch))
        stamp(f, "inputs", shard=shard, shards=shards, first_id=int(ids[0]) if len(ids) else -1,
              n_images=len(ids), manifest_sha256=manifest_sha256(manifest_path),
              resize_size=prep.resize_size, input_size=n, resample=prep.resample,
              decode=prep.decode, content_sha=digest.hexdigest())
    log.info("inputs shard %d: %d images", shard, len(rows))
    return len(rows)


class ImageSource:
    """The images of one run by image_id, as the network sees them. Use as a context manager."""

    input_size: int

    def __getitem__(self, image_id: int) -> np.ndarray:
        raise NotImplementedError

    def in_order(self, image_ids) -> list[int]:
        """The ids sorted for the cheapest reading order."""
        return sorted(int(i) for i in image_ids)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecodedImages(ImageSource):
    """Images decoded from their source files through `load_image` (stream mode); the last
    `cache` decoded images are kept (a stage asks for the same image for several units)."""

    def __init__(self, manifest_path: str | os.PathLike, prep: Preprocessing, cache: int = 256):
        self.manifest = pd.read_parquet(manifest_path).set_index("image_id", drop=False)
        self.prep = prep
        self.input_size = prep.input_size
        self._cache: dict[int, np.ndarray] = {}
        self._size = cache

    def __getitem__(self, image_id: int) -> np.ndarray:
        image_id = int(image_id)
        if image_id in self._cache:
            self._cache[image_id] = self._cache.pop(image_id)  # most recently used last
            return self._cache[image_id]
        try:
            row = self.manifest.loc[image_id]
        except KeyError:
            raise ValueError(f"image {image_id} is not in the manifest") from None
        image = load_image(row, self.prep)
        self._cache[image_id] = image
        if len(self._cache) > self._size:
            self._cache.pop(next(iter(self._cache)))
        return image


class StoredImages(ImageSource):
    """Images read from inputs-store shards, each checked to be a shard of this manifest with
    the expected preprocessing."""

    def __init__(self, input_paths: list[str | os.PathLike], manifest_path: str | os.PathLike,
                 prep: Preprocessing):
        self.where: dict[int, tuple[str, int]] = {}
        self._files: dict[str, h5py.File] = {}
        self.input_size = prep.input_size
        want = {"manifest_sha256": manifest_sha256(manifest_path), "input_size": prep.input_size,
                "resize_size": prep.resize_size, "resample": prep.resample, "decode": prep.decode,
                "shards": len(input_paths)}
        for i, p in enumerate(input_paths):
            with open_checked(p, "inputs", {**want, "shard": i}) as f:
                for row, image_id in enumerate(f["image_id"][:]):
                    self.where[int(image_id)] = (str(p), row)

    def __getitem__(self, image_id: int) -> np.ndarray:
        if int(image_id) not in self.where:
            raise ValueError(f"image {image_id} is in no inputs shard")
        path, row = self.where[int(image_id)]
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        try:
            return self._files[path]["images"][row]
        except (OSError, KeyError) as e:
            raise StaleFileError(path, f"is damaged ({e})") from None

    def in_order(self, image_ids) -> list[int]:
        return sorted((int(i) for i in image_ids), key=lambda i: self.where.get(i, ("", i)))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def image_source(manifest_path: str | os.PathLike, prep: Preprocessing,
                 input_paths: list[str | os.PathLike] | None = None) -> ImageSource:
    """StoredImages where inputs-store shards are given, DecodedImages otherwise."""
    if input_paths:
        return StoredImages(input_paths, manifest_path, prep)
    return DecodedImages(manifest_path, prep)


def _moved(path: str, pairs: list[tuple[str, str]]) -> str:
    for src, dst in pairs:
        src, dst = str(src).rstrip("/"), str(dst).rstrip("/")
        # the root itself (a tar shard), a file under it, or a rejected tar member (tar::member)
        if path == src or path.startswith((src + "/", src + "::")):
            return dst + path[len(src):]
    return path


def rooted_paths(paths: "pd.Series", local: list[str], roots: list[str]) -> "pd.Series":
    """Image paths under a job's copies (`local`) of the dataset's image roots as the plan names
    them (`roots`: a storage URL, resources/datasets/<key>, a tar shard): what the manifest
    records, the same in every job wherever its copies lie."""
    pairs = list(zip(local, roots))
    return paths.map(lambda p: _moved(p, pairs))


def localized_manifest(manifest_path: str | os.PathLike, roots: list[str], local: list[str],
                       out: str | os.PathLike) -> str:
    """A job's copy of the manifest, each image path pointing into the job's own copy of its
    image root (wherever the storage plugin put it); the copy carries the original's sha256, so
    the stages' checks see one manifest, and `source_path` keeps each path as the run names it.
    The manifest itself where nothing moved."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .provenance import LOCALIZED_KEY

    pairs = [(r, p) for r, p in zip(roots, local) if str(r).rstrip("/") != str(p).rstrip("/")]
    if not pairs:
        return str(manifest_path)
    table = pq.read_table(manifest_path)
    i = table.schema.get_field_index("path")
    paths = [_moved(p, pairs) for p in table.column("path").to_pylist()]
    # the path as the run names it stays beside the job's own, for what pages show
    table = table.append_column("source_path", table.column("path"))
    table = table.set_column(i, table.schema.field("path"), pa.array(paths, type=table.schema.field("path").type))
    meta = {**(table.schema.metadata or {}), LOCALIZED_KEY: manifest_sha256(manifest_path).encode()}
    pq.write_table(table.replace_schema_metadata(meta), out)
    return str(out)
