"""The MSB-corrected truncation under every kernel set (mpcgpu.kernelsets; on the CPU the
fused kernels of mpcgpu.kernelsets.fused_trunc), on three ranks.

From the same PRG state and role counter, every kernel set available here and the array
steps (the reference and the GPU path) must send the same messages and return the same
components, bit for bit; and the result must be the exact floor of
``(x + offset) / 2^d`` (Python ints) plus a carry of 0 or 1.  Both inputs (a replicated
share and three-out-of-three summands), scalar, per-element and broadcast shifts,
offsets, shapes (0-d, n-d, chunked) and values at the edges of ``|x + offset| < 2^62``.
"""

import numpy as np
import pytest

from mpcgpu.sharing import truncation
from mpcgpu.sharing.arithmetic import ArithmeticShare
from reference import assert_same_runs, kernel_set_runs, recording

pytestmark = pytest.mark.mpi(min_size=3)
U64 = np.uint64
LIM = 2**62


def ring_values(rng, shape, offset):
    """Signed values with ``-2^62 <= x + offset < 2^62``: uniform over that range, small ones,
    and the edges (the range limits, 0, +-1, powers of two and their neighbours)."""
    n = int(np.prod(shape, dtype=np.int64))
    x = rng.integers(-LIM, LIM, size=n, dtype=np.int64)
    x[1::3] = rng.integers(-(2**20), 2**20, size=len(x[1::3]))
    edges = [-LIM, LIM - 1, 0, 1, -1, 2**16, -(2**16), 2**16 - 1, -(2**16) + 1, 2**61, -(2**61), LIM - 2, -LIM + 1]
    m = min(n, len(edges))
    x[:m] = edges[:m]
    return (x - offset).reshape(shape)


def inputs(rt, rng, x, kind):
    """This party's input of the ring values ``x``: a replicated pair or its summand."""
    u = np.asarray(x).astype(np.int64).view(U64)
    c0 = rng.integers(0, 2**64, size=u.shape, dtype=U64)
    c1 = rng.integers(0, 2**64, size=u.shape, dtype=U64)
    comps = [c0, c1, u - c0 - c1]
    if kind == "rss":
        return {"rss": (comps[rt.rank].copy(), comps[(rt.rank + 1) % 3].copy())}
    return {"summand": comps[rt.rank].copy()}


def assert_same(runs):
    assert len(runs) >= 2  # the array steps and at least one other set (numba; cupy on strict)
    for _, pair, _ in runs:
        assert len(pair) == 2 and all(a.dtype == U64 for a in pair)
    assert_same_runs(runs)


def assert_floor_plus_carry(rt, pair, x, bits, offset):
    """The revealed result minus ``floor((x + offset) / 2^d)`` (Python ints) is 0 or 1."""
    got = ArithmeticShare(pair[0], pair[1], 0, rt).reveal_raw().view(np.int64)
    d = np.broadcast_to(np.asarray(bits), np.shape(x)).reshape(-1).tolist()
    exact = [(int(v) + offset) >> int(s) for v, s in zip(np.reshape(x, -1).tolist(), d)]
    diff = {int(g) - e for g, e in zip(got.reshape(-1).tolist(), exact)}
    assert diff <= {0, 1}, sorted(diff)[:5]
    return diff


def shift_amounts(rng, kind, shape):
    if kind == "scalar":
        return 16
    if kind == "array":
        bits = rng.integers(1, 63, size=shape)
        bits.reshape(-1)[:2] = [1, 62]
        return bits
    return rng.integers(1, 63, size=(1,) * (len(shape) - 1) + shape[-1:])  # broadcast


@pytest.mark.parametrize("kind", ["rss", "summand"])
@pytest.mark.parametrize("bits_kind", ["scalar", "array", "broadcast"])
@pytest.mark.parametrize("offset", [0, 2**15, -(2**40) + 7])
@pytest.mark.parametrize("shape", [(1000,), (3, 5, 7)])
def test_kernels_send_and_return_the_array_codes_words(rt, seeded, monkeypatch, kind, bits_kind, offset, shape):
    x = ring_values(seeded, shape, offset)
    bits = shift_amounts(seeded, bits_kind, shape)
    args = inputs(rt, seeded, x, kind)
    for _ in range(3):  # every party in every role
        runs = kernel_set_runs(rt, lambda: truncation.msb_corrected(rt, shape, bits, offset=offset, **args))
        assert_same(runs)
        assert_floor_plus_carry(rt, runs[0][1], x, bits, offset)


