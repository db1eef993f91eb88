"""Sections planning and listing: snakemake --dry-run planning of 1,400 shards x 5 layers (< 15 s);
the folder dataset's fingerprint (path, size, mtime of every file, taken at every parse) for
100,000 files (<= 3 s)."""
from __future__ import annotations

import time
from pathlib import Path

from harness import snakemake


def bench_planning(tmp: Path, shards: int = 1400) -> dict:
    import tarfile

    work = tmp / "plan"
    work.mkdir()
    tarfile.open(work / "a.tar", "w").close()  # a url dataset: no image count known to cap shards
    config = {"dataset": {"name": "url", "url": (work / "a.tar").as_uri()}, "shards": shards}
    t = time.perf_counter()
    snakemake(work, config, "--dry-run")
    return {"shards": shards, "layers": 5, "s": time.perf_counter() - t}


def bench_listing(tmp: Path, files: int = 100_000) -> dict:
    """The fingerprint of a folder dataset (relative path, size, mtime of every image file), taken
    at every parse of the workflow: its cost for `files` files in folders of 100."""
    from unitscope.datasets.index import folder_listing

    root = tmp / "folder"
    for i in range(files):
        if i % 100 == 0:
            sub = root / f"class-{i // 100:04d}"
            sub.mkdir(parents=True)
        (sub / f"img-{i:06d}.jpg").write_bytes(b"")
    folder_listing(root)  # warm the directory cache, as the parse after the first one finds it
    t = time.perf_counter()
    _, count = folder_listing(root)
    return {"files": count, "s": time.perf_counter() - t}


def rows(p: dict) -> list:
    return [(f"dry-run planning, {p['shards']:,} shards x {p['layers']} layers",
             f"{p['s']:.1f} s", "< 15 s", p["s"] < 15)]


def listing_rows(f: dict) -> list:
    return [(f"folder dataset fingerprint (every parse), {f['files']:,} files",
             f"{f['s']:.2f} s", "<= 3 s", f["s"] <= 3)]
