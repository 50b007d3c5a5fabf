"""A small progress line for long runs (stderr, only on one party, only when it is a terminal
or when asked)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, every: float = 0.5):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.start, self.every, self._last = 0, time.perf_counter(), every, 0.0

    def update(self, n: int = 1, extra: str = ""):
        self.done += n
        now = time.perf_counter()
        if not self.enabled or (now - self._last < self.every and self.done < self.total):
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if self.done >= self.total else ""
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                          f"{elapsed:6.1f}s elapsed, {eta:6.1f}s left {extra}{end}")
        self.stream.flush()
