"""Every protocol with local steps under every kernel set (mpcgpu.kernelsets), on three ranks.

From the same randomness (PRG streams, role counter) each kernel set available on this
back end (cpu: array, numba; strict: array, cupy) must return the array steps' words and
send and receive the same messages, round by round; the result is also checked against
an exact plaintext reference.  The list of protocols below exercises every step of
``kernelsets.STEPS`` (checked), so a new step without a protocol here fails.
"""

import numpy as np
import pytest

from mpcgpu import kernelsets
from mpcgpu.protocols import compare, convert, rounding
from mpcgpu.sharing import truncation
from mpcgpu.sharing.arithmetic import ArithmeticShare
from reference import assert_same_runs, bit_share, kernel_set_runs, ring_words, shared_ring

pytestmark = pytest.mark.mpi(min_size=3)
U64 = np.uint64


def small(rng, shape, bound=2**40):
    x = rng.integers(-bound, bound, size=shape, dtype=np.int64)
    x.reshape(-1)[:3] = [0, -1, bound - 1][: x.size]
    return x


def summand_of(rt, rng, x):
    """This party's three-out-of-three summand of the ring values ``x``."""
    u = np.asarray(x).astype(np.int64).view(U64)
    c0 = rng.integers(0, 2**64, size=u.shape, dtype=U64)
    c1 = rng.integers(0, 2**64, size=u.shape, dtype=U64)
    return [c0, c1, u - c0 - c1][rt.rank].copy()


def floor_exact(x, bits, offset=0):
    d = np.broadcast_to(np.asarray(bits), np.shape(x)).reshape(-1).tolist()
    return [(int(v) + offset) >> int(s) for v, s in zip(np.reshape(x, -1).tolist(), d)]


def revealed(rt, pair):
    return ArithmeticShare(pair[0], pair[1], 0, rt).reveal_raw().view(np.int64).reshape(-1).tolist()


# -- the protocols: (name, build(rt, rng) -> (call, check(out))) -------------------------------


def trunc_rss(rt, rng):
    x = small(rng, (6, 7), 2**61)
    s = shared_ring(rt, x, rng)
    bits = rng.integers(1, 63, size=(1, 7))
    call = lambda: truncation.msb_corrected(rt, x.shape, bits, rss=(s.first, s.second), offset=2**9)  # noqa: E731

    def check(pair):
        diff = {g - e for g, e in zip(revealed(rt, pair), floor_exact(x, bits, 2**9))}
        assert diff <= {0, 1}

    return call, check


def trunc_summand(rt, rng):
    x = small(rng, (500,), 2**61)
    z = summand_of(rt, rng, x)
    call = lambda: truncation.msb_corrected(rt, x.shape, 13, summand=z)  # noqa: E731

    def check(pair):
        assert {g - e for g, e in zip(revealed(rt, pair), floor_exact(x, 13))} <= {0, 1}

    return call, check


def trunc_keep(rt, rng):
    """``keep=True`` (the array steps on every set), summand and replicated input."""
    x = small(rng, (300,), 2**60)
    z = summand_of(rt, rng, x)
    s = shared_ring(rt, x, rng)

    def call():
        a = truncation.msb_corrected(rt, x.shape, 11, summand=z, keep=True)
        b = truncation.msb_corrected(rt, x.shape, 11, rss=(s.first, s.second), keep=True)
        return a, b

    def check(out):
        for pair, (_dealer, c_lo, r_lo) in out:
            assert {g - e for g, e in zip(revealed(rt, pair), floor_exact(x, 11))} <= {0, 1}
            assert r_lo[0].shape == r_lo[1].shape == x.shape and (c_lo is None or c_lo.shape == x.shape)

    return call, check


def round_exactly(rt, rng):
    x = small(rng, (400,), 2**50)
    s = shared_ring(rt, x, rng, 16)

    def check(y):
        assert np.array_equal(y.reveal_raw().view(np.int64), (x + 2**9) >> 10)

    return (lambda: rounding.round_exact(s, 10)), check


def msb_both_signs(rt, rng):
    x = ring_words(rng, (33, 3))
    s = shared_ring(rt, x.view(np.int64), rng)

    def check(out):
        plain, negated = out
        assert np.array_equal(plain.reveal(), x >> U64(63))
        assert np.array_equal(negated.reveal(), (U64(0) - x) >> U64(63))

    return (lambda: (convert.msb(s), convert.msb(s, negate=True))), check