@pytest.mark.parametrize("kind", ["rss", "summand"])
def test_a_0d_input(rt, seeded, monkeypatch, kind):
    for v in (0, -1, LIM - 1, -LIM, 12345):
        args = inputs(rt, seeded, np.int64(v), kind)
        runs = kernel_set_runs(rt, lambda a=args: truncation.msb_corrected(rt, (), 7, **a))
        assert_same(runs)
        assert runs[0][1][0].shape == ()
        assert_floor_plus_carry(rt, runs[0][1], np.int64(v), 7, 0)


@pytest.mark.parametrize("kind", ["rss", "summand"])
def test_an_empty_input(rt, seeded, monkeypatch, kind):
    args = inputs(rt, seeded, np.zeros((0, 3), dtype=np.int64), kind)
    runs = kernel_set_runs(rt, lambda: truncation.msb_corrected(rt, (0, 3), 9, **args))
    assert_same(runs)
    assert runs[0][1][0].shape == (0, 3)


@pytest.mark.parametrize("kind", ["rss", "summand"])
@pytest.mark.parametrize("bits_kind", ["scalar", "array"])
def test_chunked_inputs_write_each_chunk_in_place(rt, seeded, monkeypatch, kind, bits_kind):
    monkeypatch.setattr(truncation, "CHUNK", 1000)
    shape = (7, 450)  # 4 chunks, the last one short
    x = ring_values(seeded, shape, 2**11)
    bits = shift_amounts(seeded, bits_kind, shape)
    args = inputs(rt, seeded, x, kind)
    runs = kernel_set_runs(rt, lambda: truncation.msb_corrected(rt, shape, bits, offset=2**11, **args))
    assert_same(runs)
    assert len(runs[0][2]) == 8  # 2 rounds a chunk
    assert_floor_plus_carry(rt, runs[0][1], x, bits, 2**11)


def test_more_than_one_real_chunk(rt, seeded, monkeypatch):
    n = truncation.CHUNK + 3
    x = ring_values(seeded, (n,), 0)
    args = inputs(rt, seeded, x, "summand")
    runs = kernel_set_runs(rt, lambda: truncation.msb_corrected(rt, (n,), 20, **args))
    assert_same(runs)
    got = ArithmeticShare(*runs[0][1], 0, rt).reveal_raw().view(np.int64)
    diff = got - (x >> 20)  # int64 is exact here: |x| < 2^62, and >> is the floor
    assert set(np.unique(diff).tolist()) == {0, 1}


def test_carries_are_those_of_the_dealt_randomness(rt, seeded, monkeypatch):
    """The carry is 1 with probability (x mod 2^d) / 2^d: x = 3/4 of a unit rounds up 3/4 of the time."""
    n = 40_000
    x = np.full(n, 5 * 2**16 + 3 * 2**14, dtype=np.int64)
    args = inputs(rt, seeded, x, "rss")
    pair = truncation.msb_corrected(rt, (n,), 16, **args)
    got = ArithmeticShare(*pair, 0, rt).reveal_raw().view(np.int64)
    assert set(np.unique(got).tolist()) == {5, 6}
    assert abs((got == 6).mean() - 0.75) < 0.02


def test_outputs_own_their_memory_and_the_scratch_is_not_shared(rt, seeded, monkeypatch):
    """The PRG blocks go into reused scratch buffers: no output or message may be a window on
    them (a later call would overwrite it)."""
    from mpcgpu import kernelsets

    x = ring_values(seeded, (2000,), 0)
    args = inputs(rt, seeded, x, "summand")
    for name in kernelsets.available(rt.backend):
        with rt.using_kernels(name):
            with recording(rt.comm) as log:
                first = truncation.msb_corrected(rt, (2000,), 16, **args)
            keep = [first[0].copy(), first[1].copy()]
            for _ in range(3):
                truncation.msb_corrected(rt, (2000,), 16, **args)
        assert np.array_equal(first[0], keep[0]) and np.array_equal(first[1], keep[1])
        for a in first:
            assert a.base is None or a.base.nbytes == a.nbytes
        assert log
