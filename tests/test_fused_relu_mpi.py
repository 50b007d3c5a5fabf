"""The product with a shared bit, ReLU, MSB and A2B under every kernel set (mpcgpu.kernelsets;
on the CPU the fused kernels of mpcgpu.kernelsets.fused_relu and mpcgpu.kernelsets.fused), on three ranks.

From the same PRG state, every kernel set available here and the array steps send the
same messages and return the same components bit for bit; ``x * b`` and ``b`` are
exact in the ring (Python ints), for arbitrary ring values and both bit values.
"""

import numpy as np
import pytest

from mpcgpu.protocols import compare, convert
from reference import assert_same_runs, bit_share, kernel_set_runs, ring_words, shared_ring

pytestmark = pytest.mark.mpi(min_size=3)
U64 = np.uint64


def components(out):
    shares = out if isinstance(out, tuple) else (out,)
    return [a for s in shares if s is not None for a in (s.first, s.second)]


def assert_same(runs):
    assert len(runs) >= 2  # the array steps and at least one other set (numba; cupy on strict)
    for _, out, _ in runs:
        assert all(a.dtype == U64 for a in components(out))
    assert_same_runs(runs)


@pytest.mark.parametrize("with_bit", [False, True])
@pytest.mark.parametrize("shape", [(1,), (1000,), (3, 5, 7), (40_001,)])
def test_product_with_a_bit_is_the_array_codes_words_and_exact(rt, seeded, monkeypatch, with_bit, shape):
    x = ring_words(seeded, shape)
    b = seeded.integers(0, 2, size=shape, dtype=U64)
    sx, sb = shared_ring(rt, x.view(np.int64), seeded), bit_share(rt, seeded, b)
    runs = kernel_set_runs(rt, lambda: convert.mul_bit(sx, sb, with_bit=with_bit))
    assert_same(runs)
    out = runs[0][1]
    prod = (out[0] if with_bit else out).reveal_raw()
    exact = [int(v) * int(c) % 2**64 for v, c in zip(x.reshape(-1).tolist(), b.reshape(-1).tolist())]
    assert prod.shape == shape and prod.reshape(-1).tolist() == exact
    if with_bit:
        assert out[1].scale == 0 and np.array_equal(out[1].reveal_raw(), b)


def test_relu_and_its_derivative_are_the_array_codes_words(rt, seeded, monkeypatch):
    x = ring_words(seeded, (5000,)).view(np.int64) >> 20  # values of either sign, edges
    s = shared_ring(rt, x, seeded, 16)
    for grad in (False, True):
        runs = kernel_set_runs(rt, lambda g=grad: compare.relu(s, grad=g))
        assert_same(runs)
        y = runs[0][1][0] if grad else runs[0][1]
        assert np.array_equal(y.reveal_raw().view(np.int64), np.maximum(x, 0))


def test_msb_of_the_negation_and_a2b_are_the_array_codes_words(rt, seeded, monkeypatch):
    """The adder inputs' kernels: ``msb(x, negate=True)`` is ``msb(-x)`` word for word (both
    paths, from one PRG state), exact on the full ring (0 and -2^63 are their own negations);
    ``a2b`` (not negated) too."""
    x = ring_words(seeded, (4001,))
    s = shared_ring(rt, x.view(np.int64), seeded)
    runs = kernel_set_runs(rt, lambda: convert.msb(s, negate=True))
    assert_same(runs)
    state = rt.state()
    negated = convert.msb(-s)
    rt.restore(state)
    again = convert.msb(s, negate=True)
    assert np.array_equal(negated.first, again.first) and np.array_equal(negated.second, again.second)
    assert np.array_equal(again.reveal(), (U64(0) - x) >> U64(63))
    runs = kernel_set_runs(rt, lambda: convert.a2b(s))
    assert_same(runs)
    assert np.array_equal(runs[0][1].reveal(), x)


@pytest.mark.parametrize("cmp", ["lt", "gt", "le", "ge"])
def test_comparisons_are_exact(rt, seeded, cmp):
    a = seeded.integers(-(2**40), 2**40, 3000)
    b = a.copy()
    b[1000:] = seeded.integers(-(2**40), 2**40, 2000)  # equal, then random pairs
    sa, sb = shared_ring(rt, a, seeded), shared_ring(rt, b, seeded)
    got = getattr(compare, cmp)(sa, sb).reveal_raw()
    ref = {"lt": a < b, "gt": a > b, "le": a <= b, "ge": a >= b}[cmp]
    assert np.array_equal(got, ref.astype(U64))
