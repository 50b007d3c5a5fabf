"""benchmarks/channels.py still runs (its worker under mpiexec: the seconds of sealing and
opening inside a LeNet inference are measured and are a small part of the pass)."""

import json
import os
import subprocess
import sys

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_channel_benchmark_worker_runs():
    try:
        mpiexec = find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    env = local_env("cpu")
    env.pop("MPCGPU_INSECURE_CHANNELS", None)
    script = os.path.join(ROOT, "benchmarks", "channels.py")
    p = subprocess.run(
        [mpiexec, "-n", "3", sys.executable, script, "--worker", "--models", "lenet", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = json.loads([line for line in p.stdout.splitlines() if line.startswith("WORKER ")][-1][7:])
    assert [r["model"] for r in rows] == ["lenet"]
    assert all(c > 0 for c in rows[0]["channel_s_per_party"])  # every party sealed and opened
    assert 0 < rows[0]["channel_share"] < 1
