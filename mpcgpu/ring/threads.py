"""Threads per rank: each party's BLAS and numba threads get its share of the machine's cores.

Three ranks on a 2-core machine, each with BLAS threads for the whole machine, oversubscribe
it: each GEMM's threads wait on the others' (measured: a 5 ms product took 640 ms, and the
secret 1024 matmul scattered from 0.69 to 1.23 s).  At start-up each party decides, alone
(it changes no message), how many threads its kernels use:

* the ``threads`` setting (``MPCGPU_THREADS=N``) forces ``N``;
* ``auto`` (the default): ``cores // ranks on this machine``, at least 1 -- all cores where a
  party has its own machine, one each where the ranks outnumber the cores
  (:func:`threads_per_rank`, a pure function of the two counts).

Applied (:func:`apply`) to the BLAS of NumPy -- through ``threadpoolctl`` where it is
installed, else to NumPy's bundled OpenBLAS directly (its ``openblas_set_num_threads``,
found among the libraries of this process) -- and to numba (``numba.set_num_threads``, where
numba is imported).  The runtime's banner and ``mpcgpu info`` show the decision.
"""

from __future__ import annotations

import os
import sys

ENV = "MPCGPU_THREADS"
#: the names of OpenBLAS's thread-count setter, NumPy's bundled build first
_OPENBLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def cores_here() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_rank(ranks_here: int, cores: int, forced: int | None = None) -> int:
    """Threads for each rank's kernels: ``forced`` if given, else the rank's share of the
    cores, ``cores // ranks_here``, at least 1 (``ranks_here``: ranks on this machine)."""
    if forced is not None:
        return max(1, int(forced))
    return max(1, int(cores) // max(1, int(ranks_here)))


def _openblas_setter():
    """``set(n)`` of the OpenBLAS loaded in this process (NumPy's), or None."""
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                return fn
    return None


def set_blas_threads(n: int) -> str:
    """Limit NumPy's BLAS to ``n`` threads; returns how (or why not)."""
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        threadpool_limits(limits=n, user_api="blas")
        return "threadpoolctl"
    setter = _openblas_setter()
    if setter is None:
        return "not set (no OpenBLAS found; OPENBLAS_NUM_THREADS/OMP_NUM_THREADS before start decide)"
    setter(n)
    return "OpenBLAS"


def set_numba_threads(n: int) -> str:
    """Limit numba's parallel kernels to ``n`` threads (where numba is imported)."""
    numba = sys.modules.get("numba")
    if numba is None:
        return "numba not loaded"
    try:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception as exc:  # a threading layer that cannot start
        return f"numba not set ({exc.__class__.__name__})"
    return "numba"


APPLIED = None
"""The threads :func:`apply` set in this process (None: not decided; part of the ring kernels'
calibration key, since the limbs' GEMMs use them and the native kernel does not)."""


def apply(ranks_here: int, forced: int | None = None, cores: int | None = None) -> dict:
    """Decide and apply this rank's threads; ``{"threads", "ranks_here", "cores", "forced", "how"}``."""
    global APPLIED
    cores = cores_here() if cores is None else cores
    n = threads_per_rank(ranks_here, cores, forced)
    how = [set_blas_threads(n), set_numba_threads(n)]
    APPLIED = n
    return {"threads": n, "ranks_here": ranks_here, "cores": cores, "forced": forced, "how": how}


def describe(decision: dict) -> str:
    """``"1 per rank (3 ranks on 2 cores; BLAS: OpenBLAS, numba)"``."""
    why = (
        f"{ENV}={decision['forced']}"
        if decision.get("forced") is not None
        else f"{decision['ranks_here']} rank{'s' if decision['ranks_here'] != 1 else ''} on {decision['cores']} cores"
    )
    how = "; ".join(decision.get("how") or ())
    return f"{decision['threads']} per rank ({why}{'; ' + how if how else ''})"


__all__ = ["ENV", "cores_here", "threads_per_rank", "set_blas_threads", "set_numba_threads", "apply", "describe"]
