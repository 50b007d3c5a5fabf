"""Arithmetic replicated sharing on three real MPI ranks (issue 4)."""
import numpy as np
import pytest

from mpcgpu.encoding import encode
from mpcgpu.errors import EncodingError
from mpcgpu.sharing.arithmetic import ArithmeticShare, concatenate, truncate
from reference import all_components, conv2d_ref, received, recording, shared

pytestmark = pytest.mark.mpi(min_size=3)
ULP = 2.0 ** -16
LIMIT = 2.0 ** 31


def test_share_reveal_exact_including_range_edges(rt, seeded):
    x = seeded.uniform(-1000, 1000, 100_000)
    x[:6] = [0.0, ULP, -ULP, LIMIT - 1, -(LIMIT - 1), LIMIT - ULP]
    for src in range(3):
        s = shared(rt, x, src=src)
        assert np.array_equal(s.reveal_raw(), encode(x))
        assert np.abs(s.reveal() - x).max() <= ULP / 2


def test_components_are_consistent_replicas(rt, seeded):
    s = shared(rt, seeded.normal(size=50)) + 3.25
    comps = all_components(rt, s)
    for i in range(3):
        assert np.array_equal(comps[i][1], comps[(i + 1) % 3][0])
    # every pair of parties reconstructs the same value
    vals = [s.reveal_raw(to=r) for r in range(3)]
    assert all((v is None) == (r != rt.rank) for r, v in enumerate(vals))
    assert np.array_equal(vals[rt.rank], s.reveal_raw())


def test_share_and_reveal_costs(rt, seeded):
    c = rt.comm
    x = seeded.normal(size=1000)
    with c.measure() as m:
        s = shared(rt, x, src=1)
    assert m.rounds == 2  # shape + data
    assert m.bytes_sent == (16_000 if rt.rank == 1 else 0)
    with c.measure() as m:
        s.reveal()
    assert (m.rounds, m.bytes_sent) == (1, 8000)
    with c.measure() as m:
        v = s.reveal(to=2)
    assert m.rounds == 1 and m.bytes_sent == (8000 if rt.rank == 1 else 0)
    assert (v is None) == (rt.rank != 2)
    if rt.rank == 2:
        assert np.abs(v - x).max() <= ULP


def test_out_of_range_is_an_error_on_every_rank(rt):
    bad = np.array([1.0, 2.0 ** 31 + 5])
    with pytest.raises(EncodingError, match="range"):
        shared(rt, bad, src=2)
    with pytest.raises(EncodingError, match="NaN"):
        shared(rt, np.array([np.nan]), src=0)


def test_linear_operations(rt, seeded):
    x = seeded.uniform(-100, 100, (4, 5))
    y = seeded.uniform(-100, 100, (4, 5))
    p = seeded.uniform(-100, 100, (5,))
    sx, sy = shared(rt, x), shared(rt, y, src=2)
    cases = {
        "add": (sx + sy, x + y), "sub": (sx - sy, x - y), "neg": (-sx, -x),
        "add_pub": (sx + p, x + p), "radd_pub": (p + sx, x + p), "sub_pub": (sx - 7.5, x - 7.5),
        "rsub_pub": (7.5 - sx, 7.5 - x), "mul_int": (sx * 3, x * 3), "mul_int_arr": (sx * np.arange(5), x * np.arange(5)),
        "sum0": (sx.sum(axis=0), x.sum(axis=0)), "sum": (sx.sum(), x.sum()),
        "T": (sx.T, x.T), "reshape": (sx.reshape(2, 10), x.reshape(2, 10)), "index": (sx[1:3, ::2], x[1:3, ::2]),
        "concat": (concatenate([sx, sy], axis=1), np.concatenate([x, y], axis=1)),
        "pad": (sx.pad(((1, 0), (0, 2))), np.pad(x, ((1, 0), (0, 2)))),
    }
    with rt.comm.measure() as m:
        results = {k: v[0] for k, v in cases.items()}
    assert m.rounds == 0 and m.bytes_sent == 0
    for name, (s, ref) in cases.items():
        np.testing.assert_allclose(results[name].reveal(), ref, atol=4 * ULP, err_msg=name)
    # the public factor 1/5 itself carries a relative error of up to 2^-17
    np.testing.assert_allclose(sx.mean(axis=1).reveal(), x.mean(axis=1), rtol=ULP, atol=2 * ULP)


