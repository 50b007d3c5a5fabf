"""Threads per rank (mpcgpu.ring.threads): the decision is a pure function of the ranks on the
machine and its cores; the setting forces it; applying it reaches NumPy's OpenBLAS and numba."""

from __future__ import annotations

import ctypes

import pytest

from mpcgpu.errors import MPCError
from mpcgpu.ring import threads
from mpcgpu.settings import resolve


@pytest.mark.parametrize(
    "ranks, cores, expect",
    [
        (3, 2, 1),  # ranks outnumber cores: one thread each
        (3, 3, 1),
        (3, 4, 1),
        (3, 6, 2),
        (3, 16, 5),
        (1, 2, 2),  # a party alone on its machine: all the cores
        (1, 16, 16),
        (2, 16, 8),
        (0, 4, 4),  # nonsense counts still give at least one thread
        (5, 0, 1),
    ],
)
def test_share_of_the_cores(ranks, cores, expect):
    assert threads.threads_per_rank(ranks, cores) == expect


def test_forced_count_wins():
    assert threads.threads_per_rank(3, 2, forced=4) == 4
    assert threads.threads_per_rank(1, 64, forced=1) == 1


def test_setting():
    assert resolve(env={}).threads is None
    assert resolve(env={"MPCGPU_THREADS": "auto"}).threads is None
    assert resolve(env={"MPCGPU_THREADS": " 3 "}).threads == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(MPCError, match="MPCGPU_THREADS"):
            resolve(env={"MPCGPU_THREADS": bad})


def test_apply_sets_both_and_describe_says_so(monkeypatch):
    monkeypatch.setattr(threads, "APPLIED", None)
    seen = []
    monkeypatch.setattr(threads, "set_blas_threads", lambda n: seen.append(("blas", n)) or "OpenBLAS")
    monkeypatch.setattr(threads, "set_numba_threads", lambda n: seen.append(("numba", n)) or "numba")
    decision = threads.apply(3, cores=2)
    assert seen == [("blas", 1), ("numba", 1)] and decision["threads"] == 1 and threads.APPLIED == 1
    assert threads.describe(decision) == "1 per rank (3 ranks on 2 cores; OpenBLAS; numba)"
    decision = threads.apply(3, forced=2, cores=2)
    assert seen[-2:] == [("blas", 2), ("numba", 2)]
    assert threads.describe(decision) == "2 per rank (MPCGPU_THREADS=2; OpenBLAS; numba)"


def _openblas_threads():
    for line in open("/proc/self/maps"):
        if "scipy_openblas" in line:
            lib = ctypes.CDLL(line.split()[-1])
            fn = getattr(lib, "scipy_openblas_get_num_threads64_", None)
            if fn is not None:
                fn.restype = ctypes.c_int
                return fn
    return None


def test_blas_threads_reach_numpys_openblas():
    import numpy  # noqa: F401

    get = _openblas_threads()
    if get is None:
        pytest.skip("NumPy does not bundle scipy-openblas here")
    before = get()
    try:
        how = threads.set_blas_threads(1)
        assert how in ("OpenBLAS", "threadpoolctl") and get() == 1
    finally:
        threads.set_blas_threads(before)
    assert get() == before


def test_numba_threads():
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    try:
        assert threads.set_numba_threads(1) == "numba" and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
