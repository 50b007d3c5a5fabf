"""`mpcgpu train` as a user runs it (single-process tests that launch `mpiexec -n 3`):
shards in, shards and plaintext weights out; a rank killed mid-epoch; `--resume` giving
a result bit-identical to an uninterrupted run under the test seed, and fresh masks
without it; a resume with other settings refused; what is revealed.
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
RECORDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record_words.py")


def mpirun(args, env_extra=None, timeout=600, record=None):
    """``mpcgpu ARGS`` on three ranks; with ``record`` (a folder) every rank records the
    words it receives there (tests/record_words.py)."""
    env = local_env("cpu")
    env.update(env_extra or {})
    prog = [RECORDER, str(record)] if record else ["-m", "mpcgpu.cli"]
    cmd = [find_mpiexec(), "-n", "3", sys.executable, *prog, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def words_after(record, rank, event, step):
    """The uint64 words ``rank`` received after its last ``event`` ("save" / "load") of the
    checkpoint of ``step``, in order."""
    marks = [line.split() for line in open(record / f"rank{rank}.marks")]
    at = [int(n) for e, s, n in marks if e == event and int(s) == step][-1]
    raw = (record / f"rank{rank}.words").read_bytes()
    return np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.uint64)[at:]


def lined_up(before, after):
    """The words of the crashed run after the checkpoint and those of the resumed run at the
    same positions (as many as the crashed run received before it died)."""
    n = min(before.size, after.size)
    return before[:n], after[:n]


def near(a, b, bound=1 << 40):
    """Per word: do ``a`` and ``b`` lie within ``bound`` of each other on the ring Z_2^64?"""
    d = a - b  # uint64: wraps
    return np.minimum(d, np.uint64(0) - d) < np.uint64(bound)


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
#: largest distance between the weights of two runs with other masks, relative to how far
#: training moved them (the truncations round differently, by 2^-f, at every step, and
#: twelve steps of SGD carry the differences on: measured 0.015 at most)
RELATIVE_TOLERANCE = 0.05


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
    model, data = shards / "a" / "w", shards / "shards" / "test"
    proc = mpirun(["infer", "--model", str(model), "--data", str(data), "--batch-size", "20", "--no-progress"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    acc = float(proc.stdout.split("private accuracy: ")[1].split("%")[0]) / 100
    assert abs(acc - summary["test_accuracy"]) <= 2 / TEST  # the same weights, exactly rounded


def test_killed_rank_then_resume_is_bit_identical(shards, uninterrupted):
    """Party 1 dies (SIGKILL) right after step 7, in the middle of epoch 2: every rank ends
    promptly; --resume continues from the newest checkpoint all three have (step 6) and
    the trained weights equal those of the uninterrupted run, bit for bit."""
    rec = shards / "b" / "rec-killed", shards / "b" / "rec-resumed"
    killed = mpirun(train_args(shards, "b"), dict(SEED, MPCGPU_FAULT_KILL_AFTER_STEP="7:1"), timeout=300, record=rec[0])
    assert killed.returncode != 0
    ckpts = sorted(os.listdir(shards / "b" / "ckpt"))
    assert "ckpt-00000006.party1.h5" in ckpts and not (shards / "b" / "w.weights.h5").exists()
    resumed = mpirun(train_args(shards, "b", "--resume"), SEED, record=rec[1])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step 6" in resumed.stdout
    # under the test seed the resumed run continues the checkpointed PRG streams: step 7 is
    # received word for word as in the crashed run (the control of the fresh-mask test below)
    before, after = lined_up(words_after(rec[0], 1, "save", 6), words_after(rec[1], 1, "load", 6))
    assert before.size > 10_000
    assert np.array_equal(before, after)
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
    assert "Resume with the same settings" in proc.stderr + proc.stdout
    assert "limit: None then, 48 now" in proc.stderr + proc.stdout


def test_resume_draws_fresh_masks_and_refuses_another_lr(shards, uninterrupted):
    """Without the test seed: party 1 dies after step 7; a resume with another --lr is
    refused on every rank (its re-run steps would otherwise be masked by the crashed run's
    words: the receiver would learn the difference, (lr - lr') times the velocity); the
    resume with the same settings draws fresh keys -- no word it receives in the re-run
    step 7 lies within 2^40 of the crashed run's word at the same position -- and trains
    to the uninterrupted run's weights up to the rounding of the truncations."""
    rec = shards / "c" / "rec-killed", shards / "c" / "rec-resumed"
    killed = mpirun(train_args(shards, "c"), {"MPCGPU_FAULT_KILL_AFTER_STEP": "7:1"}, timeout=300, record=rec[0])
    assert killed.returncode != 0
    ckpt = shards / "c" / "ckpt"
    files = sorted(os.listdir(ckpt))
    assert "ckpt-00000006.party1.h5" in files

    other = mpirun(train_args(shards, "c", "--resume", "--lr", "0.03"))
    text = other.stdout + other.stderr
    assert other.returncode != 0
    for party in range(3):
        assert f"mpcgpu [party {party}] error: the checkpoint of step 6" in text, text
    assert "lr: 0.02 then, 0.03 now" in text and "Resume with the same settings" in text
    assert "resumed from" not in text
    assert sorted(os.listdir(ckpt)) == files  # nothing written

    resumed = mpirun(train_args(shards, "c", "--resume"), record=rec[1])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step 6" in resumed.stdout and "INSECURE" not in resumed.stderr
    for rank in range(3):
        before, after = lined_up(words_after(rec[0], rank, "save", 6), words_after(rec[1], rank, "load", 6))
        assert before.size > 10_000
        # fresh masks: about 2^-23 of uniform words fall within 2^40 by chance; reused masks
        # put every word there (identical settings: the very same words)
        assert near(before, after).mean() < 1e-5, rank

    from mpcgpu.nn.models import get_model
    from mpcgpu.nn.plain import init_params

    start = init_params(get_model("lenet"), rng=3)  # --init-seed 3
    a, c = weights(shards / "a" / "w.weights.h5"), weights(shards / "c" / "w.weights.h5")
    assert a.keys() == c.keys() == start.keys()
    for k in a:
        assert not np.array_equal(a[k], c[k]), k  # other masks, other roundings
        moved = np.linalg.norm(a[k] - start[k])
        # per tensor: a small one (a 10-element bias) carries the rounding noise of every step
        assert np.linalg.norm(c[k] - a[k]) <= 3 * RELATIVE_TOLERANCE * moved, k
    flat = {t: np.concatenate([w[k].ravel() for k in sorted(start)]) for t, w in (("a", a), ("c", c), ("s", start))}
    assert np.linalg.norm(flat["c"] - flat["a"]) <= RELATIVE_TOLERANCE * np.linalg.norm(flat["a"] - flat["s"])
    ja, jc = (json.load(open(shards / t / "run.json")) for t in ("a", "c"))
    assert abs(ja["test_accuracy"] - jc["test_accuracy"]) <= 2 / TEST
