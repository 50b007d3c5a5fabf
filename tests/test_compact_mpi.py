"""Compact shares (weights whose pseudo-random components are drawn again where they are
used) on three ranks: the same words and messages as an ordinary dealing, exact rows and
products, the same model outputs bit for bit, and the memory actually held."""

import pickle

import numpy as np
import pytest

from mpcgpu.ring.encoding import encode
from mpcgpu.jobs.bench import bench_params
from mpcgpu.nn import private
from mpcgpu.nn import spec as S
from mpcgpu.nn.plain import PlainModel, init_params
from mpcgpu.nn.private import PrivateModel, share_params
from mpcgpu.sharing import arithmetic, replicated
from mpcgpu.sharing import compact as compact_mod
from mpcgpu.sharing.compact import CompactShare, held, matmul_transposed
from reference import all_components, recording

pytestmark = pytest.mark.mpi(min_size=3)


def shared(rt, x, src=0, compact=False):
    """Deal ``x`` from ``src``: ordinarily, or compactly (every party calls this)."""
    deal = compact_mod.share if compact else arithmetic.share
    return deal(x if rt.rank == src else None, src=src)


def _twice(rt, make):
    """``make(compact)`` run twice from the same randomness (PRG streams and role counter):
    ordinary first, then compact."""
    state = rt.state()
    a = make(False)
    rt.restore(state)
    return a, make(True)


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (300, 41), (2, 3, 4, 5)])
@pytest.mark.parametrize("chunk", [replicated.DISTRIBUTE_CHUNK, 1000])
def test_compact_dealing_has_the_same_words_and_messages(rt, seeded, monkeypatch, shape, chunk):
    """Per source party: the same messages on the wire, the same components (materialized
    and any range of rows), every party holding the words of one component only."""
    monkeypatch.setattr(replicated, "DISTRIBUTE_CHUNK", chunk)
    x = seeded.uniform(-100, 100, shape)
    if x.size:
        x.reshape(-1)[0] = 2.0**31 - 1  # the edge of the range
    n = int(np.prod(shape, dtype=np.int64))
    for src in range(3):
        logs = []

        def make(compact, src=src, logs=logs):
            with recording(rt.comm) as log:
                s = shared(rt, x, src=src, compact=compact)
            logs.append(log)
            return s

        plain, compact = _twice(rt, make)
        assert isinstance(compact, CompactShare) and not isinstance(plain, CompactShare)

        def flat(log):
            return [
                (sorted((p, a.tobytes()) for p, a in sent.items()), sorted((p, a.tobytes()) for p, a in got.items()))
                for sent, got in log
            ]

        assert flat(logs[0]) == flat(logs[1])
        whole = compact.materialize()
        assert np.array_equal(whole.first, plain.first) and np.array_equal(whole.second, plain.second)
        assert whole.scale == plain.scale and compact.shape == tuple(shape)
        assert compact.held_bytes == 8 * n
        assert sum(hasattr(c, "recipes") for c in (compact.first, compact.second)) == 1
        if len(shape) >= 1:
            for lo, hi in [(0, shape[0]), (0, 1), (shape[0] - 1, shape[0]), (shape[0] // 3, shape[0] // 3 + 2)]:
                hi = min(hi, shape[0])
                part = compact.rows(lo, hi)
                assert np.array_equal(part.first, plain.first[lo:hi])
                assert np.array_equal(part.second, plain.second[lo:hi])
        assert np.array_equal(whole.reveal_raw(), encode(x).reshape(shape))


def test_drawn_components_are_consistent_replicas(rt, seeded):
    s = held(shared(rt, seeded.normal(size=(40, 9)), src=1, compact=True))
    comps = all_components(rt, s)
    for i in range(3):
        assert np.array_equal(comps[i][1], comps[(i + 1) % 3][0])


@pytest.mark.parametrize("block", [arithmetic.MATMUL_BLOCK, 64, 1])
def test_matmul_transposed_is_exact(rt, seeded, monkeypatch, block):
    """``x @ w.T`` with ``w`` drawn in blocks of rows gives the ring words of the ordinary
    product (all fractional bits kept: no random rounding), for every light party."""
    monkeypatch.setattr(arithmetic, "MATMUL_BLOCK", block)
    x = shared(rt, seeded.uniform(-4, 4, (3, 37)))
    wv = seeded.uniform(-1, 1, (29, 37))
    w = shared(rt, wv, src=2, compact=True)
    plain_w = w.materialize()
    for _ in range(3):  # three light parties in turn
        got = matmul_transposed(x, w, trunc=False).reveal_raw()
        want = x.matmul(plain_w.transpose(), trunc=False).reveal_raw()
        rt.next_role()
        assert np.array_equal(got, want)
    costs = []
    for product in (lambda: matmul_transposed(x, w), lambda: x.matmul(plain_w.transpose())):
        with rt.comm.measure() as m:
            product()
        costs.append((m.rounds, rt.comm.allreduce_sum(m.bytes_sent)))  # the dealer's role rotates
    assert costs[0] == costs[1] == (2, 64 * 3 * 29)  # 2 rounds, 64 bytes per output element: drawing costs none
    y = matmul_transposed(x, w).reveal()
    ref = np.rint(x.reveal() * 2.0**16) / 2.0**16 @ (np.rint(wv * 2.0**16) / 2.0**16).T
    assert np.abs(y - ref).max() <= 2 * 37 * 2.0**-16


@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_inference_only_model_gives_the_same_logits_bit_for_bit(rt, monkeypatch, name):
    """The same forward pass from the same randomness with compact and ordinary weights:
    identical ring words out (convolutions, linear layers in blocks, folded batch norms)."""
    monkeypatch.setattr(private, "COMPACT_MIN", 16)
    monkeypatch.setattr(arithmetic, "MATMUL_BLOCK", 1000)  # LeNet's linear layers in blocks
    if name == "lenet":
        from mpcgpu.nn.models import get_model

        model = get_model("lenet")
        params = bench_params(model, 0) if rt.rank == 0 else None
    else:
        net = S.Sequential(
            (S.Conv2d(3, 8, 3, padding=1), S.BatchNorm2d(8), S.ReLU(), S.Flatten(), S.Linear(8 * 6 * 6, 5))
        )
        model = S.Model("bn-compact", (3, 6, 6), 5, net)
        params = init_params(model, rng=3) if rt.rank == 0 else None
    x = np.random.default_rng(1).standard_normal((2,) + tuple(model.input_shape))

    def run(compact):
        ps = share_params(model, params, src=0, compact=compact)
        assert any(isinstance(v, CompactShare) for v in ps.values()) == compact
        pm = PrivateModel(model, ps, inference_only=True)
        return pm.forward(shared(rt, x), exact=True).reveal_raw()

    plain, compact = _twice(rt, run)
    assert np.array_equal(plain, compact)
    ref = rt.comm.bcast_object(PlainModel(model, params).forward(x, need_grad=False) if rt.rank == 0 else None)
    assert np.abs(compact.view(np.int64) / 2.0**16 - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())


def test_training_model_holds_its_words(rt, monkeypatch):
    """A model that trains (inference_only=False) holds every parameter as an ordinary share."""
    from mpcgpu.nn.models import get_model

    monkeypatch.setattr(private, "COMPACT_MIN", 16)
    model = get_model("lenet")
    ps = share_params(model, bench_params(model, 0) if rt.rank == 0 else None, src=0, compact=True)
    pm = PrivateModel(model, ps)
    assert not any(isinstance(v, CompactShare) for v in pm.params.values())


def test_compact_shares_and_recipes_are_never_pickled(rt, seeded):
    """A recipe holds a PRG key: it never leaves the process (no message, no checkpoint)."""
    s = shared(rt, seeded.normal(size=10), compact=True)
    with pytest.raises(TypeError, match="never"):
        pickle.dumps(s)
    for comp in (s.first, s.second):
        for recipe in getattr(comp, "recipes", ()):
            with pytest.raises(TypeError, match="never"):
                pickle.dumps(recipe)
