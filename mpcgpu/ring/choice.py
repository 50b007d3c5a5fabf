"""Which kernel computes exact ring products on the CPU of this machine.

Two exact implementations exist: the float64 limbs of :mod:`mpcgpu.ring.limbs` (what a
GPU needs, and the faster one on CPUs whose 64-bit integer multiplies are emulated,
i.e. AVX2) and the native integer GEMM of :mod:`mpcgpu.ring.native` (faster where
``vpmullq`` exists, i.e. AVX-512, by 2-5x on the shapes of the networks here).

:func:`choice` decides once per process:

* the ``ring_kernel`` setting (``MPCGPU_RING_KERNEL=limbs|native``) forces one (``native`` without numba is an
  error); ``auto`` (the default) measures both on a few representative shapes at first
  use and keeps the faster;
* the measurement is cached on disk (``$XDG_CACHE_HOME/mpcgpu`` or
  ``~/.cache/mpcgpu``: the ``cache_home`` setting), keyed by the CPU model and flags and the versions of numpy,
  numba and mpcgpu, so it runs once per machine and software set.

Both kernels give the same bits, so the three parties need not agree on the choice.
The GPU back end always uses the limbs (cuBLAS has no integer GEMM); a GPU integer
kernel would be a third entry here.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time

import numpy as np

from mpcgpu.errors import BackendError
from mpcgpu import settings

ENV = "MPCGPU_RING_KERNEL"
KERNELS = ("limbs", "native")
#: (M, K, N) matrix products and one convolution, like the layers of LeNet/AlexNet/VGG
CALIBRATION_SHAPES = ((2048, 500, 50), (512, 1152, 128), (128, 800, 500))
_CHOICE = None


def cpu_signature() -> str:
    """CPU model and flags (Linux /proc/cpuinfo; the platform elsewhere)."""
    found = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = found.get("model name") or platform.processor() or platform.machine()
    return f"{model} | {' '.join(sorted(found.get('flags', '').split()))}"


def _cache_path(cache_home: str) -> str:
    return os.path.join(cache_home, "mpcgpu", "ring-kernel.json")


def _key() -> str:
    from mpcgpu._version import __version__

    try:
        import numba

        numba_version = numba.__version__
    except Exception:
        numba_version = "none"
    from mpcgpu.ring.native import REVISION

    text = (
        f"{cpu_signature()} | numpy {np.__version__} | numba {numba_version} | mpcgpu {__version__}"
        f" | native kernels r{REVISION}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def measure(kernels: dict, repeats: int = 3) -> dict:
    """Seconds per kernel on :data:`CALIBRATION_SHAPES` (best of ``repeats``);
    ``kernels``: ``{name: matmul(a, b)}``."""
    rng = np.random.default_rng(0)
    times = dict.fromkeys(kernels, 0.0)
    for m, k, n in CALIBRATION_SHAPES:
        a = rng.integers(0, 2**64, (m, k), dtype=np.uint64)
        b = rng.integers(0, 2**64, (k, n), dtype=np.uint64)
        for name, fn in kernels.items():
            fn(a, b)  # compile / warm up
            times[name] += min(_timed(fn, a, b) for _ in range(repeats))
    return times


def _timed(fn, a, b) -> float:
    t0 = time.perf_counter()
    fn(a, b)
    return time.perf_counter() - t0


def choice(kernels: dict, current=None) -> dict:
    """``{"kernel": "limbs"|"native", "why": ..., "seconds": {...}|None}`` for this process.

    ``kernels``: ``{"limbs": matmul, "native": matmul}`` to measure (see :func:`measure`);
    ``current``: the :class:`~mpcgpu.settings.Settings` (default: this process's)."""
    global _CHOICE
    if _CHOICE is not None:
        return _CHOICE
    from mpcgpu.ring import native

    current = current if current is not None else settings.active()
    forced = current.ring_kernel
    if forced not in KERNELS + ("auto",):
        raise BackendError(f"{ENV}={forced!r}: choose limbs, native or auto")
    if forced == "limbs":
        _CHOICE = {"kernel": "limbs", "why": f"forced by {ENV}", "seconds": None}
    elif forced == "native":
        if not native.available():
            raise BackendError(f"{ENV}=native but {native.why_not()}")
        _CHOICE = {"kernel": "native", "why": f"forced by {ENV}", "seconds": None}
    elif not native.available():
        _CHOICE = {"kernel": "limbs", "why": native.why_not(), "seconds": None}
    else:
        _CHOICE = _cached_or_measured(kernels, current.cache_home)
    return _CHOICE


def _cached_or_measured(kernels, cache_home: str) -> dict:
    path, key = _cache_path(cache_home), _key()
    try:
        with open(path) as fh:
            cached = json.load(fh)
        if cached.get("key") == key:
            return {
                "kernel": cached["kernel"],
                "why": f"calibrated on this machine (cached in {path})",
                "seconds": cached["seconds"],
            }
    except (OSError, ValueError, KeyError):
        pass
    seconds = measure(kernels)
    kernel = "native" if seconds["native"] < seconds["limbs"] else "limbs"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.partial"
        with open(tmp, "w") as fh:
            json.dump({"key": key, "kernel": kernel, "seconds": seconds, "cpu": cpu_signature()[:200]}, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measure again next time
    return {"kernel": kernel, "why": "calibrated on this machine just now", "seconds": seconds}


def reset():
    """Forget the choice (tests; a changed environment variable)."""
    global _CHOICE
    _CHOICE = None


__all__ = ["ENV", "KERNELS", "choice", "measure", "cpu_signature", "reset"]
