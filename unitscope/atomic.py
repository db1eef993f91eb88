"""Write-then-rename, so that no reader (or rerun) ever sees a half-written output.

A stage writes to `.<name>.tmp-<host>-<pid>` beside the output and renames it when complete; on
any error the temporary file is removed, and a full disk is reported as one line naming the
output. Temporary files left by a killed process (SIGKILL leaves no chance to clean up) are
removed the next time the same output is written."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

HOST = socket.gethostname().replace("-", "_") or "host"


class DiskFullError(OSError):
    """No space left on the device an output is written to."""

    def __init__(self, path: str | os.PathLike, detail: str = ""):
        super().__init__(errno.ENOSPC, f"no space left on device writing {path}{detail}")

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also as HDF5 reports it (a RuntimeError or OSError whose text
    carries the errno message)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


def _alive(host: str, pid: int) -> bool:
    if host != HOST:
        return False  # another machine's leftover: Snakemake runs one job per output at a time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of `path` whose writer is no longer running; returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    for entry in path.parent.iterdir():
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None:
            continue
        host, _, pid = entry.name[len(prefix):].rpartition("-")
        if pid.isdigit() and not _alive(host, int(pid)):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    return removed


def check_free_space(path: str | os.PathLike, nbytes: int) -> None:
    """DiskFullError before writing `nbytes` to `path` when its filesystem has less free."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    need = int(nbytes * 1.02) + (4 << 20)
    if free < need:
        raise DiskFullError(path, f" (it needs about {need / 2**20:.0f} MiB, "
                                  f"{free / 2**20:.0f} MiB are free)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed.
    Works for a file or a folder (an existing folder at `path` is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{HOST}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(path) from None
        raise
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()
