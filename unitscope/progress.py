"""Progress of a long stage as log lines: done/total, items per second, time left."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("unitscope")


class Progress:
    """Call `update(n)` as work gets done; logs a line at most every `every_s` seconds and at the end."""

    def __init__(self, total: int, what: str, unit: str = "images", every_s: float = 5.0):
        self.total, self.what, self.unit, self.every_s = total, what, unit, every_s
        self.done = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
                f"{rate:.1f} {self.unit}/s, {elapsed:.1f} s elapsed, ~{left:.0f} s left")
