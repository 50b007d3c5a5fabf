"""`mpcgpu infer` on 3k ranks as a user runs it (single process, launching `mpiexec -n 3`,
`-n 6` and `-n 4`): k groups of three classify contiguous slices of the images, and group 0's
result owner writes one predictions file, identical to the three-rank job's (issue 22).

Small on purpose: six ranks on a two-core machine are slow."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env
from reference import mnist_shards

N = 24  # images: 12 per group with k = 2, in batches of 8 (a full and a short batch each)


def launch(ranks, args, *, env=None, timeout=600):
    full = local_env("cpu")
    full.update(env or {})
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpcgpu.cli", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full)
    return p, time.time()


def true_labels():
    from mpcgpu.assets import mnist_test_idx_paths
    from mpcgpu.assets.mnist_idx import load_mnist

    return load_mnist(*mnist_test_idx_paths(), verify=False)[1][:N]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    d = tmp_path_factory.mktemp("groups-cli")
    mnist_shards(d, {"test": slice(0, N)})
    return d


def infer(work, out, *extra):
    return [
        "infer",
        "--model",
        str(work / "shards" / "lenet_mnist"),
        "--data",
        str(work / "shards" / "test"),
        "--batch-size",
        "8",
        "--no-progress",
        "--output",
        "label",
        "--out",
        str(out),
        "--json",
        str(out.with_suffix(".summary.json")),
        *extra,
    ]


def meta_of(out):
    """The metadata JSON less what may differ between runs: the time it was written, the
    file's own name and the number of groups."""
    meta = json.loads(out.with_suffix(".json").read_text())
    meta.pop("created")
    meta.pop("groups", None)
    for entry in meta["files"].values():
        entry.pop("file")
    return meta


@pytest.fixture(scope="module")
def three(work):
    out = work / "p3.npy"
    p, _ = launch(3, infer(work, out))
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.parametrize("layout", ["block", "cyclic"])
def test_six_ranks_write_the_same_predictions_file_as_three(work, three, layout):
    out = work / f"p6-{layout}.npy"
    p, _ = launch(6, infer(work, out, "--layout", layout))
    assert p.returncode == 0, p.stderr[-3000:]
    # byte for byte: the same labels, in dataset order, in the same .npy
    assert out.read_bytes() == three.read_bytes()
    assert np.load(out).shape == (N,)
    assert meta_of(out) == meta_of(three)
    assert json.loads(out.with_suffix(".json").read_text())["groups"] == 2
    # one writer: group 0's result owner; no file of any other rank
    assert sorted(f.name for f in work.glob(f"p6-{layout}*")) == sorted(
        [out.name, out.with_suffix(".json").name, out.with_suffix(".summary.json").name]
    )
    s3 = json.loads(three.with_suffix(".summary.json").read_text())
    assert s3["correct"] == int((np.load(three) == true_labels()).sum())
    s6 = json.loads(out.with_suffix(".summary.json").read_text())
    assert s6["correct"] == s3["correct"] and s6["images"] == N  # the groups' counts summed
    assert s6["groups"] == 2 and s6["layout"] == layout
    assert [g["images"] for g in s6["per_group"]] == [N // 2, N // 2]
    assert s6["seconds"] == max(g["seconds"] for g in s6["per_group"])
    assert s6["bytes_all_parties"] == sum(g["bytes_all_parties"] for g in s6["per_group"])
    # the protocol's traffic is per image: two groups of N/2 send about what one group of N
    # sends (a batch more, and a count each: a few hundred bytes)
    assert s6["bytes_all_parties"] == pytest.approx(s3["bytes_all_parties"], rel=1e-3)
    assert "groups" not in s3 and "groups" not in json.loads(three.with_suffix(".json").read_text())
    # one banner, with k, from group 0
    assert p.stdout.count("mpcgpu infer: model lenet") == 1
    assert f"2 groups of three ({layout} layout): 12, 12 images each" in p.stdout
    assert p.stdout.count("predictions in") == 1 and p.stdout.count("private accuracy") == 1


def test_fewer_images_than_groups_and_another_owner(work, three):
    """One image on two groups: group 1 has no rows, and neither hangs nor writes; the owner
    is party 2 (world rank 4 in the block layout)."""
    out = work / "one.npy"
    p, _ = launch(6, infer(work, out, "--limit", "1", "--reveal-to", "2"), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert np.array_equal(np.load(out), np.load(three)[:1])
    s = json.loads(out.with_suffix(".summary.json").read_text())
    assert s["images"] == 1 and [g["images"] for g in s["per_group"]] == [1, 0]
    assert s["correct"] == int(np.load(three)[0] == true_labels()[0])
    assert json.loads(out.with_suffix(".json").read_text())["revealed_to"] == 2
    assert "1, 0 images each" in p.stdout


def test_four_ranks_are_refused_on_every_rank(work, tmp_path):
    p, _ = launch(4, infer(work, tmp_path / "x.npy"), timeout=120)
    assert p.returncode != 0
    assert p.stderr.count("this job has 4 ranks") == 4, p.stderr[-3000:]
    assert "3k" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())


def test_a_rank_of_group_1_killed_ends_the_whole_job(work, tmp_path):
    """World rank 3 of six, block layout: party 1 of group 1, killed inside a comparison."""
    out = tmp_path / "x.npy"
    p, ended = launch(6, infer(work, out, "--peer-timeout", "20"), env={"MPCGPU_FAULT": "a2b:3"}, timeout=300)
    assert p.returncode != 0
    m = re.search(
        r"mpcgpu \[party 1 of group 1\] killed by fault injection at 'a2b'.* at t=([0-9.]+): "
        r"party 1 of group 1 is lost",
        p.stderr,
    )
    assert m, p.stderr[-3000:]
    assert ended - float(m.group(1)) < 20 + 10  # within the peer timeout and some slack
    assert "predictions in" not in p.stdout and not out.exists()


def test_bench_inference_groups_reports_throughput_against_k(tmp_path):
    out = tmp_path / "b.json"
    args = ["bench", "inference", "--groups", "--models", "lenet", "--batch", "5", "--json", str(out)]
    p, _ = launch(6, args, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["mode"] == "groups" and s["groups"] == 2
    (row,) = s["results"]
    assert row["groups"] == 2 and row["batch"] == 5
    assert [g["images"] for g in row["per_group"]] == [3, 2]
    assert row["images_per_second"] == pytest.approx(5 / row["private_seconds"])
    assert row["private_seconds"] >= max(g["seconds"] for g in row["per_group"]) * 0.999
    for g in row["per_group"]:
        assert g["images_per_second"] == pytest.approx(g["images"] / g["seconds"])
    assert row["max_abs_diff"] < 0.05  # the five images' logits, gathered in order, against plaintext
    assert row["rounds"] > 50 and row["bytes_busiest_party"] < row["bytes_all_parties"]
    assert p.stdout.count("lenet ") == 1  # one row, from group 0's party 0
    # a K that is not the launch's: refused on every rank, before any work
    p, _ = launch(6, ["bench", "inference", "--groups", "3", "--models", "lenet"], timeout=120)
    assert p.returncode != 0 and p.stderr.count("run it under mpirun -n 9") >= 2, p.stderr[-3000:]
    assert "lenet " not in p.stdout
