"""Fuzzing the command line: random argument lists (hypothesis) never give a traceback, and
malformed values reaching a three-rank job give the same clear error on every rank, quickly
(never a hang, a traceback or a run on nonsense)."""

import contextlib
import io
import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpcgpu import cli
from mpcgpu.jobs import checks
from mpcgpu.jobs.launcher import find_mpiexec, local_env
from reference import fuzz_settings, mnist_shards

#: CI: 60 fixed (derandomized) examples per property; HYPOTHESIS_PROFILE=slow: 1000 random ones
FUZZ = fuzz_settings(60, 1000)

VALUES = st.sampled_from(
    [
        "0",
        "-1",
        "1",
        "3",
        "64",
        "1e309",
        "nan",
        "inf",
        "-inf",
        "",
        "x",
        "--",
        "-",
        "2**70",
        "99999999999999999999",
        "\u00e9",
        "a,b",
        "{party}",
        "/nonexistent/p",
        ".",
        "cpu",
        "cuda",
        "strict",
        "auto",
    ]
)
OPTIONS = {
    "share": ["--out", "-o", "--frac-bits", "--kind", "--limit", "--stem", "--force", "--quiet", "--public-meta"],
    "infer": [
        "--model",
        "--data",
        "--batch-size",
        "--limit",
        "--reveal-to",
        "--out",
        "--json",
        "--precision",
        "--device",
        "--no-progress",
        "--profile",
        "--no-verify",
    ],
    "train": [
        "--model",
        "--data",
        "--epochs",
        "--batch-size",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--limit",
        "--test-limit",
        "--checkpoint-dir",
        "--checkpoint-every",
        "--resume",
        "--precision",
        "--seed",
        "--gamma",
        "--out",
    ],
    "bench": ["--quick", "--batch-size", "--json", "--device"],
}


def argv_for(command):
    token = st.one_of(st.sampled_from(OPTIONS[command]), VALUES)
    return st.lists(token, max_size=8).map(lambda rest: [command, *rest])


def parse(argv):
    """parse_args: a namespace, or argparse's own exit (2 with a usage line; 0 for --help)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli.build_parser().parse_args(argv), err.getvalue()
        except SystemExit as exc:
            assert exc.code in (0, 2), (argv, exc.code)
            if exc.code == 2:
                assert "error:" in err.getvalue() and "Traceback" not in err.getvalue()
            return None, err.getvalue()


@FUZZ
@given(argv=st.one_of(*(argv_for(c) for c in OPTIONS)))
def test_random_arguments_parse_or_exit_with_a_usage_error(argv):
    args, _ = parse(argv)
    if args is None or args.command not in ("infer", "train"):
        return
    # the checks a job runs on its values before starting: an MPCError or nothing
    from mpcgpu.errors import MPCError

    for check in (
        lambda: checks.at_least(args, 1, "batch_size", "limit", "test_limit", "epochs"),
        lambda: checks.finite(args, "lr", "momentum", "weight_decay", "gamma", positive=("lr",)),
    ):
        try:
            check()
        except MPCError as exc:
            assert str(exc).startswith("--")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import numpy as np

    from mpcgpu.assets.dataset_h5 import write_dataset

    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(1)
    write_dataset(
        str(d / "ok.h5"),
        rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8),
        rng.integers(0, 10, 6),
        name="ok",
        mean=0.5,
        std=0.25,
        num_classes=10,
    )
    (d / "text.h5").write_text("not HDF5 at all\n")
    (d / "dir.h5").mkdir()
    return d


@FUZZ
@given(
    src=st.sampled_from(["ok.h5", "text.h5", "dir.h5", "missing.h5"]),
    rest=st.lists(st.one_of(st.sampled_from(OPTIONS["share"]), VALUES), max_size=6),
)
def test_random_share_commands_run_or_give_one_clear_error(inputs, tmp_path_factory, src, rest):
    out = tmp_path_factory.mktemp("o")
    argv = ["share", str(inputs / src), "--out", str(out), "--quiet", *rest]
    args, _ = parse(argv)
    if args is None:
        return
    err = io.StringIO()
    here = os.getcwd()
    os.chdir(out)  # a generated "--out ." writes here, not into the checkout
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(argv)
            except SystemExit as exc:  # argparse inside main (the same parse)
                rc = exc.code
    finally:
        os.chdir(here)
    text = err.getvalue()
    assert "Traceback" not in text
    assert rc in (0, 1, 2), (argv, rc, text)
    if rc == 0:
        assert src == "ok.h5"
        assert not [f for f in os.listdir(out) if f.endswith(".partial")]
    assert not [f for f in os.listdir(here) if f.endswith(".h5")], "the share step wrote into the checkout"


# -- malformed values reaching a three-rank job -------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    d = tmp_path_factory.mktemp("cli3")
    mnist_shards(d, {"test": slice(0, 16)}, out="s", name=lambda part: "t")
    return d


BAD_JOBS = {
    "infer batch 0": ("infer", "--batch-size", "0"),
    "infer batch negative": ("infer", "--batch-size", "-3"),
    "infer out in a missing directory": ("infer", "--out", "/nonexistent/dir/p.npy"),
    "infer precision too large": ("infer", "--precision", "70"),
    "infer model is a dataset": ("infer", "--model", "{d}/s/test"),
    "infer missing model": ("infer", "--model", "{d}/s/nothere"),
    "train epochs 0": ("train", "--epochs", "0"),
    "train lr nan": ("train", "--lr", "nan"),
    "train lr negative": ("train", "--lr", "-0.1"),
    "train momentum inf": ("train", "--momentum", "inf"),
    "train unknown model": ("train", "--model", "nosuch"),
    "train resume without a directory": ("train", "--resume"),
}


def job_argv(d, command, *extra):
    if command == "infer":
        base = ["infer", "--model", f"{d}/s/lenet_mnist", "--data", f"{d}/s/test", "--no-progress"]
    else:
        base = [
            "train",
            "--model",
            "lenet",
            "--data",
            f"{d}/s/test",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--no-progress",
        ]
    return base + [e.format(d=d) for e in extra]


ERROR_LINE = re.compile(r"^mpcgpu (?:\[party (\d)\] )?error: (.+)$", re.M)


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_a_bad_value_is_the_same_clear_error_on_every_rank(shards, case):
    command, *extra = BAD_JOBS[case]
    t0 = time.monotonic()
    p = subprocess.run(
        [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpcgpu.cli", *job_argv(shards, command, *extra)],
        capture_output=True,
        text=True,
        timeout=120,
        env=local_env("cpu"),
    )
    took = time.monotonic() - t0
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    found = ERROR_LINE.findall(p.stderr)
    assert len(found) == 3, p.stderr[-3000:]
    assert len({msg for _, msg in found}) == 1  # the same message on every rank
    assert took < 60
