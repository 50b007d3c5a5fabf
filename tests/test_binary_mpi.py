"""Binary (XOR) replicated sharing, AND and A2B on three real MPI ranks (issue 5)."""

import numpy as np
import pytest

from mpcgpu.protocols.convert import a2b
from mpcgpu.sharing import binary
from mpcgpu.sharing.arithmetic import ArithmeticShare, share
from mpcgpu.sharing.binary import BinaryShare, and_, and_batch
from mpcgpu.sharing.replicated import with_public
from reference import all_components, assert_fresh_messages, received, recording

pytestmark = pytest.mark.mpi(min_size=3)
U64 = np.uint64
EDGES = np.array(
    [
        0,
        1,
        2,
        3,
        2**32 - 1,
        2**32,
        2**62,
        2**63 - 1,
        2**63,
        2**63 + 1,
        2**64 - 2,
        2**64 - 1,
        0x5555555555555555,
        0xAAAAAAAAAAAAAAAA,
    ],
    dtype=U64,
)


def words(rng, *shape):
    return rng.integers(0, 2**64, size=shape, dtype=U64, endpoint=False)


def binary_of(rt, x, rng):
    """A binary sharing of the plaintext ``x`` with random components (test-only: every rank
    draws the same components from the common generator and keeps its pair)."""
    c0, c1 = words(rng, *x.shape), words(rng, *x.shape)
    comps = [c0, c1, x ^ c0 ^ c1]
    i = rt.rank
    return BinaryShare(comps[i].copy(), comps[(i + 1) % 3].copy(), rt)


def arith_of(rt, x, rng, scale=0):
    """An arithmetic sharing of the ring values ``x`` with random components (test-only)."""
    c0, c1 = words(rng, *x.shape), words(rng, *x.shape)
    comps = [c0, c1, x - c0 - c1]
    i = rt.rank
    return ArithmeticShare(comps[i].copy(), comps[(i + 1) % 3].copy(), scale, rt)


# -- sharing, reveal, local gates --------------------------------------------------------------


def test_share_reveal_from_every_party(rt, seeded):
    x = words(seeded, 1000)
    for src in range(3):
        with rt.comm.measure() as m:
            s = binary.share(x if rt.rank == src else None, src=src)
        assert m.rounds == 2 and m.bytes_sent == (16_000 if rt.rank == src else 0)
        with rt.comm.measure() as m:
            assert np.array_equal(s.reveal(), x)
        assert (m.rounds, m.bytes_sent) == (1, 8000)
        got = s.reveal(to=src)
        assert (got is None) == (rt.rank != src)
        if rt.rank == src:
            assert np.array_equal(got, x)


def test_local_gates_are_free_and_exact(rt, seeded):
    x, y = words(seeded, 64, 3), words(seeded, 64, 3)
    c = words(seeded, 3)
    sx, sy = binary_of(rt, x, seeded), binary_of(rt, y, seeded)
    with rt.comm.measure() as m:
        cases = {
            "xor": (sx ^ sy, x ^ y),
            "xor_pub": (sx ^ c, x ^ c),
            "rxor_pub": (c ^ sx, x ^ c),
            "xor_int": (sx ^ 12345, x ^ U64(12345)),
            "not": (~sx, ~x),
            "shl": (sx << 7, x << U64(7)),
            "shr": (sx >> 63, x >> U64(63)),
            "and_pub": (sx & c, x & c),
            "and_int": (sx & 0xFF, x & U64(0xFF)),
            "or_pub": (sx | c, x | c),
            "bit5": (sx.bit(5), (x >> U64(5)) & U64(1)),
            "not_bits": (sx.bit(0).not_bits(), ((x & U64(1)) ^ U64(1))),
            "reshape": (sx.reshape(3, 64), x.reshape(3, 64)),
            "index": (sx[::3, 1], x[::3, 1]),
            "T": (sx.transpose(), x.T),
            "concat": (binary.concatenate([sx, sy], axis=1), np.concatenate([x, y], axis=1)),
            "stack": (binary.stack([sx, sy]), np.stack([x, y])),
            "public": (binary.public(c), c),
            "zeros": (binary.zeros((2, 2)), np.zeros((2, 2), U64)),
        }
    assert (m.rounds, m.bytes_sent) == (0, 0)
    for name, (s, want) in cases.items():
        assert np.array_equal(s.reveal(), want), name


