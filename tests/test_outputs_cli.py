"""The new options as a user runs them (single-process tests launching `mpiexec -n 3`):
`bench --network ... --plot`, and bad `--network` / `--output` values refused with a clear
message on every rank (issue 13 B)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env
from mpcgpu.reporting.netmodel import PROFILES, parse_network, project


def mpirun(args, cwd, timeout=300):
    cmd = [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpcgpu.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=local_env("cpu"), cwd=cwd)


@pytest.fixture(scope="module", autouse=True)
def _mpiexec():
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")


def test_bench_projects_onto_networks_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["bench", "inference", "--models", "lenet", "--json", str(out), "--plot", str(png)]
    p = mpirun([*args, "--network", "lan", "--network", "wan", "--network", "1Gbit,10ms"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "projected onto lan (10 Gbit/s, 200 us RTT)" in p.stdout
    summary = json.loads(out.read_text())
    assert [n["name"] for n in summary["networks"]] == ["lan", "wan", "1Gbit,10ms"]
    (row,) = summary["results"]
    assert 0 < row["bytes_busiest_party"] <= row["bytes_all_parties"] < 3 * row["bytes_busiest_party"] + 1
    assert row["rounds"] > 50
    for proj, net in zip(row["projections"], (PROFILES["lan"], PROFILES["wan"], parse_network("1Gbit,10ms"))):
        want = (
            row["private_seconds"] + row["rounds"] * net.rtt_s + row["bytes_busiest_party"] / net.bandwidth_bytes_per_s
        )
        assert proj["seconds"] == pytest.approx(want, rel=1e-12)
        assert proj == project(row["private_seconds"], row["rounds"], row["bytes_busiest_party"], net)
    # the WAN row is latency-bound: rounds x 40 ms dominates
    assert row["projections"][1]["latency_s"] > row["projections"][1]["transfer_s"]
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_values_fail_on_every_rank_before_any_work(tmp_path):
    p = mpirun(["bench", "inference", "--models", "lenet", "--network", "1Gb,10ms"], tmp_path, timeout=120)
    assert p.returncode != 0
    assert p.stderr.count("'bit' for bits") == 3, p.stderr  # one message per party
    assert "Traceback" not in p.stderr and not (tmp_path / "bench_inference.json").exists()
    # a --plot that rank 0 could not write at the end: refused at the start
    p = mpirun(["bench", "inference", "--models", "lenet", "--plot", str(tmp_path / "no" / "b.png")], tmp_path)
    assert p.returncode != 0 and "party 0: cannot write" in p.stderr and "does not exist" in p.stderr, p.stderr
    assert "lenet " not in p.stdout  # nothing was timed
    p = mpirun(["infer", "--model", "m", "--data", "d", "--output", "topk:0"], tmp_path, timeout=120)
    assert p.returncode != 0
    assert p.stderr.count("K must be at least 1") == 3, p.stderr
    p = mpirun(["infer", "--model", "m", "--data", "d", "--output", "soft"], tmp_path, timeout=120)
    assert p.returncode != 0 and p.stderr.count("use label, logits, probs or topk:K") == 3, p.stderr


def test_topk_above_the_classes_stops_every_rank_with_one_message(tmp_path):
    from mpcgpu.assets import lenet_weights_path, mnist_test_idx_paths
    from mpcgpu.assets.dataset_h5 import write_dataset
    from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist
    from mpcgpu.data.split import split_file

    imgs, labels = load_mnist(*mnist_test_idx_paths(), verify=False)
    write_dataset(
        str(tmp_path / "d.h5"), imgs[:4].reshape(-1, 1, 28, 28), labels[:4], name="d", mean=MNIST_MEAN, std=MNIST_STD
    )
    split_file(str(tmp_path / "d.h5"), str(tmp_path / "s"), progress=False)
    split_file(lenet_weights_path(), str(tmp_path / "s"), progress=False)
    args = ["infer", "--model", str(tmp_path / "s" / "lenet_mnist"), "--data", str(tmp_path / "s" / "d")]
    p = mpirun([*args, "--output", "topk:11", "--out", str(tmp_path / "t.npy"), "--no-progress"], tmp_path)
    assert p.returncode != 0
    # every party raises it (tests/test_outputs_mpi.py checks that in process); here the first
    # abort may end a party, on a loaded machine, before it has printed: at least two lines
    assert p.stderr.count("K must be between 1 and 10") >= 2, p.stderr
    assert "Traceback" not in p.stderr and not list(tmp_path.glob("t*"))
    p = mpirun([*args, "--output", "topk:10", "--out", str(tmp_path / "t.npy"), "--no-progress"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert np.load(tmp_path / "t.npy").shape == (4, 10) and np.load(tmp_path / "t.scores.npy").shape == (4, 10)
    assert json.loads((tmp_path / "t.json").read_text())["k"] == 10
