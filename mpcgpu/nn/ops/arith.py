"""Elementwise arithmetic and reductions: Add, Sub, Mul, Div, Neg, Pow, Sqrt, Reciprocal,
ReduceSum, ReduceMean.

Costs (per party; ``n`` output elements):

* Add, Sub, Neg, ReduceSum, anything + a public value: local, exact (0 rounds).
* Mul by a public integer (or integral float, ``|c| < 2^20``): exact and free; by a public real
  (scalar or tensor): one truncation (:func:`~mpcgpu.sharing.arithmetic.mul_public`), 2 rounds,
  16 bytes per element per part (1-3 parts; a power of two: 1); ``2^k``, ``k >= 0``: free.
* Mul of two shares: :func:`~mpcgpu.sharing.arithmetic.mul`, 2 rounds (fused truncation,
  64 bytes per element for the three parties); an integer share times anything: 1 round.
* Div by a public value: a public product (as Mul).  Div by a share: ``x * reciprocal(y)``
  (:func:`~mpcgpu.protocols.approx.reciprocal`, 48 + 2 rounds on its default domain
  ``[1e-2, 1e3]``: the divisor must lie there -- outside, the result is garbage; attribute
  ``domain`` ([lo, hi]) plans another, ``signed=1`` accepts either sign at 12 rounds more).
* Pow by a public exponent: 1 free; 2 one product (2 rounds); 3 two products (4 rounds);
  0.5 :func:`~mpcgpu.protocols.approx.sqrt` (56 rounds); -1 reciprocal; -0.5 inv_sqrt
  (domains as Div).  Sqrt, Reciprocal: the protocols on ``domain`` (default ``[1e-2, 1e3]``).
* ReduceMean: a local sum and one public product by ``1/n`` (2 rounds; 0 when n = 1).

A public addend holding ``-inf`` or values ``<= -1e4`` (an attention mask) makes a
:class:`~mpcgpu.nn.ops.values.MaskedShare` (Softmax reads it); a masked share passes Add of
shares and public values, Sub of a share or public value, Mul and Div by positive public
numbers; anything else given one is a GraphError.
"""

from __future__ import annotations

import numpy

from ...protocols import approx
from ...sharing.arithmetic import mul
from ..dag import register_op
from . import values as V
from ._common import P, S, axes_arg, ex


def _domain(node):
    d = node.attr("domain")
    return approx.DEFAULT_DOMAIN if d is None else tuple(float(v) for v in d)


def _no_onehot(node, *vals):
    for v in vals:
        if isinstance(v, V.OneHotShare):
            node.fail("arithmetic on secret one-hot ids")


def _mask_parts(p):
    """A public float addend as (finite part, keep) with masked entries (``<= -1e4``) zeroed."""
    if p.dtype.kind != "f":
        return p, None
    keep = p > V.MASK_BELOW
    if keep.all():
        return p, None
    return numpy.where(keep, p, 0.0), keep


def _masked(share, *keeps):
    keeps = [k for k in keeps if k is not None]
    if not keeps:
        return share
    keep = keeps[0]
    for k in keeps[1:]:
        keep = numpy.logical_and(keep, k)
    return share if keep.all() else V.MaskedShare(share, keep)


def _split(node, v):
    """A secret operand as (plain share, keep or None)."""
    if isinstance(v, V.MaskedShare):
        return v.share, v.keep
    return V.plain_share(node, v), None


def add_private(ctx, node, args):
    a, b = args
    _no_onehot(node, a, b)
    if V.is_public(a):
        a, b = b, a
    s, keep = _split(node, a)
    if V.is_public(b):
        finite, mask = _mask_parts(V.public(b))
        return [_masked(V.add_public(s, finite), keep, mask)]
    t, keep2 = _split(node, b)
    return [_masked(s + t, keep, keep2)]


def sub_private(ctx, node, args):
    a, b = args
    _no_onehot(node, a, b)
    if isinstance(b, V.MaskedShare):
        node.fail("subtracting a masked share (minus infinity) is not supported")
    if V.is_public(b):
        s, keep = _split(node, a)
        p = V.public(b)
        if p.dtype.kind == "f" and not numpy.isfinite(p).all():
            node.fail("subtracting a public value that is not finite")
        return [_masked(V.add_public(s, p, -1), keep)]
    t = V.plain_share(node, b)
    if V.is_public(a):
        finite, mask = _mask_parts(V.public(a))
        return [_masked(V.add_public(-t, finite), mask)]
    s, keep = _split(node, a)
    return [_masked(s - t, keep)]


def _positive(p):
    return p.size > 0 and bool(numpy.all(p > 0))


