"""Exactness of mpcgpu.ring.products: ring products mod 2^64 on float64 kernels.

References never use the float path: Python ints (object arrays, explicit
loops) for small shapes, and NumPy's uint64 matmul (plain integer loops,
wrapping mod 2^64) for mid shapes; the NumPy references are themselves
checked against Python ints.  Gradients are checked against direct scatter
loops, against the adjoint identities of the forward convolution, and (tiny
shapes) against the linear map built column by column from the forward
reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpcgpu.ring import choice as kernels, limbs, native, products as ring

M64 = 2**64
ALL_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def rand(rng, *shape):
    return rng.integers(0, M64, size=shape, dtype=np.uint64, endpoint=False)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(autouse=True, params=["limbs", "native"])
def kernel(request, monkeypatch):
    """Every general test runs on both CPU kernels (the float64 limbs and the native integer
    GEMM); tests of the limbs' own machinery (schemes, splits, scratch) are marked ``limbs``.
    The float64 path is tested even on the tiny shapes where NumPy's integer matmul is
    chosen."""
    if request.param == "native":
        if request.node.get_closest_marker("limbs"):
            pytest.skip("limbs machinery")
        if not native.available():
            pytest.skip(native.why_not())
    monkeypatch.setattr(ring, "INTEGER_FALLBACK", False)
    monkeypatch.setattr(kernels, "_CHOICE", {"kernel": request.param, "why": "test", "seconds": None})
    return request.param


# ----------------------------------------------------------------------------- references


def matmul_py(a, b):
    """Python-int matmul mod 2^64 (object arrays), numpy.matmul shapes."""
    r = np.matmul(a.astype(object), b.astype(object)) % M64
    return np.asarray(r, dtype=object).astype(np.uint64) if np.ndim(r) else np.uint64(r)


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def conv_ref(x, w, stride=1, padding=0, groups=1):
    """Cross-correlation mod 2^64 from wrapping uint64 matmuls, one per kernel tap and group."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.uint64)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    og = o // groups
    out = np.zeros((o, n, ho, wo), np.uint64)
    for g, i, j in itertools.product(range(groups), range(kh), range(kw)):
        patch = xp[:, g * cg : (g + 1) * cg, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        prod = w[g * og : (g + 1) * og, :, i, j] @ patch.transpose(1, 0, 2, 3).reshape(cg, -1)
        out[g * og : (g + 1) * og] += prod.reshape(og, n, ho, wo)
    return out.transpose(1, 0, 2, 3)


def conv_py(x, w, stride=1, padding=0, groups=1):
    """The definition, in Python ints (tiny shapes only)."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    og = o // groups
    out = np.zeros((n, o, ho, wo), np.uint64)
    for b, oc, y, z in itertools.product(range(n), range(o), range(ho), range(wo)):
        g, acc = oc // og, 0
        for ci, i, j in itertools.product(range(cg), range(kh), range(kw)):
            yy, zz = y * sh + i - ph, z * sw + j - pw
            if 0 <= yy < h and 0 <= zz < wd:
                acc += int(w[oc, ci, i, j]) * int(x[b, g * cg + ci, yy, zz])
        out[b, oc, y, z] = acc % M64
    return out


def grad_input_ref(gy, w, input_shape, stride=1, padding=0, groups=1):
    """Scatter of every output gradient through its window (wrapping uint64)."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, wd = input_shape
    o, cg, kh, kw = w.shape
    _, _, ho, wo = gy.shape
    og = o // groups
    dx = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.uint64)
    for g, i, j in itertools.product(range(groups), range(kh), range(kw)):
        contrib = w[g * og : (g + 1) * og, :, i, j].T @ gy[:, g * og : (g + 1) * og].transpose(1, 0, 2, 3).reshape(
            og, -1
        )
        dx[:, g * cg : (g + 1) * cg, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += contrib.reshape(
            cg, n, ho, wo
        ).transpose(1, 0, 2, 3)
    return dx[:, :, ph : ph + h, pw : pw + wd]


def grad_weight_ref(x, gy, weight_shape, stride=1, padding=0, groups=1):
    """Correlation of every input window with the output gradient (wrapping uint64)."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, wd = x.shape
    o, cg, kh, kw = weight_shape
    _, _, ho, wo = gy.shape
    og = o // groups
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.uint64)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    dw = np.zeros(weight_shape, np.uint64)
    for g, i, j in itertools.product(range(groups), range(kh), range(kw)):
        patch = xp[:, g * cg : (g + 1) * cg, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        dw[g * og : (g + 1) * og, :, i, j] = (
            gy[:, g * og : (g + 1) * og].transpose(1, 0, 2, 3).reshape(og, -1)
            @ patch.transpose(1, 0, 2, 3).reshape(cg, -1).T
        )
    return dw


def dot64(a, b):
    """<a, b> mod 2^64."""
    return int(np.sum(a.astype(np.uint64) * b.astype(np.uint64), dtype=np.uint64))


def worst_case(rng, shape, scheme=limbs.W22, spread=2**10):
    """Values whose digits are all near -h_i: the largest float64 partial sums there are."""
    base = (-scheme.bias) % M64  # every digit exactly -h_i
    return (np.uint64(base) + rng.integers(0, spread, size=shape, dtype=np.uint64)).astype(np.uint64)


# ----------------------------------------------------------------------------- the references themselves


@pytest.mark.limbs
def test_numpy_uint64_matmul_wraps_like_python_ints(rng):
    a, b = rand(rng, 5, 9), rand(rng, 9, 4)
    assert (a @ b == matmul_py(a, b)).all()
    assert (a.view(np.int64) @ b.view(np.int64)).view(np.uint64).tolist() == matmul_py(a, b).tolist()


@pytest.mark.limbs
@pytest.mark.parametrize("cfg", [dict(stride=1, padding=0, groups=1), dict(stride=(2, 1), padding=(1, 2), groups=2)])
def test_conv_reference_is_the_definition(rng, cfg):
    x, w = rand(rng, 2, 4, 5, 6), rand(rng, 4, 4 // cfg["groups"], 3, 2)
    assert (conv_ref(x, w, **cfg) == conv_py(x, w, **cfg)).all()


# ----------------------------------------------------------------------------- digit schemes

SCHEMES = [limbs.K22, limbs.W22, limbs.W16]


@pytest.mark.limbs
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_digits_reconstruct_and_stay_in_range(rng, scheme):
    x = np.concatenate(
        [
            rand(rng, 4000),
            np.array([0, 1, ALL_ONES, 2**63, 2**63 - 1, (-scheme.bias) % M64, scheme.bias], dtype=np.uint64),
        ]
    )
    digits = np.empty((scheme.digits,) + x.shape)
    limbs.split_into(np, x, list(digits), scheme)
    total = np.zeros(x.shape, np.uint64)
    for i, (d, h) in enumerate(zip(digits, scheme.halves)):
        assert (d == np.round(d)).all() and d.min() >= -h and d.max() <= h - 1
        total += d.astype(np.int64).view(np.uint64) << np.uint64(i * scheme.width)
    assert (total == x).all()
    for side in ("left", "right"):  # slabs: digits and sums of digits
        spec = scheme.slabs(side)
        slabs = np.empty((len(spec),) + x.shape)
        limbs.split(np, x, slabs, scheme, side)
        for slab, got in zip(spec, slabs):
            assert (got == sum(digits[i] for i in slab)).all()


@pytest.mark.limbs
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_plan_is_the_product_mod_2_64(scheme):
    """Symbolically: the GEMMs weight every digit product d_i e_j by 2^(s_i + s_j) mod 2^64."""
    coef = {}
    for (l0, _), (r0, r1), mult in scheme.gemms:
        for p in range(r1 - r0):
            for i in scheme.left[l0 + p]:
                for j in scheme.right[r0 + p]:
                    coef[i, j] = (coef.get((i, j), 0) + mult) % M64
    for i, j in itertools.product(range(scheme.digits), repeat=2):
        assert coef.get((i, j), 0) == (1 << (scheme.width * (i + j))) % M64, (i, j)


@pytest.mark.limbs
def test_kmax_is_the_float64_bound():
    for sc in SCHEMES:
        worst = max(sc.bound(g) for g in sc.gemms)
        assert sc.kmax * worst <= 2**53 < (sc.kmax + 1) * worst
    assert (limbs.K22.kmax, limbs.W22.kmax, limbs.W16.kmax) == (512, 1024, 2**21)
    assert (limbs.K22.products, limbs.W22.products, limbs.W16.products) == (5, 6, 10)
    assert limbs.K22.bound(limbs.K22.gemms[2]) == 2**44  # (d0+d1)(e0+e1)
    assert limbs.W22.bound(limbs.W22.gemms[1]) == 2**43  # d0 e1 + d1 e0


@pytest.mark.limbs
def test_contract_refuses_a_chunk_beyond_the_bound():
    sc = limbs.W22
    left, right = np.zeros((1, 2, 3 * 1025)), np.zeros((1, 3 * 1025, 2))
    with pytest.raises(ValueError, match="exact bound"):
        limbs.contract(np, left, right, sc, 1025)


@pytest.mark.limbs
@pytest.mark.parametrize("scheme", [limbs.K22, limbs.W22], ids=lambda s: s.name)
def test_unchunked_long_reduction_would_be_wrong(rng, scheme):
    """The bound is real: the same GEMMs over 16x kmax without chunking lose bits (so chunking matters)."""
    k = 16 * scheme.kmax
    a, b = worst_case(rng, (4, k)), worst_case(rng, (k, 3))
    left, right = ring.split_left(np, a, scheme, 1, k), ring.split_right(np, b, scheme, 1, k)
    assert not (limbs.contract(np, left, right, scheme, k, check=False) == a @ b).all()
    assert (ring.matmul(a, b, scheme=scheme) == a @ b).all()  # chunked: exact


# ----------------------------------------------------------------------------- matmul


@pytest.mark.limbs
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 7, 13), (13, 3, 1), (7, 64, 5), (1, 300, 1), (33, 257, 17)])
@pytest.mark.parametrize("scheme", ["K22", "W22", "W16"])
def test_matmul_small_vs_python_ints(rng, m, k, n, scheme):
    a, b = rand(rng, m, k), rand(rng, k, n)
    assert (ring.matmul(a, b, scheme=scheme) == matmul_py(a, b)).all()


@pytest.mark.parametrize("k", [511, 512, 513, 1023, 1024, 1025, 2050, 3000])
@pytest.mark.parametrize("scheme", [None, "W22"])
def test_matmul_reduction_at_and_beyond_the_bound(rng, k, scheme):
    a, b = rand(rng, 9, k), rand(rng, k, 11)
    out = ring.matmul(a, b, scheme=scheme)
    assert out.dtype == np.uint64 and out.shape == (9, 11)
    assert (out == a @ b).all()


@pytest.mark.limbs
@pytest.mark.parametrize(
    "scheme,k", [(s, k) for s in (limbs.K22, limbs.W22) for k in (s.kmax, s.kmax + 1, 3 * s.kmax + 5)]
)
def test_matmul_worst_case_digits(rng, scheme, k):
    """All digits at (or near) -h_i: float64 partial sums reach 2^53 exactly at K = kmax."""
    a, b = worst_case(rng, (5, k)), worst_case(rng, (k, 6))
    assert (ring.matmul(a, b, scheme=scheme) == a @ b).all()
    full = np.full((2, k), (-scheme.bias) % M64, np.uint64)
    assert (ring.matmul(full, full.T, scheme=scheme) == full @ full.T).all()


def test_matmul_special_values(rng):
    k = 1500
    for fill in (ALL_ONES, np.uint64(0), np.uint64(2**63), np.uint64(1)):
        a = np.full((4, k), fill, np.uint64)
        b = rand(rng, k, 5)
        assert (ring.matmul(a, b) == a @ b).all()
        assert (ring.matmul(b.T, a.T) == b.T @ a.T).all()
    ones = np.full((3, k), ALL_ONES, np.uint64)  # (-1)(-1) k times = k
    assert (ring.matmul(ones, ones.T) == np.uint64(k)).all()


def test_matmul_int64_inputs_and_vectors(rng):
    a, b = rand(rng, 6, 40), rand(rng, 40, 3)
    assert (ring.matmul(a.view(np.int64), b.view(np.int64)) == a @ b).all()
    v, u = rand(rng, 40), rand(rng, 40)
    assert ring.matmul(v, u).shape == () and ring.matmul(v, u) == matmul_py(v, u)
    assert (ring.matmul(a, v) == a @ v).all() and ring.matmul(a, v).shape == (6,)
    assert (ring.matmul(u, b) == u @ b).all() and ring.matmul(u, b).shape == (3,)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((4, 3, 7, 5), (5, 2)),
        ((2, 5), (4, 3, 5, 7)),
        ((3, 1, 6, 20), (1, 4, 20, 3)),
        ((2, 5, 1100), (2, 1100, 3)),
        ((7,), (2, 7, 4)),
        ((2, 3, 9), (9,)),
    ],
)
def test_matmul_batched_broadcast(rng, sa, sb):
    a, b = rand(rng, *sa), rand(rng, *sb)
    out = ring.matmul(a, b)
    ref = a @ b
    assert out.shape == ref.shape and (out == ref).all()


def test_matmul_non_contiguous_and_inputs_untouched(rng):
    a, b = rand(rng, 30, 20), rand(rng, 40, 30)
    a0, b0 = a.copy(), b.copy()
    assert (ring.matmul(a.T, b.T) == a.T @ b.T).all()
    assert (ring.matmul(a[::2, 1:], b[1:20:1, ::3][:19]) == a[::2, 1:] @ b[1:20, ::3][:19]).all()
    assert (a == a0).all() and (b == b0).all()


def test_matmul_empty_and_errors(rng):
    assert (ring.matmul(rand(rng, 3, 0), rand(rng, 0, 4)) == 0).all()
    assert ring.matmul(rand(rng, 0, 5), rand(rng, 5, 2)).shape == (0, 2)
    with pytest.raises(ValueError):
        ring.matmul(rand(rng, 3, 4), rand(rng, 5, 2))
    with pytest.raises(ValueError):
        ring.matmul(rand(rng, 2, 3, 4), rand(rng, 5, 4, 2))
    with pytest.raises(TypeError):
        ring.matmul(np.ones((2, 2)), rand(rng, 2, 2))
    with pytest.raises(TypeError):
        ring.matmul(np.ones((2, 2), np.int32), rand(rng, 2, 2))


@pytest.mark.limbs
def test_integer_fallback_for_tiny_and_skinny_products(rng, monkeypatch):
    monkeypatch.setattr(ring, "INTEGER_FALLBACK", True)
    calls = []
    real = ring.contract
    monkeypatch.setattr(ring, "contract", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    for sa, sb in [((3, 5), (5, 2)), ((1, 3000), (3000, 200)), ((3000,), (3000, 100)), ((2, 4, 9), (9, 3))]:
        a, b = rand(rng, *sa), rand(rng, *sb)
        assert (ring.matmul(a, b) == a @ b).all()
    assert calls == []
    a, b = rand(rng, 80, 80), rand(rng, 80, 80)  # big enough: float64 path
    assert (ring.matmul(a, b) == a @ b).all() and calls == [1]
    v, w = rand(rng, 1, 3000), rand(rng, 3000, 200)  # presplit weight: float64 path
    assert (ring.matmul(v, ring.presplit(w)) == v @ w).all() and calls == [1, 1]
    assert (ring.matmul(rand(rng, 3, 5), rand(rng, 5, 2), scheme="W22") is not None) and len(calls) == 3


class _OtherModule:
    """numpy under another name: drives the code path taken for CuPy (no scratch reuse, direct
    strided digit writes, no integer fallback) on the CPU."""

    __name__ = "not_numpy"

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.limbs
def test_generic_array_module_path(rng, monkeypatch):
    monkeypatch.setattr(ring, "INTEGER_FALLBACK", True)
    monkeypatch.setattr(ring, "array_module", lambda *arrays: _OtherModule())
    a, b = rand(rng, 2, 7, 1100), rand(rng, 1100, 3)
    assert (ring.matmul(a, b) == a @ b).all()
    assert ring.matmul(rand(rng, 3), rand(rng, 3)) is not None
    v, m = rand(rng, 30), rand(rng, 2, 30, 4)
    assert (ring.matmul(v, m) == v @ m).all()
    pb = ring.presplit(b)
    assert (ring.matmul(a, pb) == a @ b).all()
    x, w = rand(rng, 2, 4, 6, 7), rand(rng, 6, 2, 3, 2)
    y = ring.conv2d(x, w, stride=(2, 1), padding=1, groups=2)
    assert (y == conv_ref(x, w, (2, 1), 1, 2)).all()
    gy = rand(rng, *y.shape)
    assert (ring.conv2d_grad_input(gy, w, x.shape, (2, 1), 1, 2) == grad_input_ref(gy, w, x.shape, (2, 1), 1, 2)).all()
    assert (
        ring.conv2d_grad_weight(x, gy, w.shape, (2, 1), 1, 2) == grad_weight_ref(x, gy, w.shape, (2, 1), 1, 2)
    ).all()


@pytest.mark.limbs
def test_presplit_4d_as_matmul_operand(rng):
    a, b = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 5, 6)
    pb = ring.presplit(b, side="right")
    pa = ring.presplit(a, side="left")
    assert (ring.matmul(a, pb) == a @ b).all() and (ring.matmul(pa, b) == a @ b).all()


@pytest.mark.limbs
def test_threads_do_not_share_scratch(rng):
    import threading

    pairs = [(rand(rng, 60, 700), rand(rng, 700, 50)) for _ in range(4)]
    results, errors = {}, []

    def work(i):
        try:
            a, b = pairs[i]
            for _ in range(5):
                results[i] = (ring.matmul(a, b) == a @ b).all()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results.values()) and len(results) == 4


@pytest.mark.limbs
def test_results_do_not_alias_scratch(rng):
    a, b, c = rand(rng, 20, 30), rand(rng, 30, 10), rand(rng, 30, 10)
    r1 = ring.matmul(a, b)
    r2 = ring.matmul(a, c)
    assert (r1 == a @ b).all() and (r2 == a @ c).all()


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 2100),
    n=st.integers(1, 9),
    batch=st.sampled_from([(), (2,), (3, 1)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_hypothesis(m, k, n, batch, seed):
    r = np.random.default_rng(seed)
    a, b = rand(r, *batch, m, k), rand(r, k, n)
    assert (ring.matmul(a, b) == a @ b).all()
    assert (ring.matmul(b.swapaxes(-1, -2), a.swapaxes(-1, -2)) == b.T @ a.swapaxes(-1, -2)).all()


# ----------------------------------------------------------------------------- presplit


@pytest.mark.limbs
def test_presplit_right_and_left_reused_without_resplitting(rng, monkeypatch):
    w, x1, x2 = rand(rng, 1500, 7), rand(rng, 4, 1500), rand(rng, 2, 3, 1500)
    pw = ring.presplit(w)
    assert pw.reduce_len == 1500
    calls = []
    real = ring.split
    monkeypatch.setattr(ring, "split", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert (ring.matmul(x1, pw) == x1 @ w).all()
    assert (ring.matmul(x2, pw) == x2 @ w).all()
    assert len(calls) == 2  # x1 and x2 split; w never again
    pl = ring.presplit(w.T, side="left")
    calls.clear()
    assert (ring.matmul(pl, x1.T) == w.T @ x1.T).all() and (ring.matmul(pl, x1.T) == w.T @ x1.T).all()
    assert len(calls) == 2


@pytest.mark.limbs
def test_presplit_vectors_and_guard(rng):
    v, m = rand(rng, 50), rand(rng, 3, 50)
    pv = ring.presplit(v)
    assert (ring.matmul(m, pv) == m @ v).all()
    with pytest.raises(ValueError, match="reduce_len"):
        ring.presplit(rand(rng, 50, 4), reduce_len=4)
    with pytest.raises(ValueError):
        ring.presplit(v, side="middle")


@pytest.mark.limbs
def test_presplit_both_sides_of_one_product(rng):
    a, b = rand(rng, 6, 2000), rand(rng, 2000, 5)
    pa, pb = ring.presplit(a, side="left"), ring.presplit(b)
    assert (ring.matmul(pa, pb) == a @ b).all()
    assert (ring.matmul(pa, b) == a @ b).all() and (ring.matmul(a, pb) == a @ b).all()
    # the weight as the left operand of another product: built lazily, cached
    c = rand(rng, 5, 9)
    assert (ring.matmul(pb, c) == b @ c).all() and len(pb._layouts) == 2


@pytest.mark.limbs
def test_presplit_conv_weight_serves_forward_and_backward(rng, monkeypatch):
    x, w = rand(rng, 2, 6, 7, 7), rand(rng, 4, 3, 3, 3)
    pw = ring.presplit(w, groups=2)
    assert pw.reduce_len == 27
    y = ring.conv2d(x, pw, padding=1, groups=2)
    assert (y == conv_ref(x, w, padding=1, groups=2)).all()
    gy = rand(rng, *y.shape)
    gi = ring.conv2d_grad_input(gy, pw, x.shape, padding=1, groups=2)
    assert (gi == grad_input_ref(gy, w, x.shape, padding=1, groups=2)).all()
    n_layouts = len(pw._layouts)
    calls = []
    real = ring.split_left
    monkeypatch.setattr(ring, "split_left", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    ring.conv2d(x, pw, padding=1, groups=2)
    ring.conv2d_grad_input(gy, pw, x.shape, padding=1, groups=2)
    assert calls == [] and len(pw._layouts) == n_layouts == 2


# ----------------------------------------------------------------------------- conv2d

CONVS = [  # (N, C, H, W, O, kh, kw, stride, padding, groups)
    (1, 3, 8, 8, 4, 3, 3, 1, 1, 1),
    (2, 4, 7, 9, 6, 3, 2, (1, 2), (1, 0), 2),  # non-square kernel, asymmetric stride/padding, groups
    (3, 6, 6, 5, 6, 3, 3, 1, 1, 6),  # depthwise
    (2, 4, 5, 5, 8, 3, 3, 2, 1, 4),  # depthwise with channel multiplier 2
    (1, 5, 9, 9, 3, 5, 5, 2, 2, 1),
    (2, 7, 6, 6, 13, 1, 1, 1, 0, 1),  # 1x1
    (1, 3, 13, 11, 2, 4, 3, (3, 2), (0, 1), 1),  # stride larger than kernel on rows
    (2, 120, 4, 4, 3, 3, 3, 1, 1, 1),  # reduction 1080: three channel chunks of 360
    (1, 300, 3, 3, 6, 3, 3, 1, 1, 3),  # 100 channels/group * 9 = 900: two chunks
    (1, 2, 25, 24, 2, 23, 23, 1, 0, 1),  # window 529 > 512: whole windows need W22
    (1, 1, 34, 34, 2, 33, 33, 1, 0, 1),  # window 1089 > 1024: falls back to W16
]


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "x".join(map(str, c[:7])))
def test_conv2d_and_its_gradients(rng, cfg):
    n, c, h, w_, o, kh, kw, s, p, g = cfg
    x, w = rand(rng, n, c, h, w_), rand(rng, o, c // g, kh, kw)
    y = ring.conv2d(x, w, stride=s, padding=p, groups=g)
    ref = conv_ref(x, w, s, p, g)
    assert y.dtype == np.uint64 and y.shape == ref.shape and (y == ref).all()
    gy = rand(rng, *y.shape)
    gi = ring.conv2d_grad_input(gy, w, x.shape, stride=s, padding=p, groups=g)
    assert gi.shape == x.shape and (gi == grad_input_ref(gy, w, x.shape, s, p, g)).all()
    gw = ring.conv2d_grad_weight(x, gy, w.shape, stride=s, padding=p, groups=g)
    assert gw.shape == w.shape and (gw == grad_weight_ref(x, gy, w.shape, s, p, g)).all()
    # adjoint identities: <conv(x, w), gy> = <x, grad_input> = <w, grad_weight>  (mod 2^64)
    assert dot64(y, gy) == dot64(x, gi) == dot64(w, gw)


@pytest.mark.limbs
@pytest.mark.parametrize("scheme", ["K22", "W22", "W16"])
def test_conv_schemes_agree(rng, scheme):
    x, w = rand(rng, 2, 6, 9, 8), rand(rng, 4, 3, 3, 3)
    y = ring.conv2d(x, w, stride=2, padding=1, groups=2, scheme=scheme)
    assert (y == conv_ref(x, w, 2, 1, 2)).all()
    gy = rand(rng, *y.shape)
    assert (
        ring.conv2d_grad_input(gy, w, x.shape, 2, 1, 2, scheme=scheme) == grad_input_ref(gy, w, x.shape, 2, 1, 2)
    ).all()
    assert (
        ring.conv2d_grad_weight(x, gy, w.shape, 2, 1, 2, scheme=scheme) == grad_weight_ref(x, gy, w.shape, 2, 1, 2)
    ).all()


@pytest.mark.limbs
@pytest.mark.parametrize("scheme", [limbs.K22, limbs.W22], ids=lambda s: s.name)
def test_conv_worst_case_digits_at_the_bound(rng, scheme):
    """Reduction exactly kmax (channels x 2x2) with every digit near -h: partial sums reach 2^53."""
    c = scheme.kmax // 4
    x, w = worst_case(rng, (1, c, 5, 5)), worst_case(rng, (3, c, 2, 2))
    assert (ring.conv2d(x, w, scheme=scheme) == conv_ref(x, w)).all()
    x2, w2 = worst_case(rng, (1, c + 1, 5, 5)), worst_case(rng, (3, c + 1, 2, 2))  # chunked
    assert (ring.conv2d(x2, w2, scheme=scheme) == conv_ref(x2, w2)).all()
    ones = np.full((1, 2, 4, 4), ALL_ONES, np.uint64)
    assert (
        ring.conv2d(ones, np.full((1, 2, 3, 3), ALL_ONES, np.uint64), padding=1)
        == conv_ref(ones, np.full((1, 2, 3, 3), ALL_ONES, np.uint64), padding=1)
    ).all()


def test_grad_weight_long_reductions(rng):
    """N*Ho*Wo far beyond kmax: chunks of whole images, of rows, and rows too long for K22
    (Wo > 512: W22) or for W22 (Wo > 1024: W16)."""
    for shape, k, s, p in [
        ((9, 2, 12, 12), 3, 1, 1),  # 144 per image: 7 images per chunk
        ((2, 1, 40, 37), 3, 1, 1),  # 1480 per image: row chunks
        ((1, 2, 85, 71), 3, 2, 1),  # 43 x 36 outputs, stride 2: row chunks
        ((1, 1, 3, 700), 3, 1, 0),  # one row of 698 outputs: W22
        ((1, 1, 2, 1100), 2, 1, 0),
    ]:  # one row of 1099 outputs: W16
        x = worst_case(rng, shape)
        w = rand(rng, 2, shape[1], k, k)
        gy = worst_case(rng, ring.conv2d(x, w, s, p).shape)
        assert (ring.conv2d_grad_weight(x, gy, w.shape, s, p) == grad_weight_ref(x, gy, w.shape, s, p)).all()


@pytest.mark.limbs
def test_conv_in_several_image_blocks(rng, monkeypatch):
    monkeypatch.setattr(ring, "BLOCK_BYTES", 1)  # one image (or one chunk of images) per block
    x, w = rand(rng, 5, 4, 6, 6), rand(rng, 6, 2, 3, 3)
    y = ring.conv2d(x, w, padding=1, groups=2)
    assert (y == conv_ref(x, w, 1, 1, 2)).all()
    gy = rand(rng, *y.shape)
    assert (ring.conv2d_grad_input(gy, w, x.shape, 1, 1, 2) == grad_input_ref(gy, w, x.shape, 1, 1, 2)).all()
    assert (ring.conv2d_grad_weight(x, gy, w.shape, 1, 1, 2) == grad_weight_ref(x, gy, w.shape, 1, 1, 2)).all()


@pytest.mark.parametrize(
    "shape,o,k,s,p,g",
    [
        ((1, 4, 13, 11), 6, 3, 1, 1, 1),  # 13 output rows: blocks of 1, 2, 5 rows
        ((2, 6, 15, 9), 4, 3, 2, (2, 1), 2),  # two images, stride 2, groups, uneven padding
        ((1, 3, 17, 17), 5, 7, 2, 3, 1),  # ResNet's first layer, small
        ((1, 2, 6, 5), 3, (2, 3), (1, 2), 0, 1),  # no padding, rectangular window and stride
    ],
)
def test_native_conv_in_blocks_of_output_rows(rng, monkeypatch, shape, o, k, s, p, g):
    """One image whose im2col exceeds IMAGE_BLOCK_BYTES goes in blocks of output rows: the
    same words as the whole im2col and as the Python-int reference, for any block size."""
    if not native.available():
        pytest.skip(native.why_not())
    kh, kw = (k, k) if np.isscalar(k) else k
    x, w = rand(rng, *shape), rand(rng, o, shape[1] // g, kh, kw)
    x[0, 0, 0, :3] = [0, 1, M64 - 1]  # edge words
    whole = native.conv2d(x, w, s, p, g)
    assert (whole == conv_ref(x, w, s, p, g)).all()
    monkeypatch.setattr(native, "IMAGE_BLOCK_BYTES", 1)
    for row_bytes in (1, 2 * (shape[1] // g) * kh * kw * 8 * shape[3], 5 * 8 * shape[1] * kh * kw * shape[3]):
        monkeypatch.setattr(native, "ROW_BLOCK_BYTES", row_bytes)
        assert (native.conv2d(x, w, s, p, g) == whole).all()


@pytest.mark.limbs
@pytest.mark.parametrize("block", [1, 3000, 20000])
def test_limb_conv_in_blocks_of_output_rows(rng, monkeypatch, block):
    """An image whose digit im2col exceeds BLOCK_BYTES goes in blocks of output rows (the
    float64 path, also the GPU's): the same words as the Python-int reference."""
    monkeypatch.setattr(ring, "BLOCK_BYTES", block)
    for shape, o, k, s, p, g in [
        ((1, 4, 13, 11), 6, 3, 1, 1, 1),
        ((2, 6, 15, 9), 4, 3, 2, (2, 1), 2),
        ((1, 3, 17, 17), 5, 7, 2, 3, 1),
        ((1, 2, 6, 5), 3, (2, 3), (1, 2), 0, 1),
        ((1, 70, 5, 5), 2, 3, 1, 1, 1),  # 630 > 512: two reduction chunks
    ]:
        kh, kw = (k, k) if np.isscalar(k) else k
        x, w = rand(rng, *shape), rand(rng, o, shape[1] // g, kh, kw)
        x[0, 0, 0, :3] = [0, 1, M64 - 1]
        assert (ring.conv2d(x, w, s, p, g) == conv_ref(x, w, s, p, g)).all()
        pre = ring.presplit(w, groups=g)
        assert (ring.conv2d(x, pre, s, p, g) == conv_ref(x, w, s, p, g)).all()


def test_gradients_are_the_adjoint_linear_maps(rng):
    """Tiny shapes: build conv's matrix in x and in w column by column (Python ints), transpose."""
    n, c, h, wd, o, kh, kw, s, p, g = 1, 2, 4, 5, 4, 2, 3, (2, 1), (1, 1), 2
    x, w = rand(rng, n, c, h, wd), rand(rng, o, c // g, kh, kw)
    gy = rand(rng, *conv_py(x, w, s, p, g).shape)

    def adjoint(fn, size, shape):
        cols = []
        for k in range(size):
            e = np.zeros(size, np.uint64)
            e[k] = 1
            cols.append(fn(e.reshape(shape)).ravel().astype(object))
        mat = np.stack(cols, axis=1)  # out_size x size
        return ((mat.T @ gy.ravel().astype(object)) % M64).astype(np.uint64).reshape(shape)

    gi_ref = adjoint(lambda e: conv_py(e, w, s, p, g), x.size, x.shape)
    gw_ref = adjoint(lambda e: conv_py(x, e, s, p, g), w.size, w.shape)
    assert (ring.conv2d_grad_input(gy, w, x.shape, s, p, g) == gi_ref).all()
    assert (ring.conv2d_grad_weight(x, gy, w.shape, s, p, g) == gw_ref).all()


def test_conv_errors(rng):
    x = rand(rng, 1, 4, 5, 5)
    with pytest.raises(ValueError):
        ring.conv2d(x, rand(rng, 2, 3, 3, 3))  # channels
    with pytest.raises(ValueError):
        ring.conv2d(x, rand(rng, 3, 2, 3, 3), groups=2)  # O not divisible
    with pytest.raises(ValueError):
        ring.conv2d(x, rand(rng, 2, 4, 7, 7))  # kernel larger than input
    with pytest.raises(ValueError):
        ring.conv2d_grad_input(rand(rng, 1, 2, 4, 4), rand(rng, 2, 4, 3, 3), x.shape)
    with pytest.raises(TypeError):
        ring.conv2d(x.astype(np.float64), rand(rng, 2, 4, 3, 3))


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 2),
    cg=st.integers(1, 3),
    og=st.integers(1, 3),
    g=st.integers(1, 3),
    h=st.integers(1, 7),
    wd=st.integers(1, 7),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    ph=st.integers(0, 2),
    pw=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv_hypothesis(n, cg, og, g, h, wd, kh, kw, sh, sw, ph, pw, seed):
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        return
    r = np.random.default_rng(seed)
    x, w = rand(r, n, cg * g, h, wd), rand(r, og * g, cg, kh, kw)
    s, p = (sh, sw), (ph, pw)
    y = ring.conv2d(x, w, s, p, g)
    assert (y == conv_ref(x, w, s, p, g)).all()
    gy = rand(r, *y.shape)
    gi = ring.conv2d_grad_input(gy, w, x.shape, s, p, g)
    gw = ring.conv2d_grad_weight(x, gy, w.shape, s, p, g)
    assert (gi == grad_input_ref(gy, w, x.shape, s, p, g)).all()
    assert (gw == grad_weight_ref(x, gy, w.shape, s, p, g)).all()
    assert dot64(y, gy) == dot64(x, gi) == dot64(w, gw)


@pytest.mark.parametrize("k", [1, 31, 4096, 100_000])
def test_long_reductions_and_all_ones(rng, k):
    """Reductions up to 10^5 with full-range operands, and the all-ones worst case."""
    a, b = rand(rng, 3, k), rand(rng, k, 4)
    assert (ring.matmul(a, b) == a @ b).all()
    ones = np.full((2, k), M64 - 1, dtype=np.uint64)
    assert (ring.matmul(ones, ones.T) == np.uint64(k % M64)).all()  # (-1)(-1) summed k times


def py_matmul(a, b):
    """``a @ b mod 2^64`` with Python ints."""
    return np.array((a.astype(object) @ b.astype(object)) % M64, dtype=np.uint64).reshape(a.shape[0], b.shape[1])


def call_kernel(kernel, a, rhs, n):
    """One compiled kernel of mpcgpu.ring.native on fresh zeros (the blocked ones with the module's
    blocking parameters)."""
    out = np.zeros((a.shape[0], n), dtype=np.uint64)
    nt, nn, nn_packed = native._compile()
    if kernel is nn:
        kernel(a, rhs, out)
    else:
        kernel(a, rhs, out, native.RED_BLOCK, native.BLOCK_BYTES)
    return out


@pytest.mark.parametrize(
    "m,k,n",
    [(1, 1, 1), (4, 4, 4), (5, 1025, 7), (18, 2060, 6), (7, 3, 9), (16, 512, 4), (2, 1025, 3), (3, 2, 1)]
    + [(1, 300, 9), (9, 300, 1), (21, 1, 13), (17, 2051, 70), (6, 1039, 130)],
)
def test_native_kernels_both_layouts_vs_python_ints(rng, m, k, n):
    """The dot-product kernel (B^T given or packed block by block from B) and the row-update
    kernel (B as it is), on every remainder of their 4 x 4 / 2 x 2 tiles, one row, one
    column, k = 1, and reductions cut into uneven blocks (1025 -> 520 + 505, 2051 -> 3)."""
    if not native.available():
        pytest.skip(native.why_not())
    a, b = rand(rng, m, k), rand(rng, k, n)
    ref = py_matmul(a, b)
    assert (native.gemm_nt(a, np.ascontiguousarray(b.T)) == ref).all()
    assert (native.gemm(a, b) == ref).all()  # packed blocks or row updates
    assert (native.gemm(a, np.ascontiguousarray(b.T).T) == ref).all()  # a transposed view: no copy
    nt, nn, nn_packed = native._compile()
    for kernel, rhs in ((nt, np.ascontiguousarray(b.T)), (nn, b), (nn_packed, b)):
        assert (call_kernel(kernel, a, rhs, n) == ref).all()
    ones = np.full((m, k), M64 - 1, dtype=np.uint64)
    assert (native.gemm(ones, np.full((k, n), M64 - 1, dtype=np.uint64)) == np.uint64(k)).all()


EDGES = np.array([0, 1, 2, 2**32 - 1, 2**32, 2**63 - 1, 2**63, M64 - 2, M64 - 1], dtype=np.uint64)


@pytest.mark.parametrize("red_block,block_bytes", [(8, 8 * 8 * 4), (16, 8 * 16 * 8), (24, 8 * 24 * 12), (1, 1)])
def test_native_blocking_vs_python_ints(rng, monkeypatch, red_block, block_bytes):
    """Tiny reduction blocks and blocks of B^T, so that small shapes cross every block edge:
    reductions cut unevenly (k not a multiple of the block or of 8), the last block of
    rows of B^T shorter than the others, every tile remainder; full-range words and the
    edge words (0, 1, 2^32 +- 1, 2^63 +- 1, -1, -2) against Python ints, on every path of
    :func:`native.gemm` (transposed view, packed blocks, row updates)."""
    if not native.available():
        pytest.skip(native.why_not())
    monkeypatch.setattr(native, "RED_BLOCK", red_block)
    monkeypatch.setattr(native, "BLOCK_BYTES", block_bytes)
    nt, nn, nn_packed = native._compile()
    for m, k, n in itertools.product((1, 3, 4, 9), (1, 7, 8, 17, 50), (1, 5, 8, 13, 30)):
        a, b = rand(rng, m, k), rand(rng, k, n)
        if (m * k * n) % 3 == 0:  # a third of the cases on edge words only
            a, b = rng.choice(EDGES, (m, k)), rng.choice(EDGES, (k, n))
        ref = py_matmul(a, b)
        bt = np.ascontiguousarray(b.T)
        assert (call_kernel(nt, a, bt, n) == ref).all(), (m, k, n)
        assert (call_kernel(nn_packed, a, b, n) == ref).all(), (m, k, n)
        assert (native.gemm(a, bt.T) == ref).all(), (m, k, n)
    ones = np.full((5, 37), M64 - 1, dtype=np.uint64)
    assert (call_kernel(nn_packed, ones, ones.T.copy(), 5) == np.uint64(37)).all()


def test_native_gemm_chooses_its_kernel(rng, monkeypatch):
    """A transposed view goes to ``nt`` as it is; B as it is to the packed kernel from
    MIN_ROWS_TO_PACK rows of A on, to the row updates below; the results agree."""
    if not native.available():
        pytest.skip(native.why_not())
    kernels3 = native._compile()
    calls = []

    def spy(i):
        def run(*args):
            calls.append(i)
            return kernels3[i](*args)

        return run

    monkeypatch.setattr(native, "_kernels", lambda: tuple(spy(i) for i in range(3)))
    few, many = native.MIN_ROWS_TO_PACK - 1, native.MIN_ROWS_TO_PACK
    b = rand(rng, 40, 11)
    for m, expect in ((few, 1), (many, 2)):
        a = rand(rng, m, 40)
        ref = py_matmul(a, b)
        assert (native.gemm(a, b) == ref).all() and calls[-1] == expect
        assert (native.gemm(a, np.ascontiguousarray(b.T).T) == ref).all() and calls[-1] == 0
