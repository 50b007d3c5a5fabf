"""Layer normalisation of arithmetic shares (``LayerNormalization``, opset 17).

``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the axes ``[axis, ndim)``
(each "row" is one index of the leading axes).

Steps (``f`` fractional bits; ``R`` rows of ``n`` elements, ``N = R n``)
====================================================================
1. ``mean = sum(x) * (1/n)``: a local sum and a public product (one truncation call of
   ``R`` elements per part of ``1/n``, 2 rounds); ``c = x - mean`` is local.
2. ``c^2`` -- and ``c * weight`` when the weight is secret -- in ONE product call WITHOUT
   truncation (1 round, a resharing: 24 bytes per element in all): the squares are exact
   ring values at ``2f`` bits and their row sums lose nothing.
3. ``var = sum(c^2) / n`` kept at ``f + 4`` bits (a truncation of ``R`` elements, then the
   public ``1/n``: 4 rounds); ``+ eps``.
4. **clamp** into the domain ``[lo, hi]`` (default ``[1e-3, 1e4]``): the MSB of the
   stacked ``(var - lo, var - hi)`` (8 rounds, ``2R`` elements) and one multiply-by-bit
   call (2 rounds): ``hi + [var < hi] (var - hi) + [var < lo] (lo - var)``.  Comparisons
   on the row values only (``R`` elements).
5. ``r = 1/sqrt(var)`` by :func:`mpcgpu.protocols.approx.inv_sqrt` on the planned domain
   (its rounds: 76 for the default domain), from ``var * 2^4`` read at ``f`` bits (so
   small variances keep their precision: ``1e-3`` is 1049 units), ``r = 4 inv_sqrt``;
   then one Newton step ``r (3 - var r^2) / 2`` computed at more bits (3 products of
   ``R`` elements, 6 rounds), ``r`` at ``f + 4`` bits: inv_sqrt's result at ``f`` bits
   alone is only ~160 units for ``var = 1e4`` (1 % relative), after the step ``2e-4``.
6. ``y = c r`` (or ``(c w) r``): one fused product and truncation (2 rounds, 64 bytes per
   element in all); a public weight is folded in for free (``c`` times its fixed-point
   integers before the product); the bias is added locally (secret or public).

Rounds: ``2 + 1 + 4 + 10 + inv_sqrt + 6 + 2`` (101 for the default domain).  Bytes in all:
``88 N`` (+ ``24 N`` with a secret weight) plus per-row terms (:func:`layer_norm_cost`).

The variance domain and the clamp
=================================
Transformer activations entering a LayerNorm: embeddings with the usual ``0.02``
initialisation have ``var ~ 1e-3`` (BERT's first LayerNorm: three such embeddings
summed), residual streams of trained models ``var`` of ``1e-1`` to ``1e3``.  So the
default domain is ``[1e-3, 1e4]`` (std ``0.03`` to ``100``).  A row whose ``var + eps``
lies outside the domain is normalised by the clamped value instead: ``y = c /
sqrt(clamp)``, the exact result times ``sqrt((var + eps) / clamp)``:

* below ``lo``: shrunk towards 0, never larger than the exact output; a constant row
  (``var = 0``) gives ``y = 0`` (plus the bias), as in float;
* above ``hi``: larger than the exact output by ``sqrt(var / hi)``, at most
  ``sqrt(2^30 / (n hi))`` for the supported input range below (11.8 for ``n = 768`` and
  the default ``hi``).

Never garbage: the bound is stated, and a caller who expects wider rows passes a
``domain`` (``hi < 2^16``, ``hi / lo <= 2^24``).

Input range
===========
The row sum of exact squares must stay below ``2^62`` ring units: ``sum (x - mean)^2 <
2^30``, guaranteed for ``|x| < 2^15 / sqrt(n)`` (1182 for ``n = 768``, 1024 for
``n = 1024``); and ``|y * weight| < 2^10`` (the product ``(c w) r`` at ``3f + 4`` bits).
Larger inputs are outside the supported range (the protocol cannot see them: results
would be wrong).

Accuracy (measured, tests): ``|err| <= 2e-3 (1 + |y|)`` on the domain.
"""

from __future__ import annotations

import math

