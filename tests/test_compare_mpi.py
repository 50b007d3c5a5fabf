"""MSB, comparisons, ReLU, max/min/argmax and max-pooling on three real MPI ranks (issue 5).

Exactness is checked on the ring: inputs are fixed-point encodings (int64) and every
result is compared bit for bit with a NumPy computation on the same integers.
"""

import numpy as np
import pytest

from mpcgpu.ring.encoding import encode
from mpcgpu.protocols import compare
from mpcgpu.protocols.convert import b2a, msb, mul_bit
from mpcgpu.sharing import binary
from mpcgpu.sharing.arithmetic import ArithmeticShare, share
from reference import assert_fresh_messages, received, recording

pytestmark = pytest.mark.mpi(min_size=3)
U64 = np.uint64
F = 16
ULP = 2.0**-F
LIMIT = 2**47 - 1  # largest encoding of the fixed-point range: 2^31 - 2^-16
NEG = -(2**62)  # max-pool padding (ring units)


@pytest.fixture(autouse=True, params=["numba", "cupy", "array"])
def msb_path(request, rt):
    """Every test runs under every kernel set available here (mpcgpu.kernelsets): the fused
    CPU kernels of the MSB tree (numba), the GPU slot (cupy, on strict) and the array steps
    (the reference)."""
    from mpcgpu import kernelsets

    why = kernelsets.why_not(request.param, rt.backend)
    if why:
        pytest.skip(why)
    with rt.using_kernels(request.param):
        yield request.param


# -- helpers ---------------------------------------------------------------------------------


def words(rng, *shape):
    return rng.integers(0, 2**64, size=shape, dtype=U64, endpoint=False)


def arith_of(rt, ring, rng, scale=F):
    """Sharing of the ring values ``ring`` (uint64 or int64) with random components."""
    x = np.asarray(ring).astype(np.int64).view(U64) if np.asarray(ring).dtype != U64 else ring
    c0, c1 = words(rng, *x.shape), words(rng, *x.shape)
    comps = [c0, c1, x - c0 - c1]
    i = rt.rank
    return ArithmeticShare(comps[i].copy(), comps[(i + 1) % 3].copy(), scale, rt)


def fixed(rng, n):
    """Encoded fixed-point values: uniform over the range, small ones, and the edges."""
    x = rng.integers(-LIMIT, LIMIT + 1, size=n, dtype=np.int64)
    x[1::4] = rng.integers(-(2**12), 2**12, size=len(x[1::4]))  # near zero
    edges = np.array([0, 1, -1, LIMIT, -LIMIT, LIMIT - 1, -LIMIT + 1, 2, -2], dtype=np.int64)
    x[: len(edges)] = edges
    return x


def raw(s):
    return s.reveal_raw().view(np.int64)


def tree_words(n):
    """AND words per party of the pruned MSB tree: n + ceil(n/2) + ... (5 folds)."""
    total, m = n, n
    for _ in range(5):
        m = (m + 1) // 2
        total += m
    return total


def msb_bytes(n):
    return 8 * (n + tree_words(n))  # 8n in the adder-input rounds + the tree


