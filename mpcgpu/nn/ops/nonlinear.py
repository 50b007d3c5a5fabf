"""Non-linear operators: Softmax, LayerNormalization, Erf, Tanh, Gelu, Relu, Sigmoid.

The private facets call the protocols of :mod:`mpcgpu.protocols.activations`,
:mod:`~mpcgpu.protocols.normalize` and :mod:`~mpcgpu.protocols.attention` (their
docstrings state rounds, bytes, domains and error bounds; the figures below are theirs at
``f = 16``):

* Softmax (any axis): ``masked_softmax`` -- the row maximum by a comparison tree
  (10 rounds per level), exp on the non-positive domain clipped below -12, one reciprocal
  per row (``softmax_cost``; error ``<= 1e-3`` per probability); a :class:`~mpcgpu.nn.ops.values.MaskedShare`
  input (attention masks) passes its public ``keep``: masked entries are 0, a row with
  nothing kept is all 0 (the exporter's IsNaN/Where guard then selects that 0);
* LayerNormalization (axis, epsilon; scale and bias secret, public or absent; our attribute
  ``domain`` = [lo, hi] plans the domain of ``var + eps``, default ``[1e-4, 2^16]``):
  ``layer_norm`` -- mean and variance of the row, one inverse square root per row
  (43 rounds; error ``<= 2e-3 (1 + |y|)``); a variance below the domain is clamped by the
  protocol's documented rule, one above it (or a secret weight beyond ``2^10 / sqrt(n)``)
  is counted privately and stops the run with a DomainError naming the node, from one
  bit revealed per run (:mod:`mpcgpu.protocols.domain`);
* Erf 18 rounds (max error 0.0035), Tanh 22 rounds (0.0035), Sigmoid 20 rounds (0.003),
  Gelu 16 rounds (0.0075; ``approximate`` "none" or "tanh"): fitted piecewise polynomials,
  one comparison call and one selection (``activation_cost``);
* Relu: :func:`mpcgpu.protocols.compare.relu` (the sign bit and one multiplication by it).
"""

from __future__ import annotations

import math

import numpy

from ...protocols import activations, compare
from ...sharing.arithmetic import to_scale
from ...sharing.compact import CompactShare
from ..dag import register_op
from . import values as V
from ._common import P, S, ex, norm_axis

_erf = numpy.frompyfunc(math.erf, 1, 1)


def erf_host(x):
    """float64 erf of an array (math.erf elementwise: NumPy has none)."""
    return _erf(numpy.asarray(x, dtype=numpy.float64)).astype(numpy.float64)


def softmax_host(x, axis):
    """ONNX Softmax in float64 (a row that is all -inf gives NaN, as onnxruntime does)."""
    with numpy.errstate(invalid="ignore"):
        m = numpy.max(x, axis=axis, keepdims=True)
        e = numpy.exp(x - m)
        return e / e.sum(axis=axis, keepdims=True)


def _real(node, v):
    """A share at ``rt.frac_bits`` (an integer share moved up for free)."""
    s = V.plain_share(node, v)
    f = s.rt.frac_bits
    return to_scale(s, f) if s.scale < f else s


def softmax_private(ctx, node, args):
    from ...protocols.attention import masked_softmax

    x = args[0]
    axis = norm_axis(node.attr("axis", -1), len(V.shape_of(x)), node)
    if isinstance(x, V.MaskedShare):
        return [masked_softmax(x.share, axis=axis, keep=x.keep)]
    return [masked_softmax(_real(node, x), axis=axis, keep=None)]


def _ln_axes(node, ndim):
    return tuple(range(norm_axis(node.attr("axis", -1), ndim, node), ndim))


