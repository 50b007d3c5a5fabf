"""Softmax along an axis of attention scores, with public masks: :func:`masked_softmax`.

``softmax(x)_j = e^(x_j - m) / sum_k e^(x_k - m)`` with ``m`` the row maximum, masked
entries excluded (result 0), rows with nothing kept all 0 (ONNX Softmax followed by the
exporters' ``IsNaN``/``Where`` guard).

Steps (``R`` rows of ``n`` entries, ``N = R n``; ``f`` fractional bits)
=====================================================================
1. **mask** (public ``keep``): masked entries are replaced locally by ``-2^31`` (below
   every fixed-point value, and ``x - (-2^31)`` cannot wrap the ring), so they never win
   the maximum.
2. **row maximum** by the comparison tree of :mod:`mpcgpu.protocols.compare`
   (``ceil(log2 n)`` levels of 10 rounds; every level of every row in one call).
3. ``z = x - m <= 0``; **clip**: ``c = [z >= -T]`` with ``T = 12`` by one MSB call on
   ``z + T`` (8 rounds).  Why 12: ``e^-12 = 6.1e-6`` is below half a unit in the last
   place (``2^-17 = 7.6e-6``), so for ``z < -12`` the correctly rounded fixed-point
   ``e^z`` IS 0: clipping there changes nothing that 16 fractional bits can hold, and
   the exp below only has to be right on ``[-12, 0]``.
4. **exp on [-12, 0]**: ``e^z = p(z/2)^2``, ``p`` of degree 8 fitted on the host
   (minimax in float64, agreed by the parties: the relative error of ``p^2`` weighted by
   ``min(1, 512 e^z)``, see :func:`exp_plan`: 1.5e-4).  ``r = z/8`` is free (the same
   ring elements read with 3 more fractional bits); ``u = r^2``; ``q = u (u + alpha r) /
   4`` (``alpha`` makes ``q^2`` carry degrees 8 and 7); ``p = a0 + a1 r + a2 u + q (A q
   + B u + C r) + u (E u + F r)``: the two products summed into ONE summand (one
   resharing and truncation, the linear terms added to it first), every factor an
   integer multiple of ring words (free), the numbers rounded to those grids one at a
   time, the others refitted.  Then one squaring: 4 products, 8 rounds, values at ``f +
   10`` bits.  (The earlier quartic ``p(z/8)^8``: Horner 3 products + 3 squarings, 6
   products, 12 rounds, 1.8e-4; the quartic in 2 products: 5.)  Below ``-12`` the
   polynomial's value is garbage, so
5. ``e = c * p^2`` by one multiply-by-bit (2 rounds, exact): exactly 0 below ``-T``.
   With a mask, steps 3-6 run on the kept entries only (their positions are public:
   gathered into one vector, scattered back into zeros): a causal mask halves them.
6. ``s = sum e`` (``>= 1 - 1e-4``: the maximum's own term; a row with nothing kept gets
   ``+1`` from a public indicator, so it divides 0 by 1), ``r = 1 / s`` by
   :func:`mpcgpu.protocols.approx.reciprocal` on ``[0.99, 1.01 n]`` (a truncation to
   ``f`` bits, 2 rounds, then the planned rounds), ``out = e r`` (2 rounds); masked
   entries are exactly 0.

Cost: rounds ``10 ceil(log2 n) + 8 + 8 + 2 + 2 + reciprocal + 2``; bytes
:func:`softmax_cost` (per entry, in all: about 119 for the tree, 71 for the clip, 256
for the exp, 48 for the selection and 64 for the product: ~570; with the earlier
quartic's 12 rounds and 384 bytes for the exp: ~690).

Accuracy: ``|err| <= 5e-4`` absolute per probability (tests; measured ~1e-4 on rows of
128 with logits of standard deviation 1 to 10).  Domain: every
fixed-point input (the clip makes any logit spread safe).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as _np  # host-side masks and public constants only; never for share data

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, _summand_product, mul_trunc, product_summand
from ..sharing.replicated import with_public
from .approx import agreed, plan_bytes, plan_reciprocal, reciprocal
from .compare import max as _row_max
from .convert import msb, mul_bit, tree_words

CLIP = 12.0  # exp(z) for z < -CLIP is below half a unit in the last place at 16 bits
EXP_SHIFT = 1  # e^z = p(z / 2)^2
EXP_DEGREE = 8  # p has degree 8 (in r = z / 8)
EXP_EXTRA_BITS = 10  # the exp's values carry f + 10 fractional bits
FIT_ROWS = 512  # rows up to this length weigh fully in the fit
#: u = r^2, q = u (u + alpha r) / 4, p = a quadratic form in (1, r, u, q), one squaring
EXP_PRODUCTS = 3 + EXP_SHIFT
LOW_BITS = 31  # masked entries: -2^31 (below every fixed-point value)
#: fractional bits: r = z / 8 (free), u, w1 = (u + alpha r) / 4, q, the factors L1 and L2 of
#: the last product, that product (|p - a_0| < 1 there: 2^56 < 2^62)
R_SHIFT = 3
U_BITS, W1_BITS, Q_BITS, L_BITS = 24, 34, 24, 32
KAPPA = 0.25  # q = KAPPA u (u + alpha r): |q| < 2.2 on the domain


@dataclass(frozen=True)
class ExpPlan:
    """``e^z ~ p(z/2)^2`` on ``[-CLIP, 0]`` (public).  ``coeffs``: ``p`` as a polynomial in
    ``t = z / 2^shift`` (degree 8), exactly the function the protocol evaluates (up to
    float64 rounding of this conversion); ``alpha``, ``terms``: how it evaluates it
    (:func:`_exp_clipped`), each number on its fixed-point grid."""

    kind: str
    domain: tuple
    shift: int
    coeffs: tuple
    alpha: float  # KAPPA alpha of w1, on its grid
    terms: tuple  # A, B, C, E, F, a2, a1, a0 (on their grids)
    max_error: float  # float64 relative error of p(z/2^shift)^(2^shift), weighted by min(1, 512 e^z)


def _lawson(A, y, weight, iters: int = 120):
    w = _np.full(len(y), 1.0 / len(y))
    c = None
    for _ in range(iters):
        sw = _np.sqrt(w)
        c = _np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]
        e = _np.abs(A @ c - y) * weight
        w = w * e
        total = w.sum()
        if total == 0.0:
            break
        w = _np.maximum(w / total, 1e-30)  # no denormals (slow), same minimax
    return c


def _exp_grids(frac_bits: int) -> tuple:
    """Fractional bits of the grid of each of ``A, B, C, E, F, a2, a1, a0`` as
    :func:`_exp_clipped` applies them: integer multiples of ring words read at ``L_BITS``
    (the factors ``A q + B u + C r`` and ``E u + F r``) or at the product's bits (the
    linear terms ``a2 u + a1 r``), and ``a0`` a public constant at ``f + 10`` bits."""
    rb, p = frac_bits + R_SHIFT, Q_BITS + L_BITS
    return (L_BITS - Q_BITS, L_BITS - U_BITS, L_BITS - rb, L_BITS - U_BITS, L_BITS - rb, p - U_BITS, p - rb,
            frac_bits + EXP_EXTRA_BITS)  # fmt: skip


def _exp_features(r, kalpha):
    """The functions of ``r`` that the protocol combines: ``q^2, q u, q r, u^2, u r, u, r, 1``
    with ``u = r^2`` and ``q = u (KAPPA u + kalpha r)``."""
    u = r * r
    q = u * (KAPPA * u + kalpha * r)
    return _np.stack([q * q, q * u, q * r, u * u, u * r, u, r, _np.ones_like(r)], axis=1)


@functools.lru_cache(maxsize=4)
def exp_plan(frac_bits: int = 16) -> ExpPlan:
    """The fit (deterministic float64, Lawson's minimax reweighting): minimises the
    relative error of ``p(z/2)^2`` on ``[-12, 0]`` weighted by ``min(1, 512 e^z)`` -- a
    probability's error is the relative error of the exps that matter in its row's sum
    (512 entries at ``z`` weigh as much as the maximum's own ``e^0`` once ``512 e^z >= 1``).

    A degree-8 fit in ``r = z/8`` gives ``alpha = a_7 / (2 a_8)``, which makes
    ``q^2 = KAPPA^2 (r^8 + 2 alpha r^7 + ...)`` carry the top two degrees; then ``p`` is
    fitted over the eight functions of :func:`_exp_features`, its numbers put on their
    grids (:func:`_exp_grids`) one at a time from the highest degree down, the rest
    refitted after each rounding; ``max_error`` is that of the rounded plan."""
    z = _np.linspace(-CLIP, 0.0, 6001)
    r = z / 2.0**R_SHIFT
    target = _np.exp(z / 2.0**EXP_SHIFT)
    weight = 2.0**EXP_SHIFT / target * _np.minimum(1.0, FIT_ROWS * _np.exp(z))
    full = _lawson(_np.stack([r**j for j in range(EXP_DEGREE + 1)], axis=1), target, weight)
    wb = W1_BITS - (frac_bits + R_SHIFT)
    alpha = round(KAPPA * full[7] / (2 * full[8]) * 2.0**wb) / 2.0**wb  # KAPPA alpha, on its grid
    F = _exp_features(r, alpha)
    grids = _exp_grids(frac_bits)
    fixed = {}
    for j in range(F.shape[1]):
        free = [i for i in range(F.shape[1]) if i not in fixed]
        c = _lawson(F[:, free], target - sum(fixed[i] * F[:, i] for i in fixed), weight)
        fixed[j] = round(float(c[0]) * 2.0 ** grids[j]) / 2.0 ** grids[j]
    terms = tuple(fixed[j] for j in range(F.shape[1]))
    p = F @ _np.asarray(terms)
    err = float((_np.abs(p ** (2**EXP_SHIFT) / _np.exp(z) - 1.0) * _np.minimum(1.0, FIT_ROWS * _np.exp(z))).max())
    # the same polynomial in t = z / 2^shift (r = t / 4): monomial coefficients
    a, k = alpha / KAPPA, KAPPA
    A, B, C, E, Fc, a2, a1, a0 = terms
    mono = _np.zeros(EXP_DEGREE + 1)
    mono[8] += A * k * k
    mono[7] += A * k * k * 2 * a
    mono[6] += A * k * k * a * a + B * k
    mono[5] += B * k * a + C * k
    mono[4] += C * k * a + E
    mono[3] += Fc
    mono[2] += a2
    mono[1] += a1
    mono[0] += a0
    scale = 2.0 ** (R_SHIFT - EXP_SHIFT)
    coeffs = tuple(float(mono[j] / scale**j) for j in range(EXP_DEGREE + 1))
    return ExpPlan("attention-exp", (-CLIP, 0.0), EXP_SHIFT, coeffs, alpha, terms, err)


def _exp_clipped(z: ArithmeticShare, plan: ExpPlan) -> ArithmeticShare:
    """``e^z`` at ``f + 10`` bits for ``z`` in ``[-12, 0]`` (garbage below) in 4 fused
    products, 8 rounds: ``u = r^2``; ``q = u w1`` with ``w1 = (u + alpha r) / 4``; ``p =
    a0 + (a2 u + a1 r) + q (A q + B u + C r) + u (E u + F r)`` -- the two products summed
    in ONE summand (one resharing and truncation), the linear terms added to it before the
    truncation, every factor an integer multiple of ring words (free); then ``p^2``."""
    rt = z.rt
    f = rt.frac_bits
    S = f + EXP_EXTRA_BITS
    rb = f + R_SHIFT
    g = _exp_grids(f)
    r = z.relabel(rb)  # z / 8, free

    def times(s, c, bits, scale):  # c s (c on a grid of ``bits``) read at ``scale``: exact, local
        k = s.xp.uint64(int(round(c * 2.0**bits)) % (1 << 64))
        return ArithmeticShare(s.first * k, s.second * k, scale, s.rt)

    A, B, C, E, Fc, a2, a1, a0 = plan.terms
    u = mul_trunc(r, r, 2 * rb - U_BITS, U_BITS)
    w1 = times(u, KAPPA, W1_BITS - U_BITS, W1_BITS) + times(r, plan.alpha, W1_BITS - rb, W1_BITS)
    q = mul_trunc(u, w1, U_BITS + W1_BITS - Q_BITS, Q_BITS)
    L1 = times(q, A, g[0], L_BITS) + times(u, B, g[1], L_BITS) + times(r, C, g[2], L_BITS)
    L2 = times(u, E, g[3], L_BITS) + times(r, Fc, g[4], L_BITS)
    P = Q_BITS + L_BITS
    lin = times(u, a2, g[5], P) + times(r, a1, g[6], P)
    mul = lambda x, y: x * y  # noqa: E731
    summand = product_summand(rt, q.first, q.second, L1.first, L1.second, mul)
    summand = summand + product_summand(rt, u.first, u.second, L2.first, L2.second, mul) + lin.first
    y = _summand_product(rt, summand, P, None, P - S, S) + a0
    for _ in range(plan.shift):
        y = mul_trunc(y, y, S, S)
    return y


def _sum_domain(n: int):
    return (0.99, max(1.5, 1.01 * n))


def softmax_cost(rows: int, n: int, kept=None) -> dict:
    """``{"rounds", "bytes"}`` of :func:`masked_softmax` on ``rows`` rows of ``n`` entries
    of which ``kept`` are kept by the mask (default: all; bytes sent by the three parties
    together).  The comparison tree runs on every entry, the rest on the kept ones only."""
    R, n = int(rows), int(n)
    N = R * n if kept is None else int(kept)
    rounds = b = 0
    cnt = n
    while cnt > 1:  # the comparison tree
        q = cnt // 2
        Q = R * q
        b += 24 * (Q + tree_words(Q)) + 48 * Q
        rounds += 10
        cnt = q + cnt % 2
    rounds += 8 + 2 * EXP_PRODUCTS + 2  # clip, exp, selection
    b += 24 * (N + tree_words(N)) + EXP_PRODUCTS * 64 * N + 48 * N
    plan = plan_reciprocal(_sum_domain(n), rt=_Rt(16))
    rounds += 2 + plan.rounds + 2  # the sum to f bits, reciprocal, product
    b += 48 * R + plan_bytes(R, plan.products, plan.truncations) + 64 * N
    return {"rounds": rounds, "bytes": b}


class _Rt:
    def __init__(self, f):
        self.frac_bits = f


def _times_mask(s: ArithmeticShare, mask_u64) -> ArithmeticShare:
    """``s * mask`` for a public 0/1 array (local, exact)."""
    return s._new(s.first * mask_u64, s.second * mask_u64)


def masked_softmax(x: ArithmeticShare, axis: int = -1, keep=None) -> ArithmeticShare:
    """Softmax of ``x`` along ``axis`` (module docstring).

    ``keep``: None (nothing masked) or a public boolean host array broadcastable to
    ``x.shape``: where False the entry is masked (``-inf`` in the float model): its
    result is exactly 0 and it takes no part in the maximum or the sum; a row with
    nothing kept gives all zeros.  Cost: :func:`softmax_cost`.
    """
    if not isinstance(x, ArithmeticShare):
        raise ProtocolError("masked_softmax needs an ArithmeticShare")
    rt, xp = x.rt, x.xp
    f = rt.frac_bits
    if x.ndim == 0:
        raise ProtocolError("masked_softmax of a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ProtocolError(f"masked_softmax: axis {axis} out of range for shape {x.shape}")
    if x.scale != f:
        raise ProtocolError(f"masked_softmax needs a share at {f} fractional bits, got {x.scale}")
    ax = axis % x.ndim
    n = x.shape[ax]
    if n == 0:
        raise ProtocolError("masked_softmax over an empty axis")
    perm = tuple(i for i in range(x.ndim) if i != ax) + (ax,)
    inv = tuple(_np.argsort(perm))
    moved = x.transpose(*perm)
    lead = moved.shape[:-1]
    R = math.prod(lead)
    v = moved.reshape(R, n)

    mask = empty = None
    if keep is not None:
        k = _np.asarray(keep)
        if k.dtype != _np.bool_:
            raise ProtocolError(f"masked_softmax: keep must be a boolean array, got {k.dtype}")
        try:
            k = _np.broadcast_to(k, x.shape)
        except ValueError:
            raise ProtocolError(f"masked_softmax: keep of shape {k.shape} does not broadcast to {x.shape}") from None
        k = _np.ascontiguousarray(_np.transpose(k, perm)).reshape(R, n)
        mask = rt.backend.to_device(k.astype(_np.uint64))
        low = _np.where(k, 0, (1 << 64) - (1 << (LOW_BITS + f))).astype(_np.uint64)
        v = _times_mask(v, mask)
        v = v._new(*with_public(v.first, v.second, rt.backend.to_device(low), rt.rank, xp, lambda a, b: a + b))
        empty = (~k.any(axis=1)).astype(_np.float64).reshape(R, 1)

    plan = agreed(exp_plan(f), rt)
    m = _row_max(v, axis=1).reshape(R, 1)
    z = v - m
    if mask is None or bool(k.all()):
        clip = msb(z + CLIP).not_bits()  # [z >= -T]
        e = mul_bit(_exp_clipped(z, plan), clip)
        s = e.sum(axis=1, keepdims=True)
        r = reciprocal(s, domain=_sum_domain(n))
        out = mul_trunc(e, r, e.scale, f)
        return out.reshape(*lead, n).transpose(*inv)
    # masked: the exps, the selection and the products only for the kept entries (their
    # positions are public), gathered into one flat vector and scattered back
    flat = _np.flatnonzero(k.reshape(-1))
    if flat.size == 0:  # nothing kept anywhere (public): all zeros
        return (x * 0).relabel(f)
    where = rt.backend.to_device(flat)
    zk = ArithmeticShare(z.first.reshape(-1)[where], z.second.reshape(-1)[where], z.scale, rt)
    clip = msb(zk + CLIP).not_bits()
    ek = mul_bit(_exp_clipped(zk, plan), clip)
    e = _scatter(ek, where, R * n).reshape(R, n)
    s = e.sum(axis=1, keepdims=True)
    if empty.any():
        s = s + empty
    r = reciprocal(s, domain=_sum_domain(n))
    row = rt.backend.to_device(flat // n)
    rk = ArithmeticShare(r.first.reshape(-1)[row], r.second.reshape(-1)[row], r.scale, rt)
    out = _scatter(mul_trunc(ek, rk, ek.scale, f), where, R * n)
    return out.reshape(*lead, n).transpose(*inv)


def _scatter(vals: ArithmeticShare, where, size: int) -> ArithmeticShare:
    """A flat share of ``size`` zeros with ``vals`` at the (public) positions ``where`` (local)."""
    xp = vals.xp
    parts = []
    for comp in (vals.first, vals.second):
        full = xp.zeros(size, dtype=xp.uint64)
        full[where] = comp
        parts.append(full)
    return ArithmeticShare(parts[0], parts[1], vals.scale, vals.rt)


__all__ = ["masked_softmax", "softmax_cost", "exp_plan", "CLIP"]
