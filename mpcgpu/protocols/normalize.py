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
3. ``v = sum(c^2) + n eps`` (``= n (var + eps)``) truncated to ``f`` bits (2 rounds, ``R``
   elements); the ``1/n`` is folded into step 5's scale factors (no product of its own).
4. **clamp and octave** in ONE comparison call: the MSB of ``v - n t`` for the clamp
   thresholds ``t = lo, hi`` (default domain ``[1e-3, 1e4]``) and the octave thresholds
   ``t = 2^k`` inside it (25 thresholds per row for the default domain: 8 rounds on
   ``25 R`` elements); then ONE multiply-by-bit call (2 rounds) gives both the clamped
   ``v`` (``n hi + [v < n hi] (v - n hi) + [v < n lo] (n lo - v)``) and the octave bits
   as arithmetic 0/1 shares.  With ``var`` in ``[2^k, 2^(k+1))`` (clamped), the public
   per-octave constants ``2^-k / n`` and ``2^(-k/2)`` become secret factors as integer
   combinations of the bits (telescoping over the one-hot octave: free).
5. ``var' = v 2^-k / n`` in ``[1, 2)`` (one product, 2 rounds), ``r' = 1/sqrt(var')`` by
   :func:`mpcgpu.protocols.approx.inv_sqrt` on ``[0.99, 2.02]`` (20 rounds: a short plan,
   instead of 76 rounds for a domain spanning ``1e7``) and ``r = r' 2^(-k/2)`` (one
   product, 2 rounds) at ``f + 4`` bits -- the relative precision of ``r'`` (``2^-16``)
   is kept over the whole domain.
6. ``y = c r`` (or ``(c w) r``): one fused product and truncation (2 rounds, 64 bytes per
   element in all); a public weight is folded in for free (``c`` times its fixed-point
   integers before the product); the bias is added locally (secret or public).

Rounds: ``2 + 1 + 2 + 8 + 2 + 2 + 20 + 2 + 2 = 41``.  Bytes in all: ``88 N`` (+ ``24 N``
with a secret weight) plus per-row terms (:func:`layer_norm_cost`).

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
``domain`` (``2^-16 <= lo < hi <= 2^16``).

Input range
===========
The row sum of exact squares must stay below ``2^62`` ring units: ``sum (x - mean)^2 <
2^30``, guaranteed for ``|x| < 2^15 / sqrt(n)`` (1182 for ``n = 768``, 1024 for
``n = 1024``); and ``|y * weight| < 2^10`` (the product ``(c w) r`` at ``3f + 4`` bits).
Larger inputs are outside the supported range (the protocol cannot see them: results
would be wrong).