def test_mul_many_values(rt, seeded):
    n = 100_000
    x = seeded.uniform(-30, 30, n)
    y = seeded.uniform(-30, 30, n)
    x[:4] = [0, ULP, -ULP, 1.5]
    y[:4] = [12345.5, ULP, 3.0, -40000.0]
    sx, sy = shared(rt, x), shared(rt, y, src=1)
    with rt.comm.measure() as m:
        z = sx * sy
    assert m.rounds == 2  # product + truncation
    got = z.reveal()
    ref = encode(x).view(np.int64) * encode(y).view(np.int64) / 2.0 ** 32  # exact product of the encodings
    assert np.abs(got - ref).max() <= 2 * ULP
    assert np.abs(got - x * y).max() <= 40000 * ULP + 2 * ULP


def test_mul_near_range_limit_fails_only_at_predicted_rate(rt, seeded):
    """Probabilistic truncation: a product x (scale 2^32) is wrong with probability ~|x|/2^64."""
    n = 100_000
    x = seeded.uniform(-3000, 3000, n)
    y = seeded.uniform(-3000, 3000, n)
    x[:2], y[:2] = [46000.0, -46000.0], [46000.0, 46000.0]   # products near the 2^31 limit
    got = (shared(rt, x) * shared(rt, y)).reveal()
    ref = encode(x).view(np.int64) * encode(y).view(np.int64) / 2.0 ** 32
    bad = np.abs(got - ref) > 2 * ULP
    predicted = np.sum(np.abs(ref) * 2.0 ** 32 / 2.0 ** 64)
    assert bad.sum() <= predicted + 5 * np.sqrt(predicted) + 3, (bad.sum(), predicted)
    jumps = np.abs(got - ref)[bad]
    assert np.allclose(jumps, 2.0 ** 32, rtol=1e-6)   # a failure is a jump by 2^(64-16) ring units


def test_integer_mul_is_exact_mod_2_64(rt, seeded):
    a = seeded.integers(-2 ** 20, 2 ** 20, 5000)
    b = seeded.integers(-2 ** 20, 2 ** 20, 5000)
    sa, sb = shared(rt, a, integer=True), shared(rt, b, integer=True)
    with rt.comm.measure() as m:
        z = sa * sb
    assert m.rounds == 1 and m.bytes_sent == 8 * 5000
    raw = z.reveal_raw()
    ref = np.array([(int(p) * int(q)) % (1 << 64) for p, q in zip(a, b)], dtype=np.uint64)
    assert np.array_equal(raw, ref)


def test_mul_broadcasting_and_public_reals(rt, seeded):
    x = seeded.uniform(-50, 50, (3, 1, 4))
    y = seeded.uniform(-50, 50, (5, 1))
    np.testing.assert_allclose((shared(rt, x) * shared(rt, y)).reveal(), x * y, atol=200 * ULP)
    np.testing.assert_allclose((shared(rt, x) * 0.37).reveal(), x * 0.37, rtol=ULP, atol=2 * ULP)
    p = seeded.uniform(-50, 50, (1, 5, 1))
    np.testing.assert_allclose((shared(rt, x) * p).reveal(), x * p, atol=50 * ULP)


def test_truncation_error_and_rotation(rt, seeded):
    n = 30_000
    x = seeded.uniform(-2 ** 8, 2 ** 8, n)   # failure probability ~2^-24 per element
    s = shared(rt, x)
    s32 = ArithmeticShare(s.first << np.uint64(16), s.second << np.uint64(16), 32, rt)  # scale 2^32
    sent = []
    for _ in range(3):
        with rt.comm.measure() as m:
            t = truncate(s32, 16, 16)
        assert m.rounds == 1
        sent.append(m.bytes_sent)
        d = t.reveal_raw().view(np.int64) - encode(x).view(np.int64)
        assert np.abs(d).max() <= 1
    assert sorted(sent) == [0, 0, 8 * n]  # each party sends once in three calls


def test_truncation_failure_rate_is_small(rt, seeded):
    # |x| <= 2^40 in the ring: failure probability <= 2^40/2^64 = 2^-24 per element
    n = 200_000
    x = seeded.uniform(-2 ** 8, 2 ** 8, n)
    s = shared(rt, x)
    s32 = ArithmeticShare(s.first << np.uint64(16), s.second << np.uint64(16), 32, rt)
    d = truncate(s32, 16, 16).reveal_raw().view(np.int64) - encode(x).view(np.int64)
    assert (np.abs(d) > 1).sum() <= 1


