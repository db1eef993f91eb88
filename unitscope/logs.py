"""Logging of a stage: everything it prints (Python and C libraries alike) goes to its log file,
and a user's mistake (a bad value, a missing or stale file, a full disk) ends the stage with one
line saying what is wrong, not a traceback."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

from .atomic import is_disk_full

log = logging.getLogger("unitscope")

# exceptions that describe a user's mistake or a broken input; anything else is a bug and keeps
# its traceback
USER_ERRORS = (ValueError, OSError, RuntimeError, KeyError)


def configure(stream=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=stream or sys.stderr, force=True)


def peak_memory_mb() -> float:
    """This process's peak resident memory (the kernel's exact figure, not a sample)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def exit_now(status: int) -> None:
    """End the process at once, skipping exit handlers: after a write failed on a full disk, the
    HDF5 library keeps the file's unwritable state and crashes (SIGSEGV) when it cleans up at
    exit; the output was already removed, so nothing is lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and e.args:
        text = f"missing {e.args[0]!r}"
    return " ".join(text.split())


@contextlib.contextmanager
def stage_log(path: str | os.PathLike, stage: str = "") -> Iterator[None]:
    """Send stdout and stderr (file descriptors 1 and 2, so C libraries' output too) to `path`;
    a user error is logged as one line and exits with status 1."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stage = stage or os.path.splitext(os.path.basename(sys.argv[0] or "stage"))[0]
    with open(path, "w") as f:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            configure()
            started = time.perf_counter()
            try:
                yield
                log.info("%s done in %.1f s; peak memory %.0f MB", stage,
                         time.perf_counter() - started, peak_memory_mb())
            except USER_ERRORS as e:
                log.error("%s", one_line(e))
                if is_disk_full(e):
                    exit_now(1)
                raise SystemExit(1) from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
