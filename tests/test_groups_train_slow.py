"""Issue 22's "done when" for training: `mpiexec -n 6` (two groups of three, data-parallel)
training of LeNet on the first 6,000 MNIST training images reaches the test accuracy of
`mpiexec -n 3` within one point, with the same seeds and global batch (one epoch, batch 128,
all 10,000 test images).  Minutes on two cores: marked slow (``RUN_SLOW=1``)."""

import json
import os
import subprocess
import sys
import time

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = 6000


def mnist_dir():
    for d in (
        os.environ.get("MPCGPU_MNIST_DIR"),
        "/work/shared/data/mnist",
        os.path.join(ROOT, "..", "shared", "data", "mnist"),
    ):
        if d and os.path.exists(os.path.join(d, "train-images-idx3-ubyte.gz")):
            return d
    return None


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    src = mnist_dir()
    if src is None:
        pytest.skip("MNIST (train-images-idx3-ubyte.gz ...) not found: set MPCGPU_MNIST_DIR")
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    from mpcgpu.data.split import split_file

    sys.path.insert(0, ROOT)
    from datasets.mnist import SPLITS, convert_mnist

    work = tmp_path_factory.mktemp("groups-train-slow")
    for part, limit in (("train", TRAIN), ("test", None)):
        images, labels = (os.path.join(src, f) for f in SPLITS[part])
        path = convert_mnist(images, labels, str(work / f"mnist_{part}.h5"), name=f"mnist-{part}", limit=limit)
        split_file(path, str(work / "shards"), progress=False)
    return work


def train(work, n):
    out = work / f"n{n}.json"
    cmd = [
        find_mpiexec(),
        "-n",
        str(n),
        sys.executable,
        "-m",
        "mpcgpu.cli",
        "train",
        "--model",
        "lenet",
        "--init-seed",
        "1",
        "--seed",
        "0",
        "--data",
        str(work / "shards" / "mnist_train"),
        "--test-data",
        str(work / "shards" / "mnist_test"),
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--lr",
        "0.05",
        "--json",
        str(out),
        "--no-progress",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5400, env=local_env("cpu"))
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    steps = summary["steps"]
    record = {
        "ranks": n,
        "test_accuracy": summary["test_accuracy"],
        "wall_s": wall,
        "epoch_s": summary["epochs"][0]["seconds"],
        "mean_step_s": sum(s["seconds"] for s in steps[1:]) / max(len(steps) - 1, 1),
        "steps": len(steps),
    }
    print(f"\nLeNet, {TRAIN} MNIST images, -n {n}: {json.dumps(record)}", flush=True)
    return record


def test_two_groups_reach_one_groups_accuracy_within_one_point(shards):
    one = train(shards, 3)
    two = train(shards, 6)
    assert one["steps"] == two["steps"] == TRAIN // 128
    assert one["test_accuracy"] > 0.85  # it learned
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.01, (one, two)