def mul_private(ctx, node, args):
    a, b = args
    _no_onehot(node, a, b)
    if V.is_public(a):
        a, b = b, a
    if V.is_public(b):
        p = V.public(b)
        if p.dtype.kind == "f" and not numpy.isfinite(p).all():
            node.fail("a public factor that is not finite")
        if isinstance(a, V.MaskedShare):
            if not _positive(p):
                node.fail("a masked share times a public value that is not positive")
            return [V.MaskedShare(V.mul_public(a.share, p), a.keep)]
        return [V.mul_public(V.plain_share(node, a), p)]
    return [mul(V.plain_share(node, a), V.plain_share(node, b))]


def _reciprocal(node, s):
    return approx.reciprocal(s, domain=_domain(node), signed=bool(node.attr("signed", 0)))


def div_private(ctx, node, args):
    a, b = args
    _no_onehot(node, a, b)
    if V.is_public(b):
        p = V.public(b).astype(numpy.float64)
        if not numpy.all(numpy.isfinite(p)) or numpy.any(p == 0):
            node.fail("division by a public value that is zero or not finite")
        inv = 1.0 / p
        if isinstance(a, V.MaskedShare):
            if not _positive(p):
                node.fail("a masked share divided by a public value that is not positive")
            return [V.MaskedShare(V.mul_public(a.share, inv), a.keep)]
        return [V.mul_public(V.plain_share(node, a), inv)]
    r = _reciprocal(node, V.plain_share(node, b, "the divisor"))
    if V.is_public(a):
        return [V.mul_public(r, V.public(a))]
    return [mul(V.plain_share(node, a), r)]


def div_plain(node, args):
    a, b = args
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return [numpy.trunc(a / b).astype(numpy.int64)]
    return [numpy.divide(a, b)]


def neg_private(ctx, node, args):
    _no_onehot(node, args[0])
    return [-V.plain_share(node, args[0])]


def pow_private(ctx, node, args):
    x, e = args
    if not V.is_public(e) or V.public(e).size != 1:
        node.fail("Pow needs a public scalar exponent")
    k = float(V.public(e).reshape(-1)[0])
    s = V.plain_share(node, x)
    if k == 1:
        return [s]
    if k == 2:
        return [mul(s, s)]
    if k == 3:
        return [mul(mul(s, s), s)]
    if k == 0.5:
        return [approx.sqrt(s, domain=_domain(node))]
    if k == -1:
        return [approx.reciprocal(s, domain=_domain(node))]
    if k == -0.5:
        return [approx.inv_sqrt(s, domain=_domain(node))]
    node.fail(f"exponent {k} is not supported (1, 2, 3, 0.5, -1, -0.5)")


def pow_plain(node, args):
    x, e = args
    return [numpy.power(x.astype(numpy.float64), e.astype(numpy.float64)).astype(x.dtype)]


def _reduce_axes(node, args, ndim):
    axes = axes_arg(node, args, 1, ndim)
    if axes is None or not axes:
        if int(node.attr("noop_with_empty_axes", 0)):
            return None
        axes = list(range(ndim))
    return tuple(axes)


def _reducer(mean: bool):
    def plain(node, args):
        x = args[0]
        axes = _reduce_axes(node, args, x.ndim)
        if axes is None:
            return [x]
        keep = bool(int(node.attr("keepdims", 1)))
        return [x.mean(axis=axes, keepdims=keep) if mean else x.sum(axis=axes, keepdims=keep)]

    def private(ctx, node, args):
        x = args[0]
        _no_onehot(node, x)
        s = V.plain_share(node, x)
        if len(args) > 1 and args[1] is not None and not V.is_public(args[1]):
            node.fail("axes must be public")
        axes = _reduce_axes(node, args, s.ndim)
        if axes is None:
            return [s]
        keep = bool(int(node.attr("keepdims", 1)))
        total = s.sum(axis=axes, keepdims=keep)
        n = int(numpy.prod([s.shape[a] for a in axes]))
        return [V.mul_public(total, numpy.float64(1.0 / n)) if mean and n > 1 else total]

    return plain, private


def _positive_values(shape, lo=0.05, hi=20.0):
    return lambda r: numpy.exp(r.uniform(numpy.log(lo), numpy.log(hi), shape))


