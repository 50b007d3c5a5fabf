"""Private SGD and its gradient bound (issue 20, point 8c), on three ranks: the update's
integer sums assume batch-summed gradients below 2^MAX_BITS; a larger one corrupts the
update unnoticed, and ``clip=True`` clips it privately to the bound (10 rounds) while
leaving gradients within the bound unchanged word for word."""

import numpy as np
import pytest

from mpcgpu.nn.optim import MAX_BITS, PrivateSGD, clip_to_bound
from mpcgpu.sharing.arithmetic import to_scale
from reference import shared, shared_ring

pytestmark = pytest.mark.mpi(min_size=3)
F = 16


def test_clip_leaves_values_within_the_bound_unchanged_and_clips_the_rest(rt, seeded):
    scale = F + 8  # the optimiser's scale
    limit = 2**MAX_BITS - 2.0**-F
    lim_ring = (1 << (MAX_BITS + scale)) - (1 << (scale - F))
    inside = seeded.integers(-lim_ring, lim_ring + 1, 3000)
    inside[:6] = [0, 1, -1, lim_ring, -lim_ring, lim_ring - 1]
    outside = np.array([lim_ring + 1, -lim_ring - 1, 2 * lim_ring, -(2**60), 2**60, 2**61 - 1], dtype=np.int64)
    raw = np.concatenate([inside, outside, seeded.integers(lim_ring + 1, 2**61, 500)])
    g = shared_ring(rt, raw, seeded, scale)
    with rt.comm.measure() as m:
        clipped = clip_to_bound(g)
    got = clipped.reveal_raw().view(np.int64)
    assert m.rounds == 10
    assert np.array_equal(got[: inside.size], inside)  # word for word
    want = np.clip(raw[inside.size :], -lim_ring, lim_ring)
    assert np.array_equal(got[inside.size :], want)
    assert got[inside.size] / 2.0**scale == limit


def _sgd(rt, w, grad, clip):
    params = {"w": shared(rt, w)}
    opt = PrivateSGD(params, ["w"], lr=0.5, momentum=0.0, clip=clip)
    new = opt.step({"w": shared(rt, grad)}, batch_size=1)
    return new["w"].reveal()


def test_a_gradient_beyond_the_bound_corrupts_the_update_unless_clipped(rt, seeded):
    w = seeded.uniform(-1, 1, 200)
    grad = seeded.uniform(-100, 100, 200)
    grad[:4] = [2.0**MAX_BITS * 1.5, -(2.0**MAX_BITS) * 3, 2.0**MAX_BITS - 1, 0.0]
    limit = 2**MAX_BITS - 2.0**-F
    want = w - 0.5 * np.clip(grad, -limit, limit)  # plain SGD with the clipped gradient
    clipped = _sgd(rt, w, grad, clip=True)
    assert np.abs(clipped - want).max() < 1e-3
    unclipped = _sgd(rt, w, grad, clip=False)
    assert np.abs(unclipped[4:] - want[4:]).max() < 1e-3  # within the bound: the same update
    assert np.abs(unclipped[:2] - want[:2]).max() > 1.0  # beyond it: garbage, silently


def test_clipping_changes_nothing_within_the_bound(rt, seeded):
    """With every gradient inside the bound, the clipped step's weights are those of the
    unclipped step up to the update's own stochastic rounding."""
    w = seeded.uniform(-1, 1, 300)
    grad = seeded.uniform(-1000, 1000, 300)
    a = _sgd(rt, w, grad, clip=True)
    b = _sgd(rt, w, grad, clip=False)
    assert np.abs(a - b).max() <= 2 * 2.0**-F
    g = to_scale(shared(rt, grad), F + 8)
    assert np.array_equal(clip_to_bound(g).reveal_raw(), g.reveal_raw())
