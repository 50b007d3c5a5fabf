"""One-hot rows of secret token ids by the bit product tree (mpcgpu.protocols.onehot)."""

import numpy as np
import pytest

from mpcgpu.protocols import domain, onehot
from mpcgpu.sharing.arithmetic import share
from test_approx_mpi import run

pytestmark = pytest.mark.mpi(min_size=3)


@pytest.mark.parametrize("vocab", [1, 2, 3, 5, 16, 17, 100, 1000])
def test_one_hot_rows_are_exact_over_the_whole_vocabulary(rt, vocab):
    rng = np.random.default_rng(vocab)
    ids = np.concatenate([np.arange(vocab), rng.integers(0, vocab, 37), [0, vocab - 1]]).reshape(-1)
    ids = ids[: (ids.size // 2) * 2].reshape(2, -1)  # a batch dimension as well
    s = share(ids if rt.rank == 0 else None, src=0, integer=True)
    with domain.guarded(rt) as g:
        out, rounds, nbytes = run(rt, onehot.one_hot, s, vocab)
        assert len(g.entries) == (vocab > 1)  # the ids' domain count, checked once by the guard
    got = out.reveal_raw()
    assert got.shape == ids.shape + (vocab,)
    want = np.eye(vocab, dtype=np.uint64)[ids]
    assert np.array_equal(got, want)
    cost = onehot.one_hot_cost(ids.size, vocab)
    if vocab > 1:
        assert rounds == cost["rounds"]
        assert nbytes == cost["bytes"]


def test_one_hot_masks_change_call_to_call(rt):
    ids = np.array([3, 7, 8, 0])
    s = share(ids if rt.rank == 0 else None, src=0, integer=True)
    a = onehot.one_hot(s, 9)
    b = onehot.one_hot(s, 9)
    assert not np.array_equal(a.first, b.first)  # fresh randomness each call
    assert np.array_equal(a.reveal_raw(), np.eye(9, dtype=np.uint64)[ids])


@pytest.mark.parametrize("bad", [9, 15, 16, 1000, 2**40, 2**62, -1, -9, -(2**40), -(2**63), -(2**63) + 3, 2**63 - 1])
def test_an_id_outside_the_vocabulary_is_an_error_on_every_rank(rt, bad):
    """Outside [0, vocab): low bits beyond the vocabulary (15: a zero row before), low bits that
    alias a valid row (1000 = 0b1111101000: row 8 before), negatives, the ring's edges and the
    wrap of id - vocab near -2^63: every one stops with a DomainError on all three parties."""
    ids = np.array([3, 7, bad, 0], dtype=object)
    words = np.array([int(v) % (1 << 64) for v in ids], dtype=np.uint64)
    s = share_raw(rt, words)
    with pytest.raises(domain.DomainError, match=r"outside \[0, 9\)"):
        with domain.guarded(rt):
            onehot.one_hot(s, 9)
    # without a guard: checked at once
    with pytest.raises(domain.DomainError):
        onehot.one_hot(s, 9)
    # the edges of the domain pass
    ok = share_raw(rt, np.array([0, 8, 8, 0], dtype=np.uint64))
    assert np.array_equal(onehot.one_hot(ok, 9).reveal_raw(), np.eye(9, dtype=np.uint64)[[0, 8, 8, 0]])


def share_raw(rt, words):
    """An integer share (scale 0) of ring words given by party 0 (any uint64)."""
    from mpcgpu.sharing.arithmetic import ArithmeticShare

    zero = rt.prg.zero_share(words.shape)  # an additive sharing of 0, party 0 adds the words
    mine = zero + (words if rt.rank == 0 else np.zeros_like(words))
    other = rt.comm.pass_prev(mine)
    return ArithmeticShare(mine, other, 0, rt)


def test_one_hot_refuses_fixed_point_input(rt):
    from mpcgpu.errors import ProtocolError

    s = share(np.zeros(3) if rt.rank == 0 else None, src=0)
    with pytest.raises(ProtocolError, match="integer ids"):
        onehot.one_hot(s, 4)
