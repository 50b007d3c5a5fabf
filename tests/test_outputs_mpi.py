"""`infer --output label|logits|probs|topk:K` on three ranks (issue 13 B): each mode against
the plaintext executor to the fixed-point floor, revealed to the result owner only (the
others get no value and no file), files written with their metadata, bad values refused
on every rank before any computation; the private top-k protocol itself against a stable
NumPy sort, ties and edge values included.
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
import reference
import pytest

from mpcgpu.errors import MPCError
from mpcgpu.jobs import infer
from mpcgpu.sharing.arithmetic import ArithmeticShare
from reference import enc, recording, shared, shared_ring

pytestmark = pytest.mark.mpi(min_size=3)
N, OWNER, F = 40, 1, 16
# the private logits differ from the plaintext executor's on fixed-point inputs and weights
# only by the stochastic rounding of every product (one unit of 2^-16 each, unbiased):
# measured max 4e-5 (under 3 units of 2^-16) on these 40 images; 2^-11 (32 units) leaves
# room without hiding a real error (a wrong class, sign or scale is off by far more)
TOL = 2.0**-11


@pytest.fixture(scope="module")
def work(rt):
    """40 MNIST test images and LeNet, shared; the plaintext reference logits on every rank
    (the model and the inputs on the fixed-point grid, as the shards hold them)."""
    from mpcgpu.assets import lenet_weights_path, mnist_test_idx_paths
    from mpcgpu.assets.dataset_h5 import normalise
    from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist
    from mpcgpu.nn.models import get_model
    from mpcgpu.nn.plain import PlainModel
    from mpcgpu.nn.weights import load_weights

    d = tempfile.mkdtemp(prefix="mpcgpu-outputs-") if rt.rank == 0 else None
    d = rt.comm.bcast_object(d)
    imgs, labels = load_mnist(*mnist_test_idx_paths(), verify=False)
    imgs, labels = imgs[:N].reshape(-1, 1, 28, 28), labels[:N]
    if rt.rank == 0:
        reference.mnist_shards(d, {"test": slice(0, N)}, name=lambda part: "t")
    rt.comm.barrier()
    name, params = load_weights(lenet_weights_path())
    plain = PlainModel(get_model(name), {k: enc(v, F) for k, v in params.items()})
    x = enc(normalise(imgs, MNIST_MEAN, MNIST_STD), F)
    ref = plain.forward(x, need_grad=False)
    yield {"dir": d, "ref": ref, "labels": np.asarray(labels, dtype=np.int64)}
    rt.comm.barrier()
    if rt.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def infer_args(d, **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("reveal_to", OWNER)
    kw.setdefault("no_verify", True)
    return reference.infer_args(os.path.join(d, "shards", "lenet_mnist"), os.path.join(d, "shards", "test"), **kw)


def run_mode(rt, work, text, tag):
    """Run `infer --output TEXT --out` on every rank; the owner's files, (None, ...) elsewhere."""
    # one folder, seen by every rank: each names its own files; only the owner's may appear
    out = os.path.join(work["dir"], f"{tag}.rank{rt.rank}.npy")
    summary = os.path.join(work["dir"], f"{tag}.rank{rt.rank}.summary.json")
    assert infer.run(infer_args(work["dir"], output=infer.parse_output(text), out=out, json=summary)) == 0
    rt.comm.barrier()
    stem = out[: -len(".npy")]
    files = [out, stem + ".json", summary] + ([stem + ".scores.npy"] if text.startswith("topk") else [])
    if rt.rank != OWNER:
        assert not any(os.path.exists(f) for f in files)  # nothing written by the other parties
        # and no partial files left behind by anyone
        assert not [f for f in os.listdir(work["dir"]) if f.endswith(".partial")]
        return None
    meta = json.load(open(stem + ".json"))
    got = {name: np.load(os.path.join(work["dir"], info["file"])) for name, info in meta["files"].items()}
    return got, meta, json.load(open(summary))


def on_grid(a):
    return np.array_equal(a * 2.0**F, np.rint(a * 2.0**F))


def check_meta(meta, mode, k=None):
    assert meta["mode"] == mode and meta["k"] == k and meta["count"] == N and meta["classes"] == 10
    assert meta["model"] == "lenet" and meta["dataset"] == "t" and meta["revealed_to"] == OWNER
    assert "stored order" in meta["order"] and meta["frac_bits"] == F
    for info in meta["files"].values():
        assert info["shape"][0] == N


