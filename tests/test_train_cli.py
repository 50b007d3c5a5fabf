"""`mpcgpu train` as a user runs it (single-process tests that launch `mpiexec -n 3`):
shards in, shards and plaintext weights out; a rank killed mid-epoch; `--resume` giving
a result bit-identical to an uninterrupted run; what is revealed.
"""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env
from reference import mnist_shards

TRAIN, TEST, BATCH = 96, 40, 16


def mpirun(args, env_extra=None, timeout=600):
    env = local_env("cpu")
    env.update(env_extra or {})
    cmd = [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpcgpu.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    work = tmp_path_factory.mktemp("train")
    parts = {"train": slice(0, TRAIN), "test": slice(5000, 5000 + TEST)}
    mnist_shards(work, parts, weights=False, name=lambda part: f"mnist-{part}")
    return work


def train_args(work, tag, *extra):
    return [
        "train",
        "--model",
        "lenet",
        "--init-seed",
        "3",
        "--data",
        str(work / "shards" / "train"),
        "--test-data",
        str(work / "shards" / "test"),
        "--epochs",
        "2",
        "--batch-size",
        str(BATCH),
        "--lr",
        "0.02",
        "--checkpoint-dir",
        str(work / tag / "ckpt"),
        "--checkpoint-every",
        "2",
        "--out",
        str(work / tag / "w"),
        "--reveal-to",
        "1",
        "--json",
        str(work / tag / "run.json"),
        "--no-progress",
        *extra,
    ]


def weights(path):
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v) for k, v in f["params"].items()}


SEED = {"MPCGPU_INSECURE_PRG_SEED": "tests-only-7"}


@pytest.fixture(scope="module")
def uninterrupted(shards):
    proc = mpirun(train_args(shards, "a"), SEED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_train_writes_shards_weights_and_json(shards, uninterrupted):
    out = uninterrupted.stdout
    assert "private test accuracy" in out and "only the count revealed" in out
    assert "INSECURE" in uninterrupted.stderr  # the seed is announced
    summary = json.load(open(shards / "a" / "run.json"))
    steps = (TRAIN // BATCH) * 2
    assert len(summary["steps"]) == steps and len(summary["epochs"]) == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert all(s["bytes"] > 0 and s["seconds"] > 0 for s in summary["steps"])
    for e in summary["epochs"]:
        assert {"epoch", "test_accuracy", "seconds", "bytes", "rounds"} <= set(e)
    assert summary["settings"]["batch_size"] == BATCH
    # plaintext weights only at party 1; shards for every party, accepted by `mpcgpu infer`
    assert (shards / "a" / "w.weights.h5").exists()
    assert all((shards / "a" / f"w.party{i}.h5").exists() for i in range(3))
    proc = mpirun(
        [
            "infer",
            "--model",
            str(shards / "a" / "w"),
            "--data",
            str(shards / "shards" / "test"),
            "--batch-size",
            "20",
            "--no-progress",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    acc = float(proc.stdout.split("private accuracy: ")[1].split("%")[0]) / 100
    assert abs(acc - summary["test_accuracy"]) <= 2 / TEST  # the same weights, exactly rounded


def test_killed_rank_then_resume_is_bit_identical(shards, uninterrupted):
    """Party 1 dies (SIGKILL) right after step 7, in the middle of epoch 2: every rank ends
    promptly; --resume continues from the newest checkpoint all three have (step 6) and
    the trained weights equal those of the uninterrupted run, bit for bit."""
    killed = mpirun(train_args(shards, "b"), dict(SEED, MPCGPU_FAULT_KILL_AFTER_STEP="7:1"), timeout=300)
    assert killed.returncode != 0
    ckpts = sorted(os.listdir(shards / "b" / "ckpt"))
    assert "ckpt-00000006.party1.h5" in ckpts and not (shards / "b" / "w.weights.h5").exists()
    resumed = mpirun(train_args(shards, "b", "--resume"), SEED)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step 6" in resumed.stdout
    a, b = weights(shards / "a" / "w.weights.h5"), weights(shards / "b" / "w.weights.h5")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ja, jb = (json.load(open(shards / t / "run.json")) for t in ("a", "b"))
    assert ja["test_accuracy"] == jb["test_accuracy"]
    assert [e["test_correct"] for e in ja["epochs"]] == [e["test_correct"] for e in jb["epochs"]]


def test_resume_refuses_other_settings(shards, uninterrupted):
    proc = mpirun(train_args(shards, "a", "--resume", "--limit", "48"))
    assert proc.returncode != 0
    assert "resume with the same settings" in proc.stderr + proc.stdout
