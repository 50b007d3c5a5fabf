"""Comparisons, ReLU, max / min / argmax and max-pooling on arithmetic shares.

Everything is built from two protocols of :mod:`mpcgpu.protocols.convert`:
``msb`` (8 rounds, ``8 (n + tree_words(n))`` bytes per party) and the bit
injection / multiply-by-bit of 2 rounds.  Costs are per party; ``n`` elements.

=====================  ======  ===============================================
function               rounds  bytes per party
=====================  ======  ===============================================
lt, gt, le, ge         10      MSB(n) + 16 n (party 0) / 8 n (parties 1, 2)
sign                   10      as lt
abs                    10      MSB(n) + 16 n
relu                   10      MSB(n) + 16 n
relu (grad=True)       10      MSB(n) + 24 n
max / min over K       10 L    per level with ``q`` pairs: MSB(q) + 16 q
argmax, pool indices   10 L    per level: MSB(q) + 16 q (1 + 2 S); party 0:
                               MSB(q) + 8 q + 8 q (1 + 2 S); S = 2^level
                               (1, 2, 4, ...): one-hot block of a candidate
=====================  ======  ===============================================

with ``MSB(n) = 8 (n + tree_words(n))`` and ``L = ceil(log2 K)``.

Domain: a comparison of ``x`` and ``y`` is exact whenever ``x - y`` does not
wrap in the ring, i.e. ``|x - y| < 2^63`` in ring units -- always true for two
values in the fixed-point range (``|v| < 2^(63-2f)``), and the MSB itself is
exact for every uint64.  Results are ArithmeticShares of 0/1 with scale 0.

Edge conventions:
* equal values: ``lt = gt = 0``, ``le = ge = 1``;
* ``relu(0) = 0`` and its derivative ``[x > 0]`` is 0 at 0 (as the plaintext twin);
* ``sign(x)`` is +1 for ``x >= 0`` and -1 for ``x < 0`` (``sign(0) = +1``);
* ``max``, ``argmax`` and max-pool ties go to the *first* maximum (lowest index,
  row-major window order), like ``numpy.argmax``: exactly one 1 per one-hot.
* max-pool pads with ``-2^62`` (ring units), a value that never wins against
  inputs with ``|x| < 2^62`` (all fixed-point values).
"""

from __future__ import annotations

import numpy  # host-side constants only

from ..errors import ProtocolError
from mpcgpu.ring.geometry import pool_geometry, window_index, window_offsets
from ..sharing.arithmetic import ArithmeticShare, concatenate, public
from ..sharing.replicated import with_public
from ..sharing.binary import BinaryShare, and_
from ..sharing.binary import concatenate as binary_concatenate
from ..sharing.binary import public as binary_public
from ..sharing.binary import stack as binary_stack
from .convert import b2a, msb, mul_bit

NEVER_WINS = (1 << 64) - (1 << 62)  # -2^62 in the ring: the max-pool padding value


def _diff(x: ArithmeticShare, y) -> ArithmeticShare:
    """``x - y`` for a share or public ``y`` (scale of the shares aligned)."""
    if not isinstance(x, ArithmeticShare):
        raise ProtocolError("comparisons need an ArithmeticShare on the left")
    return x - y


# -- comparisons --------------------------------------------------------------------------------


def lt(x: ArithmeticShare, y) -> ArithmeticShare:
    """``[x < y]`` as an arithmetic 0/1 share (scale 0): MSB of ``x - y``; 10 rounds."""
    return b2a(msb(_diff(x, y)))


def gt(x: ArithmeticShare, y) -> ArithmeticShare:
    """``[x > y]`` = MSB of ``y - x``; 10 rounds."""
    return b2a(msb(_diff(x, y), negate=True))


def le(x: ArithmeticShare, y) -> ArithmeticShare:
    """``[x <= y]`` = NOT MSB of ``y - x``; 10 rounds."""
    return b2a(msb(_diff(x, y), negate=True).not_bits())