def test_public_constants_keep_replicas_consistent(rt, seeded):
    """XOR-public and NOT change component 0 in both places: every pair reconstructs alike."""
    x = words(seeded, 50)
    s = ~(binary_of(rt, x, seeded) ^ U64(0xDEADBEEF))
    comps = all_components(rt, s)
    for i in range(3):
        assert np.array_equal(comps[i][1], comps[(i + 1) % 3][0])
    for r in range(3):
        got = s.reveal(to=r)
        if rt.rank == r:
            assert np.array_equal(got, ~(x ^ U64(0xDEADBEEF)))


@pytest.mark.parametrize("component", [0, 1, 2])
def test_public_constant_rule_changes_one_component_in_both_places(rt, seeded, component):
    """The one function behind every public constant: component k changes in party k's first
    slot and party k-1's second slot, and nowhere else -- for XOR and for addition."""
    x = words(seeded, 50)
    c = words(seeded, 50)
    sx = binary_of(rt, x, seeded)
    before = all_components(rt, sx)
    cd = rt.backend.to_device(c)  # a public constant on the back end, as product code holds it
    first, second = with_public(sx.first, sx.second, cd, rt.rank, rt.xp, lambda a, b: a ^ b, component)
    after = all_components(rt, BinaryShare(first, second, rt))
    for party in range(3):
        for slot in (0, 1):
            held = (party + slot) % 3  # the component in this slot
            want = before[party][slot] ^ c if held == component else before[party][slot]
            assert np.array_equal(after[party][slot], want)
    assert np.array_equal(BinaryShare(first, second, rt).reveal(), x ^ c)
    a = arith_of(rt, x, seeded)
    af, as_ = with_public(a.first, a.second, cd, rt.rank, rt.xp, lambda p, q: p + q, component)
    # every pair of parties reconstructs the same value: the replicas stayed consistent
    assert all(np.array_equal(v, x + c) for v in rt.comm.allgather_object(ArithmeticShare(af, as_, 0, rt).reveal_raw()))


# -- AND ----------------------------------------------------------------------------------------


def test_and_exact_one_round(rt, seeded):
    n = 5000
    x, y = words(seeded, n), words(seeded, n)
    x[: len(EDGES)] = EDGES
    y[: len(EDGES)] = EDGES[::-1]
    sx, sy = binary_of(rt, x, seeded), binary_of(rt, y, seeded)
    with rt.comm.measure() as m:
        z = sx & sy
    assert (m.rounds, m.bytes_sent) == (1, 8 * n)
    assert np.array_equal(z.reveal(), x & y)
    with rt.comm.measure() as m:
        o = sx | sy
    assert (m.rounds, m.bytes_sent) == (1, 8 * n)
    assert np.array_equal(o.reveal(), x | y)
    # broadcasting
    c = words(seeded, 1)
    w = and_(sx.reshape(50, 100), binary_of(rt, c, seeded).reshape(1, 1))
    assert np.array_equal(w.reveal(), (x & c).reshape(50, 100))


def test_batched_and_is_one_exchange(rt, seeded):
    shapes = [(10,), (4, 5), (7, 3, 2)]
    xs = [words(seeded, *s) for s in shapes]
    ys = [words(seeded, *s) for s in shapes]
    pairs = [(binary_of(rt, a, seeded), binary_of(rt, b, seeded)) for a, b in zip(xs, ys)]
    with rt.comm.measure() as m:
        outs = and_batch(pairs)
    total = sum(int(np.prod(s)) for s in shapes)
    assert (m.rounds, m.bytes_sent, m.messages) == (1, 8 * total, 1)
    for out, a, b, s in zip(outs, xs, ys, shapes):
        assert out.shape == s
        assert np.array_equal(out.reveal(), a & b)
    assert and_batch([]) == []