def test_logits_to_the_owner_exactly_rounded(rt, work):
    res = run_mode(rt, work, "logits", "logits")
    if res is None:
        return
    got, meta, summary = res
    check_meta(meta, "logits")
    logits = got["logits"]
    assert logits.shape == (N, 10) and logits.dtype == np.float64
    assert on_grid(logits)  # revealed reals are rounded exactly to the grid
    assert np.abs(logits - work["ref"]).max() <= TOL
    # accuracy counted privately from the same logits
    assert summary["output"] == "logits" and summary["correct"] == int((logits.argmax(1) == work["labels"]).sum())


def test_probs_are_the_owners_softmax_of_the_logits(rt, work):
    res = run_mode(rt, work, "probs", "probs")
    if res is None:
        return
    got, meta, _ = res
    check_meta(meta, "probs")
    probs = got["probs"]
    assert probs.shape == (N, 10) and np.all(probs >= 0)
    assert np.allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    ref = work["ref"] - work["ref"].max(axis=1, keepdims=True)
    ref = np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True)
    # softmax is 1-Lipschitz per row in the max norm of the logits (|d p| <= |d z| * max p)
    assert np.abs(probs - ref).max() <= TOL
    # the logits behind them are on the grid: log p differences are differences of grid values
    d = np.log(probs[:, 1:]) - np.log(probs[:, :1])
    assert np.abs(d * 2**F - np.rint(d * 2**F)).max() < 1e-6


def test_topk_gives_k_classes_and_their_scores(rt, work):
    k = 3
    res = run_mode(rt, work, f"topk:{k}", "top3")
    if res is None:
        return
    got, meta, summary = res
    check_meta(meta, "topk", k)
    labels, scores = got["labels"], got["scores"]
    assert labels.shape == (N, k) and labels.dtype == np.int64 and scores.shape == (N, k)
    assert on_grid(scores) and np.all(np.diff(scores, axis=1) <= 0)  # decreasing
    ref = work["ref"]
    order = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    assert np.abs(scores - np.take_along_axis(ref, labels, axis=1)).max() <= TOL
    # where the reference separates the classes by more than the tolerance, the same classes
    sorted_ref = np.take_along_axis(ref, np.argsort(-ref, axis=1, kind="stable"), axis=1)
    clear = np.all(-np.diff(sorted_ref[:, : k + 1], axis=1) > 2 * TOL, axis=1)
    assert clear.sum() >= N - 2
    assert np.array_equal(labels[clear], order[clear])
    assert summary["correct"] == int((labels[:, 0] == work["labels"]).sum())


def test_label_mode_unchanged_and_files_complete(rt, work):
    res = run_mode(rt, work, "label", "labels")
    if res is None:
        return
    got, meta, summary = res
    check_meta(meta, "label")
    pred = got["labels"]
    assert pred.shape == (N,) and pred.dtype == np.int64
    clear = np.sort(work["ref"], axis=1)[:, -1] - np.sort(work["ref"], axis=1)[:, -2] > 2 * TOL
    assert np.array_equal(pred[clear], work["ref"].argmax(1)[clear])
    assert summary["correct"] == int((pred == work["labels"]).sum())


@pytest.mark.parametrize("text", ["label", "logits", "probs", "topk:4"])
def test_only_the_owner_gets_a_value(rt, work, monkeypatch, text):
    """classify returns nothing on the other parties and every reveal goes to the owner:
    per batch the output (shape of the mode), then the count; nothing intermediate."""
    from mpcgpu.data.shards import open_shard

    reveals = []
    original = ArithmeticShare.reveal_raw

    def logged(self, to=None):
        reveals.append((tuple(self.shape), to))
        return original(self, to)

    monkeypatch.setattr(ArithmeticShare, "reveal_raw", logged)
    model = infer.load_model(rt, os.path.join(work["dir"], "shards", "lenet_mnist"), verify=False)
    data = open_shard(os.path.join(work["dir"], "shards", "test"), rt, kind="dataset", verify=False)
    output = infer.parse_output(text)
    arrays, correct = infer.classify(rt, model, data, 20, 16, output, OWNER)
    data.close()
    per_batch = {
        "label": lambda b: [(b,)],
        "logits": lambda b: [(b, 10)],
        "probs": lambda b: [(b, 10)],
        "topk": lambda b: [(b, 4), (b, 4)],
    }[output.mode]
    expected = [(s, OWNER) for b in (16, 4) for s in per_batch(b)] + [((), OWNER)]
    assert reveals == expected
    if rt.rank == OWNER:
        assert arrays is not None and correct is not None
        assert all(len(a) == 20 for a in arrays.values())
    else:
        assert arrays is None and correct is None


