"""Layer normalisation of arithmetic shares (``LayerNormalization``, opset 17).

``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the axes ``[axis, ndim)``
(each "row" is one index of the leading axes).

Steps (``f`` fractional bits; ``R`` rows of ``n`` elements, ``N = R n``)
====================================================================
1. ``mean = sum(x) * (1/n)``: a local sum and a public product (one truncation call of
   ``R`` elements per part of ``1/n``, 2 rounds); ``c = x - mean`` is local.
2. ``t = trunc(c, 20)`` (one truncation call of ``N`` elements, 2 rounds, 48 bytes per
   element in all): ``c = 2^20 t + e`` with ``|e| <= 2^20`` ring units, exactly in the ring
   whatever ``t``'s rounding (``e = c - 2^20 t`` is local).  ``t`` is ``c`` in units of
   ``16`` (at ``f = 16``): small enough that its squares never wrap.
3. Three **row dot products** ``T2 = sum t^2``, ``TE = sum t e``, ``EE = sum e^2``: each
   party sums its local summand of the products over the row, and only the ``R`` sums are
   reshared (1 round, 24 bytes per row each; ``EE`` truncated by ``f`` in a fused call, 2
   rounds, 64 bytes per row) -- and ``c * weight`` (exact, ``2f`` bits) when the weight is
   secret, reshared in the same round (24 bytes per element).  Then, exactly up to one unit
   in the last place, ``v = sum c^2 / 2^f + n eps = 2^24 T2 + 2^5 TE + EE / 2^16 + n eps``
   (``= n (var + eps)`` at ``f`` bits), with no wrap while ``sum (x - mean)^2 < 2^47``.
4. **clamp, octave and guard** in ONE comparison call: the MSB of ``v - n t`` for the
   thresholds ``t = lo, hi`` and the octave thresholds ``t = 2^k`` inside ``[lo, hi]`` (32 in all
   per row for the default domain), of ``T2 - 2^36`` (the guard against a wrapped ``v``)
   and, for a secret weight, of ``w + B`` and ``B - w`` (``B`` the weight bound, below):
   8 rounds on ``M = 33 R (+ 2 n)`` elements; then ONE multiply-by-bit call (2 rounds)
   gives the clamped ``v`` (``n hi + [v < n hi] (v - n hi) + [v < n lo] (n lo - v)``) and
   every bit as an arithmetic 0/1 share.  With ``var`` in ``[2^k, 2^(k+1))`` (clamped), the
   public per-octave constants ``2^-k / n`` and ``2^(-k/2)`` become secret factors as
   integer combinations of the bits (telescoping over the one-hot octave: free).  The
   out-of-domain bits are added up (local) into one count per call, recorded with the
   run's guard (:mod:`mpcgpu.protocols.domain`, below).
5. ``var' = v 2^-k / n`` in ``[1, 2)`` (one product, 2 rounds), ``r' = 1/sqrt(var')`` by
   :func:`mpcgpu.protocols.approx.inv_sqrt` on ``[0.99, 2.02]`` (20 rounds: a short plan,
   instead of 76 rounds for a domain spanning ``1e7``) and ``r = r' 2^(-k/2)`` (one
   product, 2 rounds) at ``f + 4`` bits -- the relative precision of ``r'`` (``2^-16``)
   is kept over the whole domain.
6. ``y = c r`` (or ``(c w) r``): one fused product and truncation (2 rounds, 64 bytes per
   element in all); a public weight is folded in for free (``c`` times its fixed-point
   integers before the product); the bias is added locally (secret or public).

Rounds: ``2 + 2 + 1 + 2 + 8 + 2 + 2 + 20 + 2 + 2 = 43``.  Bytes in all: ``112 N`` (``136 N``
with a secret weight) plus per-row terms (:func:`layer_norm_cost`).  (Before the guard:
41 rounds and ``88 N`` / ``112 N``: the squares were reshared per element, 24 bytes, where
the row dot products now reshare per row; the truncation of ``c``, 48 bytes per element,
is the guard's price.)

The domain, the clamp and the error
===================================
Transformer activations entering a LayerNorm: embeddings with the usual ``0.02``
initialisation have ``var`` of ``4e-4`` (one table) to ``1.2e-3`` (BERT's first LayerNorm:
three tables summed; GPT-2's: two, ``8e-4``), residual streams of trained models ``var``
of ``1e-1`` to ``1e4`` (outlier dimensions of a few thousand in trained GPT-2).  So the
default domain of ``var + eps`` is ``[1e-4, 2^16]`` (std ``0.01`` to ``256``); a caller
passes another ``domain`` (``2^-16 <= lo < hi <= 2^16``).  (The former ``lo = 1e-3``
clamped GPT-2's first LayerNorm at Hugging Face's initialisation, shrinking its output by
about 10 % in every layer.)

* **below** ``lo``: a documented clamp.  The row is normalised by ``lo`` instead: ``y = c /
  sqrt(lo)``, the exact result times ``sqrt((var + eps) / lo)``: shrunk towards 0, never
  larger than the exact output; a constant row (``var = 0``) gives ``y = 0`` (plus the
  bias), as in float.
* **above** ``hi``: an **error**.  So is a row so large that ``v`` could wrap
  (``T2 >= 2^36``, i.e. ``sum (x - mean)^2`` of about ``2^44`` or more), and, for a secret
  weight, ``|weight| >= B = 2^10 / sqrt(n) / 1.03`` (36 at ``n = 768``; the product ``(c w)
  r`` at ``3f + 4`` bits needs ``|y w| < 2^10``, and ``|y| <= sqrt(n)``).  A secret weight
  is compared once: after a guard has passed, the same share object (a model's parameter,
  read by every run and every generated token) is remembered and not compared again.  A
  public weight beyond ``B`` is refused at once, in the clear.  The input itself may be anywhere: a row
  of mean ``1e6`` and std 1 is normalised like any other.

The out-of-domain bits of a call are added up privately into one integer share and
recorded with the innermost :func:`mpcgpu.protocols.domain.guarded` block: for a graph,
:meth:`mpcgpu.nn.dag_run.PrivateGraph.run` holds one per run, so the counts of all its
LayerNorms are added and **one bit** is revealed to the three parties at the end of the
run ("some input was outside a domain"); if it is set, every party raises the same
:class:`mpcgpu.protocols.domain.DomainError`, naming the offending LayerNorm nodes (one
more bit per recorded call is revealed then, and only then) and their bounds.  A call
outside any guard is checked at once (one bit per call, 9 more rounds).  The outputs of
an out-of-domain call are never returned to the caller of the run.

The guard is certain for ``|x - mean| < 2^35.5 / sqrt(n)`` (``1.7e9`` at ``n = 768``: the
sum of ``t^2`` must not wrap; :func:`input_bound`), far beyond any value a correct
fixed-point product can produce (``2^30``: its truncation needs ``|x| < 2^62`` ring units at
``2f`` bits) for ``n <= 2048``.

Accuracy on the domain: ``|err| <= 1e-3 (1 + |y|) + 2^-15 / sqrt(var)`` (tests; the second
term: the mean and the centred values are exact only to a unit in the last place, which
the division by a small std magnifies -- ``2.9e-3`` at ``var = 1.1e-4``; measured ~1e-3
there, ~1e-4 for ``var >= 1``).
"""

