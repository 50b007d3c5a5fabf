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
4. **exp on [-12, 0]**: ``e^z = p(z/8)^8``, ``p`` a quartic fitted to ``e^t`` on
   ``[-1.5, 0]`` (minimax on the host in float64, agreed by the parties: the relative
   error of ``p^8`` weighted by ``min(1, 512 e^z)``, see :func:`exp_plan`; a cubic would
   leave 1.2e-3, the quartic 1.8e-4); ``t = z/8`` is free (the same ring elements read
   with 3 more fractional bits); the quartic in **two** fused products (not Horner's
   three): ``u = t^2``, then ``p = c_0 + (c_1 t + c_2 u) + u (c_3 t + c_4 u)`` -- ``w =
   c_3 t + c_4 u`` and the linear terms are integer multiples of ring words (free; the
   linear terms ride in the product's summand before its truncation), the coefficients
   rounded to those grids and the lower ones refitted (:func:`exp_plan`: the rounded
   quartic's error is the fit's, 1.8e-4); then 3 squarings: 5 products, 10 rounds,
   values at ``f + 8`` bits.  Below ``-12`` the
   quartic's value is garbage, so
5. ``e = c * p^8`` by one multiply-by-bit (2 rounds, exact): exactly 0 below ``-T``.
   With a mask, steps 3-6 run on the kept entries only (their positions are public:
   gathered into one vector, scattered back into zeros): a causal mask halves them.
6. ``s = sum e`` (``>= 1 - 1e-4``: the maximum's own term; a row with nothing kept gets
   ``+1`` from a public indicator, so it divides 0 by 1), ``r = 1 / s`` by
   :func:`mpcgpu.protocols.approx.reciprocal` on ``[0.99, 1.01 n]`` (a truncation to
   ``f`` bits, 2 rounds, then the planned rounds), ``out = e r`` (2 rounds); masked
   entries are exactly 0.

Cost: rounds ``10 ceil(log2 n) + 8 + 10 + 2 + 2 + reciprocal + 2``; bytes
:func:`softmax_cost` (per entry, in all: about 119 for the tree, 71 for the clip, 320
for the exp, 48 for the selection and 64 for the product: ~630; with Horner's quartic:
12 rounds and 384 bytes for the exp, ~690).

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
from ..sharing.arithmetic import ArithmeticShare, mul_trunc
from ..sharing.replicated import with_public
from .activations import _mul_trunc_plus
from .approx import agreed, plan_bytes, plan_reciprocal, reciprocal
from .compare import max as _row_max
from .convert import msb, mul_bit, tree_words

CLIP = 12.0  # exp(z) for z < -CLIP is below half a unit in the last place at 16 bits
EXP_SHIFT = 3  # e^z = p(z / 2^3)^(2^3)
EXP_EXTRA_BITS = 8  # the exp's values carry f + 8 fractional bits
EXP_DEGREE = 4  # p is a quartic
FIT_ROWS = 512  # rows up to this length weigh fully in the fit
#: the quartic in two products (u = t^2, then u w plus linear terms), then the squarings
EXP_PRODUCTS = 2 + EXP_SHIFT
LOW_BITS = 31  # masked entries: -2^31 (below every fixed-point value)
#: fractional bits of u = t^2 and of w = c3 t + c4 u (their product: 58 bits, |u w| < 1)
U_BITS, W_BITS = 20, 38


@dataclass(frozen=True)
class ExpPlan:
    """The quartic ``p(t) = sum coeffs[k] t^k ~ e^t`` on ``[-CLIP / 2^shift, 0]`` (public).
    ``coeffs`` are exactly the numbers the protocol uses (each on its fixed-point grid:
    :func:`exp_plan`); ``scales``: the fractional bits of ``(t, u, w)``."""

    kind: str
    domain: tuple
    shift: int
    coeffs: tuple
    scales: tuple
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
    """The fixed-point grid (fractional bits) of each coefficient ``c_0..c_4`` as
    :func:`_exp_clipped` applies it: ``c_0`` a public constant at ``f + 8`` bits, ``c_1 t``
    and ``c_2 u`` integer multiples at the product's ``U + W`` bits, ``c_3 t`` and
    ``c_4 u`` integer multiples at ``w``'s ``W`` bits."""
    tb = frac_bits + EXP_SHIFT
    return (frac_bits + EXP_EXTRA_BITS, U_BITS + W_BITS - tb, W_BITS, W_BITS - tb, W_BITS - U_BITS)


@functools.lru_cache(maxsize=4)
def exp_plan(frac_bits: int = 16) -> ExpPlan:
    """Fit of the quartic (deterministic float64, Lawson's minimax reweighting): minimises
    the relative error of ``p(z/8)^8`` on ``[-12, 0]`` weighted by ``min(1, 512 e^z)`` -- a
    probability's error is the relative error of the exps that matter in its row's sum
    (512 entries at ``z`` weigh as much as the maximum's own ``e^0`` once ``512 e^z >= 1``).
    The coefficients are put on their grids (:func:`_exp_grids`) from the highest down,
    the lower ones refitted after each rounding, and ``max_error`` is that of the rounded
    quartic."""
    k = EXP_SHIFT
    z = _np.linspace(-CLIP, 0.0, 6001)
    t = z / 2.0**k
    A = _np.stack([t**j for j in range(EXP_DEGREE + 1)], axis=1)
    # the error of a probability is about the relative error of e^z where e^z matters in the
    # sum: weight the relative error of p^8 by min(1, ROWS e^z)
    weight = 2.0**k / _np.exp(t) * _np.minimum(1.0, FIT_ROWS * _np.exp(z))
    grids = _exp_grids(frac_bits)
    fixed = {}
    for j in range(EXP_DEGREE, -1, -1):  # round c_4, refit c_0..c_3, round c_3, ...
        free = [i for i in range(EXP_DEGREE + 1) if i not in fixed]
        target = _np.exp(t) - sum(fixed[i] * t**i for i in fixed)
        c = _lawson(A[:, free], target, weight)
        fixed[j] = round(float(c[free.index(j)]) * 2.0 ** grids[j]) / 2.0 ** grids[j]
    coeffs = tuple(fixed[j] for j in range(EXP_DEGREE + 1))
    p = A @ _np.asarray(coeffs)
    err = float((_np.abs(p ** (2**k) / _np.exp(z) - 1.0) * _np.minimum(1.0, FIT_ROWS * _np.exp(z))).max())
    return ExpPlan("attention-exp", (-CLIP, 0.0), k, coeffs, (frac_bits + k, U_BITS, W_BITS), err)


def _exp_clipped(z: ArithmeticShare, plan: ExpPlan) -> ArithmeticShare:
    """``e^z`` at ``f + 8`` bits for ``z`` in ``[-12, 0]`` (garbage below): the quartic in
    two fused products, ``u = t^2`` and ``p = c_0 + (c_1 t + c_2 u) + u (c_3 t + c_4 u)``
    (the linear terms added to the product's summand before its truncation, so free), then
    3 squarings: 5 products, 10 rounds."""
    f = z.rt.frac_bits
    S = f + EXP_EXTRA_BITS
    c = plan.coeffs
    tb, ub, wb = plan.scales
    g = _exp_grids(f)
    t = z.relabel(tb)  # z / 8, free

    def times(s, j, scale):  # c_j s as an integer multiple of the ring words, read at ``scale`` (exact)
        k = s.xp.uint64(int(round(c[j] * 2.0 ** g[j])) % (1 << 64))
        return ArithmeticShare(s.first * k, s.second * k, scale, s.rt)

    u = mul_trunc(t, t, 2 * tb - ub, ub)
    w = times(t, 3, wb) + times(u, 4, wb)
    y = _mul_trunc_plus(u, w, times(t, 1, ub + wb) + times(u, 2, ub + wb), ub + wb - S, S) + c[0]
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