register_op(
    "Add",
    plain=lambda node, args: [args[0] + args[1]],
    private=add_private,
    examples=[
        ex("Add", [S("a", (2, 3)), S("b", (3,))]),
        ex("Add", [S("a", (2, 3)), P("b", (2, 1))]),
        ex("Add", [P("a", ()), S("b", (2, 3))], values={"a": numpy.array(1.0)}),
        ex(
            "Add",
            [S("s", (1, 2, 3, 3)), P("m", (1, 1, 3, 3))],
            values={"m": numpy.triu(numpy.full((3, 3), -numpy.inf), 1)[None, None]},
        ),
        ex("Add", [S("a", (2, 3), "int"), P("b", (2, 3), "int")], values={"a": lambda r: r.integers(-5, 5, (2, 3))}),
    ],
    doc="local: 0 rounds, 0 bytes (a public -inf / <= -1e4 addend gives a masked share)",
)
register_op(
    "Sub",
    plain=lambda node, args: [args[0] - args[1]],
    private=sub_private,
    examples=[
        ex("Sub", [S("a", (2, 3)), S("b", (2, 3))]),
        ex("Sub", [P("a", (3,)), S("b", (2, 3))]),
        ex("Sub", [S("a", (2, 3)), P("b", ())], values={"b": numpy.array(0.25)}),
    ],
    doc="local: 0 rounds, 0 bytes",
)
register_op(
    "Mul",
    plain=lambda node, args: [args[0] * args[1]],
    private=mul_private,
    examples=[
        ex("Mul", [S("a", (2, 3)), S("b", (2, 3))]),
        ex("Mul", [S("a", (2, 3)), P("b", ())], values={"b": numpy.array(0.35355339059327373)}),
        ex("Mul", [P("a", (3,)), S("b", (2, 3))]),
        ex("Mul", [S("a", (2, 3)), P("b", ())], values={"b": numpy.array(2.0)}),
        ex("Mul", [S("a", (1, 3)), S("b", (2, 1))]),
    ],
    doc="public integer: free; public real: 2 rounds (mul_public); share x share: 2 rounds, 64 B/elt (3 parties)",
)
register_op(
    "Div",
    plain=div_plain,
    private=div_private,
    examples=[
        ex("Div", [S("a", (2, 3)), P("b", ())], values={"b": numpy.array(1.4142135623730951)}),
        ex("Div", [S("a", (2, 3)), P("b", (3,))], values={"b": numpy.array([2.0, -0.5, 8.0])}),
        ex("Div", [S("a", (2, 3)), S("b", (2, 3))], values={"b": _positive_values((2, 3))}, tol=5e-3),
        ex("Div", [P("a", ()), S("b", (4,))], values={"a": numpy.array(1.0), "b": _positive_values((4,))}, tol=5e-3),
    ],
    doc="by a public value: mul_public (2 rounds); by a share: reciprocal (48 rounds on [1e-2, 1e3]) + 2",
)
register_op(
    "Neg",
    plain=lambda node, args: [-args[0]],
    private=neg_private,
    examples=[ex("Neg", [S("x", (2, 3))])],
    doc="local: 0 rounds, 0 bytes",
)
register_op(
    "Pow",
    plain=pow_plain,
    private=pow_private,
    examples=[
        ex("Pow", [S("x", (2, 3)), P("e", ())], values={"e": numpy.array(2.0)}),
        ex("Pow", [S("x", (2, 3)), P("e", ())], values={"e": numpy.array(3.0)}),
        ex("Pow", [S("x", (5,)), P("e", ())], values={"e": numpy.array(0.5), "x": _positive_values((5,))}, tol=5e-3),
    ],
    doc="2: 2 rounds; 3: 4 rounds; 0.5: sqrt, 56 rounds on [1e-2, 1e3]",
)
register_op(
    "Sqrt",
    plain=lambda node, args: [numpy.sqrt(args[0])],
    private=lambda ctx, node, args: [approx.sqrt(V.plain_share(node, args[0]), domain=_domain(node))],
    examples=[ex("Sqrt", [S("x", (2, 4))], values={"x": _positive_values((2, 4))}, tol=5e-3)],
    doc="approx.sqrt: 56 rounds on [1e-2, 1e3] (attribute domain)",
)
register_op(
    "Reciprocal",
    plain=lambda node, args: [1.0 / args[0]],
    private=lambda ctx, node, args: [_reciprocal(node, V.plain_share(node, args[0]))],
    examples=[ex("Reciprocal", [S("x", (2, 4))], values={"x": _positive_values((2, 4))}, tol=5e-3)],
    doc="approx.reciprocal: 48 rounds on [1e-2, 1e3] (attribute domain)",
)
_p, _q = _reducer(False)
register_op(
    "ReduceSum",
    plain=_p,
    private=_q,
    examples=[
        ex("ReduceSum", [S("x", (2, 3, 4)), P("axes", (1,), "int")], values={"axes": numpy.array([-1])}),
        ex(
            "ReduceSum",
            [S("x", (2, 3, 4)), P("axes", (2,), "int")],
            values={"axes": numpy.array([0, 2])},
            attrs={"keepdims": 0},
        ),
    ],
    doc="local: 0 rounds, 0 bytes",
)
_p, _q = _reducer(True)
register_op(
    "ReduceMean",
    plain=_p,
    private=_q,
    examples=[
        ex("ReduceMean", [S("x", (2, 3, 4)), P("axes", (1,), "int")], values={"axes": numpy.array([-1])}),
        ex("ReduceMean", [S("x", (2, 3, 6))], attrs={"keepdims": 0}),
    ],
    doc="a local sum and one public product by 1/n: 2 rounds, 16 B/output elt per party",
)