from __future__ import annotations

import collections
import math

import numpy as _np  # host-side shapes and public constants only; never for share data

from ..errors import ProtocolError
from ..sharing.arithmetic import (
    ArithmeticShare,
    _summand_product,
    mul_public,
    mul_trunc,
    product_summand,
    public_factor_parts,
    truncate,
)
from ..sharing.compact import CompactShare
from ..sharing.replicated import concatenate, with_public
from ..sharing.truncation import reshare
from .approx import inv_sqrt, plan_bytes, plan_inv_sqrt
from .convert import msb, mul_bit, tree_words
from .domain import record

DEFAULT_DOMAIN = (1e-4, 2.0**16)
SPLIT_BITS = 20  # c = 2^20 t + e: t in units of 2^(20 - f) = 16 (at f = 16)
GUARD_T2 = 2**36  # [T2 >= 2^36]: var above 2^44 / n (> any hi), before v could wrap
Y_BITS = 10  # |y * weight| < 2^10: the product (c w) r at 3f + 4 bits stays below 2^62
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


def weight_bound(n: int) -> float:
    """The largest ``|weight|`` supported over ``n`` elements: ``|y| <= sqrt(n)`` (a
    normalised row), and ``|y w| < 2^10`` (3 % margin for the rounding of ``1 / sqrt``)."""
    return 2.0**Y_BITS / math.sqrt(n) / 1.03


