"""`mpcgpu generate` as a user runs it: a tiny GPT-2 graph and a few token prompts shared,
`mpiexec -n 3 mpcgpu generate` launched by subprocess, its tokens equal to plaintext greedy
decoding of the same graph, only the result owner's files written; the errors stop every
rank before any computation.  And, in this process, the library pieces under the job:
recognising a stored graph as GPT-2 (:func:`mpcgpu.nn.generate.gpt2_config_of`), the
prompts' spans, the context checks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from mpcgpu import cli
from mpcgpu.jobs.launcher import find_mpiexec, local_env
from mpcgpu.nn import generate as G

STEPS = 3
WIDTH = 7  # the prompts' padded length
#: each prompt: (start, length) of its tokens in the row (right, right and left padding);
#: the first two share a span and run as one batch of two
SPANS = [(0, 5), (0, 5), (1, 6)]
#: the smallest plaintext gap between the two largest logits at every step (the private
#: error must not flip a token: tests/test_generate_mpi.py uses the same bound)
MIN_MARGIN = 0.02


def mpirun(args, cwd, n=3, timeout=600):
    cmd = [find_mpiexec(), "-n", str(n), sys.executable, "-m", "mpcgpu.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=local_env("cpu"), cwd=cwd)


def _tf():
    tf = pytest.importorskip("mpcgpu.nn.transformers")
    if not hasattr(tf, "gpt2_decode"):
        pytest.skip("mpcgpu.nn.transformers has no gpt2_decode yet")
    return tf


def _prompts(tf, c, params):
    """Ids and masks of the prompts of SPANS whose greedy steps are clear of ties, and the
    plaintext greedy tokens (generate_plain: the graphs' own float64 run, cache and full
    recompute alike)."""
    rng = np.random.default_rng(5)
    ids = np.zeros((len(SPANS), WIDTH), np.int64)
    mask = np.zeros((len(SPANS), WIDTH), np.uint8)
    want = np.zeros((len(SPANS), STEPS), np.int64)
    for i, (start, length) in enumerate(SPANS):
        for _ in range(200):
            p = rng.integers(0, c.vocab, size=(1, length))
            plain = G.generate_plain(replace(c, batch=1), params, p, STEPS)
            if plain.margins.min() >= MIN_MARGIN:
                break
        else:
            pytest.fail("no prompt among 200 keeps every greedy step clear of a tie")
        ids[i] = rng.integers(0, c.vocab, size=WIDTH)  # the padding: any ids
        ids[i, start : start + length] = p[0]
        mask[i, start : start + length] = 1
        want[i] = plain.tokens[0]
    return ids, mask, want


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    try:
        find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    tf = _tf()
    from mpcgpu.data.split import split_file
    from mpcgpu.data.tokens import write_tokens
    from mpcgpu.nn import weights as W

    d = tmp_path_factory.mktemp("generate-cli")
    c = tf.get_config("gpt2-tiny")
    g = tf.gpt2(c, present=True)
    params, consts = tf.random_weights(g, seed=3, std=0.2, ln_noise=0.1)
    W.save_weights(d / "gpt2.h5", g.name, params, spec=g, consts=consts)
    ids, mask, want = _prompts(tf, c, params)
    write_tokens(d / "prompts.h5", ids, mask, vocab_size=c.vocab, name="prompts")
    bert = tf.get_transformer("bert-tiny")
    bp, bc = tf.random_weights(bert, seed=1)
    W.save_weights(d / "bert.h5", bert.name, bp, spec=bert, consts=bc)
    for src in ("gpt2.h5", "prompts.h5", "bert.h5"):
        split_file(str(d / src), str(d / "s"), progress=False)
    # the servers' folder: each rank sees the shards; the run's folder starts empty
    run = d / "run"
    run.mkdir()
    return {"dir": d, "run": run, "want": want, "config": c, "shards": d / "s"}


def test_generate_equals_plaintext_greedy_and_only_the_owner_writes(setup):
    s, run = setup["shards"], setup["run"]
    args = ["generate", "--model", str(s / "gpt2"), "--data", str(s / "prompts"), "--tokens", str(STEPS)]
    args += ["--reveal-to", "1", "--out", "gen.npy", "--json", "summary.json", "--no-progress", "--warm-up"]
    p = mpirun(args, run)
    assert p.returncode == 0, p.stdout + p.stderr
    want = setup["want"]
    got = np.load(run / "gen.npy")
    assert got.dtype == np.int64 and got.shape == (len(SPANS), STEPS)
    np.testing.assert_array_equal(got, want)
    # the result owner's files only, each private to it
    assert sorted(os.listdir(run)) == ["gen.json", "gen.npy", "summary.json"]
    for name in ("gen.npy", "gen.json"):
        assert stat.S_IMODE(os.stat(run / name).st_mode) == 0o600
    meta = json.loads((run / "gen.json").read_text())
    assert meta["mode"] == "generate" and meta["tokens"] == STEPS and meta["count"] == len(SPANS)
    assert meta["revealed_to"] == 1 and meta["prompt_lengths"] == [n for _, n in SPANS] and meta["cache"] is True
    assert meta["files"]["tokens"] == {"file": "gen.npy", "shape": [len(SPANS), STEPS], "dtype": "int64"}
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["seconds_per_step"]) == len(summary["bytes_per_step"]) == STEPS
    assert summary["bytes_all_parties"] == sum(summary["bytes_per_step"]) > 0
    assert summary["rounds"] == sum(summary["rounds_per_step"]) > 0
    # the first step runs the prompt graphs: more than a cached one-token step
    assert summary["bytes_per_step"][0] > summary["bytes_per_step"][1]
    # printed by the owner, once
    for i, (_, length) in enumerate(SPANS):
        line = f"prompt {i} ({length} tokens) -> {' '.join(str(t) for t in want[i])}"
        assert p.stdout.count(line) == 1, p.stdout
    assert p.stdout.count("party 1 (result owner): 9 tokens (3 prompts x 3)") == 1, p.stdout
    assert "first token" in p.stdout and "each further token" in p.stdout
    assert p.stdout.count("warm-up: the first prompts and one step in") == 1  # party 0's line


def test_errors_stop_every_rank_before_any_work(setup):
    s, run = setup["shards"], setup["dir"] / "errors"
    run.mkdir()
    base = ["--data", str(s / "prompts"), "--no-progress", "--out", "gen.npy"]
    # not a causal LM graph: a BERT
    p = mpirun(["generate", "--model", str(s / "bert"), "--tokens", "2", *base], run, timeout=300)
    assert p.returncode != 0
    assert p.stderr.count("is not a causal language model with key/value cache support") >= 2, p.stderr
    # more tokens than the context holds after the longest prompt (6 tokens, 64 positions)
    p = mpirun(["generate", "--model", str(s / "gpt2"), "--tokens", "60", *base], run, timeout=300)
    assert p.returncode != 0
    assert p.stderr.count("need 65 positions; the model's context is 64: at most 59 tokens") >= 2, p.stderr
    # N < 1: refused before the parties start
    p = mpirun(["generate", "--model", str(s / "gpt2"), "--tokens", "0", *base], run, timeout=300)
    assert p.returncode != 0 and p.stderr.count("--tokens must be at least 1, not 0") == 3, p.stderr
    # two ranks
    p = mpirun(["generate", "--model", str(s / "gpt2"), "--tokens", "2", *base], run, n=2, timeout=300)
    assert p.returncode != 0 and "ranks (3, 6, 9, ...: k groups); this job has 2 ranks" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert os.listdir(run) == []


# -- in this process ----------------------------------------------------------------------------


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for words in ("--tokens N", "--reveal-to", "key/value cache", "result owner", "mpirun -n 3 mpcgpu generate"):
        assert words in out


def test_gpt2_config_of_a_stored_graph(tmp_path):
    tf = _tf()
    from mpcgpu.nn import weights as W

    c = tf.get_config("gpt2-tiny", batch=2)
    for variant in (dict(present=True), dict(), dict(last_only=True)):
        g = tf.gpt2(c, **variant)
        params, consts = tf.random_weights(g, seed=1)
        W.save_weights(tmp_path / "m.h5", g.name, params, spec=g, consts=consts)
        back, _, stored = W.load_graph(tmp_path / "m.h5")
        assert G.gpt2_config_of(back, stored) == c
    wide = replace(tf.get_config("gpt2-tiny"), heads=4, layers=3, ffn=64, max_positions=40, seq_len=9, eps=1e-6)
    g = tf.gpt2(wide)
    assert G.gpt2_config_of(g, tf.graph_consts(g)) == replace(wide, name=g.name)


def test_gpt2_config_of_refuses_what_is_not_gpt2():
    tf = _tf()
    bert = tf.get_transformer("bert-tiny")
    with pytest.raises(G.GenerationError, match="bert-tiny is not a causal language model.*transformer.wte.weight"):
        G.gpt2_config_of(bert, tf.graph_consts(bert))
    g = tf.gpt2("gpt2-tiny", present=True)
    consts = tf.graph_consts(g)
    open_mask = dict(consts, **{"const.causal_mask": np.zeros_like(consts["const.causal_mask"])})
    with pytest.raises(G.GenerationError, match="public constants"):  # a mask that is not causal
        G.gpt2_config_of(g, open_mask)
    from mpcgpu.nn import dag

    d = dag.to_dict(g)
    gelu = next(n for n in d["nodes"] if n["op"] == "Tanh")
    gelu["op"] = "Erf"  # another activation: the nodes differ
    with pytest.raises(G.GenerationError, match="nodes differ"):
        G.gpt2_config_of(dag.from_dict(d), consts)


def test_gpt2_config_of_refuses_an_imported_onnx_gpt2():
    pytest.importorskip("onnx")
    from mpcgpu.interop.importer import import_model

    path = os.path.join(os.path.dirname(__file__), "fixtures", "transformers", "gpt2.onnx")
    g, _, consts, _ = import_model(path, graph=True, check=False)
    with pytest.raises(G.GenerationError, match="imported from ONNX"):
        G.gpt2_config_of(g, consts)


def test_save_gpt2_from_hugging_face_names(tmp_path):
    tf = _tf()
    from mpcgpu.nn import weights as W

    c = tf.get_config("gpt2-tiny")
    params, _ = tf.random_weights(tf.gpt2(c), seed=2)
    state = dict(params)
    state["lm_head.weight"] = params["transformer.wte.weight"].copy()  # tied, as HF's state dict has it
    state["transformer.h.0.attn.bias"] = np.ones((1, 1, 64, 64))  # a buffer the graph does not read
    g = G.save_gpt2(tmp_path / "g.h5", c, state, dtype=np.float64)
    back, stored, consts = W.load_graph(tmp_path / "g.h5")
    assert G.gpt2_config_of(back, consts) == c and back.outputs == g.outputs and len(g.outputs) == 1 + 2 * c.layers
    assert all(np.array_equal(stored[k], params[k]) for k in params)
    bad = dict(state, **{"lm_head.weight": state["lm_head.weight"] + 1.0})
    bad.pop("transformer.ln_f.bias")
    bad["transformer.h.1.mlp.c_fc.weight"] = np.zeros((128, 32))  # a torch Linear's [out, in]
    with pytest.raises(G.GenerationError) as e:
        G.save_gpt2(tmp_path / "h.h5", c, bad)
    msg = str(e.value)
    assert "missing transformer.ln_f.bias" in msg and "c_fc.weight: shape (128, 32), expected (32, 128)" in msg
    assert "lm_head.weight differs" in msg and not (tmp_path / "h.h5").exists()


def test_save_gpt2_of_a_hugging_face_model_generates_its_greedy_tokens(tmp_path):
    """The journey of --help: a GPT2LMHeadModel's state dict -> save_gpt2 -> the stored graph
    (recognised as GPT-2) generates Hugging Face's greedy tokens (float64, plaintext)."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    tf = _tf()
    from mpcgpu.nn import weights as W

    cfg = tr.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_inner=32, n_positions=24)
    torch.manual_seed(0)
    m = tr.GPT2LMHeadModel(cfg).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, dtype=p.dtype))
    state = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    c = tf.TransformerConfig(
        "gpt2", 2, 2, 16, 32, vocab=50, seq_len=8, max_positions=24, eps=cfg.layer_norm_epsilon, name="hf-tiny"
    )
    G.save_gpt2(tmp_path / "hf.h5", c, state, dtype=np.float64)
    g, params, consts = W.load_graph(tmp_path / "hf.h5")
    got_c = G.gpt2_config_of(g, consts)
    ids = np.array([[3, 14, 15, 9, 26]])
    with torch.no_grad():
        out = m.generate(
            torch.from_numpy(ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones_like(torch.from_numpy(ids)),
        )
    got = G.generate_plain(replace(got_c, batch=1), params, ids, 6)
    assert got.margins.min() > 1e-6
    np.testing.assert_array_equal(got.tokens, out[:, ids.shape[1] :].numpy())


def test_prompt_spans():
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]])
    assert G.prompt_spans(mask) == [(0, 3), (1, 3), (1, 1), (0, 4)]
    with pytest.raises(G.GenerationError, match="prompt 1 has no token"):
        G.prompt_spans([[1, 0], [0, 0]])
    with pytest.raises(G.GenerationError, match="prompt 0: its attention mask has padding between tokens"):
        G.prompt_spans([[1, 0, 1]])


def test_check_prompts():
    tf = _tf()
    c = tf.get_config("gpt2-tiny")  # 64 positions
    G.check_prompts(c, [(0, 5), (2, 60)], 5)  # 60 + 5 - 1 = 64: fits exactly
    with pytest.raises(G.GenerationError, match="need 65 positions; the model's context is 64: at most 5 tokens"):
        G.check_prompts(c, [(0, 5), (2, 60)], 6)
    with pytest.raises(G.GenerationError, match="prompt 1 has 70 tokens, longer than the model's context of 64"):
        G.check_prompts(c, [(0, 5), (0, 70)], 1)
    with pytest.raises(G.GenerationError, match="at least 1"):
        G.check_prompts(c, [(0, 5)], 0)


def test_batches_group_prompts_by_span():
    from mpcgpu.jobs.generate import batches

    got = [(r.tolist(), s, n) for r, s, n in batches([(0, 5), (1, 4), (0, 5), (0, 5), (1, 4)], 2)]
    assert got == [([0, 2], 0, 5), ([3], 0, 5), ([1, 4], 1, 4)]
