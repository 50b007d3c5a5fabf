"""The plaintext twin of greedy generation (mpcgpu.nn.generate.generate_plain), one process:
the key/value cache gives the recompute's logits, and both give Hugging Face's greedy tokens
(``GPT2LMHeadModel.generate``, float64) for the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from mpcgpu.nn import generate as G

STEPS = 8


@pytest.fixture(scope="module")
def tiny():
    tf = pytest.importorskip("mpcgpu.nn.transformers")
    pytest.importorskip("mpcgpu.nn.dag_run")
    if not hasattr(tf, "gpt2_decode"):
        pytest.skip("mpcgpu.nn.transformers has no gpt2_decode yet")
    c = tf.get_config("gpt2-tiny", batch=2)
    params, _ = tf.random_weights(tf.gpt2(c, present=True), seed=5, std=0.2, ln_noise=0.1)
    ids = np.random.default_rng(11).integers(0, c.vocab, size=(c.batch, c.seq_len))
    return c, params, ids


def test_cache_equals_recompute(tiny):
    c, params, ids = tiny
    full = G.generate_plain(c, params, ids, STEPS, cache=False)
    cached = G.generate_plain(c, params, ids, STEPS, cache=True)
    assert full.tokens.shape == (2, STEPS)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    for a, b in zip(cached.logits, full.logits):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    top2 = np.sort(full.logits[0], axis=-1)[:, -2:]
    np.testing.assert_allclose(full.margins[:, 0], top2[:, 1] - top2[:, 0])


def test_equals_hugging_face_greedy(tiny):
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    c, params, ids = tiny
    cfg = tr.GPT2Config(
        vocab_size=c.vocab,
        n_embd=c.hidden,
        n_layer=c.layers,
        n_head=c.heads,
        n_inner=c.ffn,
        n_positions=c.max_positions,
        layer_norm_epsilon=c.eps,
    )
    m = tr.GPT2LMHeadModel(cfg).double().eval()
    state = m.state_dict()
    for k in state:
        if k in params:  # HF names; GPT-2's Conv1D weights are [in, out] like the graph's
            assert tuple(state[k].shape) == params[k].shape, k
            state[k] = torch.from_numpy(np.asarray(params[k], dtype=np.float64))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    m.load_state_dict(state)
    with torch.no_grad():
        out = m.generate(
            torch.from_numpy(ids),
            max_new_tokens=STEPS,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
        )
    want = out[:, ids.shape[1] :].numpy()
    got = G.generate_plain(c, params, ids, STEPS, cache=True)
    assert got.margins.min() > 1e-6  # no tie that float rounding could break either way
    np.testing.assert_array_equal(got.tokens, want)


def test_refuses(tiny):
    c, params, ids = tiny
    with pytest.raises(G.GenerationError, match="positions"):
        G.generate_plain(c, params, ids, c.max_positions)
    with pytest.raises(G.GenerationError, match="steps"):
        G.generate_plain(c, params, ids, 0)
    with pytest.raises(G.GenerationError, match="expected"):
        G.generate_plain(c, params, ids[:1], 2)
    with pytest.raises(G.GenerationError, match="GPT-2"):
        G.generate_plain("bert-tiny", params, ids, 2)
