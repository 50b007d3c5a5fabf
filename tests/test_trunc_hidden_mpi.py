"""The ``"hidden"`` truncation (issue 20, point 3): stochastic rounding whose threshold no
party knows, on three ranks -- exact floor plus a 0/1 carry against Python integers over
random values and the range limits, an unbiased carry, fresh messages, pinned rounds and
bytes, the setting that makes it the default, and what a revealed result tells a party
(no more than the ideal stochastic rounding; the default tells the discarded bits)."""

import numpy as np
import pytest

from mpcgpu.errors import MPCError
from mpcgpu.protocols.convert import tree_words
from mpcgpu.sharing import truncation
from mpcgpu.sharing.arithmetic import mul, truncate
from reference import received, recording, shared, shared_ring
from test_truncation_mpi import tie_views

pytestmark = pytest.mark.mpi(min_size=3)


def _floor(raw, bits):
    return np.array([int(v) >> int(b) for v, b in zip(raw.tolist(), np.broadcast_to(bits, raw.shape).tolist())])


def _edges(d):
    """0, +-1, +-(2^d - 1), +-2^d and the limits of the precondition -2^62 <= x < 2^62 - 3 2^d."""
    top = 2**62 - 3 * 2**d - 1
    return [0, 1, -1, 2**d - 1, -(2**d) + 1, 2**d, -(2**d), top, top - 1, -(2**62), -(2**62) + 1]


@pytest.mark.parametrize("d", [1, 16, 33, 59])
def test_hidden_truncation_is_the_floor_plus_a_0_1_carry(rt, seeded, d):
    raw = seeded.integers(-(2**61), 2**61, 6000)
    raw[: len(_edges(d))] = _edges(d)
    x = shared_ring(rt, raw, seeded)
    y = truncate(x, d, 0, mode="hidden").reveal_raw().view(np.int64)
    carry = y.astype(object) - _floor(raw, d).astype(object)
    assert set(carry.tolist()) <= {0, 1}
    expected = np.mean([(int(v) % 2**d) / 2**d for v in raw.tolist()])  # P(carry) = discarded fraction
    assert abs(np.mean(carry.astype(np.int64)) - expected) < 0.03


def test_per_element_shifts_and_products_fused_with_the_hidden_truncation(rt, seeded):
    raw = seeded.integers(-(2**50), 2**50, 4000)
    bits = seeded.integers(1, 45, 4000)
    y = truncate(shared_ring(rt, raw, seeded), bits, 0, mode="hidden").reveal_raw().view(np.int64)
    assert set((y.astype(object) - _floor(raw, bits).astype(object)).tolist()) <= {0, 1}
    # a product's three summands go straight into the protocol (no resharing first)
    a, b = seeded.normal(0, 30, 3000), seeded.normal(0, 30, 3000)
    sa, sb = shared(rt, a), shared(rt, b, src=1)
    exact = sa.reveal_raw().view(np.int64).astype(object) * sb.reveal_raw().view(np.int64).astype(object)
    got = mul(sa, sb, trunc="hidden").reveal_raw().view(np.int64).astype(object)
    assert set((got - np.array([v >> 16 for v in exact.tolist()], dtype=object)).tolist()) <= {0, 1}


