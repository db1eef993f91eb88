"""What every HDF5 file of the pipeline says about itself, and the checks its readers make.

Each file carries attributes: `unitscope_kind` (inputs, activations, patches, projections), the
shard index and count, the image_id range (`first_id`, `n_images`), the sha256 of the manifest it
was made from, the model it was made with (`model_key`) and `content_sha` — a digest of its
datasets, computed while they are written. A reader opens it with `open_checked`, which compares
the attributes with what the reader expects, and recomputes `content_sha` (`Digest`) as it
streams the data. A swapped, duplicated, foreign, truncated or damaged file is then one
`StaleFileError` that names the file and the command that rebuilds it, never a wrong table."""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Iterator

import h5py
import numpy as np

SCHEMA = 1


class StaleFileError(ValueError):
    """A file is not the one its reader expects (stale, foreign, damaged)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        super().__init__(f"{path}: {problem}; rebuild it with: snakemake --forcerun {path}")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a whole file (the manifest every stage records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


LOCALIZED_KEY = b"unitscope.manifest_sha256"


def manifest_sha256(path: str | os.PathLike) -> str:
    """The identity every stage records of the manifest: its file's sha256, or, for a job's copy
    whose image paths point into the job's own copy of a dataset in object storage
    (inputs.localized_manifest), the sha256 of the manifest it was made from."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if LOCALIZED_KEY in meta:
        return meta[LOCALIZED_KEY].decode()
    return file_sha256(path)


class Digest:
    """A digest of named arrays fed in row order, chunk by chunk: the same rows give the same
    digest however they were split."""

    def __init__(self):
        self._parts: dict[str, hashlib.blake2b] = {}

    def update(self, name: str, array: np.ndarray) -> None:
        if np.size(array) == 0:
            return  # no rows: nothing to digest, however the empty array was shaped
        h = self._parts.setdefault(name, hashlib.blake2b(digest_size=16))
        h.update(np.ascontiguousarray(array).tobytes())

    def hexdigest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self._parts):
            h.update(name.encode() + b"\0" + self._parts[name].digest())
        return h.hexdigest()


def stamp(f: h5py.File, kind: str, **attrs) -> None:
    """Write what a file is into its attributes."""
    f.attrs.update(unitscope_kind=kind, unitscope_schema=SCHEMA,
                   **{k: ("" if v is None else v) for k, v in attrs.items()})


def attr(f: h5py.File, name: str):
    v = f.attrs.get(name)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return v


@contextlib.contextmanager
def open_checked(path: str | os.PathLike, kind: str, expect: dict | None = None) -> Iterator[h5py.File]:
    """Open an HDF5 file of the pipeline for reading, checked to be a `kind` file whose
    attributes equal `expect`; any read error inside the block becomes a StaleFileError."""
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise StaleFileError(path, "is missing") from None
    except OSError as e:
        raise StaleFileError(path, f"cannot be read as HDF5 ({_first_line(e)})") from None
    try:
        got = attr(f, "unitscope_kind")
        if got != kind:
            raise StaleFileError(path, f"is not a {kind} file of unitscope (it says {got or 'nothing'})")
        if attr(f, "unitscope_schema") != SCHEMA:
            raise StaleFileError(path, f"was written by another unitscope file format "
                                       f"(schema {attr(f, 'unitscope_schema')}, expected {SCHEMA})")
        for name, want in (expect or {}).items():
            have = attr(f, name)
            if have != want:
                raise StaleFileError(path, f"{name} is {have!r}, expected {want!r}")
        yield f
    except StaleFileError:
        raise
    except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
        raise StaleFileError(path, f"is damaged ({type(e).__name__}: {_first_line(e)})") from None
    finally:
        try:
            f.close()
        except Exception:
            pass


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
