"""Channel failures end the whole job with a message naming the party (single process,
launching three real MPI ranks with mpiexec): a tampered, replayed or reordered message,
a wrong, impostor or missing key, ranks on several machines without a parties file, a
silent (SIGSTOPped) party; and the PRG keys never cross the wire in clear."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mpcgpu.cli import main as cli_main
from mpcgpu.jobs.launcher import find_mpiexec, local_env

CHANNEL_ENV = ("MPCGPU_KEY", "MPCGPU_PARTIES", "MPCGPU_INSECURE_CHANNELS", "MPCGPU_PEER_TIMEOUT")


def job_env(**extra):
    env = local_env("cpu")
    for var in CHANNEL_ENV:
        env.pop(var, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_job(tmp_path, script):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(script))
    return path


def run_three(script, tmp_path, timeout=60, **env):
    try:
        mpiexec = find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    path = write_job(tmp_path, script)
    t0 = time.perf_counter()
    p = subprocess.run(
        [mpiexec, "-n", "3", sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=job_env(**env),
    )
    return p, time.perf_counter() - t0


PRELUDE = """
    import os, sys, numpy as np
    import mpcgpu, mpcgpu.comm.transport as C
    from mpcgpu.comm.channels import ChannelConfig
    R = C.world_rank()
    def say(*words):  # one write per line: the three ranks share the launcher's stdout
        os.write(1, (" ".join(str(w) for w in words) + "\\n").encode())
"""

#: rank 1 corrupts its 4th message (counter 3) to party 2, as MODE says
TAMPER = """
    MODE = os.environ["T_MODE"]
    sent = {}
    def hook(comm, peer, counter, wire, reseal):
        if comm.rank != 1 or peer != 2 or counter is None:
            return None
        sent[counter] = wire.copy()
        if counter != 3:
            return None
        if MODE == "flip":
            bad = wire.copy(); bad[17] ^= 4; return bad
        if MODE == "tag":
            bad = wire.copy(); bad[-1] ^= 0x80; return bad
        if MODE == "replay":
            return sent[2]
        if MODE == "reorder":
            return reseal(4)
        if MODE == "wrongkey":
            from mpcgpu.comm.channels import Direction
            return Direction(os.urandom(32), 1, 2).seal(np.arange(1000, dtype=np.uint64))
    rt = mpcgpu.init(device="cpu", wire_hook=hook)
    for i in range(8):
        got = rt.comm.pass_next(np.arange(1000, dtype=np.uint64) + i)
        assert (got == np.arange(1000, dtype=np.uint64) + i).all()
    say("finished on", R)
"""


@pytest.mark.parametrize("mode", ["flip", "tag", "replay", "reorder", "wrongkey"])
def test_altered_message_aborts_every_rank_naming_the_peer(tmp_path, mode):
    p, took = run_three(TAMPER, tmp_path, T_MODE=mode)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "finished on" not in p.stdout  # no rank carried on
    assert "mpcgpu [party 2] error: party 2: message 3 from party 1 failed authentication" in p.stderr, p.stderr
    assert took < 30


def test_untampered_control_finishes(tmp_path):
    p, _ = run_three(TAMPER, tmp_path, T_MODE="none")
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.split("\n")[:-1]) == [f"finished on {r}" for r in range(3)]


def test_prg_keys_never_cross_the_wire_in_clear(tmp_path):
    script = """
    seen = []
    hook = lambda link, peer, counter, wire, reseal: seen.append(bytes(wire))
    rt = mpcgpu.init(device="cpu", wire_hook=hook)
    keys = [rt.prg.own.key, rt.prg.next.key]
    say("rank", R, "clear" if any(k in w for k in keys for w in seen) else "hidden", len(seen))
    """
    p, _ = run_three(script, tmp_path)
    assert p.returncode == 0, p.stderr
    # two messages per party, sealed: the key (and seed digest) to party i-1, the digest to i+1
    assert p.stdout.count(" hidden 2") == 3, p.stdout
    # the control: with --insecure-channels the same check sees the keys
    p, _ = run_three(script, tmp_path, MPCGPU_INSECURE_CHANNELS=1)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(" clear 2") == 3, p.stdout
    assert "INSECURE" not in p.stdout


@pytest.fixture
def keys(tmp_path):
    assert cli_main(["keygen", "--out", str(tmp_path / "keys"), "--all"]) == 0
    assert cli_main(["keygen", "--out", str(tmp_path / "other"), "--party", "1"]) == 0
    return tmp_path / "keys"


KEYED = """
    mine = R == int(os.environ.get("T_RANK", R))
    key = os.environ["T_KEY"] if mine else os.environ["T_DEFAULT_KEY"]
    rt = mpcgpu.init(device="cpu", channels=ChannelConfig.resolve(key=key, parties=os.environ["T_PARTIES"]))
    x = mpcgpu.share(np.arange(5.0) if R == 0 else None)
    say("finished on", R, (x * x).reveal().tolist(), rt.describe())
