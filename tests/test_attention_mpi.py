"""masked_softmax on three ranks (issue 21): accuracy against float64 with and without
public masks (padding, causal, empty rows), any axis, the clip, costs pinned."""

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.protocols import attention
from reference import enc, shared
from test_approx_mpi import run

pytestmark = pytest.mark.mpi(min_size=3)
F = 16
TOL = 5e-4


def softmax_ref(x, axis=-1, keep=None):
    if keep is None:
        keep = np.ones(x.shape, dtype=bool)
    keep = np.broadcast_to(keep, x.shape)
    z = np.where(keep, x, -np.inf)
    m = z.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(keep, np.exp(z - m), 0.0)
    s = e.sum(axis=axis, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def test_exp_plan_and_costs(rt):
    p = attention.exp_plan()
    assert p.max_error < 2e-4 and p.domain == (-12.0, 0.0)
    c = attention.softmax_cost(12 * 128, 128)
    assert c["rounds"] == 70 + 8 + 8 + 2 + 2 + attention.plan_reciprocal((0.99, 129.28)).rounds + 2


def test_accuracy_rounds_and_bytes_unmasked(rt, seeded):
    R, n = 64, 128
    x = enc(seeded.normal(0, 4, (R, n)))
    x[0] = 0.0  # all equal: 1/n each
    x[1, :] = -50.0
    x[1, 7] = 50.0  # one winner, the rest far below the clip
    x[2] = enc(np.linspace(-13, 0, n))  # across the clip, -12 exactly near the middle
    x[3, :5] = [2.0**20, -(2.0**20), 0.0, 12.0, -12.0]  # the fixed-point range, huge spreads
    y, rounds, nbytes = run(rt, attention.masked_softmax, shared(rt, x))
    cost = attention.softmax_cost(R, n)
    assert rounds == cost["rounds"] and nbytes == cost["bytes"]
    got, want = y.reveal(), softmax_ref(x)
    assert np.abs(got - want).max() <= TOL, float(np.abs(got - want).max())
    assert np.abs(got[1, np.arange(n) != 7]).max() == 0.0  # below the clip: exactly 0
    assert abs(got[1, 7] - 1.0) <= TOL
    assert np.abs(got.sum(axis=1) - 1).max() <= 2e-3


def test_masks_padding_causal_and_empty_rows(rt, seeded):
    B, H, L = 2, 3, 16
    x = enc(seeded.normal(0, 3, (B, H, L, L)))
    pad = np.ones((B, 1, 1, L), dtype=bool)
    pad[0, ..., 11:] = False  # padding of the first sequence
    causal = np.tril(np.ones((L, L), dtype=bool))
    keep = pad & causal
    keep = np.broadcast_to(keep, x.shape).copy()
    keep[1, 2, 5] = False  # a row with nothing kept
    y, rounds, nbytes = run(rt, attention.masked_softmax, shared(rt, x), -1, keep)
    cost = attention.softmax_cost(B * H * L, L, kept=int(keep.sum()))
    assert rounds == cost["rounds"] and nbytes == cost["bytes"]
    got = y.reveal()
    want = softmax_ref(x, keep=keep)
    assert np.abs(got - want).max() <= TOL
    assert (got[~keep] == 0).all()  # masked: exactly 0
    assert (got[1, 2, 5] == 0).all()  # empty row: all 0
    # masked entries carry no information: changing them changes nothing
    x2 = np.where(keep, x, enc(seeded.normal(0, 100, x.shape)))
    got2 = attention.masked_softmax(shared(rt, x2), keep=keep).reveal()
    assert np.abs(got2 - want).max() <= TOL and (got2[~keep] == 0).all()
    # a mask that keeps everything equals no mask (up to the randomness of the truncations)
    got3 = attention.masked_softmax(shared(rt, x), keep=np.ones(L, dtype=bool)).reveal()
    assert np.abs(got3 - softmax_ref(x)).max() <= TOL


def test_other_axis(rt, seeded):
    x = enc(seeded.normal(0, 2, (5, 7, 3)))
    y = attention.masked_softmax(shared(rt, x), axis=1)
    assert y.shape == x.shape and y.scale == F
    assert np.abs(y.reveal() - softmax_ref(x, axis=1)).max() <= TOL
    keep = seeded.uniform(size=(1, 7, 1)) < 0.6
    keep[0, 0, 0] = True
    y = attention.masked_softmax(shared(rt, x), axis=-2, keep=keep)
    assert np.abs(y.reveal() - softmax_ref(x, axis=1, keep=keep)).max() <= TOL


def test_bad_arguments_fail_on_every_rank(rt):
    x = shared(rt, enc(np.zeros((2, 4))))
    with pytest.raises(ProtocolError, match="boolean"):
        attention.masked_softmax(x, keep=np.ones(4))
    with pytest.raises(ProtocolError, match="broadcast"):
        attention.masked_softmax(x, keep=np.ones(3, dtype=bool))
    with pytest.raises(ProtocolError, match="axis"):
        attention.masked_softmax(x, axis=2)
    y = attention.masked_softmax(x, keep=np.zeros((2, 4), dtype=bool))  # nothing kept: zeros
    assert (y.reveal() == 0).all()


def test_exp_over_its_whole_domain(rt):
    """The clipped exp (before the selection) against float64 on [-12, 0], dense, and the
    edges: weighted relative error (the plan's measure) and absolute error."""
    z = enc(np.concatenate([np.linspace(-12, 0, 20_001), [0.0, -(2.0**-F), -12.0, -12.0 + 2.0**-F]]))
    p = attention.exp_plan()
    e, rounds, nbytes = run(rt, attention._exp_clipped, shared(rt, z), p)
    assert rounds == 2 * attention.EXP_PRODUCTS == 8 and nbytes == 64 * attention.EXP_PRODUCTS * z.size
    got = e.reveal()
    weighted = np.abs(got / np.exp(z) - 1) * np.minimum(1, 512 * np.exp(z))
    assert weighted.max() <= 2.5e-4, float(weighted.max())
    assert np.abs(got - np.exp(z)).max() <= 2.5e-4
