"""Resident memory of this process: the current size, the peak, and a reset of the peak.

Linux reports both in ``/proc/self/status`` (``VmRSS``, ``VmHWM``); writing ``5`` to
``/proc/self/clear_refs`` resets the peak to the current size, so the peak of one
phase (sharing, one layer, one forward pass) can be read on its own.  Elsewhere the
peak is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (never reset) and the current
size is unknown (``None``).  Used by ``benchmarks/memory.py``; ``mpcgpu bench`` can
print :func:`peak_bytes` per party.
"""

from __future__ import annotations

import resource
import sys


def _status(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_bytes():
    """Resident set size now (bytes), or None where the system does not say."""
    return _status("VmRSS")


def peak_bytes() -> int:
    """Largest resident set size since the start of the process or the last :func:`reset_peak`."""
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, kB elsewhere


def reset_peak() -> bool:
    """Start a new peak at the current size (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


__all__ = ["current_bytes", "peak_bytes", "reset_peak"]
