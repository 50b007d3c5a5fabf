"""A silent rank among several groups (single process, launching `mpiexec -n 6`): a rank of
group 1 stops (SIGSTOP: alive, holding its sockets, saying nothing, as a hung GPU or a
frozen node would) while the others work in their groups and in their role communicators;
the whole job must end within the peer timeout, with a message naming the silent rank's
party and group, never a hang (issue 22)."""

import subprocess
import sys
import textwrap
import time

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    import mpcgpu
    from mpcgpu.sharing.arithmetic import share

    rt = mpcgpu.init(device="cpu")
    rt.comm.barrier()
    silent = int(sys.argv[1])  # the world rank that stops
    where = sys.argv[2]        # "group": its group peers notice; "role": only its role peers wait on it
    x = share(np.arange(8.0) if rt.rank == 0 else None, src=0)
    if rt.place.world_rank == silent:
        os.kill(os.getpid(), signal.SIGSTOP)
    t0 = time.time()
    if where == "group":  # rounds with both peers: each of its group peers waits on it directly
        for _ in range(1000):
            rt.comm.barrier()
    else:  # the silent rank's group peers also wait in the role (they never reach a group exchange)
        for _ in range(1000):
            rt.role.allreduce_sum([x.first, x.second])
    print("finished", rt.place.world_rank, flush=True)
    """
)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    path = tmp_path_factory.mktemp("groups-faults") / "silent.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("where", ["group", "role"])
def test_a_silent_rank_of_group_1_ends_the_whole_job_naming_it(script, where):
    env = local_env("cpu")
    env["MPCGPU_PEER_TIMEOUT"] = "8"
    # block layout, k = 2: world rank 3 is party 1 of group 1
    cmd = [find_mpiexec(), "-n", "6", sys.executable, str(script), "3", where]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    took = time.time() - t0
    assert p.returncode != 0, p.stdout + p.stderr
    # the ranks that wait on it never finish: its group peers (world ranks 1 and 5), or in the
    # role case its party's rank of group 0 (world rank 2); the others may
    waiting = (1, 5) if where == "group" else (2,)
    assert not any(f"finished {r}" in p.stdout for r in waiting), p.stdout
    assert "no message from party 1 of group 1" in p.stderr, p.stderr[-3000:]
    assert took < 120, took  # start-up (a few s per rank on two cores) + the 8 s timeout, not a hang
