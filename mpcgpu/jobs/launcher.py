"""Starting three local ranks from Python (used by `mpcgpu demo`).

Finds ``mpiexec`` next to the running Python (the ``mpich`` wheel installs it
in the environment's ``bin/``) or on ``PATH``, and sets the variables that keep
three ranks on few cores responsive (single-threaded BLAS; MPICH progress
throttling, see docs/design.md §10).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ..errors import MPCError


def find_mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise MPCError(
            "no mpiexec found: install the MPI wheel (pip install 'mpcgpu[mpich]') or load your cluster's MPI module"
        )
    return found


def local_env(device: str | None = None) -> dict:
    from ..settings import environment

    env = environment()
    if (os.cpu_count() or 1) < 6:  # three ranks on a small machine: no BLAS threads, no busy polling
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        env.setdefault("MPIR_CVAR_CH4_PROGRESS_THROTTLE", "1")
        env.setdefault("MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT", "32")
    if device:
        env["MPCGPU_DEVICE"] = device
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_three(args: list[str], device: str | None = None, timeout: float | None = None) -> int:
    """Run ``python -m mpcgpu.cli ARGS`` on three local ranks; returns the exit code."""
    cmd = [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpcgpu.cli", *args]
    before = _shm_files()
    try:
        return subprocess.run(cmd, env=local_env(device), timeout=timeout).returncode
    finally:
        for leftover in _shm_files() - before:  # an aborted MPICH run leaves these behind
            try:
                os.remove(leftover)
            except OSError:
                pass


def _shm_files() -> set:
    try:
        return {os.path.join("/dev/shm", f) for f in os.listdir("/dev/shm") if f.startswith("mpich_shm_")}
    except OSError:
        return set()