def layer_norm_plain(node, args):
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axes = _ln_axes(node, x.ndim)
    eps = float(node.attr("epsilon", 1e-5))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / numpy.sqrt(var + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    outs = [y, mean, inv][: len(node.outputs)]
    return outs


def layer_norm_private(ctx, node, args):
    from ...protocols.normalize import layer_norm

    if len(node.outputs) > 1:
        node.fail("only the normalised output Y is computed (not Mean / InvStdDev)")
    x = _real(node, args[0])
    params = []
    for v, what in ((args[1], "scale"), (args[2] if len(args) > 2 else None, "bias")):
        if v is None or V.is_public(v):
            params.append(None if v is None else V.public(v))
        else:  # a compact share as it is: layer_norm remembers a checked weight by its object
            params.append(v if isinstance(v, CompactShare) else V.plain_share(node, v, what))
    axis = norm_axis(node.attr("axis", -1), x.ndim, node)
    domain = node.attr("domain")  # ours: the planned domain of var + eps (default the protocol's)
    domain = None if domain is None else tuple(float(d) for d in domain)
    eps = float(node.attr("epsilon", 1e-5))
    return [layer_norm(x, weight=params[0], bias=params[1], eps=eps, axis=axis, domain=domain)]


def gelu_host(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf_host(x / math.sqrt(2)))


def _gelu_mode(node):
    mode = node.attr("approximate", "none")
    if mode not in ("none", "tanh"):
        node.fail(f"approximate must be 'none' or 'tanh', got {mode!r}")
    return mode


def _unary(fn):
    def private(ctx, node, args):
        return [fn(V.plain_share(node, args[0]))]

    return private


def _wide(shape, lo=-4.0, hi=4.0):
    return lambda r: numpy.rint(r.uniform(lo, hi, shape) * 2.0**16) / 2.0**16


register_op(
    "Softmax",
    plain=lambda node, args: [softmax_host(args[0], norm_axis(node.attr("axis", -1), args[0].ndim, node))],
    private=softmax_private,
    examples=[
        ex("Softmax", [S("x", (2, 3, 5))], values={"x": _wide((2, 3, 5), -6, 6)}, tol=2e-3),
        ex("Softmax", [S("x", (2, 4, 3))], attrs={"axis": 1}, tol=2e-3),
    ],
    doc="masked_softmax: comparison tree max, exp, one reciprocal per row (protocols.attention.softmax_cost)",
)
register_op(
    "LayerNormalization",
    plain=layer_norm_plain,
    private=layer_norm_private,
    examples=[
        ex(
            "LayerNormalization",
            [S("x", (2, 3, 8)), S("scale", (8,)), S("bias", (8,))],
            attrs={"epsilon": 1e-5, "axis": -1},
            tol=5e-3,
        ),
        ex("LayerNormalization", [S("x", (2, 6)), P("scale", (6,)), P("bias", (6,))], tol=5e-3),
        ex(
            "LayerNormalization", [S("x", (2, 3, 4)), S("scale", (3, 4))], attrs={"axis": 1, "epsilon": 1e-12}, tol=5e-3
        ),
    ],
    doc="layer_norm: mean, variance, one inverse square root per row (protocols.normalize.layer_norm_cost)",
)
register_op(
    "Erf",
    plain=lambda node, args: [erf_host(args[0])],
    private=_unary(activations.erf),
    examples=[ex("Erf", [S("x", (3, 7))], values={"x": _wide((3, 7))}, tol=4e-3)],
    doc="activations.erf: 18 rounds, ~496 B/elt (3 parties), max error 0.0035",
)
register_op(
    "Tanh",
    plain=lambda node, args: [numpy.tanh(args[0])],
    private=_unary(activations.tanh),
    examples=[ex("Tanh", [S("x", (3, 7))], values={"x": _wide((3, 7), -5, 5)}, tol=4e-3)],
    doc="activations.tanh: 22 rounds, ~624 B/elt (3 parties), max error 0.0035",
)
register_op(
    "Sigmoid",
    plain=lambda node, args: [1.0 / (1.0 + numpy.exp(-args[0]))],
    private=_unary(activations.sigmoid),
    examples=[ex("Sigmoid", [S("x", (3, 7))], values={"x": _wide((3, 7), -8, 8)}, tol=3.5e-3)],
    doc="activations.sigmoid: 20 rounds, ~560 B/elt (3 parties), max error 0.003",
)
register_op(
    "Gelu",
    plain=lambda node, args: [gelu_host(args[0], _gelu_mode(node))],
    private=lambda ctx, node, args: [activations.gelu(V.plain_share(node, args[0]), approximate=_gelu_mode(node))],
    examples=[
        ex("Gelu", [S("x", (3, 7))], values={"x": _wide((3, 7))}, tol=8e-3),
        ex("Gelu", [S("x", (3, 7))], attrs={"approximate": "tanh"}, values={"x": _wide((3, 7))}, tol=8e-3),
    ],
    doc="activations.gelu: 16 rounds, ~432 B/elt (3 parties), max error 0.0075",
)
register_op(
    "Relu",
    plain=lambda node, args: [numpy.maximum(args[0], 0)],
    private=_unary(compare.relu),
    examples=[
        ex(
            "Relu",
            [S("x", (3, 7))],
            values={"x": lambda r: numpy.concatenate([[0.0, 2.0**-16, -(2.0**-16)], _wide((18,))(r)]).reshape(3, 7)},
            tol=1e-9,
        )
    ],
    doc="compare.relu: the sign bit (MSB) and one multiplication by it",
)