"""


def test_authenticated_channels_run(tmp_path, keys):
    p, _ = run_three(KEYED, tmp_path, T_KEY=f"{keys}/party{{party}}.key", T_PARTIES=keys / "parties.json")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("[0.0, 1.0, 4.0, 9.0, 16.0]") == 3
    assert p.stdout.count("channels: AES-256-GCM, authenticated") == 3


def test_wrong_key_aborts_naming_the_party(tmp_path, keys):
    p, took = run_three(
        KEYED,
        tmp_path,
        T_KEY=str(keys.parent / "other/party1.key"),
        T_RANK=1,
        T_DEFAULT_KEY=str(keys / "party{party}.key"),
        T_PARTIES=keys / "parties.json",
    )
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert "party 1: the private key" in p.stderr and "does not belong to party 1" in p.stderr, p.stderr
    assert took < 30


def test_impostor_fails_to_authenticate(tmp_path, keys):
    # party 1 presents its listed public key but signs with another key (it lacks the real one)
    script = (
        """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    import mpcgpu.comm.channels as CH
    if R == 1:
        real = CH.Handshake.signatures
        def forged(self):
            self.identity = Ed25519PrivateKey.generate()
            return real(self)
        CH.Handshake.signatures = forged
    """
        + KEYED
    )
    p, took = run_three(script, tmp_path, T_KEY=f"{keys}/party{{party}}.key", T_PARTIES=keys / "parties.json")
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert "party 1 failed to authenticate" in p.stderr, p.stderr
    assert took < 30


def test_missing_key_aborts_naming_the_party(tmp_path, keys):
    script = """
    key = None if R == 2 else os.environ["T_KEY"]
    rt = mpcgpu.init(device="cpu", channels=ChannelConfig.resolve(key=key, parties=os.environ["T_PARTIES"]))
    say("finished on", R)
    """
    p, took = run_three(script, tmp_path, T_KEY=f"{keys}/party{{party}}.key", T_PARTIES=keys / "parties.json")
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert "party 2 has no private key" in p.stderr, p.stderr
    assert took < 30


def test_mixed_modes_abort(tmp_path):
    script = """
    rt = mpcgpu.init(device="cpu", channels=ChannelConfig.resolve(insecure=(R == 0)))
    say("finished on", R)
    """
    p, _ = run_three(script, tmp_path)
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert "party 0 runs insecure channels" in p.stderr, p.stderr


HOSTS = """
    import socket
    import mpcgpu.comm.transport
    if os.environ.get("T_NODES") == "split":  # as if MPI ran one rank per node ...
        mpcgpu.comm.transport.ranks_on_this_node = lambda mpi_comm: 1
    socket.gethostname = lambda: os.environ["T_HOST"].format(R=R)  # ... and these were their host names
    rt = mpcgpu.init(device="cpu")
    say("finished on", R, rt.describe())
"""


@pytest.mark.parametrize("host", ["same-name", "node{R}"])
def test_ranks_on_several_machines_need_a_parties_file_or_insecure_channels(tmp_path, host):
    """One machine is what MPI's shared-memory communicator says, not what the parties
    report: equal host names (containers, cloned VMs, a rewritten hello) do not pass."""
    p, _ = run_three(HOSTS, tmp_path, T_NODES="split", T_HOST=host)
    assert p.returncode != 0 and "finished on" not in p.stdout
    assert "do not all run on one machine (MPI places 1 of the 3 ranks" in p.stderr, p.stderr
    assert "there is no parties file" in p.stderr
    p, _ = run_three(HOSTS, tmp_path, T_NODES="split", T_HOST=host, MPCGPU_INSECURE_CHANNELS=1)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("channels: INSECURE, messages in clear") == 3


def test_one_machine_keeps_ephemeral_keys_whatever_the_host_names(tmp_path):
    p, _ = run_three(HOSTS, tmp_path, T_NODES="one", T_HOST="node{R}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("encrypted but NOT authenticated") == 3


def test_stopped_party_ends_the_job_within_the_peer_timeout(tmp_path):
    try:
        mpiexec = find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    script = """
    rt = mpcgpu.init(device="cpu")
    sys.stdout.write(f"pid {R} {os.getpid()}\\n")  # one write: lines of the ranks do not interleave
    x = mpcgpu.share(np.ones(1000) if R == 0 else None)
    i = 0
    while True:
        (x * x).relu()
        i += 1
        if i == 20:
            sys.stdout.write(f"running {R}\\n")
    """
    path = write_job(tmp_path, script)
    errfile = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(
        [mpiexec, "-n", "3", sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=errfile,
        text=True,
        env=job_env(MPCGPU_PEER_TIMEOUT=10),
    )
    pids, running = {}, set()
    try:
        deadline = time.monotonic() + 60
        while len(running) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            for rank, pid in re.findall(r"pid (\d) (\d+)", line):
                pids[int(rank)] = int(pid)
            running.update(int(rank) for rank in re.findall(r"running (\d)", line))
        assert len(running) == 3 and len(pids) == 3, "the ranks did not start"
        os.kill(pids[1], signal.SIGSTOP)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 40 and any(_alive(pids[r]) for r in (0, 2)):
            time.sleep(0.2)
        took = time.monotonic() - t0
        alive = [r for r in (0, 2) if _alive(pids[r])]
        errfile.seek(0)
        err = errfile.read()
        print(f"SIGSTOP: live ranks ended {took:.1f} s after the stop")
        assert not alive, f"still running after {took:.0f} s: {alive}; stderr: {err}"
        assert took < 25, (took, err)
        assert "no message from party 1 for 10 s" in err, err
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            proc.communicate(timeout=20)  # mpiexec ends once its ranks are gone
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        errfile.close()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] not in "ZX"
    except OSError:
        return False
