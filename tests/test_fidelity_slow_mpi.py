"""Fidelity at full size (issue 21): BERT-base (128 tokens), GPT-2 small (32 tokens) and
ViT-B/16 (224 x 224) built from their default Hugging Face configurations with random
weights (torch seed 0, the library's own initialisation), exported with
``torch.onnx.export(dynamo=True, opset_version=18)``, imported with
:func:`mpcgpu.interop.onnx_graph.import_graph` and run once privately
(:class:`mpcgpu.nn.dag_run.PrivateGraph`, three parties) against onnxruntime's float32
outputs taken in float64.  And GPT-2's private greedy generation (:mod:`mpcgpu.nn.generate`,
with the key/value cache) against the Hugging Face model's greedy tokens over 16 tokens.

Slow (marker ``slow``; minutes each) and skipped without torch and transformers.  Party 0
exports and runs onnxruntime; every party imports the same file (one machine) for the graph
and its public consts, and parties 1 and 2 drop the weights at once: the weights are shared
from party 0.  One model at a time, freed before the next.

Measured (three ranks on one shared 2-core machine, CPU back end, MPCGPU_DEVICE=cpu; ``err``
= |private - onnxruntime| over every output entry, relative to max |onnxruntime output|):

==========  =================  ==================  ==================  ========  ========  =====
model       output             max err (rel.)      mean err (rel.)     export    private   test
==========  =================  ==================  ==================  ========  ========  =====
BERT-base   last_hidden_state  0.0751 (1.8 %)      0.0132 (0.31 %)     72 s      73 s      242 s
128 tokens  pooler_output      0.0231 (2.5 %)      0.0056 (0.59 %)
GPT-2       logits             0.0620 (2.3 %)      0.0093 (0.35 %)     271 s (b) 87 s (b) (a)
32 tokens   (max |ref| 2.645)   (before (a): 0.1995 (7.5 %), 0.0297 (1.1 %); 43 s, 114 s, 243 s)
ViT-B/16    logits             0.0644 (3.2 %)      0.0153 (0.76 %)     21 s      66 s      126 s
224 x 224   (max |ref| 2.007)
==========  =================  ==================  ==================  ========  ========  =====

("export": torch.onnx.export and onnxruntime on party 0; "private": the one PrivateGraph
run; the exporter names the outputs ``layer_norm_24``/``tanh``, ``linear``, ``linear_72``.)
(a) GPT-2 measured again after LayerNorm's default domain became ``[1e-4, 2^16]``: the former
``lo = 1e-3`` clamped the first LayerNorm of every block at Hugging Face's init (``var`` of
``wte + wpe`` is ``8e-4``), which was most of the error; (b) at a machine load of about 18
(the export's time is the load's; the greedy test and this one took 898 s together).
The bounds are about 1.5 to 2 times the measured figures, per model: BERT max 4 % and mean
0.8 % of the output scale, ViT max 6 % and mean 1.5 %, GPT-2 max 5 % and mean 0.8 % (its
logits are the widest product, 768 x 50257 with the tied table, after 12 layers of
fixed-point LayerNorm, softmax and GELU; the largest error is on a few entries, the mean is
0.35 %).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.slow]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import fidelity_case as F  # noqa: E402


def _folder(rt):
    """A temp folder made by party 0, its path known to all (one machine)."""
    path = tempfile.mkdtemp(prefix="mpcgpu-fidelity-") if rt.rank == 0 else None
    return rt.comm.bcast_object(path, root=0)


def _private_run(rt, which):
    """``(errors {output: (max, mean, scale)}, seconds)`` on party 0, None elsewhere."""
    from mpcgpu.interop.onnx_graph import import_graph
    from mpcgpu.interop.onnx_import import load_onnx
    from mpcgpu.nn.dag_run import PrivateGraph, share_inputs
    from mpcgpu.sharing.arithmetic import share

    folder = _folder(rt)
    try:
        t0 = time.perf_counter()
        if rt.rank == 0:
            path, args, ref = F.export(which, folder)
        path = rt.comm.bcast_object(path if rt.rank == 0 else None, root=0)
        t_export = time.perf_counter() - t0
        g, params, consts, _ = import_graph(load_onnx(path))
        if rt.rank != 0:
            params = {k: None for k in params}
        gc.collect()
        shared = {}
        for t in g.params:  # one at a time, the owner's float copy dropped as it goes
            shared[t.name] = share(params.pop(t.name), src=0)
        del params
        gc.collect()
        feeds = share_inputs(g, args if rt.rank == 0 else None, rt)
        private = PrivateGraph(g, shared, consts, rt)
        rt.comm.barrier()
        t0 = time.perf_counter()
        outs = private.run(feeds)
        t_run = time.perf_counter() - t0
        revealed = {n: outs[n].reveal(to=0) for n in g.outputs}
        del outs, private, shared, feeds
        gc.collect()
    finally:
        if rt.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
    if rt.rank != 0:
        return None, t_run
    errors = {}
    for i, n in enumerate(g.outputs):
        r = ref[list(ref)[i]]  # onnxruntime's outputs, in the graph's order
        assert revealed[n].shape == r.shape, (n, revealed[n].shape, r.shape)
        d = np.abs(np.asarray(revealed[n], dtype=np.float64) - r)
        errors[n] = (float(d.max()), float(d.mean()), float(np.abs(r).max()))
    print(f"{which}: export+onnxruntime {t_export:.1f} s, private run {t_run:.1f} s")
    for n, (mx, mean, scale) in errors.items():
        print(f"  {n}: max err {mx:.3e}, mean err {mean:.3e}, max |ref| {scale:.3f}")
    return errors, t_run


def _check(errors, max_rel, mean_rel):
    for n, (mx, mean, scale) in errors.items():
        assert mx <= max_rel * scale, (n, mx, scale)
        assert mean <= mean_rel * scale, (n, mean, scale)


def test_bert_base_fidelity(rt):
    """BERT-base, 128 tokens (all-ones mask): last_hidden_state and pooler_output."""
    errors, _ = _private_run(rt, "bert")
    if rt.rank == 0:
        _check(errors, 0.04, 0.008)


def test_gpt2_small_fidelity(rt):
    """GPT-2 small (GPT2LMHeadModel, use_cache=False), 32 tokens: the logits."""
    errors, _ = _private_run(rt, "gpt2")
    if rt.rank == 0:
        _check(errors, 0.05, 0.008)


def test_vit_b16_fidelity(rt):
    """ViT-B/16 (ViTForImageClassification, 1000 classes), one 224 x 224 image: the logits."""
    errors, _ = _private_run(rt, "vit")
    if rt.rank == 0:
        _check(errors, 0.06, 0.015)


# -- generation -------------------------------------------------------------------------------

WTE_STD = 0.1
PROMPT = 6
STEPS = 16
MIN_GAP = 2.0


def _hf_greedy(model, ids, steps):
    """``(tokens, top-2 gaps)`` of plain greedy decoding (full recompute, float32)."""
    seq = torch.from_numpy(ids)
    toks, gaps = [], []
    with torch.no_grad():
        for _ in range(steps):
            last = model(seq).logits[0, -1].double()
            top = torch.topk(last, 2).values
            t = int(last.argmax())
            toks.append(t)
            gaps.append(float(top[0] - top[1]))
            seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
    return np.array(toks), np.array(gaps)


def test_gpt2_small_greedy_generation(rt):
    """16 greedy tokens of GPT-2 small on shares (key/value cache) equal the Hugging Face
    model's (float32, full recompute) for the same weights.

    Choice of weights.  At HF's init (std 0.02) the tied token table gives nearly flat
    logits (std about 0.55 over 50257 tokens): the top-2 gaps are a few hundredths, while
    the private logits of the fidelity test are off by 0.03 on average and 0.2 at most.
    Drawing every weight at a larger std (0.1) makes the tokens vary, but the top-2 gaps stay
    exponential-like with mean about 1 (measured minima over 16 steps: 0.01 to 0.13 for
    logits of std 2.8), so no prompt found in a short search keeps every step clear of the
    error.  So the token table alone is drawn at std WTE_STD = 0.1 (the blocks keep HF's 0.02):
    the residual stream is then led by the current token's embedding and greedy decoding
    continues the prompt's last token with top-2 gaps of 10 to 14 (logit std 2.8; the
    private error scales with the table, about 5x the fidelity test's: far below).  Party 0
    takes the first of a few seeded prompts of PROMPT tokens whose 16 plaintext steps all
    have a gap of at least MIN_GAP.  The test therefore checks the private pipeline end to
    end (prompt graph, 15 cached one-token steps, private argmax over 50257 ids, the reveal
    to the owner) against the plaintext model, not fine distinctions between tokens.

    Measured (three ranks, one shared 2-core machine, CPU back end): the first prompt
    [23781, 25722, 37952, 47767, 1751, 7245] qualifies, greedy tokens 16 x 7245, smallest
    top-2 gap 10.9; private generation 128.5 s (prompt graph and first argmax 34.0 s, each
    cached one-token step 5.1 to 8.4 s); the tokens equal; the whole test 196 s."""
    from mpcgpu.nn import generate as G
    from mpcgpu.nn import transformers as tf
    from mpcgpu.nn.dag_run import share_inputs
    from mpcgpu.sharing.arithmetic import share

    cfg = tf.get_config("gpt2")
    if rt.rank == 0:
        model, _ = F.build("gpt2", wte_std=WTE_STD)
        rng = np.random.default_rng(1)
        for attempt in range(20):
            ids = rng.integers(0, cfg.vocab, (1, PROMPT)).astype(np.int64)
            want, gaps = _hf_greedy(model, ids, STEPS)
            if gaps.min() >= MIN_GAP:
                print(f"prompt {ids.tolist()} (try {attempt}), greedy {want.tolist()}, smallest gap {gaps.min():.3f}")
                break
        else:
            pytest.fail(f"no prompt with every top-2 gap >= {MIN_GAP} in 20 tries")
        sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
        del model
        gc.collect()
    g, _ = G._graph(cfg, "prompt", PROMPT)
    shared = {}
    for t in g.params:
        shared[t.name] = share(sd.pop(t.name) if rt.rank == 0 else None, src=0)
    if rt.rank == 0:
        del sd
    gc.collect()
    prompt = share_inputs(g, {"input_ids": ids} if rt.rank == 0 else None, rt)["input_ids"]
    t0 = time.perf_counter()
    gen = G.generate(cfg, shared, prompt, STEPS, owner=0, cache=True)
    seconds = time.perf_counter() - t0
    if rt.rank == 0:
        print(f"private generation: {seconds:.1f} s, per step {[round(s, 1) for s in gen.seconds]}")
        got = gen.tokens[0]
        assert got.tolist() == want.tolist()


# -- teacher-forced next tokens at Hugging Face's own initialisation -----------------------------

TF_STEPS = 16


def test_gpt2_small_teacher_forced_at_hf_init(rt):
    """The 16 next-token choices of GPT-2 small at Hugging Face's own random init (std 0.02, no
    rescaled table), teacher-forced: a seeded text of 21 random tokens goes through the
    private network in ONE run of the 21-token graph (causal: position ``5 + k`` sees exactly
    the prefix of step ``k``, 6 to 21 tokens), and the private argmax over the 50257 ids
    chooses the next token at each of the 16 positions (revealed to party 0 only).
    Reference: the Hugging Face model in float64 on the same prefixes.  (Teacher-forced on
    a random text, not on the model's own greedy tokens: at this init greedy decoding
    repeats one token, measured on three prompts, with top-2 gaps of 0.02 to 0.19 at
    their smallest.)

    ``E`` = the largest |private - reference| logit over the 16 positions and the whole
    vocabulary.  At every step whose reference top-2 gap exceeds ``2 E``, the private token
    must equal the reference's (it cannot differ unless the error does); at the others, the
    reference logit of the private token must be within ``2 E`` of the reference's largest
    (all that the error allows).  ``E`` itself is bounded (5 % of the largest |logit|, the
    fidelity test's bound).  Unlike the greedy test's rescaled table, these logits are
    flat and the tokens vary: the check is on close tokens.

    Measured (three ranks, one shared 2-core machine at a load of about 18, CPU back end):
    text ``default_rng(2)``; reference tokens [47858, 4801, 44909, 27075, 6607, 4675, 16092,
    9172, 15049, 1765, 44909, 23528, 44909, 6607, 858, 45178] (11 distinct), top-2 gaps 0.021
    to 0.43 (median 0.16); ``E`` = 0.059 (mean error 0.0089, max |logit| 2.75: 2.2 %);
    9 of 16 steps clear (gap > 2E = 0.118), all equal; of the other 7, 6 equal and one (step
    4: gap 0.039) chose the runner-up, 0.039 below the top; private run 122.7 s, with the
    argmax over 16 x 50257 logits 136.5 s; the whole test 385 s."""
    from mpcgpu.nn import generate as G
    from mpcgpu.nn import transformers as tf
    from mpcgpu.nn.dag_run import PrivateGraph, share_inputs
    from mpcgpu.protocols.compare import argmax
    from mpcgpu.sharing.arithmetic import share

    cfg = tf.get_config("gpt2")
    T = PROMPT + TF_STEPS - 1
    if rt.rank == 0:
        model, _ = F.build("gpt2")
        model = model.double()
        seq = np.random.default_rng(2).integers(0, cfg.vocab, (1, T)).astype(np.int64)
        with torch.no_grad():
            ref = model(torch.from_numpy(seq)).logits[0, PROMPT - 1 :].numpy()  # [16, V], float64
        want = ref.argmax(axis=-1)
        top2 = np.sort(ref, axis=-1)[:, -2:]
        gaps = top2[:, 1] - top2[:, 0]
        sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
        del model
        gc.collect()
    g, consts = G._graph(cfg, "full", T)
    shared = {t.name: share(sd.pop(t.name) if rt.rank == 0 else None, src=0) for t in g.params}
    if rt.rank == 0:
        del sd
    gc.collect()
    feeds = share_inputs(g, {"input_ids": seq} if rt.rank == 0 else None, rt)
    t0 = time.perf_counter()
    logits = PrivateGraph(g, shared, consts, rt).run(feeds)["logits"][0, PROMPT - 1 :, :]
    t_run = time.perf_counter() - t0
    chosen = G.token_ids(argmax(logits, axis=-1)).reveal(to=0)
    t_all = time.perf_counter() - t0
    got = logits.reveal(to=0)
    if rt.rank != 0:
        return
    err = np.abs(got - ref)
    E = float(err.max())
    top = ref.max(axis=-1)
    slack = top - ref[np.arange(TF_STEPS), chosen]
    clear = gaps > 2 * E
    print(
        f"\nteacher-forced GPT-2 at HF init: text {seq.tolist()}, reference tokens {want.tolist()}, "
        f"private {chosen.tolist()}\n  top-2 gaps {np.round(gaps, 4).tolist()}\n  max logit error E {E:.4f} "
        f"(mean {err.mean():.4f}, max |logit| {np.abs(ref).max():.3f}); clear steps (gap > 2E) {int(clear.sum())}"
        f"/{TF_STEPS}; private run {t_run:.1f} s, with the argmax {t_all:.1f} s"
    )
    assert E <= 0.05 * np.abs(ref).max()
    assert len(set(want.tolist())) > 1  # the tokens vary
    np.testing.assert_array_equal(chosen[clear], want[clear])
    assert (slack <= 2 * E).all(), slack
