"""Smooth activations of transformers on arithmetic shares: ``gelu`` (erf and tanh forms),
``erf``, ``tanh``, ``sigmoid``, ``silu``.

Construction: three pieces selected by two comparisons
=======================================================
Every function here is, to within its error bound, an exact affine function outside a
segment ``[-T, T]`` -- ``0`` and ``x`` for GELU and SiLU, ``-1`` and ``+1`` for erf and
tanh, ``0`` and ``1`` for the sigmoid -- and smooth inside it.  So

    f(x) ~ R(x) + s (P(x) - R(x)) + b (L(x) - R(x))

with ``b = [x < -T]``, ``s = [-T <= x < T]``, ``L``/``R`` the left/right affine pieces and
``P`` a polynomial fitted on the segment:

* **one comparison call** for both boundaries: the MSB of the stacked ``(x - T, x + T)``
  gives ``[x < T]`` and ``b = [x < -T]`` (8 rounds); ``s = [x < T] XOR b`` is local (b
  implies ``[x < T]``);
* **the polynomial** uses the parity of the function: ``P = x/2 + Q(x^2)`` (GELU, SiLU:
  ``f(x) - x/2`` is even) or ``P = c + x Q(x^2)`` (erf, tanh, sigmoid: ``f - c`` is odd,
  ``c`` is 0 or 1/2).  ``Q`` is evaluated in ``v = x^2 / 2^m`` (``2^m >= T^2``, so
  ``v`` is in ``[0, 1]`` on the segment and Horner's rounding errors are not amplified)
  by Horner's rule whose innermost step ``c_{d-1} + c_d v`` is free (an integer multiple
  of the ring elements plus a public constant): one fused product-and-truncation per
  degree, ``x^2`` included.  GELU's ``x/2`` is added to the 3-out-of-3 summand of the
  last product before its truncation (``x/2`` alone would need a truncation of its own);
  the odd functions end with a product by ``x``.  Intermediate values are kept at
  ``f + 4`` fractional bits;
* **one selection**: ``(P - R) * s`` and ``(L - R) * b`` in ONE multiply-by-bit call (2
  rounds, no truncation: exact).

Outside the segment the polynomial's value is garbage (its products may even leave the
ring's range), but it is multiplied by the exact bit 0: nothing of it survives.

The coefficients are fitted on the host (public numbers only, deterministic float64:
Lawson's iteratively reweighted least squares, i.e. a minimax fit, on a grid of the
segment), cached, and the three parties check once that they hold the same plan
(:func:`mpcgpu.protocols.approx.agreed`).  ``T`` and the degree of each function were
chosen by scanning ``T`` for the smallest maximum error over the whole real line
(inside: the fit; outside: ``|f - L|``, ``|f - R|``), under the error targets below.

Accuracy and cost
=================
Max error against float64 over the whole real line (the plan's ``max_error``: the fit;
``bound``: what the tests assert for the fixed-point protocol, including rounding), ``P``
fused products per element; rounds ``= 8 + 2 P + 2``; bytes sent by the three parties
together for ``n`` elements: ``24 (2n + tree_words(2n)) + 64 P n + 96 n`` (the MSB of 2n
elements, the products, the selection of 2n values by 2n bits), about ``71 + 64 P + 96``
per element:

===================  ======  ======  ===  ======  ======  ========  =============
function             T       degree  P    rounds  bound   measured  bytes/element
===================  ======  ======  ===  ======  ======  ========  =============
gelu (erf form)      2.8125  6       3    16      0.0075  0.0069    ~432
gelu (tanh form)     2.8125  6       3    16      0.0075  0.0067    ~432
silu                 6.6875  10      5    20      0.0095  0.0088    ~560
erf                  2.125   7       4    18      0.0035  0.0030    ~496
tanh                 3.25    11      6    22      0.0035  0.0031    ~624
sigmoid              6.0     9       5    20      0.0030  0.0027    ~560
===================  ======  ======  ===  ======  ======  ========  =============

(GELU: PUMA's piecewise approximation has 0.014.)  Domain: every fixed-point value
(the comparisons are exact whenever ``x +- T`` does not wrap the ring).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as _np  # host-side fitting of public coefficients only; never for share data

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, _summand_product, mul_trunc, product_summand, stack
from ..sharing.binary import stack as binary_stack
from .approx import agreed
from .convert import msb, mul_bit, tree_words

EXTRA_BITS = 4  # intermediate values of the polynomial carry f + 4 fractional bits


def _gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + _np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _erf(x):
    return _np.vectorize(math.erf, otypes=[float])(x)


def _sigmoid(x):
    return 0.5 * (1.0 + _np.tanh(0.5 * x))


def _silu(x):
    return x * _sigmoid(x)


#: name -> (float64 reference, parity, segment end T, degree of Q, left piece, right piece)
#: parity "even": P = x/2 + Q(x^2); "odd": P = c + x Q(x^2) with c = (L + R)(0) / 2.
#: pieces are (slope, intercept) with integer slopes.
FUNCTIONS = {
    "gelu": (_gelu_erf, "even", 2.8125, 3, (0, 0.0), (1, 0.0)),
    "gelu_tanh": (_gelu_tanh, "even", 2.8125, 3, (0, 0.0), (1, 0.0)),
    "silu": (_silu, "even", 6.6875, 5, (0, 0.0), (1, 0.0)),
    "erf": (_erf, "odd", 2.125, 3, (0, -1.0), (0, 1.0)),
    "tanh": (_np.tanh, "odd", 3.25, 5, (0, -1.0), (0, 1.0)),
    "sigmoid": (_sigmoid, "odd", 6.0, 4, (0, 0.0), (0, 1.0)),
}


@dataclass(frozen=True)
class PiecewisePlan:
    """A fitted piecewise evaluation (public).  ``coeffs``: ``c_0..c_d`` of ``Q`` in
    ``v = x^2 / 2^m``; ``inner_shift``: the extra fractional bits of the free innermost
    Horner step; ``max_error``: float64 error of the fit over the whole real line."""

    kind: str
    domain: tuple  # (-T, T)
    parity: str
    offset: float  # c of the odd form (0 or 1/2); 0 for the even form
    m: int
    coeffs: tuple
    inner_shift: int
    left: tuple
    right: tuple
    max_error: float
    products: int
    rounds: int


def _lawson(A, y, iters: int = 120):
    """Minimax (Lawson) fit of ``A c ~ y``: deterministic float64."""
    w = _np.full(len(y), 1.0 / len(y))
    c = None
    for _ in range(iters):
        sw = _np.sqrt(w)
        c = _np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]
        e = _np.abs(A @ c - y)
        w = w * e
        total = w.sum()
        if total == 0.0:
            break
        w = _np.maximum(w / total, 1e-30)  # no denormals (slow), same minimax
    return c


@functools.lru_cache(maxsize=16)
def plan(name: str, frac_bits: int = 16) -> PiecewisePlan:
    """The fitted plan of activation ``name`` (one of :data:`FUNCTIONS`)."""
    if name not in FUNCTIONS:
        raise ProtocolError(f"unknown activation {name!r}; known: {sorted(FUNCTIONS)}")
    ref, parity, T, d, left, right = FUNCTIONS[name]
    m = max(0, math.ceil(math.log2(T * T)))
    x = _np.linspace(0.0, T, 2001)
    v = x * x / 2.0**m
    basis = _np.stack([v**k for k in range(d + 1)], axis=1)
    if parity == "even":
        offset = 0.0
        c = _lawson(basis, ref(x) - x / 2)
    else:
        offset = 0.5 * (left[1] + right[1])
        c = _lawson(basis * x[:, None], ref(x) - offset)
    coeffs = tuple(float(t) for t in c)

    def model(xs):
        vs = xs * xs / 2.0**m
        q = sum(ck * vs**k for k, ck in enumerate(coeffs))
        inside = xs / 2 + q if parity == "even" else offset + xs * q
        lo = left[0] * xs + left[1]
        hi = right[0] * xs + right[1]
        return _np.where(xs < -T, lo, _np.where(xs < T, inside, hi))

    xs = _np.concatenate([_np.linspace(-T, T, 40001), _np.linspace(-80.0, 80.0, 64001), [-T, T]])
    max_error = float(_np.abs(model(xs) - ref(xs)).max())
    # the innermost step c_{d-1} + c_d v at S + q bits: keep |v (c_{d-1} + c_d v)| 2^(2S + q) < 2^60
    S = frac_bits + EXTRA_BITS
    inner = _np.abs(v * (coeffs[-2] + coeffs[-1] * v)).max() + 1.0
    q = int(min(24, 60 - 2 * S - math.ceil(math.log2(inner))))
    if q < 8:
        raise ProtocolError(f"{name}: no room for the innermost coefficient ({q} bits)")
    products = d + (1 if parity == "odd" else 0)
    return PiecewisePlan(
        name, (-T, T), parity, offset, m, coeffs, q, left, right, max_error, products, 8 + 2 * products + 2
    )


def activation_cost(name: str, n: int) -> dict:
    """``{"rounds", "bytes", "products"}`` of activation ``name`` on ``n`` elements (bytes: sent
    by the three parties together).  ``name``: gelu, gelu_tanh, erf, tanh, sigmoid, silu."""
    p = plan(name)
    n = int(n)
    msb_bytes = 3 * 8 * (2 * n + tree_words(2 * n)) if n else 0
    select = 8 * 2 * n + 40 * 2 * n  # mul_bit: party 0 8 nb + 8 nx, parties 1 and 2 16 nx
    return {"rounds": p.rounds, "bytes": msb_bytes + 64 * p.products * n + select, "products": p.products}


# ---------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------


def _mul_trunc_plus(a: ArithmeticShare, b: ArithmeticShare, addend: ArithmeticShare, bits: int, out_scale: int):
    """``(a * b + addend) / 2^bits`` read at ``out_scale``: one fused product and truncation
    (2 rounds).  ``addend`` (same shape as the product, at scale ``a.scale + b.scale``) is
    added to this party's 3-out-of-3 summand (its first component: the three sum to it)
    before the truncation, so it costs nothing."""
    rt = a.rt
    summand = product_summand(rt, a.first, a.second, b.first, b.second, lambda u, w: u * w)
    summand = summand + addend.first
    return _summand_product(rt, summand, a.scale + b.scale, None, bits, out_scale)


def _polynomial(x: ArithmeticShare, p: PiecewisePlan) -> ArithmeticShare:
    """``P(x)`` at ``f`` fractional bits (garbage outside the segment): ``p.products``
    fused products, ``2 p.products`` rounds."""
    f = x.rt.frac_bits
    S = f + EXTRA_BITS
    c = p.coeffs
    d = len(c) - 1
    # v = x^2 / 2^m at S bits
    v = mul_trunc(x, x, 2 * f + p.m - S, S)
    # innermost: c_{d-1} + c_d v at S + q bits (free)
    q = p.inner_shift
    k = int(round(c[d] * 2.0**q))
    acc = (v.relabel(0) * k).relabel(S + q) + c[d - 1]
    for j in range(d - 2, -1, -1):
        last = j == 0 and p.parity == "even"
        if last:
            # Q - c_0 + x/2: v * acc plus x/2 at the product's scale, truncated to f
            scale = v.scale + acc.scale
            half_x = (x.relabel(0) * (1 << (scale - f - 1))).relabel(scale)
            acc = _mul_trunc_plus(v, acc, half_x, scale - f, f) + c[0]
        else:
            acc = mul_trunc(v, acc, v.scale + acc.scale - S, S) + c[j]
    if p.parity == "even":
        return acc
    return mul_trunc(x, acc, x.scale + acc.scale - f, f) + p.offset


def _affine(x: ArithmeticShare, piece) -> ArithmeticShare:
    slope, intercept = piece
    return x * int(slope) + float(intercept)


def piecewise(x: ArithmeticShare, name: str) -> ArithmeticShare:
    """Activation ``name`` by its fitted plan (module docstring); see :func:`activation_cost`."""
    if not isinstance(x, ArithmeticShare):
        raise ProtocolError(f"{name} needs an ArithmeticShare")
    rt = x.rt
    f = rt.frac_bits
    p = agreed(plan(name, f), rt)
    if x.scale != f:
        if x.scale != 0:
            raise ProtocolError(f"{name} needs a share at {f} fractional bits (or an integer share), got {x.scale}")
        x = x.relabel(0) * (1 << f)
        x = x.relabel(f)
    T = p.domain[1]
    bits = msb(stack([x - T, x + T]))  # [x < T], [x < -T]: one comparison call, 8 rounds
    below = bits[1]
    inside = bits[0] ^ below
    poly = _polynomial(x, p)
    right = _affine(x, p.right)
    left = _affine(x, p.left)
    sel = mul_bit(stack([poly - right, left - right]), binary_stack([inside, below]))
    return right + sel[0] + sel[1]


def gelu(x: ArithmeticShare, approximate: str = "none") -> ArithmeticShare:
    """GELU ``x Phi(x)`` (``approximate="none"``, the erf form) or its tanh form
    (``"tanh"``: ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``), each against its own
    float64 reference.  Max error over the whole real line: 0.0075 (fit: 0.0072); 16
    rounds, 3 products per element (module table)."""
    if approximate not in ("none", "tanh"):
        raise ProtocolError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return piecewise(x, "gelu" if approximate == "none" else "gelu_tanh")


def erf(x: ArithmeticShare) -> ArithmeticShare:
    """The error function; max error 0.0035 over the whole real line (fit 0.003); exact
    ``+-1`` for ``|x| >= 2.125``; 18 rounds."""
    return piecewise(x, "erf")


def tanh(x: ArithmeticShare) -> ArithmeticShare:
    """Hyperbolic tangent; max error 0.0035 (fit 0.0031); exact ``+-1`` for ``|x| >= 3.25``;
    22 rounds."""
    return piecewise(x, "tanh")


def sigmoid(x: ArithmeticShare) -> ArithmeticShare:
    """Logistic sigmoid; max error 0.003 (fit 0.0027); exact 0 / 1 for ``|x| >= 6``; 20 rounds."""
    return piecewise(x, "sigmoid")


def silu(x: ArithmeticShare) -> ArithmeticShare:
    """SiLU ``x sigmoid(x)``; max error 0.0095 (fit 0.0088); exact 0 / x for ``|x| >= 6.6875``;
    20 rounds."""
    return piecewise(x, "silu")


__all__ = ["gelu", "erf", "tanh", "sigmoid", "silu", "activation_cost", "plan", "piecewise", "FUNCTIONS"]
