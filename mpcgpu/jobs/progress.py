"""A small progress line for long runs (stderr, on one party).

On a terminal the line is redrawn in place; in a log file (SLURM, CI) a new line
is written at most every 10 seconds or 10% of the work, so logs stay short."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, every: float = 0.5):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.start, self._last = 0, time.perf_counter(), 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if self.tty else 10.0
        self._next_fraction = 0.1

    def update(self, n: int = 1, extra: str = ""):
        self.done += n
        now = time.perf_counter()
        if not self.enabled:
            return
        due = now - self._last >= self.every
        if not self.tty:
            due = due or self.done / self.total >= self._next_fraction
        if not due and self.done < self.total:
            return
        self._next_fraction = self.done / self.total + 0.1
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if self.done >= self.total or not self.tty else ""
        start = "\r" if self.tty else ""
        self.stream.write(f"{start}{self.label} [{bar}] {self.done}/{self.total} "
                          f"{elapsed:6.1f}s elapsed, {eta:6.1f}s left {extra}{end}")
        self.stream.flush()