def test_bad_output_values_fail_clearly_on_every_rank(rt, work, monkeypatch, tmp_path):
    for bad in ("topk", "topk:", "topk:0", "topk:-2", "topk:x", "top5", "softmax", ""):
        with pytest.raises(MPCError, match="--output"):
            infer.parse_output(bad)
        parser = argparse.ArgumentParser()
        infer.add_arguments(parser)
        with pytest.raises(SystemExit):
            parser.parse_args(["--model", "m", "--data", "d", "--output", bad])
    assert infer.parse_output(" TopK:7 ") == infer.Output("topk", 7)
    # K above the model's classes: the same error on every rank, before any computation
    from mpcgpu.nn.private import PrivateModel

    def no_forward(*a, **k):
        raise AssertionError("computed before checking --output")

    monkeypatch.setattr(PrivateModel, "forward", no_forward)
    with rt.comm.measure() as m:
        with pytest.raises(MPCError, match="between 1 and 10"):
            infer.run(infer_args(work["dir"], output=infer.parse_output("topk:11")))
    assert m.bytes_sent < 1000  # only the shard checks' small messages
    # an --out the owner cannot write: refused on every rank before computing
    missing = os.path.join(work["dir"], "no-such-folder", "x.npy")
    with pytest.raises(MPCError, match="result owner .*does not exist"):
        infer.run(infer_args(work["dir"], output=infer.parse_output("logits"), out=missing))


def test_topk_protocol_against_a_stable_sort(rt, seeded):
    """Random rows with many ties (a small alphabet), the extremes of the fixed-point
    range, and one row of equal values; every k from 1 to K."""
    from mpcgpu.protocols.topk import topk

    rows, width = 50, 7
    x = seeded.integers(-4, 5, size=(rows, width)).astype(np.float64) / 4
    x[0] = 0.0
    x[1] = [2.0**30, -(2.0**30), 2.0**30 - 2.0**-16, 0, -(2.0**-16), 2.0**-16, -(2.0**30) + 1]
    x[2:10] = enc(seeded.standard_normal((8, width)) * 1000)
    s = shared(rt, x, src=2)
    order = np.argsort(-x, axis=1, kind="stable")
    for k in (1, 3, width):
        values, indices = topk(s, k)
        got_v, got_i = values.reveal(), indices.reveal()
        assert np.array_equal(got_i, order[:, :k])
        assert np.array_equal(got_v, np.take_along_axis(x, order[:, :k], axis=1))
    # any ring value below 2^60 ring units, not only the grid
    raw = seeded.integers(-(2**59), 2**59, size=(20, 5))
    raw[0, :] = raw[0, 0]
    values, indices = topk(shared_ring(rt, raw, seeded, scale=F), 5)
    ref = np.argsort(-raw, axis=1, kind="stable")
    assert np.array_equal(indices.reveal(), ref)
    assert np.array_equal(values.reveal_raw().view(np.int64), np.sort(raw)[:, ::-1])
    with pytest.raises(MPCError):
        topk(s, 0)
    with pytest.raises(MPCError):
        topk(s, width + 1)


def test_topk_reveals_nothing_inside_and_costs_what_it_says(rt, seeded, monkeypatch):
    from mpcgpu.protocols.compare import argmax
    from mpcgpu.protocols.topk import topk

    x = shared(rt, seeded.standard_normal((8, 10)), src=0)
    with rt.comm.measure() as one:
        argmax(x, axis=1)
    calls = []
    monkeypatch.setattr(ArithmeticShare, "reveal_raw", lambda self, to=None: calls.append(to))
    with recording(rt.comm) as log, rt.comm.measure() as m:
        topk(x, 3)
    assert calls == []  # no reveal inside
    # k argmaxes (the pushed-down rows compare like any others) and one selection round
    assert m.rounds == 3 * one.rounds + 1
    assert m.bytes_sent == 3 * one.bytes_sent + 8 * 8 * 3 * 10
    # messages look uniform: the selection round's words have about half their bits set
    words = np.concatenate([a.reshape(-1) for _, got in log for a in got.values()]).view(np.uint64)
    bits = np.unpackbits(words.view(np.uint8)).mean()
    assert 0.45 < bits < 0.55


def test_without_out_the_owner_sees_the_first_rows_and_nobody_writes(rt, work, capsys):
    before = sorted(os.listdir(work["dir"]))
    args = infer_args(work["dir"], output=infer.parse_output("topk:2"), limit=6)
    assert infer.run(args) == 0
    rt.comm.barrier()
    out = capsys.readouterr().out
    if rt.rank == OWNER:
        assert "labels (first 5 of 6; use --out FILE.npy to save)" in out and "scores (first 5 of 6" in out
    else:
        assert "labels (first" not in out and "scores" not in out
    assert sorted(os.listdir(work["dir"])) == before
