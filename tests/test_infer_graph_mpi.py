"""`mpcgpu infer` on graph models (three ranks): a ViT on image shards (labels revealed to
the owner, accuracy counted privately) and a BERT on token shards (its hidden states
revealed), both equal to the plaintext executor on the same inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from reference import infer_args
from tf_zoo_helpers import model_shards, temp_folder

pytestmark = pytest.mark.mpi(min_size=3)


@pytest.fixture(scope="module")
def folder(rt):
    with temp_folder(rt, "mpcgpu-infer-graph-") as d:
        yield d


def test_infer_vit_labels_and_private_accuracy(rt, folder):
    from mpcgpu.data import split
    from mpcgpu.jobs import infer
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.dag_run import run_plain

    g = TF.get_transformer("vit-tiny")
    stem, params, consts = model_shards(rt, folder, g, 3)
    x_in = g.inputs[0]
    n = 5  # two full batches of the graph's batch and a padded one when its batch is 2
    rng = np.random.default_rng(7)
    images = rng.standard_normal((n,) + x_in.shape[1:])
    want = (
        np.concatenate([run_plain(g, params, consts, {x_in.name: images[i : i + 1]})[g.outputs[0]] for i in range(n)])
        if x_in.shape[0] == 1
        else None
    )
    if want is None:
        pytest.skip("vit-tiny is built with a batch other than 1")
    labels = want.argmax(-1)
    labels[0] = (labels[0] + 1) % want.shape[-1]  # one wrong on purpose
    if rt.rank == 0:
        split.split_arrays(folder, "imgs", {"images": images, "labels": labels}, kind="dataset", name="imgs")
    rt.comm.barrier()
    out = os.path.join(folder, "pred.npy")
    summary = os.path.join(folder, "summary.json")
    infer.run(infer_args(stem, os.path.join(folder, "imgs"), out=out, json=summary))
    rt.comm.barrier()
    if rt.rank == 0:
        import json

        got = np.load(out)
        assert np.array_equal(got, want.argmax(-1))
        s = json.load(open(summary))
        assert s["correct"] == n - 1 and s["samples"] == n
    else:
        assert not os.path.exists(out + ".tmp")


def test_infer_bert_hidden_states_from_token_shards(rt, folder):
    from mpcgpu.data import split
    from mpcgpu.data.tokens import write_tokens
    from mpcgpu.jobs import infer
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.dag_run import run_plain

    cfg = TF.get_config("bert-tiny")
    g = TF.bert(cfg)
    stem, params, consts = model_shards(rt, folder, g, 4)
    batch = g.inputs[0].shape[0]
    n = batch + 1
    rng = np.random.default_rng(8)
    ids = rng.integers(0, cfg.vocab, (n, cfg.seq_len))
    mask = np.ones((n, cfg.seq_len), np.uint8)
    mask[-1, cfg.seq_len // 2 :] = 0
    if rt.rank == 0:
        write_tokens(os.path.join(folder, "toks.h5"), ids, mask, vocab_size=cfg.vocab, name="toks")
        split.split_file(os.path.join(folder, "toks.h5"), os.path.join(folder, "data"))
    rt.comm.barrier()
    out = os.path.join(folder, "hidden.npy")
    infer.run(infer_args(stem, os.path.join(folder, "data", "toks"), out=out, output=infer.Output("logits")))
    rt.comm.barrier()
    if rt.rank == 0:
        got = np.load(out)
        rows = []
        for lo in range(0, n, batch):
            idx = np.arange(lo, lo + batch) % n
            feeds = {"input_ids": ids[idx], "attention_mask": mask[idx].astype(np.int64)}
            rows.append(run_plain(g, params, consts, feeds)[g.outputs[0]][: min(batch, n - lo)])
        want = np.concatenate(rows)
        assert got.shape == want.shape
        err = np.abs(got - want)
        assert err.max() < 0.05 * max(1.0, np.abs(want).max()) and err.mean() < 0.01


def test_bench_runs_the_tiny_transformers_against_the_plaintext_executor(rt, folder):
    import json

    from mpcgpu.cli import build_parser
    from mpcgpu.jobs import bench

    out = os.path.join(folder, "bench.json")
    args = build_parser().parse_args(
        ["bench", "inference", "--models", "bert-tiny,gpt2-tiny,vit-tiny", "--json", out, "--network", "lan"]
    )
    args.device = os.environ.get("MPCGPU_DEVICE", "").strip().lower() or "cpu"
    assert bench.run(args) == 0
    rt.comm.barrier()
    if rt.rank == 0:
        rows = {r["model"]: r for r in json.load(open(out))["results"]}
        assert set(rows) == {"bert-tiny", "gpt2-tiny", "vit-tiny"}
        for name, r in rows.items():
            assert r["rounds"] > 100 and r["bytes_all_parties"] > 10**5, name
            assert r["max_abs_diff"] < 0.1 and r["mean_abs_diff"] < 0.01, (name, r["max_abs_diff"])
            assert r["projections"][0]["seconds"] > r["private_seconds"]
        assert rows["gpt2-tiny"]["argmax_agree"] >= 0.9


def test_outputs_revealed_as_reals_are_rounded_exactly(rt):
    """``run(exact=True)``: the truncation that decides a revealed output's last bit rounds
    to nearest (a function of the value alone), also behind moves and sums; without it the
    probabilistic rounding shows (and differs run to run)."""
    from mpcgpu.nn.dag import GraphModel, Node, TensorInfo
    from mpcgpu.nn.dag_run import PrivateGraph
    from mpcgpu.sharing.arithmetic import share

    f = rt.frac_bits
    rng = np.random.default_rng(11)
    x = np.round(rng.standard_normal((4, 8)) * 2**f) / 2**f
    w = np.round(rng.standard_normal((8, 6)) * 2**f) / 2**f
    g = GraphModel(
        "exact",
        [TensorInfo("x", (4, 8))],
        ["y"],
        [
            Node("MatMul", "mm", ["x", "w"], ["p"]),
            Node("Reshape", "r", ["p", "shape"], ["q"]),
            Node("Add", "a", ["q", "q"], ["y"]),
        ],
        [TensorInfo("w", (8, 6))],
        [TensorInfo("shape", (2,), "int", "public")],
    )
    model = PrivateGraph(g, {"w": share(w if rt.rank == 0 else None, src=0)}, {"shape": np.array([6, 4])}, rt)
    assert model.exact_nodes() == frozenset({0})  # behind the Reshape and the Add
    sx = share(x if rt.rank == 0 else None, src=0)
    ring = (x * 2**f).astype(np.int64) @ (w * 2**f).astype(np.int64)  # exact: |values| < 2^40
    nearest = np.floor((ring + 2 ** (f - 1)) / 2**f).reshape(6, 4) * 2 / 2**f
    runs = [model.run({"x": sx}, exact=True)["y"].reveal() for _ in range(3)]
    for got in runs:
        assert np.array_equal(got, nearest)
    loose = [model.run({"x": sx})["y"].reveal() for _ in range(6)]
    assert all(np.abs(v - nearest).max() <= 2 * 2.0**-f for v in loose)
    assert any(not np.array_equal(v, nearest) for v in loose)  # the probabilistic carry shows