def tree_levels(k):
    """Pairs compared at each level of a max tree over k candidates."""
    out = []
    while k > 1:
        out.append(k // 2)
        k = k // 2 + k % 2
    return out


def max_tree_bytes(rows, k, rank, onehot=False):
    total, size = 0, 1
    for q in tree_levels(k):
        q *= rows
        width = 1 + 2 * size if onehot else 1
        total += msb_bytes(q) + (8 * q + 8 * q * width if rank == 0 else 16 * q * width)
        size *= 2
    return total


def maxpool_ref(x, k, s, p):
    """Max-pool on int64 NCHW with -2^62 padding: (max, one-hot of the first maximum)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=NEG)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    wins = np.stack(
        [xp[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s] for i in range(k) for j in range(k)],
        axis=-1,
    )
    idx = wins.argmax(axis=-1)
    return wins.max(axis=-1), np.eye(k * k, dtype=np.int64)[idx]


def maxpool_backward_ref(g, onehot, shape, k, s, p):
    n, c, h, w = shape
    ho, wo = g.shape[2:]
    acc = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            acc[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s] += g * onehot[..., i * k + j]
    return acc[:, :, p : p + h, p : p + w]


# -- MSB ---------------------------------------------------------------------------------------


def test_fused_and_array_paths_give_the_same_shares(rt, seeded, msb_path):
    """From the same PRG state every kernel set produces the array steps' components (hence
    sends the same messages): the fused kernels compute the same words."""
    if msb_path == "array":
        pytest.skip("the reference itself")
    edges = np.array([0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63)], dtype=np.int64)
    s = arith_of(rt, np.concatenate([edges, words(seeded, 5000).view(np.int64)]), seeded)
    state = rt.prg.state()
    a = msb(s)
    rt.prg.restore(state)
    with rt.using_kernels("array"):
        b = msb(s)
    assert (a.first == b.first).all() and (a.second == b.second).all()


def test_msb_exact_on_the_full_ring(rt, seeded):
    n = 1_000_000
    x = words(seeded, n)
    x[:12] = np.array(
        [0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**62, 3 * 2**62, 2**64 - 2**62, 2**32, 2**64 - 2**32, 5],
        dtype=U64,
    )
    s = arith_of(rt, x, seeded, scale=0)
    bit = msb(s)
    assert np.array_equal(bit.reveal(), x >> U64(63))


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 63, 64, 65, 1000, 4097])
def test_msb_cost_exact(rt, seeded, n):
    x = words(seeded, n)
    s = arith_of(rt, x, seeded, scale=0)
    with rt.comm.measure() as m:
        bit = msb(s)
    assert (m.rounds, m.bytes_sent) == (8, msb_bytes(n))
    assert np.array_equal(bit.reveal(), x >> U64(63))


def test_msb_of_trivial_and_shaped_sharings(rt, seeded):
    x = seeded.integers(-(2**40), 2**40, size=(3, 5, 7)).astype(np.int64)
    x.flat[:4] = [0, -1, 1, -(2**40)]
    xu = x.view(U64)
    z = np.zeros_like(xu)
    s = ArithmeticShare(xu.copy() if rt.rank == 0 else z.copy(), xu.copy() if rt.rank == 2 else z.copy(), 0, rt)
    bit = msb(s)
    assert bit.shape == (3, 5, 7)
    assert np.array_equal(bit.reveal(), (x < 0).astype(U64))
    assert np.array_equal(raw(b2a(bit)), (x < 0).astype(np.int64))
    assert msb(ArithmeticShare(np.zeros(0, U64), np.zeros(0, U64), 0, rt)).shape == (0,)


# -- bit injection / multiply by a bit -------------------------------------------------------


def test_b2a_and_mul_bit_exact_and_costs(rt, seeded):
    n = 10_000
    b = seeded.integers(0, 2, n).astype(U64)
    x = fixed(seeded, n)
    c0, c1 = seeded.integers(0, 2, n).astype(U64), seeded.integers(0, 2, n).astype(U64)
    comps = [c0, c1, b ^ c0 ^ c1]
    bit = binary.BinaryShare(comps[rt.rank].copy(), comps[(rt.rank + 1) % 3].copy(), rt)
    sx = arith_of(rt, x, seeded)
    with rt.comm.measure() as m:
        a = b2a(bit)
    assert (m.rounds, m.bytes_sent) == (2, 16 * n if rt.rank == 0 else 8 * n)
    assert a.scale == 0 and np.array_equal(raw(a), b.astype(np.int64))
    with rt.comm.measure() as m:
        y = mul_bit(sx, bit)
    assert (m.rounds, m.bytes_sent) == (2, 16 * n)
    assert y.scale == F and np.array_equal(raw(y), x * b.astype(np.int64))
    with rt.comm.measure() as m:
        y, a = mul_bit(sx, bit, with_bit=True)
    assert (m.rounds, m.bytes_sent) == (2, 24 * n)
    assert np.array_equal(raw(y), x * b.astype(np.int64)) and np.array_equal(raw(a), b.astype(np.int64))
    # one bit broadcast over a row of values: t is shared once per bit
    X = arith_of(rt, np.stack([x, -x, x // 3], axis=1), seeded)
    with rt.comm.measure() as m:
        Y = mul_bit(X, bit.reshape(n, 1))
    assert (m.rounds, m.bytes_sent) == (2, 8 * n + 24 * n if rt.rank == 0 else 48 * n)
    assert np.array_equal(raw(Y), np.stack([x, -x, x // 3], axis=1) * b.astype(np.int64)[:, None])


# -- comparisons ---------------------------------------------------------------------------------


def test_comparisons_exact_on_a_million_pairs(rt, seeded):
    n = 1_000_000
    x, y = fixed(seeded, n), fixed(seeded, n)
    y[::7] = x[::7]  # ties
    y[1::7] = x[1::7] + 1  # one ulp apart
    y[2::7] = x[2::7] - 1
    y[3::11] = -x[3::11]
    x[:4], y[:4] = [LIMIT, -LIMIT, LIMIT, 0], [-LIMIT, LIMIT, LIMIT, 0]
    sx, sy = arith_of(rt, x, seeded), arith_of(rt, y, seeded)
    with rt.comm.measure() as m:
        got = sx < sy
    want_bytes = msb_bytes(n) + (16 * n if rt.rank == 0 else 8 * n)
    assert (m.rounds, m.bytes_sent) == (10, want_bytes)
    assert got.scale == 0
    assert np.array_equal(raw(got), (x < y).astype(np.int64))


def test_all_comparison_flavours_with_shares_and_publics(rt, seeded):
    n = 50_000
    x, y = fixed(seeded, n), fixed(seeded, n)
    y[::5] = x[::5]
    sx, sy = arith_of(rt, x, seeded), arith_of(rt, y, seeded)
    for name, op in [("lt", np.less), ("gt", np.greater), ("le", np.less_equal), ("ge", np.greater_equal)]:
        fn = getattr(compare, name)
        assert np.array_equal(raw(fn(sx, sy)), op(x, y).astype(np.int64)), name
    assert np.array_equal(raw(sx > sy), (x > y).astype(np.int64))
    assert np.array_equal(raw(sx <= sy), (x <= y).astype(np.int64))
    assert np.array_equal(raw(sx >= sy), (x >= y).astype(np.int64))
    # public right-hand sides: scalar and array (reals at scale F)
    v = x[:1000].astype(np.float64) / 2**F
    sv = arith_of(rt, x[:1000], seeded)
    assert np.array_equal(raw(sv < 0.0), (v < 0).astype(np.int64))
    assert np.array_equal(raw(sv >= 1.5), (v >= 1.5).astype(np.int64))
    pub = y[:1000].astype(np.float64) / 2**F
    assert np.array_equal(raw(compare.gt(sv, pub)), (v > pub).astype(np.int64))
    assert np.array_equal(raw(2.0 < sv), (v > 2.0).astype(np.int64))  # reflected
    # integer shares (scale 0) against public integers
    k = seeded.integers(-100, 100, 1000)
    sk = arith_of(rt, k, seeded, scale=0)
    assert np.array_equal(raw(compare.le(sk, 7)), (k <= 7).astype(np.int64))


def test_edge_values_exactly(rt):
    vals = np.array([0.0, ULP, -ULP, 2.0**31 - ULP, -(2.0**31 - ULP), 1.0, -1.0, 0.5 * ULP])
    s = share(vals if rt.rank == 0 else None, src=0)
    enc = encode(vals).view(np.int64)
    assert np.array_equal(raw(compare.lt(s, 0.0)), (enc < 0).astype(np.int64))
    assert np.array_equal(raw(compare.gt(s, 0.0)), (enc > 0).astype(np.int64))
    assert np.array_equal(raw(compare.relu(s)), np.maximum(enc, 0))
    assert np.array_equal(raw(compare.sign(s)), np.where(enc < 0, -1, 1))
    assert np.array_equal(raw(compare.abs(s)), np.abs(enc))
    # extremes against each other: |x - y| = 2^48 - 2 ulp, still inside the ring's half
    a = share(np.array([2.0**31 - ULP, -(2.0**31 - ULP)]) if rt.rank == 1 else None, src=1)
    b = share(np.array([-(2.0**31 - ULP), 2.0**31 - ULP]) if rt.rank == 2 else None, src=2)
    assert list(raw(a < b)) == [0, 1] and list(raw(a > b)) == [1, 0]


def test_sign_and_abs(rt, seeded):
    n = 100_000
    x = fixed(seeded, n)
    s = arith_of(rt, x, seeded)
    with rt.comm.measure() as m:
        sg = compare.sign(s)
    assert m.rounds == 10 and sg.scale == 0
    assert np.array_equal(raw(sg), np.where(x < 0, -1, 1))
    with rt.comm.measure() as m:
        ab = abs(s)
    assert (m.rounds, m.bytes_sent) == (10, msb_bytes(n) + 16 * n)
    assert ab.scale == F and np.array_equal(raw(ab), np.abs(x))


# -- ReLU ----------------------------------------------------------------------------------------


def test_relu_exact_on_a_million_values(rt, seeded):
    n = 1_000_000
    x = fixed(seeded, n)
    s = arith_of(rt, x, seeded)
    with rt.comm.measure() as m:
        y, d = compare.relu(s, grad=True)
    assert (m.rounds, m.bytes_sent) == (10, msb_bytes(n) + 24 * n)
    assert np.array_equal(raw(y), np.maximum(x, 0))
    assert y.scale == F and d.scale == 0
    assert np.array_equal(raw(d), (x > 0).astype(np.int64))  # 0 at exactly 0


def test_relu_costs_and_backward_from_the_kept_derivative(rt, seeded):
    n = 20_000
    x = fixed(seeded, n).reshape(100, 200)
    s = arith_of(rt, x, seeded)
    with rt.comm.measure() as m:
        y = s.relu()
    assert (m.rounds, m.bytes_sent) == (10, msb_bytes(n) + 16 * n)
    assert y.shape == (100, 200) and not hasattr(y, "relu_bits")  # nothing hangs on the result
    assert np.array_equal(raw(y), np.maximum(x, 0))
    y2, d = s.relu(grad=True)
    assert np.array_equal(raw(y2), raw(y)) and np.array_equal(raw(d), (x > 0).astype(np.int64))
    g = seeded.integers(-(2**20), 2**20, size=(100, 200))
    sg = arith_of(rt, g, seeded)
    with rt.comm.measure() as m:
        back = sg * d  # no truncation: d has scale 0
    assert (m.rounds, m.bytes_sent) == (1, 8 * n)
    assert np.array_equal(raw(back), np.where(x > 0, g, 0))


# -- max / min / argmax ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 9, 10, 16, 17])
def test_max_min_argmax_along_an_axis(rt, seeded, k):
    rows = 300
    x = seeded.integers(-4, 4, size=(rows, k)).astype(np.int64) * 2**F  # many ties
    x[: rows // 2] = fixed(seeded, rows // 2 * k).reshape(-1, k)
    s = arith_of(rt, x, seeded)
    with rt.comm.measure() as m:
        mx = s.max(axis=1)
    assert m.rounds == 10 * len(tree_levels(k))
    assert m.bytes_sent == max_tree_bytes(rows, k, rt.rank)
    assert mx.shape == (rows,) and np.array_equal(raw(mx), x.max(axis=1))
    assert np.array_equal(raw(s.min(axis=1)), x.min(axis=1))
    with rt.comm.measure() as m:
        oh = s.argmax(axis=1)
    assert m.rounds == 10 * len(tree_levels(k))
    assert m.bytes_sent == max_tree_bytes(rows, k, rt.rank, onehot=True)
    want = np.eye(k, dtype=np.int64)[x.argmax(axis=1)]
    got = raw(oh)
    assert oh.scale == 0 and got.shape == (rows, k)
    assert np.array_equal(got, want) and np.all(got.sum(axis=1) == 1)


def test_max_argmax_other_axes(rt, seeded):
    x = seeded.integers(-3, 3, size=(4, 6, 5)).astype(np.int64)
    s = arith_of(rt, x, seeded, scale=0)
    for axis in (0, 1, 2, -1, (0, 2), None):
        want = x.max(axis=axis)
        got = raw(compare.max(s, axis=axis))
        assert np.array_equal(got, want), axis
        assert np.array_equal(raw(compare.min(s, axis=axis)), x.min(axis=axis)), axis
    for axis in (0, 1, 2):
        idx = x.argmax(axis=axis)
        want = (
            np.arange(x.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]) == np.expand_dims(idx, axis)
        ).astype(np.int64)
        assert np.array_equal(raw(compare.argmax(s, axis=axis)), want), axis
    flat = np.zeros(x.size, dtype=np.int64)
    flat[x.argmax()] = 1
    assert np.array_equal(raw(s.argmax()), flat.reshape(x.shape))


# -- max-pooling --------------------------------------------------------------------------------

POOLS = [(2, 2, 0), (3, 2, 0), (3, 2, 1)]  # AlexNet/VGG 2/2, AlexNet 3/2, ResNet 3/2 pad 1


@pytest.mark.parametrize("k,s,p", POOLS)
def test_max_pool_matches_numpy(rt, seeded, k, s, p):
    shape = (2, 3, 13, 12)
    x = fixed(seeded, int(np.prod(shape))).reshape(shape)
    x[1] = seeded.integers(-2, 2, size=shape[1:]) * 2**F  # ties everywhere
    sx = arith_of(rt, x, seeded)
    want, want_oh = maxpool_ref(x, k, s, p)
    ho, wo = want.shape[2:]
    with rt.comm.measure() as m:
        out = sx.max_pool2d(k, stride=s, padding=p)
    windows = shape[0] * shape[1] * ho * wo
    assert m.rounds == 10 * len(tree_levels(k * k))
    assert m.bytes_sent == max_tree_bytes(windows, k * k, rt.rank)
    assert out.shape == want.shape and np.array_equal(raw(out), want)
    with rt.comm.measure() as m:
        out, oh = compare.max_pool2d(sx, k, stride=s, padding=p, return_indices=True)
    assert m.bytes_sent == max_tree_bytes(windows, k * k, rt.rank, onehot=True)
    assert np.array_equal(raw(out), want)
    assert oh.shape == want_oh.shape and np.array_equal(raw(oh), want_oh)
    # backward: the window gradient goes to the first maximum
    g = seeded.integers(-(2**20), 2**20, size=want.shape)
    sg = arith_of(rt, g, seeded)
    with rt.comm.measure() as m:
        gin = compare.max_pool2d_backward(sg, oh, shape, k, stride=s, padding=p)
    assert (m.rounds, m.bytes_sent) == (1, 8 * windows * k * k)
    assert np.array_equal(raw(gin), maxpool_backward_ref(g, want_oh, shape, k, s, p))
    # training's way: keep the comparison bits (the forward costs what inference costs),
    # rebuild the one-hot from them in backward: L - 1 AND rounds + the bit product (2)
    with rt.comm.measure() as m:
        out, levels = compare.max_pool2d(sx, k, stride=s, padding=p, return_bits=True)
    assert m.bytes_sent == max_tree_bytes(windows, k * k, rt.rank)
    sel = compare.winner_bits(levels, rt)
    assert np.array_equal(sel.reveal().reshape(want_oh.shape), want_oh.astype(np.uint64))
    with rt.comm.measure() as m:
        gin2 = compare.max_pool2d_backward_bits(sg, levels, shape, k, stride=s, padding=p)
    assert m.rounds == len(levels) - 1 + 2
    assert np.array_equal(raw(gin2), raw(gin))


def test_max_pool_network_shapes(rt, seeded):
    """The shapes of the reference networks (batch 1): LeNet/VGG 2/2, ResNet stem 3/2 pad 1."""
    for shape, (k, s, p) in [
        ((1, 20, 24, 24), (2, 2, 0)),
        ((1, 64, 16, 16), (3, 2, 1)),
        ((1, 64, 8, 8), (2, 2, 0)),
        ((1, 16, 15, 15), (3, 2, 0)),
    ]:
        x = fixed(seeded, int(np.prod(shape))).reshape(shape)
        out = arith_of(rt, x, seeded).max_pool2d(k, s, p)
        assert np.array_equal(raw(out), maxpool_ref(x, k, s, p)[0]), (shape, k, s, p)


def test_max_pool_rejects_bad_geometry(rt):
    s = arith_of(rt, np.zeros((1, 1, 4, 4), dtype=np.int64), np.random.default_rng(0))
    from mpcgpu.errors import ProtocolError

    with pytest.raises(ProtocolError):
        s.max_pool2d(2, 2, 2)
    with pytest.raises(ProtocolError):
        compare.max_pool2d(s.reshape(4, 4), 2)


# -- security -------------------------------------------------------------------------------------


def _bit_freq(arrays):
    w = np.concatenate([a.reshape(-1).view(U64) for a in arrays])
    return ((w[:, None] >> np.arange(64, dtype=U64)) & U64(1)).mean(axis=0)


@pytest.mark.parametrize("proto", ["msb", "relu", "maxpool"])
def test_messages_fresh_uniform_and_new_to_the_receiver(rt, seeded, proto):
    n = 4096
    x = fixed(seeded, n)
    s = arith_of(rt, x, seeded)
    run = {"msb": msb, "relu": compare.relu, "maxpool": lambda a: a.reshape(4, 4, 16, 16).max_pool2d(2)}[proto]
    assert_fresh_messages(rt.comm, lambda: run(s), (s.first, s.second))
    # a secret-free worst case: the all-zero trivial sharing; everything received looks uniform
    z = np.zeros(n, dtype=U64)
    with recording(rt.comm) as log:
        run(ArithmeticShare(z.copy(), z.copy(), F, rt))
    freq = _bit_freq(received(log))
    assert np.all(np.abs(freq - 0.5) < 0.03), freq