def input_bound(n: int) -> float:
    """Up to which ``|x - mean|`` the guard is sure to see a row outside the domain: the
    sum of ``t^2`` (``t = (x - mean) / 16``) must not wrap, ``n t^2 < 2^63``."""
    return 2.0 ** (SPLIT_BITS - 16 + 31.5) / math.sqrt(n)


#: secret weights whose bound a passed guard has checked: {id: (object, n)}, the objects
#: kept (so that an id is never reused while listed); every party sees the same calls, so
#: the parties agree on hits and evictions
_CHECKED: collections.OrderedDict = collections.OrderedDict()
CHECKED_MAX = 1024


def _weight_checked(obj, n) -> bool:
    hit = _CHECKED.get(id(obj))
    if hit is not None and hit[0] is obj and hit[1] == n:
        _CHECKED.move_to_end(id(obj))
        return True
    return False


def _remember_weight(obj, n):
    _CHECKED[id(obj)] = (obj, n)
    _CHECKED.move_to_end(id(obj))
    while len(_CHECKED) > CHECKED_MAX:
        _CHECKED.popitem(last=False)


def _check_public_weight(w, n):
    big = float(_np.max(_np.abs(w))) if w.size else 0.0
    if big >= weight_bound(n):
        raise ProtocolError(
            f"layer_norm: a public weight of magnitude {big:.4g} is outside the domain "
            f"(|weight| < 2^{Y_BITS} / sqrt(n) / 1.03 = {weight_bound(n):.4g} for n = {n})"
        )


def _octaves(lo: float, hi: float):
    """The octaves ``k`` with ``[2^k, 2^(k+1))`` meeting ``[lo, hi]``."""
    return list(range(math.floor(math.log2(lo)), math.floor(math.log2(hi)) + 1))


def _mean_parts(n: int, f: int) -> int:
    return len(public_factor_parts(1.0 / n, f, f))


