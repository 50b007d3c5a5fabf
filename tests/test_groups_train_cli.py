"""`mpcgpu train` over two groups of three (single-process tests that launch `mpiexec -n 6`):
a short data-parallel run writes its shards, JSON and checkpoints (group 0 of each party,
with both groups' PRG states); a resume from its step-3 checkpoint with the same k gives
trained weights bit-identical to the uninterrupted run under the test seed; a resume with
another k (three ranks) is refused, naming both.  Six ranks on two cores: about a minute."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env
from reference import mnist_shards
from test_train_cli import train_args as base_train_args

TRAIN, TEST, BATCH = 16, 12, 8
SEED = {"MPCGPU_INSECURE_PRG_SEED": "tests-only-22"}


def mpirun(n, args, env_extra=None, timeout=900):
    env = local_env("cpu")
    env.update(env_extra or {})
    cmd = [find_mpiexec(), "-n", str(n), sys.executable, "-m", "mpcgpu.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    work = tmp_path_factory.mktemp("groups-train")
    mnist_shards(work, {"train": slice(0, TRAIN), "test": slice(5000, 5000 + TEST)}, weights=False)
    return work


def train_args(work, tag, *extra):
    """test_train_cli's arguments, with this file's batch, a checkpoint every step and the loss."""
    return base_train_args(work, tag, "--batch-size", str(BATCH), "--checkpoint-every", "1", "--reveal-loss", *extra)


@pytest.fixture(scope="module")
def uninterrupted(work):
    proc = mpirun(6, train_args(work, "a"), SEED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def weights(path):
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v) for k, v in f["params"].items()}


def test_two_groups_train_and_group_0_writes_once(work, uninterrupted):
    out = uninterrupted.stdout
    assert out.count("private test accuracy") == 2  # once per epoch: group 0's owner only
    assert "2 groups of three, data-parallel" in out
    summary = json.load(open(work / "a" / "run.json"))
    assert summary["settings"]["groups"] == 2
    assert [e["test_samples"] for e in summary["epochs"]] == [TEST, TEST]  # both halves counted
    assert all(0 <= e["test_correct"] <= TEST for e in summary["epochs"])
    steps = summary["steps"]
    assert len(steps) == 2 * TRAIN // BATCH
    assert all(s["loss"] is not None and s["role_bytes"] > 0 for s in steps)
    # group 0 of each party wrote the checkpoints: one file per party and step, with both PRG states
    names = sorted(os.listdir(work / "a" / "ckpt"))
    assert names == [f"ckpt-{s:08d}.party{p}.h5" for s in (3, 4) for p in range(3)]
    with h5py.File(work / "a" / "ckpt" / names[0], "r") as f:
        assert int(f.attrs["groups"]) == 2 and "1" in f["rng_groups"]
        own0 = bytes(f["rng"].attrs["own_key"])
        own1 = bytes(f["rng_groups"]["1"].attrs["own_key"])
        assert own0 != own1  # every group's own keys
    assert (work / "a" / "w.weights.h5").exists()


def test_resume_with_the_same_k_is_bit_identical(work, uninterrupted):
    (work / "b").mkdir()
    shutil.copytree(work / "a" / "ckpt", work / "b" / "ckpt")
    for p in range(3):
        os.remove(work / "b" / "ckpt" / f"ckpt-{4:08d}.party{p}.h5")  # as if killed during step 4
    proc = mpirun(6, train_args(work, "b", "--resume"), SEED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed from step 3" in proc.stdout
    a, b = weights(work / "a" / "w.weights.h5"), weights(work / "b" / "w.weights.h5")
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_resume_with_another_k_is_refused_naming_both(work, uninterrupted):
    (work / "c").mkdir()
    shutil.copytree(work / "a" / "ckpt", work / "c" / "ckpt")
    proc = mpirun(3, train_args(work, "c", "--resume"), SEED, timeout=600)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "was made by 2 groups of three (6 ranks); this run has 1 (3 ranks)" in err, err
    assert "mpirun -n 6" in err
    assert not (work / "c" / "w.weights.h5").exists()
