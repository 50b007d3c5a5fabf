"""The README's main job end to end (owners split, three ranks infer), as a user runs it.

Single-process test: it launches `mpiexec -n 3` itself, like `mpcgpu demo`.
"""

import os
import shutil
import subprocess
import sys

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env


def run_cli(args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "mpcgpu.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=local_env("cpu"),
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    work = tmp_path_factory.mktemp("demo")
    proc = run_cli(["demo", "--images", "1000", "--batch-size", "250", "--workdir", str(work)])
    return work, proc


def test_demo_real_mnist_private_equals_plaintext(demo):
    work, proc = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "private predictions equal to plaintext: 1000/1000" in out, out
    line = [ln for ln in out.splitlines() if ln.startswith("accuracy")][0]
    private, plain = [float(t.rstrip("%")) for t in line.split()[1:3]]
    assert private == plain and private > 98.0


def test_infer_rejects_mixed_model_shards_on_every_rank(demo, tmp_path):
    work, proc = demo
    assert proc.returncode == 0
    shards = os.path.join(work, "shards")
    # a second split of the same weights: party 1 gets a shard of another set
    from mpcgpu.assets import lenet_weights_path
    from mpcgpu.data.split import split_file

    other = tmp_path / "other"
    split_file(lenet_weights_path(), str(other), progress=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(3):
        src = other if i == 1 else shards
        shutil.copy(os.path.join(src, f"lenet_mnist.party{i}.h5"), mixed / f"lenet_mnist.party{i}.h5")
    mpiexec = find_mpiexec()
    cmd = [
        mpiexec,
        "-n",
        "3",
        sys.executable,
        "-m",
        "mpcgpu.cli",
        "infer",
        "--model",
        str(mixed / "lenet_mnist"),
        "--data",
        os.path.join(shards, "mnist_test"),
        "--limit",
        "10",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=local_env("cpu"))
    assert p.returncode != 0
    assert p.stderr.count("error:") >= 3, p.stderr  # one message per party
    assert "set" in p.stderr


def test_infer_help_and_bad_rank_count():
    p = run_cli(["infer", "--help"], timeout=60)
    assert p.returncode == 0 and "--reveal-to" in p.stdout and "mpirun -n 3" in p.stdout
    mpiexec = find_mpiexec()
    p = subprocess.run(
        [mpiexec, "-n", "1", sys.executable, "-m", "mpcgpu.cli", "infer", "--model", "x", "--data", "y"],
        capture_output=True,
        text=True,
        timeout=60,
        env=local_env("cpu"),
    )
    assert p.returncode != 0 and "groups of three parties" in p.stderr
