"""Greedy generation on shares (mpcgpu.nn.generate), three ranks.

* the engine (:func:`greedy_loop`) on a bigram model ``logits = onehot @ W`` (exact on the
  ring: an integer one-hot times fixed point needs no truncation), so the chosen tokens
  must equal NumPy's argmax chain exactly, ties included (lowest id);
* GPT-2 tiny (tf-zoo's ``gpt2`` / ``gpt2_decode`` graphs, graph-core's executor): 8 greedy
  tokens equal the plaintext greedy tokens of :func:`run_plain`, with and without the key/value
  cache;
* every reveal during generation goes to the result owner only (a tracer on the one
  reconstruction routine of the shares), and only the owner holds the tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpcgpu.nn import generate as G
from mpcgpu.sharing.arithmetic import share
from mpcgpu.sharing.replicated import ReplicatedPair

pytestmark = pytest.mark.mpi(min_size=3)

F = 16


def enc(x):
    return np.rint(np.asarray(x, dtype=np.float64) * 2.0**F) / 2.0**F


def one_hot(ids, width):
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros(ids.shape + (width,), dtype=np.int64)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


def shared(rt, x, src, **kw):
    return share(x if rt.rank == src else None, src=src, rt=rt, **kw)


class RevealTracer:
    """Records ``(kind, to, shape)`` of every reconstruction of a share (reveal, reveal_raw,
    to one party or to all: they all go through ``ReplicatedPair._reconstruct``)."""

    def __init__(self, monkeypatch):
        self.events = []
        original = ReplicatedPair._reconstruct

        def traced(share_obj, to, combine):
            self.events.append((type(share_obj).__name__, to, tuple(share_obj.shape)))
            return original(share_obj, to, combine)

        monkeypatch.setattr(ReplicatedPair, "_reconstruct", traced)


#: the one bit a graph run reveals to all (mpcgpu.protocols.domain: "some input was outside
#: a domain"; 0, or the run stops with an error)
GUARD_BIT = ("BinaryShare", None, (1,))


def check_owner_only(rt, tracer, gen, owner, steps, batch, runs=0):
    """Exactly one reveal per generated token, each of ``batch`` ids, each to ``owner``; and
    ``runs`` domain-guard bits (one per graph run), revealed to all."""
    assert [e for e in tracer.events if e != GUARD_BIT] == [("ArithmeticShare", owner, (batch,))] * steps
    assert tracer.events.count(GUARD_BIT) == runs
    if rt.rank == owner:
        assert gen.tokens is not None and gen.tokens.shape == (batch, steps)
    else:
        assert gen.tokens is None
    # every party agrees on what the owner was told, and only the owner was told it
    told = rt.comm.allgather_object(gen.tokens)
    assert [t is not None for t in told] == [r == owner for r in range(3)]
    return told[owner]


# -- the engine, on a bigram model -------------------------------------------------------------


@pytest.mark.parametrize("owner", [0, 2])
def test_greedy_loop_bigram_exact(rt, seeded, monkeypatch, owner):
    V, B, N = 12, 3, 8
    W = enc(seeded.normal(size=(V, V)))
    W[5] = 0.25  # a row of ties: argmax is the lowest id, 0
    W[0, 3] = W[0, 9] = W[0].max() + 1.0  # a tie of two maxima: 3
    prompt = np.array([[4, 1, 7], [2, 2, 5], [11, 0, 6]])
    Ws = shared(rt, W, 0)  # the model owner
    p = shared(rt, one_hot(prompt, V), 1, integer=True)  # the data owner
    calls = []

    def first():
        return p @ Ws, None  # [B, T, V]: the engine reads the last position

    def step(oh, state, k):
        assert oh.shape == (B, V) and oh.scale == 0
        calls.append(k)
        return oh @ Ws, state

    tracer = RevealTracer(monkeypatch)
    gen = G.greedy_loop(first, step, N, owner=owner)
    monkeypatch.undo()
    tokens = check_owner_only(rt, tracer, gen, owner, N, B)
    assert calls == list(range(N - 1))  # the last token needs no further logits

    expect = np.zeros((B, N), dtype=np.int64)
    tok = prompt[:, -1]
    for k in range(N):
        tok = W[tok].argmax(axis=-1)
        expect[:, k] = tok
    assert expect[1, 0] == 0 and expect[1, 1] == 3  # the ties are on the path
    np.testing.assert_array_equal(tokens, expect)
    # the one-hots stay secret, and are the same tokens
    oh = np.stack([o.reveal() for o in gen.onehots], axis=1)
    np.testing.assert_array_equal(oh, one_hot(expect, V))


def test_greedy_loop_refuses(rt):
    with pytest.raises(G.GenerationError, match="steps"):
        G.greedy_loop(lambda: None, lambda *a: None, 0)
    with pytest.raises(G.GenerationError, match="owner"):
        G.greedy_loop(lambda: None, lambda *a: None, 2, owner=3)


# -- GPT-2 tiny ------------------------------------------------------------------------------

STEPS = 8
#: weights: HF's init but std 0.2 instead of 0.02, so that the blocks outweigh the tied
#: embedding's pull back to the last token (greedy decoding of a random GPT-2 at 0.02 repeats
#: one token); logits are then about 1 in size
STD = 0.2
#: the smallest plaintext gap between the two largest logits that the prompt must keep at
#: every step: a gap below the private run's error would make the test a coin toss
MIN_MARGIN = 0.02
#: and the generated tokens must not be one token repeated
MIN_DISTINCT = 3


def _gpt2_pieces():
    tf = pytest.importorskip("mpcgpu.nn.transformers")
    pytest.importorskip("mpcgpu.nn.dag_run")
    if not hasattr(tf, "gpt2_decode"):
        pytest.skip("mpcgpu.nn.transformers has no gpt2_decode yet")
    return tf


@pytest.fixture(scope="module")
def tiny():
    """gpt2-tiny with random weights and a prompt whose greedy steps are clear of ties."""
    tf = _gpt2_pieces()
    c = tf.get_config("gpt2-tiny")
    params, _ = tf.random_weights(tf.gpt2(c, present=True), seed=3, std=STD, ln_noise=0.1)
    rng = np.random.default_rng(7)
    for _ in range(200):
        ids = rng.integers(0, c.vocab, size=(c.batch, c.seq_len))
        plain = G.generate_plain(c, params, ids, STEPS, cache=False)
        if plain.margins.min() >= MIN_MARGIN and len(set(plain.tokens.ravel().tolist())) >= MIN_DISTINCT:
            return c, params, ids, plain
    pytest.fail("no prompt among 200 keeps every greedy step clear of a tie")


def test_plain_cache_matches_recompute(tiny):
    c, params, ids, plain = tiny
    cached = G.generate_plain(c, params, ids, STEPS, cache=True)
    np.testing.assert_array_equal(cached.tokens, plain.tokens)
    for a, b in zip(cached.logits, plain.logits):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cache", [True, False])
def test_gpt2_tiny_greedy_equals_plaintext(rt, tiny, monkeypatch, cache):
    c, params, ids, plain = tiny
    owner = 1
    shares = {k: shared(rt, v, 0) for k, v in params.items()}  # model owner: party 0
    prompt = shared(rt, one_hot(ids, c.vocab), 2, integer=True)  # data owner: party 2
    tracer = RevealTracer(monkeypatch)
    gen = G.generate(c, shares, prompt, STEPS, owner=owner, cache=cache)
    monkeypatch.undo()
    tokens = check_owner_only(rt, tracer, gen, owner, STEPS, c.batch, runs=STEPS)  # prompt + STEPS - 1
    np.testing.assert_array_equal(tokens, plain.tokens)
    assert gen.cache is cache and len(gen.seconds) == STEPS
    if rt.rank == 0:
        print(
            f"\ngpt2-tiny, cache={cache}: tokens {tokens.tolist()}, "
            f"seconds per step {np.round(gen.seconds, 2).tolist()}"
        )


def test_generate_refuses(rt, tiny):
    c, params, ids, _ = tiny
    shares = {k: shared(rt, v, 0) for k, v in params.items()}
    prompt = shared(rt, one_hot(ids, c.vocab), 0, integer=True)
    with pytest.raises(G.GenerationError, match="positions"):
        G.generate(c, shares, prompt, c.max_positions, owner=0)
    with pytest.raises(G.GenerationError, match="one-hot"):
        G.generate(c, shares, shared(rt, ids.astype(np.float64), 0), 2)
    with pytest.raises(G.GenerationError, match="shares"):
        G.generate(c, params, prompt, 2)
