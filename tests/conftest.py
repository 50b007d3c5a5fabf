"""Test harness for one process, for three MPI ranks and for six (two groups of three).

Under ``mpiexec -n 3 python -m pytest --only-mpi`` (see tests/run.sh; the same with ``-n 6``
for the ``*_mpi6.py`` files):
* ranks 1 and 2 write their pytest output to ``test-logs/rank<r>.log`` so the
  console shows rank 0's report and one closing line;
* a failure on *any* rank writes the report to that rank's log and to stderr,
  and aborts all three ranks at once (rc 1 within seconds, never a hang: the
  other ranks would otherwise wait in a collective forever);
* pytest-timeout (thread method) catches a deadlock inside a blocked MPI call.
"""

from __future__ import annotations

import os
import sys

import pytest

_WORLD = None


def _world():
    global _WORLD
    if _WORLD is None:
        try:
            from mpi4py import MPI

            _WORLD = MPI.COMM_WORLD
        except Exception:  # pragma: no cover
            _WORLD = False
    return _WORLD


def _under_mpi(config) -> bool:
    return bool(config.getoption("with_mpi", False) or config.getoption("only_mpi", False))


def pytest_configure(config):
    if not _under_mpi(config):
        return
    world = _world()
    if not world or world.Get_size() == 1:
        return
    rank = world.Get_rank()
    if rank != 0:
        os.makedirs("test-logs", exist_ok=True)
        log = open(os.path.join("test-logs", f"rank{rank}.log"), "w", buffering=1)
        os.dup2(log.fileno(), 1)
        sys.stdout = log


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not _under_mpi(item.config):
        return
    world = _world()
    if not world or world.Get_size() == 1:
        return
    rank = world.Get_rank()
    text = f"\n=== FAILED on rank {rank}: {item.nodeid} ({report.when}) ===\n{report.longreprtext}\n"
    sys.stderr.write(text)
    sys.stderr.flush()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except Exception:
        pass
    world.Abort(1)


def test_device() -> str:
    """The back end of the test runtime: ``MPCGPU_DEVICE`` (default ``cpu``); tests/run.sh runs
    the three-rank suite once more with ``strict`` (CuPy's rules over NumPy, mpcgpu.device.strict)."""
    return os.environ.get("MPCGPU_DEVICE", "").strip().lower() or "cpu"


test_device.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session")
def rt():
    """The runtime of this party (three MPI ranks, the back end of :func:`test_device`)."""
    import mpcgpu

    world = _world()
    if not world or world.Get_size() != 3:
        pytest.skip("needs three MPI ranks")
    return mpcgpu.init(device=test_device(), excepthook=False)


@pytest.fixture(scope="session")
def rt6():
    """The runtime of this rank in a six-rank job: two groups of three (block layout;
    ``tests/run.sh`` runs the ``*_mpi6.py`` files under ``mpiexec -n 6``)."""
    import mpcgpu

    world = _world()
    if not world or world.Get_size() != 6:
        pytest.skip("needs six MPI ranks (two groups of three)")
    return mpcgpu.init(device=test_device(), excepthook=False)


@pytest.fixture
def seeded(rt):
    """A NumPy generator with the same seed on every rank (plaintext test data only)."""
    import numpy as np

    return np.random.default_rng(12345)