def ge(x: ArithmeticShare, y) -> ArithmeticShare:
    """``[x >= y]`` = NOT MSB of ``x - y``; 10 rounds."""
    return b2a(msb(_diff(x, y)).not_bits())


def sign(x: ArithmeticShare) -> ArithmeticShare:
    """+1 where ``x >= 0``, -1 where ``x < 0`` (scale 0): ``1 - 2 MSB(x)``; 10 rounds."""
    return 1 - b2a(msb(x)) * 2


def abs(x: ArithmeticShare) -> ArithmeticShare:
    """``|x| = x - 2 x MSB(x)`` (same scale, no truncation); 10 rounds, MSB(n) + 16 n bytes."""
    return x - mul_bit(x, msb(x)) * 2


def relu(x: ArithmeticShare, grad: bool = False):
    """``max(x, 0) = x * [x > 0]`` with ``[x > 0] = MSB(-x)``; 10 rounds, MSB(n) + 16 n bytes.

    ``grad=True`` also returns the derivative ``[x > 0]`` (0 at exactly 0, as the plaintext
    twin) as an arithmetic 0/1 share of scale 0, computed in the same two final rounds
    (+ 8 n bytes per party): ``(y, d)``.  Backward is then ``dy * d`` (1 round, 8
    bytes/element per party, no truncation).  The caller keeps ``d``; nothing is stored
    on the result.
    """
    bit = msb(x, negate=True)
    if grad:
        return mul_bit(x, bit, with_bit=True)
    return mul_bit(x, bit)


# -- tree of comparisons --------------------------------------------------------------------------


def _tree_max(v: ArithmeticShare, onehot: bool, levels: list | None = None):
    """Max over the last axis of a 2-D share ``(B, K)`` by a tree of comparisons.

    Each level compares neighbours ``(a, b) = (v[2j], v[2j+1])`` of all rows in ONE
    MSB call: ``m = [a < b] = MSB(a - b)``, ``max = a - (a - b) m`` (ties keep ``a``,
    the lower index); an odd last candidate passes to the next level unchanged.
    With ``onehot``, each candidate also carries the one-hot of its winner over its
    block of ``S = 2^level`` inputs: ``[left (1 - m), right m]``, all products of a
    level in the same two rounds.  Returns ``(max (B,), onehot (B, K) or None)``; a list
    ``levels`` receives every level's comparison bits ``(m, count)`` (for
    :func:`winner_bits`).
    """
    rt, xp = v.rt, v.xp
    B, K = v.shape
    vf, vs = v.first, v.second
    if onehot:
        ones = public(xp.ones((B, K, 1), dtype=xp.int64), scale=0, rt=rt)
        of, os_ = ones.first, ones.second
    S = 1
    while vf.shape[1] > 1:
        cnt = vf.shape[1]
        q = cnt // 2
        af, bf = vf[:, 0 : 2 * q : 2], vf[:, 1 : 2 * q : 2]
        as_, bs = vs[:, 0 : 2 * q : 2], vs[:, 1 : 2 * q : 2]
        df, ds = af - bf, as_ - bs
        m = msb(ArithmeticShare(df, ds, v.scale, rt))  # (B, q)
        if levels is not None:
            levels.append((m, cnt))
        if onehot:
            lf, ls = of[:, 0 : 2 * q : 2], os_[:, 0 : 2 * q : 2]  # (B, q, S)
            rf, rs = of[:, 1 : 2 * q : 2], os_[:, 1 : 2 * q : 2]
            X = ArithmeticShare(
                xp.concatenate([df[..., None], lf, rf], axis=2), xp.concatenate([ds[..., None], ls, rs], axis=2), 0, rt
            )
            prod = mul_bit(X, m.reshape(B, q, 1))
            pf, ps = prod.first, prod.second
            nvf, nvs = af - pf[..., 0], as_ - ps[..., 0]
            nof = xp.concatenate([lf - pf[..., 1 : 1 + S], pf[..., 1 + S :]], axis=2)
            nos = xp.concatenate([ls - ps[..., 1 : 1 + S], ps[..., 1 + S :]], axis=2)
        else:
            prod = mul_bit(ArithmeticShare(df, ds, v.scale, rt), m)
            nvf, nvs = af - prod.first, as_ - prod.second
        if cnt % 2:
            nvf = xp.concatenate([nvf, vf[:, -1:]], axis=1)
            nvs = xp.concatenate([nvs, vs[:, -1:]], axis=1)
            if onehot:
                pad = xp.zeros((B, 1, S), dtype=xp.uint64)
                nof = xp.concatenate([nof, xp.concatenate([of[:, -1:], pad], axis=2)], axis=1)
                nos = xp.concatenate([nos, xp.concatenate([os_[:, -1:], pad], axis=2)], axis=1)
        vf, vs = nvf, nvs
        if onehot:
            of, os_ = nof, nos
            S *= 2
    out = ArithmeticShare(vf[:, 0], vs[:, 0], v.scale, rt)
    if not onehot:
        return out, None
    return out, ArithmeticShare(of[:, 0, :K], os_[:, 0, :K], 0, rt)


