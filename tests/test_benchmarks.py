"""The three-rank benchmark scripts still run against the current API (tiny sizes; what
they print is checked for its rows, not timed)."""

import os
import subprocess
import sys

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "script,args,rows",
    [
        ("nonlinear.py", ["--quick", "--reps", "1"], ["relu", "relu + derivative", "maxpool 2x2", "msb", "a2b"]),
        ("arithmetic.py", ["--quick"], ["matmul 16x16", "matmul 32x32", "conv 1x64x32x32"]),
        (
            "memory.py",
            ["--model", "lenet", "--layers", "3", "--check"],
            ["base", "share", "forward", "overall", "max |"],
        ),
    ],
)
def test_benchmark_script_runs(script, args, rows):
    try:
        mpiexec = find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    env = local_env("cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(
        [mpiexec, "-n", "3", sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for row in rows:
        assert any(line.startswith(row) for line in p.stdout.splitlines()), (row, p.stdout)