# -- A2B ----------------------------------------------------------------------------------------


def test_a2b_exact_for_arbitrary_ring_values(rt, seeded):
    n = 200_000
    x = words(seeded, n)
    x[: len(EDGES)] = EDGES
    x[len(EDGES) : len(EDGES) + 1000] = seeded.integers(-500, 500, 1000).astype(np.int64).view(U64)
    s = arith_of(rt, x, seeded)
    with rt.comm.measure() as m:
        b = a2b(s)
    assert m.rounds == 8
    assert m.bytes_sent == 96 * n  # 8 (adder inputs) + 8 * 11 (Kogge-Stone words), every party
    assert np.array_equal(b.reveal(), x)


def test_a2b_of_fixed_point_shares_and_shapes(rt, seeded):
    v = seeded.uniform(-(2.0**31) + 1, 2.0**31 - 1, (3, 4, 5))
    s = share(v if rt.rank == 1 else None, src=1)
    b = a2b(s)
    assert b.shape == (3, 4, 5)
    from mpcgpu.ring.encoding import encode

    assert np.array_equal(b.reveal(), encode(v))


def test_a2b_with_trivial_components(rt):
    """Degenerate sharings (components zero) still give exact, masked results."""
    x = np.array([0, 5, 2**63, 2**64 - 1], dtype=U64)
    z = np.zeros_like(x)
    first = x.copy() if rt.rank == 0 else z.copy()
    second = x.copy() if rt.rank == 2 else z.copy()
    assert np.array_equal(a2b(ArithmeticShare(first, second, 0, rt)).reveal(), x)


# -- security -----------------------------------------------------------------------------------


def _bit_frequencies(arrays):
    w = np.concatenate([a.reshape(-1).view(U64) for a in arrays])
    bits = (w[:, None] >> np.arange(64, dtype=U64)) & U64(1)
    return bits.mean(axis=0), w.size


def test_and_messages_are_fresh_uniform_and_new_to_the_receiver(rt, seeded):
    n = 4096
    x, y = words(seeded, n), words(seeded, n)
    sx, sy = binary_of(rt, x, seeded), binary_of(rt, y, seeded)
    logs = []
    for _ in range(2):
        with recording(rt.comm) as log:
            and_(sx, sy)
        logs.append(received(log))
    (a,), (b,) = logs
    assert np.mean(a == b) < 1e-3  # masks change call to call
    held = [sx.first, sx.second, sy.first, sy.second]
    assert not any(np.any(a == h) for h in held)  # never a word the receiver holds
    # worst case for the masking: secret-free all-zero sharings
    zero = binary.zeros((n,))
    with recording(rt.comm) as log:
        and_(zero, zero)
    freq, count = _bit_frequencies(received(log))
    assert count == n and np.all(np.abs(freq - 0.5) < 0.05)


def test_a2b_messages_are_fresh_uniform_and_new_to_the_receiver(rt, seeded):
    n = 2048
    x = words(seeded, n)
    s = arith_of(rt, x, seeded)
    assert_fresh_messages(rt.comm, lambda: a2b(s), (s.first, s.second))
    # all-zero trivial sharing: what arrives must still look uniform
    z = np.zeros(n, dtype=U64)
    with recording(rt.comm) as log:
        a2b(ArithmeticShare(z.copy(), z.copy(), 0, rt))
    msgs = received(log)
    assert len(msgs) == {0: 6, 1: 7, 2: 8}[rt.rank]  # party 2 receives in rounds 1-8, ...
    freq, _ = _bit_frequencies(msgs)
    assert np.all(np.abs(freq - 0.5) < 0.05)
