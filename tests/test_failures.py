"""Failures end the whole job quickly with a message, never a hang (single process,
launching three ranks with mpiexec)."""

import subprocess
import sys
import textwrap
import time

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env


def run_three(script, tmp_path, timeout=60):
    try:
        mpiexec = find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    t0 = time.perf_counter()
    p = subprocess.run(
        [mpiexec, "-n", "3", sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=local_env("cpu"),
    )
    return p, time.perf_counter() - t0


PRELUDE = """
    import os, numpy as np, mpcgpu
    from mpcgpu.sharing.arithmetic import share
    rt = mpcgpu.init(device="cpu")
    x = share(np.ones(1000) if rt.rank == 0 else None)
"""


def test_dead_rank_ends_the_job(tmp_path):
    p, took = run_three(
        PRELUDE
        + """
    if rt.rank == 1:
        os._exit(3)
    (x * x).relu().reveal()
    print("finished on", rt.rank)
    """,
        tmp_path,
    )
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert took < 30


def test_exception_on_one_rank_aborts_all_with_its_message(tmp_path):
    p, took = run_three(
        PRELUDE
        + """
    if rt.rank == 2:
        raise RuntimeError("boom on party two")
    (x * x).reveal()
    print("finished on", rt.rank)
    """,
        tmp_path,
    )
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert "boom on party two" in p.stderr and "party 2" in p.stderr
    assert took < 30


def test_out_of_range_input_stops_every_rank_with_a_message(tmp_path):
    p, _ = run_three(
        """
    import numpy as np, mpcgpu
    rt = mpcgpu.init(device="cpu")
    mpcgpu.share(np.array([1e12]) if rt.rank == 0 else None)
    """,
        tmp_path,
    )
    assert p.returncode != 0
    assert p.stderr.count("outside the fixed-point range") >= 2, p.stderr
