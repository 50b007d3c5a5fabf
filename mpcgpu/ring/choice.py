"""Which kernel computes exact ring products on the CPU of this machine, per product shape.

Two exact implementations exist: the float64 limbs of :mod:`mpcgpu.ring.limbs` (what a
GPU needs; on CPUs with fast float64 FMA and slow 64-bit integer multiplies, the faster one
on large cubic products) and the native integer GEMM of :mod:`mpcgpu.ring.native` (faster
where ``vpmullq`` is fast, and on tall or skinny products where the limbs' split and
combination passes weigh most).  Which wins depends on the CPU *and* on the shape (measured
on an Intel Xeon with AVX-512: native 2x faster at 2048 x 500 x 50, 1.45x slower at 1024^3),
so the choice is made per *shape class*:

* the ``ring_kernel`` setting (``MPCGPU_RING_KERNEL=limbs|native``) forces one kernel for
  every shape (``native`` without numba is an error); ``auto`` (the default) measures both
  on a small grid of shape classes (:data:`GRID`: batch, M, K, N) at first use;
* a product takes the winner of the nearest grid point (distance in log2 of each
  dimension, :func:`kernel_for`);
* the measurement is robust against a busy machine: each timing is the minimum of
  :data:`REPEATS` runs, and a run during which this process got less than
  :data:`BUSY_SHARE` of a core (``process_time`` against the wall clock: another process
  held the CPU) is thrown away and run again (at most :data:`RETRIES` times);
* the grid is cached on disk (``$XDG_CACHE_HOME/mpcgpu`` or ``~/.cache/mpcgpu``: the
  ``cache_home`` setting), keyed by the CPU model and flags, the versions of numpy, numba
  and mpcgpu, the native kernels' revision and the limb steps in use (fused or array), so it
  runs once per machine and software set (the ranks of one machine take turns through a
  file lock: one calibrates, the others read its result).

Both kernels give the same bits, so the three parties need not agree on the choice.
The GPU back end always uses the limbs (cuBLAS has no integer GEMM); a GPU integer
kernel would be a third entry here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time

import numpy as np

from mpcgpu.errors import BackendError
from mpcgpu import settings

ENV = "MPCGPU_RING_KERNEL"
KERNELS = ("limbs", "native")
#: the calibration grid: (batch, M, K, N) shape classes; two sizes per dimension (short and
#: tall products, short and long reductions, narrow and wide outputs) and one batched
#: product of small matrices (attention heads).  The sum of one run of each point and kernel
#: is about 0.35 s on the AMD EPYC (Zen 3, AVX2) here; a calibration takes 2-3 runs each
GRID = tuple((1, m, k, n) for m in (128, 512) for k in (256, 1024) for n in (64, 512)) + ((16, 128, 64, 128),)
#: each timing is the minimum of this many runs, or of two that agree within :data:`AGREE`
REPEATS = 3
AGREE = 0.03
#: a run during which this process had less than this share of one core was disturbed
BUSY_SHARE = 0.8
#: ... and is run again; at most this many disturbed runs per timing
RETRIES = 2
#: bumped whenever the grid or the cache format change (part of the cache key)
GRID_REVISION = 2
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
    return os.path.join(
        cache_home, "mpcgpu", "ring-kernel-grid.json"
    )  # (ring-kernel.json: one kernel per machine, before)


def _key(limb_steps: str = "array") -> str:
    from mpcgpu._version import __version__

    try:
        import numba

        numba_version = numba.__version__
    except Exception:
        numba_version = "none"
    from mpcgpu.ring.native import REVISION
    from mpcgpu.ring.threads import APPLIED

    text = (
        f"{cpu_signature()} | numpy {np.__version__} | numba {numba_version} | mpcgpu {__version__}"
        f" | native kernels r{REVISION} | limb steps {limb_steps} | grid r{GRID_REVISION} | threads {APPLIED}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _operands(rng, shape):
    b, m, k, n = shape
    lead = (b,) if b > 1 else ()
    return (
        rng.integers(0, 2**64, lead + (m, k), dtype=np.uint64),
        rng.integers(0, 2**64, lead + (k, n), dtype=np.uint64),
    )


def timed(fn, *args, repeats: int = REPEATS, retries: int = RETRIES) -> float:
    """Seconds of ``fn(*args)``: the minimum of ``repeats`` undisturbed runs, or of the first
    two that agree within :data:`AGREE` (a run in which this process had less than
    :data:`BUSY_SHARE` of a core is run again, but at most ``retries`` disturbed runs in all,
    which bounds the cost on a loaded machine; if every run was disturbed, the minimum of
    them)."""
    best, clean, disturbed, tries = math.inf, 0, math.inf, 0
    while clean < repeats and tries < retries:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(*args)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if cpu >= BUSY_SHARE * wall:
            agree = clean and abs(wall - best) <= AGREE * min(wall, best)
            best, clean = min(best, wall), clean + 1
            if agree:
                break
        else:
            disturbed, tries = min(disturbed, wall), tries + 1
    return best if clean else disturbed


def measure(kernels: dict, grid=GRID, repeats: int = REPEATS) -> list:
    """``[{"shape": [batch, M, K, N], name: seconds, ..., "kernel": fastest}]`` over ``grid``;
    ``kernels``: ``{name: matmul(a, b)}``."""
    rng = np.random.default_rng(0)
    warm = _operands(rng, (1, 8, 8, 8))
    for fn in kernels.values():
        fn(*warm)  # compile (or load the compiled kernels); a slow first run of a shape is
        # one of the timed runs, whose minimum counts
    rows = []
    for shape in grid:
        a, b = _operands(rng, shape)
        row = {"shape": list(shape)}
        for name, fn in kernels.items():
            row[name] = timed(fn, a, b, repeats=repeats)
        row["kernel"] = min(kernels, key=lambda name: row[name])
        rows.append(row)
    return rows


def kernel_for(current: dict, batch: int, m: int, k: int, n: int) -> str:
    """The kernel of a product of ``batch`` (M x K) @ (K x N) under choice ``current``: the
    forced / only kernel, or the winner of the nearest grid point (log2 distance)."""
    grid = current.get("grid")
    if not grid:
        return current["kernel"]
    here = [math.log2(max(1, v)) for v in (batch, m, k, n)]
    best = min(grid, key=lambda row: sum((h - math.log2(max(1, v))) ** 2 for h, v in zip(here, row["shape"])))
    return best["kernel"]


def describe(current: dict) -> list:
    """Lines for ``mpcgpu info``: the choice and, calibrated, the grid as a table."""
    lines = [f"CPU ring products: {current['kernel']} ({current['why']}); override with {ENV}=limbs|native"]
    if current.get("grid"):
        lines.append("  batch x M x K x N        limbs ms  native ms  chosen")
        for row in current["grid"]:
            shape = " x ".join(str(v) for v in row["shape"])
            lines.append(f"  {shape:<22} {1e3 * row['limbs']:>9.2f} {1e3 * row['native']:>10.2f}  {row['kernel']}")
    return lines


def choice(kernels: dict, current=None, limb_steps: str = "array") -> dict:
    """``{"kernel": "limbs"|"native"|"per shape", "why": ..., "grid": [...]|None}`` for this process
    (:func:`kernel_for` picks from it per product).

    ``kernels``: ``{"limbs": matmul, "native": matmul}`` to measure (see :func:`measure`);
    ``current``: the :class:`~mpcgpu.settings.Settings` (default: this process's);
    ``limb_steps``: the name of the limbs' split/combination steps (part of the cache key)."""
    global _CHOICE
    if _CHOICE is not None:
        return _CHOICE
    from mpcgpu.ring import native

    current = current if current is not None else settings.active()
    forced = current.ring_kernel
    if forced not in KERNELS + ("auto",):
        raise BackendError(f"{ENV}={forced!r}: choose limbs, native or auto")
    if forced == "limbs":
        _CHOICE = {"kernel": "limbs", "why": f"forced by {ENV}", "grid": None}
    elif forced == "native":
        if not native.available():
            raise BackendError(f"{ENV}=native but {native.why_not()}")
        _CHOICE = {"kernel": "native", "why": f"forced by {ENV}", "grid": None}
    elif not native.available():
        _CHOICE = {"kernel": "limbs", "why": native.why_not(), "grid": None}
    else:
        _CHOICE = _cached_or_measured(kernels, current.cache_home, limb_steps)
    return _CHOICE


def _summary(grid) -> str:
    won = {row["kernel"] for row in grid}
    return won.pop() if len(won) == 1 else "per shape"


def _read_cache(path, key):
    try:
        with open(path) as fh:
            cached = json.load(fh)
        if cached.get("key") == key and cached.get("grid"):
            grid = cached["grid"]
            return {"kernel": _summary(grid), "why": f"calibrated on this machine (cached in {path})", "grid": grid}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


class _Lock:
    """An exclusive lock on ``path`` (``fcntl.flock``): the ranks of one machine starting
    together calibrate once, one at a time, instead of three times on shared cores (the
    others wait, asleep, then read the cache).  No lock where it cannot be taken."""

    def __init__(self, path):
        self.path, self.fh = path, None

    def __enter__(self):
        try:
            import fcntl

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fh = open(self.path, "a")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except (ImportError, OSError):
            self.fh = None
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # releases the lock


def _cached_or_measured(kernels, cache_home: str, limb_steps: str) -> dict:
    path, key = _cache_path(cache_home), _key(limb_steps)
    found = _read_cache(path, key)
    if found is not None:
        return found
    with _Lock(path + ".lock"):
        found = _read_cache(path, key)  # another rank of this machine calibrated meanwhile
        if found is not None:
            return found
        t0 = time.perf_counter()
        grid = measure(kernels)
        spent = time.perf_counter() - t0
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.partial"
            with open(tmp, "w") as fh:
                json.dump({"key": key, "grid": grid, "seconds": spent, "cpu": cpu_signature()[:200]}, fh)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: measure again next time
    why = f"calibrated on this machine just now, in {spent:.1f} s"
    return {"kernel": _summary(grid), "why": why, "grid": grid}


def reset():
    """Forget the choice (tests; a changed environment variable)."""
    global _CHOICE
    _CHOICE = None


__all__ = ["ENV", "KERNELS", "GRID", "choice", "measure", "timed", "kernel_for", "describe", "cpu_signature", "reset"]