import numpy as _np  # host-side shapes and public constants only; never for share data

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, mul, mul_public, mul_trunc, public_factor_parts, stack, truncate
from ..sharing.binary import stack as binary_stack
from .approx import inv_sqrt, plan_inv_sqrt, plan_bytes
from .convert import msb, mul_bit, tree_words

DEFAULT_DOMAIN = (1e-3, 1e4)
VAR_EXTRA_BITS = 4  # the variance carries f + 4 bits; inv_sqrt sees var * 2^4
R_SCALE_EXTRA = 4  # 1 / sqrt(var) after the Newton step carries f + 4 bits


def _check_domain(domain):
    lo, hi = (float(v) for v in domain)
    if not (0 < lo < hi) or not math.isfinite(hi):
        raise ProtocolError(f"layer_norm: the variance domain must satisfy 0 < lo < hi, got {domain}")
    scale = 2.0**VAR_EXTRA_BITS
    if hi * scale >= 2.0**20 or hi / lo > 2.0**24:
        raise ProtocolError(
            f"layer_norm: variance domain {domain} not supported (hi < {2.0**20 / scale:g}, hi/lo <= 2^24)"
        )
    return lo, hi


def _isqrt_domain(lo, hi):
    s = 2.0**VAR_EXTRA_BITS
    return (lo * s * 0.999, hi * s * 1.001)


def _mean_parts(n: int, f: int) -> int:
    return len(public_factor_parts(1.0 / n, f, f))


def _var_parts(n: int, f: int) -> int:
    return len(public_factor_parts(1.0 / n, f + VAR_EXTRA_BITS, f + VAR_EXTRA_BITS, bound=_sum_bound(n)))


def _sum_bound(n: int) -> float:
    return 2.0**30  # sum of squares of the supported input range


def layer_norm_cost(rows: int, width: int, domain=DEFAULT_DOMAIN, secret_weight: bool = True) -> dict:
    """``{"rounds", "bytes"}`` of :func:`layer_norm` on ``rows`` rows of ``width`` elements
    (bytes: sent by the three parties together); ``secret_weight=False`` for a public or
    absent weight."""
    R, n = int(rows), int(width)
    N = R * n
    lo, hi = _check_domain(domain)
    f = 16
    plan = plan_inv_sqrt(_isqrt_domain(lo, hi), rt=_Rt(f))
    rounds = 2 + 1 + 2 + 2 + 10 + plan.rounds + 6 + 2
    b = 48 * R * _mean_parts(n, f)  # mean
    b += 24 * N * (2 if secret_weight else 1)  # squares (and c w), resharing only
    b += 48 * R  # the row sums of squares truncated to f + 4 bits
    b += 48 * R * _var_parts(n, f)  # times 1/n
    b += 24 * (2 * R + tree_words(2 * R)) + 96 * R  # clamp
    b += plan_bytes(R, plan.products, plan.truncations) + 3 * 64 * R  # inv_sqrt, Newton step
    b += 64 * N  # c r
    return {"rounds": rounds, "bytes": b}


class _Rt:  # the planners only read frac_bits
    def __init__(self, f):
        self.frac_bits = f


def _public_param(value, shape, what):
    arr = _np.asarray(value, dtype=_np.float64)
    try:
        _np.broadcast_to(arr, shape)
    except ValueError:
        raise ProtocolError(f"layer_norm: {what} of shape {arr.shape} does not broadcast to {shape}") from None
    if not _np.isfinite(arr).all():
        raise ProtocolError(f"layer_norm: {what} is not finite")
    return arr


