"""Three ranks: a token dataset's shard set read by the servers (TokenDataset): one-hot id
shares that reveal to the owner's ids, public masks alike on every party, labels; and the
embedding lookup the private Gather does with them (one-hot share times a secret table,
integer times fixed point: no truncation) equal to the table's rows."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from mpcgpu.data import split
from mpcgpu.data import tokens as T
from mpcgpu.errors import ShardError

pytestmark = pytest.mark.mpi(min_size=3)

VOCAB, N, SEQ = 13, 4, 5


@pytest.fixture(scope="module")
def token_set(rt):
    d = tempfile.mkdtemp(prefix="mpcgpu-tokens-") if rt.rank == 0 else None
    d = rt.comm.bcast_object(d)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, VOCAB, (N, SEQ))
    ids[0, 0], ids[0, 1] = 0, VOCAB - 1
    mask = np.ones((N, SEQ), np.uint8)
    mask[2, 3:] = 0
    labels = rng.integers(0, 2, N)
    if rt.rank == 0:
        T.write_tokens(os.path.join(d, "t.h5"), ids, mask, labels, vocab_size=VOCAB, name="toy", num_classes=2)
        split.split_file(os.path.join(d, "t.h5"), os.path.join(d, "s"))
    rt.comm.barrier()
    yield os.path.join(d, "s", "t"), ids, mask, labels
    rt.comm.barrier()
    if rt.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def test_token_batches(rt, token_set):
    stem, ids, mask, labels = token_set
    data = T.TokenDataset(stem, rt)
    assert len(data) == N and data.seq_len == SEQ and data.vocab_size == VOCAB and data.has_labels
    seen = []
    for rows, oh, m, lab in data.sequential(3):
        assert oh.scale == 0 and oh.shape == (len(rows), SEQ, VOCAB)
        assert np.array_equal(m, mask[rows])  # public: the same on every party
        assert np.array_equal(oh.reveal(), T.one_hot(ids[rows], VOCAB))
        assert np.array_equal(lab.reveal(), labels[rows])
        seen += list(rows)
    assert seen == list(range(N))
    data.close()


def test_one_hot_times_secret_table_is_the_embedding(rt, token_set):
    from mpcgpu.sharing.arithmetic import matmul, share

    stem, ids, _, _ = token_set
    table = np.random.default_rng(9).normal(0, 0.5, (VOCAB, 6))
    secret_table = share(table if rt.rank == 0 else None, src=0)
    data = T.TokenDataset(stem, rt, limit=2)
    oh, _, _ = data.batch(np.arange(2))
    data.close()
    emb = matmul(oh, secret_table)
    assert emb.scale == rt.frac_bits
    got = emb.reveal()
    assert np.abs(got - table[ids[:2]]).max() <= 2.0**-rt.frac_bits


def test_not_a_token_set_is_refused_everywhere(rt, token_set):
    d = tempfile.mkdtemp(prefix="mpcgpu-img-") if rt.rank == 0 else None
    d = rt.comm.bcast_object(d)
    if rt.rank == 0:
        split.split_arrays(d, "img", {"images": np.zeros((2, 1, 2, 2))}, kind="dataset", name="img")
    rt.comm.barrier()
    with pytest.raises(ShardError, match="not a token dataset"):
        T.TokenDataset(os.path.join(d, "img"), rt)
    rt.comm.barrier()
    if rt.rank == 0:
        shutil.rmtree(d, ignore_errors=True)