Accuracy on the domain: ``|err| <= 1e-3 (1 + |y|) + 2^-15 / sqrt(var)`` (tests; the second
term: the mean and the centred values are exact only to a unit in the last place, which
the division by a small std magnifies -- ``7.6e-4`` at ``var = 1.6e-3``; measured ~1e-3
there, ~1e-4 for ``var >= 1``).
"""

from __future__ import annotations

import math

import numpy as _np  # host-side shapes and public constants only; never for share data

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, mul, mul_public, mul_trunc, public_factor_parts, stack, truncate
from ..sharing.compact import CompactShare
from ..sharing.replicated import with_public
from .approx import inv_sqrt, plan_bytes, plan_inv_sqrt
from .convert import msb, mul_bit, tree_words

DEFAULT_DOMAIN = (1e-3, 1e4)
ISQRT_DOMAIN = (0.99, 2.02)  # var scaled into its octave: [1, 2)
R_SCALE_EXTRA = 4  # 1 / sqrt(var) carries f + 4 bits
SCALE_BITS = 40  # fractional bits of the secret factor 2^-k / n
ROOT_BITS = 24  # fractional bits of the secret factor 2^(-k/2)


def _check_domain(domain):
    lo, hi = (float(v) for v in domain)
    if not (0 < lo < hi) or not math.isfinite(hi):
        raise ProtocolError(f"layer_norm: the variance domain must satisfy 0 < lo < hi, got {domain}")
    if lo < 2.0**-16 or hi > 2.0**16:
        raise ProtocolError(f"layer_norm: variance domain {domain} not supported (2^-16 <= lo < hi <= 2^16)")
    return lo, hi


def _octaves(lo: float, hi: float):
    """The octaves ``k`` with ``[2^k, 2^(k+1))`` meeting ``[lo, hi]``."""
    return list(range(math.floor(math.log2(lo)), math.floor(math.log2(hi)) + 1))


def _mean_parts(n: int, f: int) -> int:
    return len(public_factor_parts(1.0 / n, f, f))


def layer_norm_cost(rows: int, width: int, domain=DEFAULT_DOMAIN, secret_weight: bool = True) -> dict:
    """``{"rounds", "bytes"}`` of :func:`layer_norm` on ``rows`` rows of ``width`` elements
    (bytes: sent by the three parties together); ``secret_weight=False`` for a public or
    absent weight."""
    R, n = int(rows), int(width)
    N = R * n
    lo, hi = _check_domain(domain)
    f = 16
    plan = plan_inv_sqrt(ISQRT_DOMAIN, rt=_Rt(f))
    M = R * (len(_octaves(lo, hi)) + 1)  # comparisons: 2 clamp + (octaves - 1) thresholds
    rounds = 2 + 1 + 2 + 8 + 2 + 2 + plan.rounds + 2 + 2
    b = 48 * R * _mean_parts(n, f)  # mean
    b += 24 * N * (2 if secret_weight else 1)  # squares (and c w), resharing only
    b += 48 * R  # the row sums of squares truncated to f bits
    b += 24 * (M + tree_words(M)) + 72 * M  # comparisons; selection with the bits injected
    b += 64 * R + plan_bytes(R, plan.products, plan.truncations) + 64 * R  # var', inv_sqrt, r
    b += 64 * N  # c r
    return {"rounds": rounds, "bytes": b}


class _Rt:  # the planners only read frac_bits
    def __init__(self, f):
        self.frac_bits = f


def _octave_factor(abits: ArithmeticShare, weights) -> ArithmeticShare:
    """``sum_k onehot_k weights[k]`` (ring integers, scale 0) from the arithmetic bits of
    :func:`layer_norm` (rows 2.. are ``a_k`` of the inner thresholds): local, exact mod
    2^64 (the weights are integers up to ``2^50``, beyond the range of public operands)."""
    xp, rt = abits.xp, abits.rt
    first = xp.zeros(abits.shape[1:], dtype=xp.uint64)
    second = xp.zeros(abits.shape[1:], dtype=xp.uint64)
    for j in range(1, len(weights)):
        k = xp.uint64((weights[j - 1] - weights[j]) % (1 << 64))
        first = first + abits.first[1 + j] * k
        second = second + abits.second[1 + j] * k
    top = xp.uint64(weights[-1] % (1 << 64))
    first, second = with_public(first, second, top, rt.rank, xp, lambda u, w: u + w)
    return ArithmeticShare(first, second, 0, rt)


def _as_share(value):
    """A compactly held weight (:class:`~mpcgpu.sharing.compact.CompactShare`) as an ordinary share."""
    return value.materialize() if isinstance(value, CompactShare) else value


def _public_param(value, shape, what):
    try:
        arr = _np.asarray(value, dtype=_np.float64)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise ProtocolError(f"layer_norm: {what} must be a share or a public array, got {kind}") from None
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
    weight, bias = _as_share(weight), _as_share(bias)

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

    # 3. v = n (var + eps) at f bits
    v = truncate(sq.sum(axis=1, keepdims=True), f, f) + n * eps

    # 4. clamp and octave: one comparison call, one selection call
    ks = _octaves(lo, hi)
    thresholds = [lo, hi] + [2.0**k for k in ks[1:]]
    t = _np.asarray(thresholds).reshape(-1, 1, 1) * n
    bits = msb(v.reshape(1, R, 1) - t)  # [v < n t], (T, R, 1)
    zero = v * 0
    vals = stack([n * lo - v, v - n * hi] + [zero] * (len(thresholds) - 2))
    sel, abits = mul_bit(vals, bits, with_bit=True)
    v = sel[0] + sel[1] + n * hi
    # telescoping over the one-hot octave: sum_k onehot_k w_k = w_top + sum_k a_k (w_{k-1} - w_k)
    # with a_k = [v < n 2^k] for the inner thresholds (exact integers at the factor's scale)
    scale_w = [round(2.0 ** (SCALE_BITS - k) / n) for k in ks]
    root_w = [round(2.0 ** (ROOT_BITS - k / 2)) for k in ks]
    A, U = _octave_factor(abits, scale_w), _octave_factor(abits, root_w)

    # 5. var' = v 2^-k / n in [1, 2); r = inv_sqrt(var') 2^(-k/2) at f + 4 bits
    var1 = mul_trunc(v, A.relabel(SCALE_BITS), SCALE_BITS, f)
    r = inv_sqrt(var1, domain=ISQRT_DOMAIN)
    r = mul_trunc(r, U.relabel(ROOT_BITS), f + ROOT_BITS - (f + R_SCALE_EXTRA), f + R_SCALE_EXTRA)

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
