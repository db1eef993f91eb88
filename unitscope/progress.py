"""Progress of a long stage: done/total, items per second, time left. A bar redrawn in place
when stderr is a terminal; otherwise (a log file) a line every few seconds."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("unitscope")


class Progress:
    """Call `update(n)` as work gets done."""

    def __init__(self, total: int, what: str, unit: str = "images", every_s: float = 5.0):
        self.total, self.what, self.unit = total, what, unit
        self.tty = sys.stderr.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.done = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        finished = self.done >= self.total
        if now - self._last < self.every_s and not finished:
            return
        self._last = now
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total) if self.total else width
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line(now)}"
                             + ("\n" if finished else ""))
            sys.stderr.flush()
        else:
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
                f"{rate:.1f} {self.unit}/s, {elapsed:.1f} s elapsed, ~{left:.0f} s left")
