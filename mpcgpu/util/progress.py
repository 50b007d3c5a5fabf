"""The one progress line of mpcgpu (stderr, on one party): jobs count steps or images, the
share step counts bytes.

On a terminal the line is redrawn in place (at most every ``every`` seconds); in a log
file (SLURM, CI) a new line is written at most every 10 seconds or 10% of the work, so
logs stay short."""

from __future__ import annotations

import sys
import time


class Progress:
    """``Progress(total, label)``; ``update(n, extra="")`` after each piece of work.

    ``unit`` and ``scale`` format the counts (``unit="MiB", scale=2**20`` for bytes)."""

    def __init__(
        self,
        total: int,
        label: str,
        enabled: bool = True,
        stream=None,
        every: float = 0.5,
        unit: str = "",
        scale: float = 1.0,
    ):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.unit, self.scale = unit, float(scale)
        self.done, self.start, self._last = 0, time.perf_counter(), 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if self.tty else 10.0
        self._next_fraction = 0.1
        self._open = False

    def _count(self, n) -> str:
        if self.scale == 1.0:
            return f"{n}"
        return f"{n / self.scale:,.{0 if self.total / self.scale >= 100 else 2}f}"

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
        filled = int(width * min(self.done, self.total) / self.total)
        bar = "#" * filled + "." * (width - filled)
        finished = self.done >= self.total
        end = "\n" if finished or not self.tty else ""
        start = "\r" if self.tty else ""
        unit = f" {self.unit}" if self.unit else ""
        self.stream.write(
            f"{start}{self.label} [{bar}] {self._count(self.done)}/{self._count(self.total)}{unit} "
            f"{elapsed:6.1f}s elapsed, {eta:6.1f}s left {extra}{end}"
        )
        self.stream.flush()
        self._open = self.tty and not finished

    def close(self):
        """End a line left open on a terminal (work stopped before its total)."""
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