def test_matmul_shapes(rt, seeded):
    for sa, sb in [((7, 13), (13, 5)), ((2, 3, 4), (4, 6)), ((2, 1, 3, 4), (5, 4, 2)), ((6,), (6, 3))]:
        a = seeded.uniform(-10, 10, sa)
        b = seeded.uniform(-10, 10, sb)
        xa, xb = shared(rt, a), shared(rt, b, src=2)
        np.testing.assert_allclose((xa @ xb).reveal(), a @ b, atol=sa[-1] * 40 * ULP)
        np.testing.assert_allclose((xa @ b).reveal(), a @ b, atol=sa[-1] * 40 * ULP)
        np.testing.assert_allclose((a @ xb).reveal(), a @ b, atol=sa[-1] * 40 * ULP)


def test_matmul_costs(rt, seeded):
    a = seeded.uniform(-1, 1, (20, 30))
    b = seeded.uniform(-1, 1, (30, 10))
    xa, xb = shared(rt, a), shared(rt, b)
    with rt.comm.measure() as m:
        xa @ xb
    assert m.rounds == 2
    # 8 bytes/output element for the product, plus 8/element from the truncation's sender
    assert m.bytes_sent in (8 * 200, 16 * 200)


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (1, 1, 1), (2, 1, 1), ((2, 1), (0, 2), 1),
                                                   (1, 1, 2), (2, 0, 4), (1, 1, 8)])
def test_conv2d_cases(rt, seeded, stride, padding, groups):
    x = seeded.uniform(-2, 2, (2, 8, 9, 7))
    w = seeded.uniform(-1, 1, (8, 8 // groups, 3, 3))
    ref = conv2d_ref(x, w, stride, padding, groups)
    sx, sw = shared(rt, x), shared(rt, w, src=1)
    tol = 9 * 8 * 4 * ULP
    with rt.comm.measure() as m:
        out = sx.conv2d(sw, stride=stride, padding=padding, groups=groups)
    assert m.rounds == 2
    np.testing.assert_allclose(out.reveal(), ref, atol=tol)
    np.testing.assert_allclose(sx.conv2d(w, stride=stride, padding=padding, groups=groups).reveal(), ref, atol=tol)


def test_mul_messages_change_and_look_uniform(rt, seeded):
    """What a party receives in a multiplication: fresh each run, uniform bits, never a held component."""
    x = seeded.uniform(-3, 3, 20_000)
    sx, sy = shared(rt, x), shared(rt, x, src=1)
    with recording(rt.comm) as log:
        sx * sy
        sx * sy
    runs = [got for _, got in log]
    first_run = [v for d in runs[:2] for v in d.values()]
    second_run = [v for d in runs[2:] for v in d.values()]
    for a, b in zip(first_run, second_run):
        assert np.count_nonzero(a == b) < 3
    words = np.concatenate([v.ravel() for v in first_run])
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 64).mean(axis=0)
    assert np.abs(bits - 0.5).max() < 0.02
    # never a component the receiver already holds
    mine = [sx.first, sx.second, sy.first, sy.second]
    for v in first_run:
        for c in mine:
            if v.shape == c.shape:
                assert np.count_nonzero(v == c) < 3


@pytest.mark.parametrize("op", ["mul", "matmul", "conv", "truncate", "reveal", "share"])
def test_no_message_repeats_a_component_the_receiver_holds(rt, seeded, op):
    x = seeded.uniform(-3, 3, (6, 6))
    sx, sy = shared(rt, x), shared(rt, x.T, src=2)
    img = shared(rt, seeded.uniform(-1, 1, (1, 2, 5, 5)))
    ker = shared(rt, seeded.uniform(-1, 1, (3, 2, 3, 3)), src=1)
    held = [a for s in (sx, sy, img, ker) for a in (s.first, s.second)]
    with recording(rt.comm) as log:
        if op == "mul":
            sx * sy
        elif op == "matmul":
            sx @ sy
        elif op == "conv":
            img.conv2d(ker, padding=1)
        elif op == "truncate":
            truncate(sx, 3)
        elif op == "reveal":
            sx.reveal()
        else:
            shared(rt, x, src=1)
    got = received(log)
    if op in ("mul", "matmul", "conv", "reveal"):
        assert got   # every party receives in these
    for v in got:
        for h in held:
            if v.shape == h.shape:
                assert np.count_nonzero(v == h) < 2, op