def layer_norm_cost(
    rows: int, width: int, domain=DEFAULT_DOMAIN, secret_weight: bool = True, weight_checked: bool = False
) -> dict:
    """``{"rounds", "bytes"}`` of :func:`layer_norm` on ``rows`` rows of ``width`` elements
    (bytes: sent by the three parties together); ``secret_weight=False`` for a public or
    absent weight; ``weight_checked``: the secret weight's bound was checked by an earlier
    call that passed its guard (the same share object: not compared again)."""
    R, n = int(rows), int(width)
    N = R * n
    lo, hi = _check_domain(domain)
    f = 16
    plan = plan_inv_sqrt(ISQRT_DOMAIN, rt=_Rt(f))
    # comparisons: 2 clamp + (octaves - 1) thresholds + the guard, per row; 2 per weight element
    M = R * (len(_octaves(lo, hi)) + 2) + (2 * n if secret_weight and not weight_checked else 0)
    rounds = 2 + 2 + 1 + 2 + 8 + 2 + 2 + plan.rounds + 2 + 2
    b = 48 * R * _mean_parts(n, f)  # mean
    b += 48 * N  # t: c truncated by SPLIT_BITS
    b += 24 * (2 * R + (N if secret_weight else 0))  # two row dot products (and c w), reshared
    b += 64 * R  # the row dot product e.e, truncated to f bits
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
    (default ``[1e-4, 2^16]``): a row below it is normalised by ``lo`` (a clamp), a row
    above it is an error (a count recorded with the run's guard, :mod:`~mpcgpu.protocols.domain`:
    a :class:`~mpcgpu.protocols.domain.DomainError` on every party when the guard closes;
    module docstring).  Cost: :func:`layer_norm_cost`.
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
    weight_obj = weight
    weight, bias = _as_share(weight), _as_share(bias)

    # 1. mean and centred values
    mean = mul_public(v.sum(axis=1, keepdims=True), 1.0 / n)
    c = v - mean

    # 2. c = 2^s t + e (s = SPLIT_BITS): t the truncation of c by s bits (ring integers), e the
    #    rest, |e| <= 2^s ring units -- exact in the ring whatever t's rounding
    s = SPLIT_BITS
    u = xp.uint64
    t = truncate(c, s, 0)
    e = c - ArithmeticShare(t.first << u(s), t.second << u(s), f, rt)

    # 3. row dot products from local summands, reshared per ROW (not per element):
    #    T2 = sum t^2, TE = sum t e, EE = sum e^2, and since c^2 = 2^(2s) t^2 + 2^(s+1) t e + e^2
    #    at 2f bits, v = sum c^2 / 2^f = 2^(2s-f) T2 + 2^(s+1-f) TE + EE / 2^f (one truncation)
    def row_dot(a, b):
        return product_summand(rt, a.first, a.second, b.first, b.second, lambda p, q: (p * q).sum(axis=1))

    t2s = row_dot(t, t)
    parts = [(t2s << u(2 * s - f)) + (row_dot(t, e) << u(s + 1 - f)), t2s]
    secret_w = isinstance(weight, ArithmeticShare)
    if secret_w:  # c w at 2f bits (exact), reshared in the same round
        w = weight
        if w.scale != f:
            raise ProtocolError(f"layer_norm: the weight must carry {f} fractional bits")
        try:
            wf = xp.broadcast_to(w.first, inner).reshape(1, n)
            ws = xp.broadcast_to(w.second, inner).reshape(1, n)
        except ValueError:
            raise ProtocolError(f"layer_norm: weight of shape {w.shape} does not broadcast to {inner}") from None
        parts.append(product_summand(rt, c.first, c.second, wf, ws, lambda p, q: p * q).reshape(-1))
    first, second = reshare(rt, xp.concatenate(parts))
    z1 = ArithmeticShare(first[:R].reshape(R, 1), second[:R].reshape(R, 1), f, rt)
    t2 = ArithmeticShare(first[R : 2 * R].reshape(R, 1), second[R : 2 * R].reshape(R, 1), f, rt)  # ring ints
    if secret_w:
        cw = ArithmeticShare(first[2 * R :].reshape(R, n), second[2 * R :].reshape(R, n), 2 * f, rt)
    elif weight is not None:
        w_pub = _public_param(weight, inner, "weight")
        _check_public_weight(w_pub, n)
        k = _np.rint(_np.broadcast_to(w_pub, inner).reshape(1, n) * 2.0**f).astype(_np.int64)
        cw = (c.relabel(0) * k).relabel(2 * f)  # exact, free
    else:
        cw = c
    ee = _summand_product(rt, row_dot(e, e), 2 * f, None, f, f)
    v = z1 + ee.reshape(R, 1) + n * eps  # n (var + eps) at f bits

    # 4. clamp, octave and guard: ONE comparison call, ONE selection call (flat rows)
    ks = _octaves(lo, hi)
    thresholds = [lo, hi] + [2.0**k for k in ks[1:]]
    nt = len(thresholds)
    rows = [(v.reshape(1, R, 1) - _np.asarray(thresholds).reshape(-1, 1, 1) * n).reshape(-1)]  # [v < n t]
    rows.append((t2 - GUARD_T2 / 2.0**f).reshape(-1))  # [T2 < G]
    check_w = secret_w and not _weight_checked(weight_obj, n)
    if check_w:  # [w < -B], [w > B]: the weight bound (once per weight share and width)
        B = weight_bound(n)
        wv = ArithmeticShare(wf.reshape(-1), ws.reshape(-1), f, rt)
        rows += [wv + B, B - wv]
    bits = msb(concatenate(rows))
    size = bits.size
    clamp = concatenate([(n * lo - v).reshape(-1), (v - n * hi).reshape(-1)])
    pad = xp.zeros(size - 2 * R, dtype=u)
    vals = ArithmeticShare(xp.concatenate([clamp.first, pad]), xp.concatenate([clamp.second, pad]), f, rt)
    sel, abits = mul_bit(vals, bits, with_bit=True)
    v = (sel[:R] + sel[R : 2 * R]).reshape(R, 1) + n * hi
    # out of the domain: [v >= n hi] (var + eps above hi), [T2 >= G] (so large that v wraps),
    # and for a secret weight [|w| > B]; counted, added to the run's guard (one bit revealed)
    inside = abits[R : 2 * R].sum() + abits[nt * R : (nt + 1) * R].sum()
    count = 2 * R - inside
    if check_w:
        count = count + abits[(nt + 1) * R :].sum()
    record(
        count.reshape(1),
        f"layer_norm over {n} elements: var + eps above {hi:g}, |x - mean| beyond "
        f"{input_bound(n):.4g}" + (f", or |weight| above {weight_bound(n):.4g}" if check_w else ""),
        on_pass=(lambda: _remember_weight(weight_obj, n)) if check_w else None,
    )
    abits = abits[: nt * R].reshape(nt, R, 1)
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


__all__ = ["layer_norm", "layer_norm_cost", "DEFAULT_DOMAIN", "weight_bound", "input_bound"]
