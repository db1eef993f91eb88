"""Tar shards are read in place, so the manifest records what each tar was when it was indexed:
its sha256 (of the content, streamed once by the dataset job) with its size, modification and
status-change times. A job that reads members checks the tar first: equal size and times cost one
`stat`; any difference (a `cp` over it keeps no ctime, whatever `touch -r` does to the mtime)
costs a full re-hash, and a different digest stops the job naming the tar. Checks are remembered
per process for the stat they were made at."""
from __future__ import annotations

import functools
import os

from .download import file_digest


class TarChangedError(ValueError):
    """A tar shard's content is not the one the manifest was made from."""


def tar_stamp(path: str | os.PathLike) -> tuple[str, int, int, int]:
    """(sha256, size, mtime_ns, ctime_ns) of a tar, refused if it changed while being hashed."""
    before = os.stat(path)
    digest = file_digest(path)
    after = os.stat(path)
    stat = (after.st_size, after.st_mtime_ns, after.st_ctime_ns)
    if (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != stat:
        raise TarChangedError(f"tar shard {path} changed while it was being read; index it again")
    return (digest, *stat)


@functools.lru_cache(maxsize=4096)
def _checked(path: str, sha256: str, recorded: tuple[int, int, int], now: tuple[int, int, int]) -> None:
    if now == recorded:
        return
    digest = file_digest(path)
    if digest != sha256:
        raise TarChangedError(f"tar shard {path} is not the one the dataset was indexed from "
                              f"(sha256 {digest[:16]}…, the manifest says {sha256[:16]}…)")


def check_tar(path: str, sha256: str, size: int, mtime_ns: int, ctime_ns: int) -> None:
    """Raise TarChangedError (saying how to index it again) unless `path` holds the content the
    manifest recorded."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TarChangedError(f"tar shard {path} is gone") from None
    try:
        _checked(path, sha256, (int(size), int(mtime_ns), int(ctime_ns)),
                 (st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except TarChangedError as e:
        raise TarChangedError(f"{e}; index it again: snakemake --forcerun "
                              f"results/<dataset>/manifest.parquet") from None
