"""A rank killed at chosen points of a job (``MPCGPU_FAULT=POINT:RANK[:N]``, mpcgpu.util.faults):
every rank ends within 10 s of the kill, stderr names the lost party, and no output, shard
or checkpoint file is left half-written (single process, launching ``mpiexec -n 3``)."""

import re
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env
from reference import mnist_shards

N_TEST, N_TRAIN = 24, 32


def launch(args, fault, ranks=3, timeout=300):
    env = local_env("cpu")
    if fault is not None:
        env["MPCGPU_FAULT"] = fault
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, *args] if ranks else [sys.executable, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return p, time.time()


def assert_lost(p, ended, rank, point):
    """The job failed, the lost party is named, and everything ended within 10 s of the kill."""
    assert p.returncode != 0, p.stdout[-2000:]
    m = re.search(
        rf"mpcgpu \[party {rank}\] killed by fault injection at '{point}'.* at t=([0-9.]+): party {rank} is lost",
        p.stderr,
    )
    assert m, p.stderr[-3000:]
    assert ended - float(m.group(1)) < 10.0
    assert "finished" not in p.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    d = tmp_path_factory.mktemp("faults")
    mnist_shards(d, {"test": slice(0, N_TEST), "train": slice(1000, 1000 + N_TRAIN)})
    return d


PROTOCOL_JOB = """
    import numpy as np, mpcgpu
    from mpcgpu.sharing.arithmetic import share
    rt = mpcgpu.init(device="cpu")
    x = share(np.linspace(-5, 5, 4000) if rt.rank == 0 else None)
    y = (x * x - 3.0).relu().reveal()
    print("finished on", rt.rank, float(y.sum()))
"""


@pytest.mark.parametrize("point,rank", [("share", 1), ("a2b", 2), ("a2b", 0)])
def test_a_party_killed_inside_a_protocol(tmp_path, point, rank):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(PROTOCOL_JOB))
    p, ended = launch([str(script)], f"{point}:{rank}")
    assert_lost(p, ended, rank, point)


def test_the_same_job_without_a_fault_finishes(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(PROTOCOL_JOB))
    p, _ = launch([str(script)], None)
    assert p.returncode == 0 and p.stdout.count("finished on") == 3, p.stderr[-2000:]


def infer_args(work, *extra):
    return [
        "-m",
        "mpcgpu.cli",
        "infer",
        "--model",
        str(work / "shards" / "lenet_mnist"),
        "--data",
        str(work / "shards" / "test"),
        "--batch-size",
        "8",
        "--no-progress",
        "--reveal-to",
        "2",
        *extra,
    ]


def test_a_party_killed_reading_its_shard(work):
    p, ended = launch(infer_args(work), "read-shard:1")
    assert_lost(p, ended, 1, "read-shard")


def test_killed_writing_predictions_leaves_no_half_file(work, tmp_path):
    out = tmp_path / "pred.npy"
    p, ended = launch(infer_args(work, "--out", str(out), "--json", str(tmp_path / "s.json")), "write-predictions:2")
    assert_lost(p, ended, 2, "write-predictions")
    assert not out.exists()  # never half a file: the temporary name only
    assert not (tmp_path / "s.json").exists()
    assert all(f.name.endswith(".partial") for f in tmp_path.iterdir())  # at most the temporary file
    # and without the fault the same job writes both, whole
    p, _ = launch(infer_args(work, "--out", str(out)), None)
    assert p.returncode == 0, p.stderr[-2000:]
    pred = np.load(out)
    assert pred.shape == (N_TEST,) and pred.min() >= 0 and pred.max() <= 9
    assert not (tmp_path / "pred.npy.partial").exists()


def train_args(work, *extra):
    return [
        "-m",
        "mpcgpu.cli",
        "train",
        "--model",
        "lenet",
        "--data",
        str(work / "shards" / "train"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--no-progress",
        *extra,
    ]


def _complete_h5(path):
    with h5py.File(path, "r") as f:
        return len(f.keys()) > 0


def test_killed_writing_a_checkpoint_leaves_no_half_file(work, tmp_path):
    ck = tmp_path / "ck"
    p, ended = launch(train_args(work, "--checkpoint-dir", str(ck), "--checkpoint-every", "1"), "write-checkpoint:1")
    assert_lost(p, ended, 1, "write-checkpoint")
    for f in ck.iterdir():
        assert f.name.endswith(".partial") or _complete_h5(f), f
    assert not any(f.name.endswith(".h5") and "party1" in f.name for f in ck.iterdir())


def test_killed_writing_trained_shards_leaves_no_half_file(work, tmp_path):
    p, ended = launch(train_args(work, "--out", str(tmp_path / "trained")), "write-shard:0")
    assert_lost(p, ended, 0, "write-shard")
    assert not (tmp_path / "trained.party0.h5").exists()
    for f in tmp_path.iterdir():
        assert f.name.endswith(".partial") or _complete_h5(f), f


def test_killed_in_the_share_step_leaves_no_shard(work, tmp_path):
    p, ended = launch(
        ["-m", "mpcgpu.cli", "share", str(work / "test.h5"), "--out", str(tmp_path), "--quiet"],
        "write-shard:0",
        ranks=0,
    )
    assert_lost(p, ended, 0, "write-shard")
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"test.party{i}.h5.partial" for i in range(3)]
    # the next run replaces the leftovers and writes a whole set
    p, _ = launch(
        ["-m", "mpcgpu.cli", "share", str(work / "test.h5"), "--out", str(tmp_path), "--quiet"], None, ranks=0
    )
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"test.party{i}.h5" for i in range(3)]


@pytest.mark.parametrize("value", ["bogus", "a2b", "a2b:-1", "a2b:1:0", "share:x", "nowhere:1"])
def test_a_malformed_fault_spec_is_one_clear_error_on_every_rank(tmp_path, value):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(PROTOCOL_JOB))
    p, _ = launch([str(script)], value)
    assert p.returncode != 0
    assert p.stderr.count("use POINT:RANK[:N]") >= 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