def test_the_carry_is_unbiased(rt, seeded):
    d, n = 16, 4000
    for lo in (0, 2**14, 2**15, 3 * 2**14, 2**16 - 1):
        raw = np.full(n, 12345 * 2**d + lo, dtype=np.int64)
        y = truncate(shared_ring(rt, raw, seeded), d, 0, mode="hidden").reveal_raw().view(np.int64)
        carry = y - 12345
        assert set(np.unique(carry)) <= {0, 1}
        p = lo / 2**d
        assert abs(carry.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (lo, carry.mean())


def test_messages_are_fresh_from_call_to_call(rt, seeded):
    """Calls 1 and 4 give this party the same role (the dealer rotates): every message it
    receives changes, none repeats its own components, and the words look uniform."""
    x = shared_ring(rt, seeded.integers(-(2**40), 2**40, 5000), seeded)
    logs = []
    for _ in range(4):
        with recording(rt.comm) as log:
            truncate(x, 16, 0, mode="hidden")
        logs.append(received(log))
    first, fourth = logs[0], logs[3]
    assert len(first) == len(fourth) > 0
    for a, b in zip(first, fourth):
        assert a.shape == b.shape and np.mean(a == b) < 1e-3
        for h in (x.first, x.second):
            m = min(a.size, h.size)
            assert not np.any(a.reshape(-1)[:m] == h.reshape(-1)[:m])
    words = np.concatenate([a.reshape(-1) for a in first if a.size >= 5000])
    ones = np.unpackbits(words.view(np.uint8)).reshape(-1, 64).mean(axis=0)
    assert np.abs(ones - 0.5).max() < 0.02


def test_rounds_and_bytes_are_pinned(rt, seeded):
    """Exact floors of ``x + u`` and ``u``: 12 rounds; three parties together, per element of
    the 2n: the truncation's 64 bytes (80 fused with a product), the MSB's 24 + 24 W/2n
    and the bit injection's 32.  ``"exact"`` (round to nearest) is the same on n."""
    n = 5000
    x = shared_ring(rt, seeded.integers(-(2**40), 2**40, n), seeded)
    for mode, m_el in (("hidden", 2 * n), ("exact", n)):
        with rt.comm.measure() as m:
            truncate(x, 16, 0, mode=mode)
        total = sum(rt.comm.allgather_object(m.bytes_sent))
        assert m.rounds == 12
        assert total == 96 * m_el + 24 * (m_el + tree_words(m_el)), (mode, total)
    a = shared(rt, seeded.normal(0, 1, n))
    with rt.comm.measure() as m:
        mul(a, a, trunc="hidden")
    assert m.rounds == 12
    assert sum(rt.comm.allgather_object(m.bytes_sent)) == 112 * 2 * n + 24 * (2 * n + tree_words(2 * n))
    with rt.comm.measure() as m:
        truncate(x, 16, 0)
    assert m.rounds == 2 and sum(rt.comm.allgather_object(m.bytes_sent)) == 48 * n  # the default, for scale


def test_the_setting_makes_it_the_default_and_explicit_modes_win(rt, seeded):
    from mpcgpu.settings import resolve

    x = shared_ring(rt, seeded.integers(-(2**40), 2**40, 100), seeded)
    assert resolve(env={truncation.SETTING: ""}).truncation == "dealer"  # unset: the default
    for value, rounds in (("hidden", 12), ("dealer", 2)):
        with rt.overridden(truncation=value), rt.comm.measure() as m:
            truncate(x, 16, 0)
        assert m.rounds == rounds, value
    with rt.overridden(truncation="hidden"), rt.comm.measure() as m:
        truncate(x, 16, 0, mode="prob")
    assert m.rounds == 2
    with truncation.forced("exact"), rt.comm.measure() as m:
        y = truncate(x, 16, 0)
    assert m.rounds == 12
    raw = x.reveal_raw().view(np.int64)
    assert np.array_equal(y.reveal_raw().view(np.int64), (raw + 2**15) >> 16)  # round half up
    with pytest.raises(MPCError, match="MPCGPU_TRUNCATION"):
        with rt.overridden(truncation="pairs"):
            truncate(x, 16, 0)


def test_a_revealed_result_tells_no_party_more_than_ideal_stochastic_rounding(rt, seeded):
    """The inputs of tests/test_truncation_mpi.py (the same rounded result, discarded bits on
    either side of the tie).  The revealed carry alone tells the kinds apart a little (the
    ideal stochastic rounding does too: ``P(carry)`` is the discarded fraction); no
    combination of what a party saw does better than that.  The default tells them apart
    (> 0.9, tested there)."""
    labels, offsets, everyone = tie_views(rt, seeded, lambda x, d: truncate(x, d, 16, mode="hidden"))
    assert set(np.unique(offsets)) <= {-1, 0, 1}
    # what the revealed offset alone tells: the majority kind of each offset
    n = len(labels)
    alone = sum(max(np.sum(labels[offsets == o]), np.sum(1 - labels[offsets == o])) for o in (-1, 0, 1)) / n
    assert 0.6 < alone < 0.9
    assert max(everyone) < alone + 0.04, (everyone, alone)
