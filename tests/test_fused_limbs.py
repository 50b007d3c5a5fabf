"""The fused split and combination of the ring products' limbs (mpcgpu.kernelsets.fused_limbs):
the same float64 slabs as the array reference, bit for bit, and products exact against Python
integers at every chunk edge (K = kmax - 1, kmax, kmax + 1 per scheme), at odd M and N, with
all-ones words, 2^63, 2^63 - 1, 1 and 0."""

from __future__ import annotations

import numpy as np
import pytest

from mpcgpu.ring import choice as kernels, limbs, native, products as ring
from mpcgpu.ring.limbs import K22, W16, W22

pytestmark = pytest.mark.skipif(not native.available(), reason="numba not available")
M64 = 2**64
EDGES = np.array([0, 1, 2**63, 2**63 - 1, M64 - 1, 2**22 - 1, 2**22, 2**44, 2**43 - 1], dtype=np.uint64)


@pytest.fixture
def steps():
    from mpcgpu.kernelsets import fused_limbs

    return fused_limbs.steps()


@pytest.fixture
def fused(steps, monkeypatch):
    """Products through the limbs (not the native kernel, not NumPy's integer matmul), fused."""
    monkeypatch.setattr(kernels, "_CHOICE", {"kernel": "limbs", "why": "test", "grid": None})
    monkeypatch.setattr(ring, "INTEGER_FALLBACK", False)
    previous = limbs.use_fused_steps(steps)
    yield steps
    limbs.use_fused_steps(previous)