def layer_norm(x: ArithmeticShare, weight=None, bias=None, eps: float = 1e-5, axis: int = -1, domain=None):
    """LayerNorm of ``x`` over the axes ``[axis, ndim)`` (module docstring).

    ``weight``, ``bias``: an ArithmeticShare, a public (host) array or None, of the
    normalised axes' shape (or broadcastable to it).  ``domain``: the variance domain
    (default ``[1e-3, 1e4]``); a row outside it is normalised by the clamped variance.
    Cost: :func:`layer_norm_cost`.
    """
    if not isinstance(x, ArithmeticShare):
        raise ProtocolError("layer_norm needs an ArithmeticShare")
    rt, xp = x.rt, x.xp
    f = rt.frac_bits
    lo, hi = _check_domain(DEFAULT_DOMAIN if domain is None else domain)
    eps = float(eps)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ProtocolError(f"layer_norm: eps must be finite and >= 0, got {eps}")
    nd = x.ndim
    ax = axis % nd if nd else 0
    if nd == 0 or not -nd <= axis < nd:
        raise ProtocolError(f"layer_norm: axis {axis} out of range for shape {x.shape}")
    inner = tuple(x.shape[ax:])
    n = math.prod(inner)
    if n == 0:
        raise ProtocolError("layer_norm over an empty axis")
    if x.scale != f:
        raise ProtocolError(f"layer_norm needs a share at {f} fractional bits, got {x.scale}")
    lead = tuple(x.shape[:ax])
    R = math.prod(lead)
    v = x.reshape(R, n)

    # 1. mean and centred values
    mean = mul_public(v.sum(axis=1, keepdims=True), 1.0 / n)
    c = v - mean

    # 2. exact squares (and c w) at 2f bits, one resharing
    w_pub = None
    secret_w = isinstance(weight, ArithmeticShare)
    if secret_w:
        w = weight
        if w.scale != f:
            raise ProtocolError(f"layer_norm: the weight must carry {f} fractional bits")
        try:
            wf = xp.broadcast_to(w.first, inner).reshape(1, n)
            ws = xp.broadcast_to(w.second, inner).reshape(1, n)
        except ValueError:
            raise ProtocolError(f"layer_norm: weight of shape {w.shape} does not broadcast to {inner}") from None
        wb = ArithmeticShare(xp.broadcast_to(wf, (R, n)), xp.broadcast_to(ws, (R, n)), f, rt)
        both = mul(stack([c, c]), stack([c, wb]), trunc=False)
        sq, cw = both[0], both[1]
    else:
        sq = mul(c, c, trunc=False)
        if weight is not None:
            w_pub = _public_param(weight, inner, "weight")
            k = _np.rint(_np.broadcast_to(w_pub, inner).reshape(1, n) * 2.0**f).astype(_np.int64)
            cw = (c.relabel(0) * k).relabel(2 * f)  # exact, free
        else:
            cw = c

    # 3. variance at f + 4 bits
    s = sq.sum(axis=1, keepdims=True)  # 2f bits, exact
    S = f + VAR_EXTRA_BITS
    s = truncate(s, 2 * f - S, S)
    var = mul_public(s, 1.0 / n, bound=_sum_bound(n)) + eps

    # 4. clamp into [lo, hi]
    bits = msb(stack([var - lo, var - hi]))  # [var < lo], [var < hi]
    sel = mul_bit(stack([lo - var, var - hi]), binary_stack([bits[0], bits[1]]))
    var = sel[0] + sel[1] + hi

    # 5. r = 1 / sqrt(var): inv_sqrt of var * 2^4 (the same ring elements read at f bits),
    # then one Newton step at more bits: r <- r (3 - var r^2) / 2, the result at f + 4 bits
    r = inv_sqrt(var.relabel(f), domain=_isqrt_domain(lo, hi)) * (1 << (VAR_EXTRA_BITS // 2))
    g = mul_trunc(var, r, var.scale + r.scale - (f + 8), f + 8)  # sqrt(var) at f + 8 bits
    d = mul_trunc(g, r, g.scale + r.scale - (f + 12), f + 12)  # var r^2 ~ 1 at f + 12 bits
    r = mul_trunc(r, 3 - d, r.scale + d.scale - R_SCALE_EXTRA - f + 1, f + R_SCALE_EXTRA)

    # 6. y = c r (w), truncated to f bits
    y = mul_trunc(cw, r, cw.scale + r.scale - f, f)
    if bias is not None:
        if isinstance(bias, ArithmeticShare):
            try:
                bf = xp.broadcast_to(bias.first, inner).reshape(1, n)
                bs = xp.broadcast_to(bias.second, inner).reshape(1, n)
            except ValueError:
                raise ProtocolError(f"layer_norm: bias of shape {bias.shape} does not broadcast to {inner}") from None
            y = y + ArithmeticShare(bf, bs, bias.scale, rt)
        else:
            b_pub = _public_param(bias, inner, "bias")
            y = y + _np.broadcast_to(b_pub, inner).reshape(1, n)
    return y.reshape(*lead, *inner)


__all__ = ["layer_norm", "layer_norm_cost", "DEFAULT_DOMAIN"]