def a2b(rt, rng):
    x = ring_words(rng, (257,))
    s = shared_ring(rt, x.view(np.int64), rng)

    def check(b):
        assert np.array_equal(b.reveal(), x)

    return (lambda: convert.a2b(s)), check


def mul_bit_case(name, x_shape, b_shape):
    """The product with a shared bit of shape ``b_shape``: the same shape as ``x``, or one
    broadcast against it (the array steps on every set)."""

    def build(rt, rng):
        x = ring_words(rng, x_shape)
        b = rng.integers(0, 2, size=b_shape, dtype=U64)
        sx, sb = shared_ring(rt, x.view(np.int64), rng), bit_share(rt, rng, b)

        def check(out):
            prod, bit = out
            assert np.array_equal(prod.reveal_raw(), x * b) and np.array_equal(bit.reveal_raw(), b)

        return (lambda: convert.mul_bit(sx, sb, with_bit=True)), check

    build.__name__ = name
    return build


mul_bit_same_shape = mul_bit_case("mul_bit_same_shape", (40, 25), (40, 25))
mul_bit_broadcast = mul_bit_case("mul_bit_broadcast", (6, 9), (1, 9))


def b2a(rt, rng):
    b = rng.integers(0, 2, size=(5, 11), dtype=U64)
    sb = bit_share(rt, rng, b)

    def check(y):
        assert np.array_equal(y.reveal_raw(), b)

    return (lambda: convert.b2a(sb)), check


def relu_with_grad(rt, rng):
    x = small(rng, (3000,))
    s = shared_ring(rt, x, rng, 16)

    def check(out):
        y, g = out
        assert np.array_equal(y.reveal_raw().view(np.int64), np.maximum(x, 0))
        assert np.array_equal(g.reveal_raw(), (x > 0).astype(U64))

    return (lambda: compare.relu(s, grad=True)), check


PROTOCOLS = {
    f.__name__: f
    for f in (
        trunc_rss,
        trunc_summand,
        trunc_keep,
        round_exactly,
        msb_both_signs,
        a2b,
        mul_bit_same_shape,
        mul_bit_broadcast,
        b2a,
        relu_with_grad,
    )
}


def test_the_sets_this_back_end_offers(rt):
    names = kernelsets.available(rt.backend)
    assert names[0] == "array" and len(set(names)) == len(names)
    expected = {"cpu": {"array", "numba"}, "strict": {"array", "cupy"}, "cuda": {"array", "cupy"}}[rt.backend.name]
    if rt.backend.name == "cpu" and kernelsets.why_not("numba", rt.backend):
        expected = {"array"}
    assert set(names) == expected
    assert rt.kernels.name in names


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_kernel_set_sends_and_returns_the_array_steps_words(rt, seeded, name):
    call, check = PROTOCOLS[name](rt, seeded)
    runs = kernel_set_runs(rt, call)
    assert [r[0] for r in runs] == kernelsets.available(rt.backend)
    assert all(log for _, _, log in runs)
    assert_same_runs(runs)
    for _, out, _ in runs:
        check(out)


def test_the_protocols_here_call_every_step(rt, seeded):
    """Spy on the steps of every set while the protocols above run: each step of
    ``kernelsets.STEPS`` is called at least once under every set, by one party or another."""
    called = {}
    for set_name in kernelsets.available(rt.backend):
        with rt.using_kernels(set_name) as ks:
            for step in kernelsets.STEPS:
                method = getattr(ks, step)

                def spy(*a, _m=method, _s=step, _n=set_name, **k):
                    called.setdefault(_n, set()).add(_s)
                    return _m(*a, **k)

                setattr(ks, step, spy)
            try:
                for build in PROTOCOLS.values():
                    call, _ = build(rt, seeded)
                    call()
            finally:
                for step in kernelsets.STEPS:
                    delattr(ks, step)
    everywhere = {}  # each party runs its own role's steps: the union over the three
    for per_party in rt.comm.allgather_object(called):
        for set_name, steps in per_party.items():
            everywhere.setdefault(set_name, set()).update(steps)
    for set_name in kernelsets.available(rt.backend):
        assert everywhere[set_name] == set(kernelsets.STEPS), sorted(set(kernelsets.STEPS) - everywhere[set_name])


def test_using_kernels_restores_the_chosen_set(rt):
    chosen = rt.kernels
    with rt.using_kernels("array") as ks:
        assert rt.kernels is ks and ks.name == "array"
    assert rt.kernels is chosen
    with pytest.raises(Exception, match="kernel set"):
        with rt.using_kernels("no-such-set"):
            pass
    assert rt.kernels is chosen