def operand(rng, *shape):
    """Random words with the edge values planted at the start, the end and in between."""
    a = rng.integers(0, M64, size=shape, dtype=np.uint64).reshape(-1)
    a[: EDGES.size] = EDGES[: a.size]
    a[-EDGES.size :] = EDGES[::-1][-a.size :]
    a[a.size // 2 :: 7] = M64 - 1
    return a.reshape(shape)


def matmul_py(a, b):
    return np.array((a.astype(object) @ b.astype(object)) % M64, dtype=np.uint64)


def slabs_by_array(x, scheme, side, nc, kc):
    previous = limbs.use_fused_steps(None)
    try:
        split = ring.split_left if side == "left" else ring.split_right
        return split(np, x, scheme, nc, kc, True)
    finally:
        limbs.use_fused_steps(previous)


@pytest.mark.parametrize("scheme", [K22, W22, W16], ids=lambda s: s.name)
@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_split_gives_the_array_slabs(rng_fixed, steps, scheme, side):
    for k, kc in [(1, 1), (5, 4), (7, 7), (9, 4), (33, 16)]:  # padded last chunks, exact fits
        nc = -(-k // kc)
        for m in (1, 4, 5):
            x = operand(rng_fixed, m, k) if side == "left" else operand(rng_fixed, k, m)
            ref = slabs_by_array(x, scheme, side, nc, kc)
            got = np.full(ref.shape, np.nan)
            if side == "left":
                steps.split_rows(x[None], got.reshape((1,) + ref.shape), kc, scheme, "left")
            else:
                steps.split_cols(x[None], got.reshape((1,) + ref.shape), kc, scheme, "right")
            assert (got.view(np.uint64) == ref.view(np.uint64)).all(), (k, kc, m)
            # and the digit slabs are the balanced digits of each word (Python integers)
            spec = scheme.slabs(side)
            at = {s[0]: p for p, s in enumerate(spec) if len(s) == 1}
            for idx in np.ndindex(*x.shape):
                i, j = idx if side == "left" else idx[::-1]  # (row, reduction index)
                c, r = divmod(j, kc)
                if side == "left":
                    digits = [got[c, i, at[d] * kc + r] for d in range(scheme.digits)]
                else:
                    digits = [got[c, at[d] * kc + r, i] for d in range(scheme.digits)]
                value = sum(int(v) << (d * scheme.width) for d, v in enumerate(digits)) % M64
                assert value == int(x[idx])
                assert all(-h <= v < h for v, h in zip(digits, scheme.halves))


@pytest.fixture
def rng_fixed():
    return np.random.default_rng(20261207)


@pytest.mark.parametrize("scheme", [K22, W22], ids=lambda s: s.name)
def test_fused_products_exact_at_every_chunk_edge(rng_fixed, fused, scheme):
    kmax = scheme.kmax
    for k in (kmax - 1, kmax, kmax + 1, 2 * kmax + 1):
        for m, n in ((1, 5), (4, 4), (5, 1)):
            a, b = operand(rng_fixed, m, k), operand(rng_fixed, k, n)
            assert (ring.matmul(a, b, scheme=scheme) == matmul_py(a, b)).all(), (k, m, n)
    ones = np.full((3, kmax + 1), M64 - 1, dtype=np.uint64)
    assert (ring.matmul(ones, ones.T, scheme=scheme) == np.uint64(kmax + 1)).all()  # (-1)(-1), kmax+1 times
    top = np.full((2, kmax), 2**63, dtype=np.uint64)
    assert (ring.matmul(top, top.T, scheme=scheme) == 0).all()  # 2^126 * kmax = 0 mod 2^64


def test_fused_w16_and_default_products(rng_fixed, fused):
    a, b = operand(rng_fixed, 5, 70), operand(rng_fixed, 70, 3)
    assert (ring.matmul(a, b, scheme="W16") == matmul_py(a, b)).all()
    a, b = operand(rng_fixed, 2, 3, 9, 600), operand(rng_fixed, 600, 4)  # batch folded, two chunks
    assert (ring.matmul(a, b) == matmul_py(a.reshape(-1, 600), b).reshape(2, 3, 9, 4)).all()
    a, b = operand(rng_fixed, 3, 4, 513), operand(rng_fixed, 3, 513, 5)  # batched both sides
    assert (ring.matmul(a, b) == np.stack([matmul_py(x, y) for x, y in zip(a, b)])).all()
    p = ring.presplit(b[0], side="right")  # a presplit (persistent) layout
    assert (ring.matmul(a[0], p) == matmul_py(a[0], b[0])).all()


def test_fused_convolutions_match_the_array_code(rng_fixed, fused):
    x, w = operand(rng_fixed, 2, 60, 6, 6), operand(rng_fixed, 8, 30, 3, 3)  # K = 270 per group, groups 2
    gy = operand(rng_fixed, 2, 8, 6, 6)
    got = (
        ring.conv2d(x, w, padding=1, groups=2),
        ring.conv2d_grad_input(gy, w, x.shape, padding=1, groups=2),
        ring.conv2d_grad_weight(x, gy, w.shape, padding=1, groups=2),
    )
    limbs.use_fused_steps(None)
    ref = (
        ring.conv2d(x, w, padding=1, groups=2),
        ring.conv2d_grad_input(gy, w, x.shape, padding=1, groups=2),
        ring.conv2d_grad_weight(x, gy, w.shape, padding=1, groups=2),
    )
    assert all((g == r).all() for g, r in zip(got, ref))


def test_fused_combination_against_python_integers(steps, rng_fixed):
    g = rng_fixed.integers(-(2**53), 2**53, size=40, endpoint=True).astype(np.float64)
    g[:4] = [2.0**53, -(2.0**53), 0.0, -1.0]
    acc = rng_fixed.integers(0, M64, size=40, dtype=np.uint64)
    start = [int(v) for v in acc]
    for mult, first in [((1 - 2**22) % M64, False), (2**44, False), (M64 - 1, True), (1, False)]:
        steps.combine(g, mult, acc, first)
        start = [((0 if first else s) + int(v) * mult) % M64 for s, v in zip(start, g)]
        assert [int(v) for v in acc] == start


def test_the_kernel_set_installs_its_limb_steps():
    from mpcgpu.device.backend import Backend
    from mpcgpu.kernelsets import choose_kernel_set

    previous = limbs.use_fused_steps(None)
    try:
        assert choose_kernel_set(Backend("cpu"), "numba").limb_steps is not None
        assert limbs.fused_steps_name() == "numba" and limbs.fused_steps(np) is not None
        assert choose_kernel_set(Backend("cpu"), "array").limb_steps is None
        assert limbs.fused_steps_name() == "array"
    finally:
        limbs.use_fused_steps(previous)
