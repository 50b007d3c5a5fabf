"""One-hot rows of secret token ids by the bit product tree (mpcgpu.protocols.onehot)."""

import numpy as np
import pytest

from mpcgpu.protocols import onehot
from mpcgpu.sharing.arithmetic import share
from test_approx_mpi import run

pytestmark = pytest.mark.mpi(min_size=3)


@pytest.mark.parametrize("vocab", [1, 2, 3, 5, 16, 17, 100, 1000])
def test_one_hot_rows_are_exact_over_the_whole_vocabulary(rt, vocab):
    rng = np.random.default_rng(vocab)
    ids = np.concatenate([np.arange(vocab), rng.integers(0, vocab, 37), [0, vocab - 1]]).reshape(-1)
    ids = ids[: (ids.size // 2) * 2].reshape(2, -1)  # a batch dimension as well
    s = share(ids if rt.rank == 0 else None, src=0, integer=True)
    out, rounds, nbytes = run(rt, onehot.one_hot, s, vocab)
    got = out.reveal_raw()
    assert got.shape == ids.shape + (vocab,)
    want = np.eye(vocab, dtype=np.uint64)[ids]
    assert np.array_equal(got, want)
    cost = onehot.one_hot_cost(ids.size, vocab)
    if vocab > 1:
        assert rounds == cost["rounds"]
        assert nbytes == cost["bytes"]


def test_one_hot_masks_change_call_to_call_and_ids_outside_give_zero_rows(rt):
    ids = np.array([3, 7, 8, 15])  # vocab 8: 8 and 15 are outside (their low 3 bits < 8 select ...)
    s = share(ids if rt.rank == 0 else None, src=0, integer=True)
    a = onehot.one_hot(s, 9)
    b = onehot.one_hot(s, 9)
    assert not np.array_equal(a.first, b.first)  # fresh randomness each call
    got = a.reveal_raw()
    assert np.array_equal(got[:3], np.eye(9, dtype=np.uint64)[[3, 7, 8]])
    assert not got[3].any()  # 15 has low 4 bits 15 >= 9: a row of zeros


def test_one_hot_refuses_fixed_point_input(rt):
    from mpcgpu.errors import ProtocolError

    s = share(np.zeros(3) if rt.rank == 0 else None, src=0)
    with pytest.raises(ProtocolError, match="integer ids"):
        onehot.one_hot(s, 4)