def winner_bits(levels, rt) -> BinaryShare:
    """The one-hot of each row's (first) maximum as bit shares ``(B, K)``, from the
    comparison bits a :func:`_tree_max` kept: walking the tree down from the winner, a
    candidate is selected when its parent is and it won its pair (the left one when
    ``m = 0``, the right one when ``m = 1``; a lone last candidate passes).  One AND
    round per level but the top one; 8 bytes per party per word of the level."""
    sel = None
    for m, cnt in reversed(levels):
        q = cnt // 2
        B = m.shape[0]
        chosen = binary_stack([m.not_bits(), m], axis=2).reshape(B, 2 * q)  # left, right, ...
        if cnt % 2:
            chosen = binary_concatenate([chosen, binary_public(numpy.ones((B, 1), numpy.uint64), rt)], axis=1)
        if sel is None:
            sel = chosen  # under the root: the parent is 1
            continue
        parent = numpy.minimum(numpy.arange(cnt) // 2, q)  # the lone last candidate: parent q
        sel = and_(sel[:, parent], chosen).and_public(1)  # a bit share: components 0/1
    return sel


def _to_rows(x: ArithmeticShare, axis):
    """Move ``axis`` (int, tuple or None = all) to the end and flatten to ``(B, K)``."""
    xp = x.xp
    nd = x.ndim
    if axis is None:
        axes = tuple(range(nd))
    else:
        axes = tuple(a % nd for a in (axis if isinstance(axis, tuple) else (axis,)))
    rest = tuple(a for a in range(nd) if a not in axes)
    perm = rest + axes
    kept = tuple(x.shape[a] for a in rest)
    K = 1
    for a in axes:
        K *= x.shape[a]
    if K == 0:
        raise ProtocolError("max/argmax of an empty axis")
    f = xp.transpose(x.first, perm).reshape(-1, K)
    s = xp.transpose(x.second, perm).reshape(-1, K)
    return ArithmeticShare(f, s, x.scale, x.rt), kept, perm


def max(x: ArithmeticShare, axis=None) -> ArithmeticShare:
    """Maximum along ``axis`` (None: all elements; int or tuple), numpy semantics without
    keepdims.  ``ceil(log2 K)`` levels of 10 rounds; per level with ``q`` comparisons:
    ``MSB(q) + 16 q`` bytes per party."""
    rows, kept, _ = _to_rows(x, axis)
    out, _ = _tree_max(rows, onehot=False)
    return out.reshape(kept)


def min(x: ArithmeticShare, axis=None) -> ArithmeticShare:
    """Minimum along ``axis``: ``-max(-x)`` (same cost as :func:`max`)."""
    return -max(-x, axis=axis)


def argmax(x: ArithmeticShare, axis=None) -> ArithmeticShare:
    """One-hot (scale 0, shape of ``x``) of the maximum along ``axis``.

    Exactly one 1 per reduced slice; ties go to the first maximum (lowest index in
    C order of the reduced axes), as ``numpy.argmax``.  Cost: see the module table.
    """
    xp = x.xp
    rows, kept, perm = _to_rows(x, axis)
    _, oh = _tree_max(rows, onehot=True)
    shape_perm = kept + tuple(x.shape[a] for a in perm[len(kept) :])
    inv = [0] * len(perm)
    for i, a in enumerate(perm):
        inv[a] = i
    f = xp.transpose(oh.first.reshape(shape_perm), inv)
    s = xp.transpose(oh.second.reshape(shape_perm), inv)
    return ArithmeticShare(xp.ascontiguousarray(f), xp.ascontiguousarray(s), 0, x.rt)


def one_hot(labels: ArithmeticShare, classes: int) -> ArithmeticShare:
    """The one-hot rows (scale 0, shape ``labels.shape + (classes,)``) of integer labels in
    ``0..classes-1`` (scale 0), without revealing them.

    ``[l < j]`` for ``j = 1..classes-1`` in one MSB call, injected into the ring; row
    ``j`` of the one-hot is ``[l < j+1] - [l < j]`` (local).  10 rounds; per party
    ``MSB(m) + 16 m`` bytes (party 0; 8 m for the others) with ``m = n (classes - 1)``.
    A label outside the range gives a row of zeros (nothing is revealed to say so)."""
    if labels.scale != 0:
        raise ProtocolError("one_hot needs integer labels (scale 0)")
    k = int(classes)
    if k < 1:
        raise ProtocolError(f"one_hot needs at least one class, got {classes}")
    xp = labels.xp
    col = labels.reshape(*labels.shape, 1)
    if k == 1:
        return col * 0 + 1
    thresholds = numpy.arange(1, k, dtype=numpy.int64)
    below = b2a(msb(col - thresholds))  # [l < j], j = 1..k-1
    ones = public(xp.ones(labels.shape + (1,), dtype=xp.int64), scale=0, rt=labels.rt)
    lt = concatenate([below, ones], axis=-1)  # [l < j], j = 1..k
    zero = lt[..., :1] * 0
    return lt - concatenate([zero, lt[..., :-1]], axis=-1)


# -- max-pooling ----------------------------------------------------------------------------------


def max_pool2d(x: ArithmeticShare, kernel, stride=None, padding=0, return_indices=False, return_bits=False):
    """Max-pooling of an NCHW share (real max-pool; output size rounded down).

    Padding uses ``-2^62`` (never wins).  Windows are gathered into ``(N, C, Ho, Wo,
    kh*kw)`` (row-major window order) and reduced by :func:`_tree_max`: every level of all
    windows is one comparison call.  ``return_indices=True`` also returns the one-hot of
    each window's (first) maximum, shape ``(N, C, Ho, Wo, kh*kw)``, scale 0, for
    :func:`max_pool2d_backward`.  ``return_bits=True`` instead keeps the tree's comparison
    bits (no extra cost in the forward pass) for :func:`max_pool2d_backward_bits`, which
    rebuilds the one-hot when (and only when) the gradient needs it -- cheaper in all.
    Cost: ``ceil(log2(kh*kw))`` levels of 10 rounds; see the module table for bytes
    (``q`` = number of pairs of the level over all windows).
    """
    rt, xp = x.rt, x.xp
    kh, kw, sh, sw, ph, pw, ho, wo = pool_geometry(x.shape, kernel, stride, padding, "max_pool2d", ProtocolError)
    n, c, h, w = x.shape
    if ph or pw:
        x = x.pad(((0, 0), (0, 0), (ph, ph), (pw, pw)))
        border = numpy.full((h + 2 * ph, w + 2 * pw), NEVER_WINS, dtype=numpy.uint64)
        border[ph : ph + h, pw : pw + w] = 0
        x = x._new(*with_public(x.first, x.second, rt.backend.to_device(border), rt.rank, xp, lambda a, b: a + b))
    idx = [window_index(i, j, sh, sw, ho, wo) for _, i, j in window_offsets(kh, kw)]
    K = kh * kw
    rows = ArithmeticShare(
        xp.stack([x.first[t] for t in idx], axis=-1).reshape(-1, K),
        xp.stack([x.second[t] for t in idx], axis=-1).reshape(-1, K),
        x.scale,
        rt,
    )
    levels = [] if return_bits else None
    out, oh = _tree_max(rows, onehot=return_indices, levels=levels)
    out = out.reshape(n, c, ho, wo)
    if return_bits:
        return out, levels
    if not return_indices:
        return out
    return out, oh.reshape(n, c, ho, wo, K)


def max_pool2d_backward(
    grad: ArithmeticShare, onehot: ArithmeticShare, input_shape, kernel, stride=None, padding=0
) -> ArithmeticShare:
    """Gradient of :func:`max_pool2d` w.r.t. its input: each window's gradient goes to its
    (first) maximum.  ``grad``: ``(N, C, Ho, Wo)``; ``onehot`` from ``return_indices=True``.
    1 round (``grad * onehot``, no truncation: the one-hot has scale 0), 8 bytes per
    window element per party; the scatter-add over overlapping windows is local.
    """
    geo = pool_geometry(tuple(input_shape), kernel, stride, padding, "max_pool2d", ProtocolError)
    n, c, ho, wo = input_shape[0], input_shape[1], geo[6], geo[7]
    return _scatter_windows(grad.reshape(n, c, ho, wo, 1) * onehot, input_shape, geo)


def max_pool2d_backward_bits(
    grad: ArithmeticShare, levels, input_shape, kernel, stride=None, padding=0
) -> ArithmeticShare:
    """:func:`max_pool2d_backward` from the comparison bits of ``return_bits=True``: the
    one-hot as bit shares (:func:`winner_bits`, ``L - 1`` AND rounds for ``L`` levels),
    then ``grad * bit`` by bit injection (:func:`~mpcgpu.protocols.convert.mul_bit`, 2
    rounds, 16 bytes per window element per party; party 0: 8 + 8 per bit)."""
    geo = pool_geometry(tuple(input_shape), kernel, stride, padding, "max_pool2d", ProtocolError)
    n, c, ho, wo = input_shape[0], input_shape[1], geo[6], geo[7]
    K = geo[0] * geo[1]
    if K == 1:
        return _scatter_windows(grad.reshape(n, c, ho, wo, 1), input_shape, geo)
    sel = winner_bits(levels, grad.rt).reshape(n, c, ho, wo, K)
    spread = grad.reshape(n, c, ho, wo, 1).broadcast_to((n, c, ho, wo, K))
    return _scatter_windows(mul_bit(spread, sel), input_shape, geo)


def _scatter_windows(prod: ArithmeticShare, input_shape, geo) -> ArithmeticShare:
    """Add each window element's value (``(N, C, Ho, Wo, K)``) to its input position (local)."""
    rt, xp = prod.rt, prod.xp
    kh, kw, sh, sw, ph, pw, ho, wo = geo
    n, c, h, w = input_shape
    outs = []
    for comp in (prod.first, prod.second):
        acc = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=xp.uint64)
        for k, i, j in window_offsets(kh, kw):
            acc[window_index(i, j, sh, sw, ho, wo)] += comp[..., k]
        outs.append(xp.ascontiguousarray(acc[:, :, ph : ph + h, pw : pw + w]))
    return ArithmeticShare(outs[0], outs[1], prod.scale, rt)


__all__ = [
    "lt",
    "gt",
    "le",
    "ge",
    "sign",
    "abs",
    "relu",
    "max",
    "min",
    "argmax",
    "one_hot",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_backward_bits",
    "winner_bits",
    "NEVER_WINS",
]
