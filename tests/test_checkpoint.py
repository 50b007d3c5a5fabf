"""Checkpoint settings digests (issue 20): a resume must run the same computation, so a
checkpoint stores the SHA-256 of the canonical JSON of every computation-relevant setting
and a resume compares it (tests/test_train_cli.py runs the resumes themselves)."""

import hashlib

import h5py
import numpy as np
import pytest

from mpcgpu.cli import build_parser
from mpcgpu.jobs import train
from mpcgpu.nn import checkpoint


def test_the_digest_is_sha256_of_canonical_json_whatever_the_key_order():
    a = {"lr": 0.05, "epochs": 2, "schedule": "cosine", "limit": None}
    b = {"limit": None, "schedule": "cosine", "epochs": 2, "lr": 0.05}
    assert checkpoint.canonical_json(a) == '{"epochs":2,"limit":null,"lr":0.05,"schedule":"cosine"}'
    assert checkpoint.settings_digest(a) == checkpoint.settings_digest(b)
    assert checkpoint.settings_digest(a) == hashlib.sha256(checkpoint.canonical_json(a).encode()).hexdigest()
    for key, other in (("lr", 0.03), ("epochs", 3), ("schedule", "step"), ("limit", 48)):
        assert checkpoint.settings_digest(dict(a, **{key: other})) != checkpoint.settings_digest(a), key
    with pytest.raises(ValueError):
        checkpoint.canonical_json({"lr": float("nan")})


def test_the_differences_are_named():
    saved = {"lr": 0.02, "epochs": 2, "momentum": 0.9, "gone": 1}
    now = {"lr": 0.03, "epochs": 2, "momentum": 0.9, "new": True}
    assert checkpoint.settings_differences(saved, now) == ["gone", "lr", "new"]
    assert checkpoint.settings_differences(saved, dict(saved)) == []
    assert checkpoint.settings_differences({"x": 1}, {"x": 1.0}) == ["x"]  # 1 and 1.0: other JSON
    assert checkpoint.settings_differences(None, {"x": 1}) == ["x"]


def _identity(*argv):
    args = build_parser().parse_args(["train", "--model", "lenet", "--data", "d", *argv])
    return train._identity(args)


def test_every_argument_that_changes_the_computation_enters_the_digest():
    base = _identity()
    for name in ("lr", "momentum", "weight_decay", "schedule", "warmup", "step_epochs", "gamma", "epochs"):
        assert name in base, name
    for name in ("reveal_loss", "test_data", "test_limit", "owner", "reveal_to", "init_seed", "seed", "limit"):
        assert name in base, name
    assert not set(base) & train.NOT_IN_DIGEST
    digest = checkpoint.settings_digest(base)
    changed = [
        ("--lr", "0.03"),
        ("--epochs", "3"),
        ("--schedule", "step"),
        ("--momentum", "0.8"),
        ("--weight-decay", "0.0001"),
        ("--gamma", "0.5"),
        ("--step-epochs", "2"),
        ("--reveal-loss",),
        ("--test-data", "t"),
        ("--owner", "2"),
    ]
    for argv in changed:
        assert checkpoint.settings_digest(_identity(*argv)) != digest, argv
    # where files go, how often to checkpoint, the device, progress: the same computation
    same = [
        ("--checkpoint-dir", "elsewhere", "--checkpoint-every", "5", "--resume"),
        ("--json", "x.json", "--plot", "x.png", "--out", "w"),
        ("--device", "cpu", "--no-progress", "--no-verify", "--insecure-channels"),
    ]
    for argv in same:
        assert checkpoint.settings_digest(_identity(*argv)) == digest, argv


def _save(tmp_path, settings):
    pair = (np.arange(4, dtype=np.uint64), np.arange(4, dtype=np.uint64) + 7)
    return checkpoint.save(
        str(tmp_path),
        1,
        6,
        run_id="r",
        params={"w": (*pair, 16)},
        optim={"master": pair, "velocity": pair, "scale": 24, "steps": 6},
        rng={"prg": {s: (bytes(range(16)), 3) for s in ("own", "next", "local")}, "role_calls": 5},
        meta={"epoch": 1},
        settings=settings,
    )


def test_a_checkpoint_stores_its_settings_and_their_digest(tmp_path):
    settings = {"lr": 0.02, "model_spec": "{}", "version": "0.1.0"}
    path = _save(tmp_path, settings)
    state = checkpoint.load(str(tmp_path), 1, 6)
    assert state["settings"] == settings
    assert state["settings_sha256"] == checkpoint.settings_digest(settings)
    # a checkpoint without them (an older mpcgpu) reads as None: the resume refuses it
    with h5py.File(path, "r+") as f:
        del f.attrs["settings"], f.attrs["settings_sha256"]
    state = checkpoint.load(str(tmp_path), 1, 6)
    assert state["settings"] is None and state["settings_sha256"] is None
