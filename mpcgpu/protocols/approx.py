"""Non-linear functions of arithmetic shares by iterations of products:
``exp``, ``reciprocal``, ``inv_sqrt``, ``sqrt``, ``log``, ``softmax``, ``log_softmax``.

No value is ever revealed: every function is a fixed sequence of local linear
steps, products of two shares and truncations, identical on the three parties
whatever the data.

Cost model
==========
Every step is one of three kinds (rounds; bytes sent by the three parties
together, per element):

* a *fused product* of two shares with the truncation of its result (the
  MSB-corrected truncation of :mod:`mpcgpu.sharing.truncation` replaces the
  product's resharing): 2 rounds, 64 bytes;
* a *standalone truncation* (after a product by a public constant or a public
  linear combination): 2 rounds, 48 bytes;
* linear steps (sums, public integer factors, public additions): free.

Each function states its rounds; its bytes follow from its counts of fused
products ``P`` and standalone truncations ``T`` per input element:
``8 (8 P + 6 T)`` bytes per element in all (:func:`plan_bytes`).
:func:`plan_reciprocal`, :func:`plan_inv_sqrt`, :func:`plan_log` and
:func:`exp_cost` return these figures; the tests compare them with the
communicator's counters.

Fixed point, and why the constructions look the way they do
============================================================
With ``f = 16`` fractional bits, a product ``a*b`` is truncated from a ring
value ``a*b*2^(2f)``, which must stay below ``2^62`` (``|a*b| < 2^30``).  Two
consequences shape this module.

* Precision.  Classic recipes lose it: the limit ``(1 + x/2^n)^(2^n)`` of exp
  starts from ``x/2^n`` rounded to ``2^-16``, an error the ``n`` squarings
  multiply by ``2^n`` (0.4 % for ``n = 8``), on top of the limit's own relative
  error ``x^2 / 2^(n+1)`` (5 % at ``x = 5``).  :func:`exp` therefore keeps
  ``u = y - 1`` at a *falling* scale (``f + n`` bits, one fewer per squaring,
  ``y^2 = 1 + 2u + u^2`` needs no rounding of ``2u``) and starts from the
  second-order ``1 + t + t^2/2``; the ring values stay about those of ``x``.
* Dynamic range.  A value must fit ``2^31`` and products should stay far below
  ``2^63``; so ``1/x`` over ``[1e-2, 1e3]`` (and ``1e3 * 2^-16`` is only 65 units
  in the last place) cannot have 1e-3 *relative* accuracy at the top: the
  honest bound is ``|err| <= 1e-3 * |y| + 2 ulp`` (``ulp = 2^-f``).

Initial guesses for reciprocal, inv_sqrt and log: a Laplace-quadrature chain
==========================================================================
``x^(-s) = (1/Gamma(s)) * integral of t^(s-1) exp(-x t) dt`` and
``log x = integral of (exp(-t) - exp(-x t)) / t dt``; a trapezoid rule in
``log t`` with step ``ln 2`` turns both into sums of ``exp(-x 2^k / H)``.  The
chain ``E_0 = 1 - x/H``, ``E_{k+1} = E_k^2`` (one squaring per term, computed as
``D = 1 - E`` at ``f + 2`` bits) supplies these terms, so a guess is a public
linear combination of the chain: ``2 n + 2`` rounds for ``n`` squarings.  A
small *planner* (host-side NumPy on public numbers only, cached) models the
exact fixed-point arithmetic of the chain, with truncation errors pushed to
both extremes, over the whole domain, and picks the chain length, a rescaling
of the guess and the number of refinement iterations with the fewest rounds
for a 2^-20 target.  The refinement is Newton's iteration, evaluated in
Goldschmidt form (two independent products per step, one round pair instead
of two) and finished by one self-correcting Newton step.

Goldschmidt's first steps, while ``x y`` is still small, double ``x y`` every
2 rounds -- as cheap per octave as the chain -- so for ``1/x`` the planner
mostly picks short chains; ``inv_sqrt`` and ``log`` gain more from the chain.
All parties compute the same plan from the same public numbers (deterministic
float64 code); nothing about the data enters it.  Before a plan is first used, the
parties check that they agree on it (:func:`agreed`: a SHA-256 of the plan, 64 hex digits per
party, one round, once per plan and process; a set-up message like the key exchange, not
counted in a protocol's rounds): parties on machines whose floating point differs (another
libm, another NumPy) would otherwise follow different plans and compute silently wrong
results.

Costs (``f = 16``; ``P``/``T`` fused products / standalone truncations per element;
bytes in all per element ``8 (8 P + 6 T)``):

=========================  =========================  ======  ====  ====
function                   domain                     rounds   P     T
=========================  =========================  ======  ====  ====
exp (iterations=8)         ``[-256, 10]``             18       9     0
reciprocal                 ``[1e-2, 1e3]`` (default)  48       31    2
reciprocal                 ``[0.99, 10.1]``           20       12    2
inv_sqrt                   ``[1e-2, 1e3]`` (default)  54       27    2
inv_sqrt                   ``[0.99, 10.1]``           26       12    2
sqrt                       ``[1e-2, 1e3]`` (default)  56       28    2
log                        ``[1e-2, 1e3]`` (default)  66       44    3
log                        ``[0.99, 10.1]``           34       20    3
softmax_shifted, 10 cls.   ``z <= 0``                 40
log_softmax_shifted, 10    ``z <= 0``                 52
softmax / log_softmax      any                        max + the above
=========================  =========================  ======  ====  ====

No large errors: every truncation is the MSB-corrected one (never off by more
than a unit in the last place while its ring value is below ``2^62``); the
functions keep their ring values near those of an ordinary product of the inputs.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as _np  # host-side planning of public constants only; never for share data

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, mul, mul_trunc, stack, to_scale, truncate

LN2 = math.log(2.0)
CHAIN_EXTRA_BITS = 2  # the guess chain runs at f + 2 fractional bits
TARGET = 2.0**-20  # error the refinement iterations drive the guess to
DEFAULT_DOMAIN = (1e-2, 1e3)


# ---------------------------------------------------------------------------------------
# ring-level plumbing: products and truncations with explicit scales
# ---------------------------------------------------------------------------------------


def _relabel(x: ArithmeticShare, scale: int) -> ArithmeticShare:
    """The same ring elements read with ``scale`` fractional bits (free)."""
    return x.relabel(scale)


def _ring_mul(a: ArithmeticShare, b: ArithmeticShare) -> ArithmeticShare:
    """Product of the ring elements, no truncation: 1 round, 8 bytes/element per party.

    The result carries scale ``a.scale + b.scale``."""
    return mul(a.relabel(0), b.relabel(0)).relabel(a.scale + b.scale)


def _mul_trunc(a, b, bits: int, scale: int) -> ArithmeticShare:
    """``a*b`` divided by ``2^bits``, read at ``scale``: one fused product and truncation (2 rounds)."""
    return mul_trunc(a, b, bits, scale)


def _shift_up(x: ArithmeticShare, bits: int) -> ArithmeticShare:
    """Multiply the ring elements by ``2^bits`` (free, exact)."""
    if bits == 0:
        return x
    return (x.relabel(0) * (1 << bits)).relabel(x.scale)


def _to_scale(x: ArithmeticShare, scale: int) -> ArithmeticShare:
    """Re-encode at ``scale`` fractional bits: free upwards, one truncation (2 rounds) downwards."""
    return to_scale(x, scale)


def _const(c: float, bits: int = 12):
    """A public real as ``(K, q)`` with ``c ~ K / 2^q`` and ``|K|`` about ``2^bits``."""
    if c == 0:
        return 0, 0
    q = bits - 1 - math.floor(math.log2(abs(c)))
    return int(round(c * 2.0**q)), q


def _times_public(x: ArithmeticShare, c: float, scale: int, bits: int = 12) -> ArithmeticShare:
    """``c * x`` at ``scale`` fractional bits, ``c`` a public real kept to ``bits`` bits.

    1 truncation (2 rounds, 48 bytes/element in all).  The truncated ring value is
    about ``|x| 2^(x.scale + bits)``, far below the truncation's ``2^62``."""
    k, q = _const(c, bits)
    shift = x.scale + q - scale
    prod = _relabel(_relabel(x, 0) * k, x.scale + q)
    if shift < 0:
        return _relabel(_shift_up(prod, -shift), scale)
    return truncate(prod, shift, scale)


def _weighted_sum(terms, weights, scale_out: int) -> ArithmeticShare:
    """``sum_k weights[k] * terms[k]`` (public reals) at ``scale_out`` bits: 1 truncation (2 rounds).

    Each weight is encoded with ``scale_out`` fractional bits; the sum is truncated once."""
    acc = None
    for t, w in zip(terms, weights):
        k = int(round(w * 2.0**scale_out))
        if k == 0:
            continue
        part = _relabel(t, 0) * k
        acc = part if acc is None else acc + part
    s_in = terms[0].scale
    if acc is None:  # every weight rounds to 0
        return _relabel(terms[0] * 0, scale_out)
    return truncate(_relabel(acc, s_in + scale_out), s_in, scale_out)


# ---------------------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------------------


def exp_cost(iterations: int = 8, drop_bits: int = 0) -> dict:
    """Rounds, fused products and standalone truncations per input element of :func:`exp`."""
    n, d = int(iterations), 1 if drop_bits else 0
    return {"rounds": 2 * (n + 1) + 2 * d, "products": n + 1, "truncations": d}


def plan_bytes(n: int, products: int, truncations: int) -> int:
    """Bytes sent by the three parties together for ``n`` elements of a function with
    ``products`` fused products and ``truncations`` standalone truncations per element."""
    return 8 * n * (8 * products + 6 * truncations)


def exp(x: ArithmeticShare, iterations: int = 8, drop_bits: int = 0) -> ArithmeticShare:
    """``e^x`` by ``n = iterations`` squarings of ``1 + t + t^2/2``, ``t = x / 2^n``.

    Domain: ``-2^n <= x <= 10`` (``n = 8``: ``[-256, 10]``).  Below ``-12`` the result is
    ``0`` to within the last place; for ``t < -1`` (``x < -2^n``) the base grows again and
    the result is wrong.  From ``x ~ 15`` the last squaring's ring value passes ``2^62``
    (``e^x`` squared at ``2f`` bits) and the result is wrong.

    Accuracy (``f = 16``): relative error ``x^3 / (6 * 4^n)`` from the approximation
    (3e-4 at ``x = 5``, ``n = 8``) plus about ``sqrt(n) * 2^-16`` relative from rounding;
    absolute error below ``2^-14`` for negative ``x``.  So ``|err| <= 1e-3 * e^x + 2^-14``
    on ``[-256, 5]`` (a purely relative bound is impossible where ``e^x`` approaches the
    resolution ``2^-16``).

    How: ``u = y - 1`` is kept at ``f + n - k`` fractional bits after squaring ``k``
    (``y^2 = 1 + 2u + u^2``: reading ``u`` with one fewer bit doubles it for free, only
    ``u^2`` is truncated), so rounding errors are not amplified by the later squarings,
    and every ring value stays about that of ``x``.

    ``drop_bits = m > 0`` first truncates ``x`` to ``f - m`` bits (2 more rounds): ring
    values fall by ``2^m`` while the relative error grows to about ``(n + 2) 2^(m - f)``.

    Cost: ``2 (n + 1)`` rounds (18 for ``n = 8``), +2 with ``drop_bits``; ``n + 1`` fused
    products (+1 standalone truncation) per element (:func:`exp_cost`).
    """
    return _exp(x, int(iterations), drop_bits=int(drop_bits))


def _exp(x: ArithmeticShare, n: int, out_extra: int = 0, drop_bits: int = 0) -> ArithmeticShare:
    """exp with the result at ``f + out_extra`` fractional bits (see :func:`exp`).

    ``out_extra`` keeps more bits of small results (log's refinement): the last
    truncation removes ``out_extra`` fewer bits; results must stay below
    ``2^(31 - out_extra)``."""
    if n < 0:
        raise ProtocolError(f"exp needs iterations >= 0, got {n}")
    f = x.rt.frac_bits
    if not 0 <= drop_bits <= f // 2:
        raise ProtocolError(f"exp needs 0 <= drop_bits <= {f // 2}, got {drop_bits}")
    x = _to_scale(x, f - drop_bits)
    s = x.scale + n
    # u_0 = t + t^2/2 with t = x / 2^n: the ring elements of x read at f + n bits are t
    t = _relabel(x, s)
    u = t + _mul_trunc(t, t, s + 1, s)  # t^2 / 2 at scale s
    for k in range(n):
        s_in = s - k
        s_out = s_in - 1 if k < n - 1 else f + out_extra
        # u' = 2u + u^2 at s_out bits: 2u is u's ring read at s_in - 1 bits (shifted if needed)
        two_u = _relabel(_shift_up(u, s_out - s_in + 1), s_out)
        u = two_u + _mul_trunc(u, u, 2 * s_in - s_out, s_out)
    if u.scale != f + out_extra:  # n == 0
        u = _to_scale(u, f + out_extra)
    return u + 1


# ---------------------------------------------------------------------------------------
# the guess chain and its planner (public numbers only)
# ---------------------------------------------------------------------------------------


def _chain(x: ArithmeticShare, H: float, n: int):
    """``D_0 = x/H``, ``D_{k+1} = 2 D_k - D_k^2`` (so ``1 - D_k = (1 - x/H)^(2^k)``) at
    ``f + 2`` bits: 2 + 2n rounds, n fused products and 1 truncation per element."""
    S = x.rt.frac_bits + CHAIN_EXTRA_BITS
    d = _times_public(x, 1.0 / H, S)
    chain = [d]
    for _ in range(n):
        sq = _mul_trunc(d, d, S, S)
        d = _relabel(_relabel(d, 0) * 2, S) - sq
        chain.append(d)
    return chain


def _grid(lo: float, hi: float, f: int, points: int = 4001):
    x = _np.exp(_np.linspace(math.log(lo), math.log(hi), points))
    return _np.unique(_np.clip(_np.rint(x * 2.0**f), 1, None))  # ring elements of x


def _model_chain(xr, H: float, n: int, f: int, high: bool):
    """Exact model of :func:`_chain` on ring elements ``xr`` (floats holding integers).

    Truncation errors are pushed all up (``high``: the largest ``D``) or all down; the
    chain is monotone in each of them, so the two runs bound every outcome."""
    S = f + CHAIN_EXTRA_BITS
    k, q = _const(1.0 / H)
    shift = f + q - S
    d = _np.floor(xr * k / 2.0**shift) + (1 if high else 0)
    out = [d]
    for _ in range(n):
        sq = _np.floor(d * d / 2.0**S) + (0 if high else 1)
        d = 2 * d - sq
        out.append(d)
    return out


def _model_weighted(chain, weights, f: int):
    S = f + CHAIN_EXTRA_BITS
    acc = 0
    for d, w in zip(chain, weights):
        acc = acc + d * int(round(w * 2.0**f))
    return _np.floor(acc / 2.0**S)


def _chain_rounds(n: int) -> int:
    """The guess: the chain (a truncation, n fused squarings) and its weighted sum (a truncation)."""
    return 2 * n + 4


@dataclass(frozen=True)
class Plan:
    """A planned evaluation: chain length, guess constants, refinement counts and costs.

    ``rounds``: communication rounds; ``products``/``truncations``: product and truncation
    elements per input element (see the module's cost model)."""

    kind: str
    domain: tuple
    chain: int
    H: float
    offset: float  # guess = offset + sum_k weights[k] * D_k (log) or offset - ... (powers)
    weights: tuple
    iterations: int
    rounds: int
    products: int
    truncations: int
    guess_range: tuple  # x*y0 (reciprocal), x*y0^2 (inv_sqrt) or y0 - log x (log)
    order: int = 0  # log: series order
    exp_iterations: int = 0
    exp_extra: int = 0


def _power_weights(n: int, H: float, s: float):
    """Laplace-quadrature weights of ``x^-s`` on the chain: guess = A - sum W_k D_k."""
    b = [2.0**k / H for k in range(n + 1)]
    w = [LN2 * bk**s / math.gamma(s) for bk in b]
    tail = LN2 * b[0] ** s / math.gamma(s) / (2.0**s - 1.0)
    return sum(w) + tail, w


def _power_guess_range(lo, hi, n, s, A, W, f):
    """Bounds of ``x^s * y0`` over the domain for the guess ``y0 = A - sum W_k D_k``."""
    xr = _grid(lo, hi, f)
    x = xr / 2.0**f
    a_ring = round(A * 2.0**f)
    y_hi = (a_ring - _model_weighted(_model_chain(xr, hi, n, f, False), W, f)) / 2.0**f
    y_lo = (a_ring - _model_weighted(_model_chain(xr, hi, n, f, True), W, f) - 1) / 2.0**f
    return float((x**s * y_lo).min()), float((x**s * y_hi).max())


def _newton_steps(e_lo: float, e_hi: float, step) -> int | None:
    """Iterations of ``step`` (the error map) until the error is below TARGET."""
    a, b = e_lo, e_hi
    for m in range(64):
        if max(abs(a), abs(b)) <= TARGET:
            return m
        if a <= -1.9 or b >= 1.0:
            return None
        # the maps used are increasing in |e| on each side of 0: bound the image
        ends = [step(a), step(b)] + ([step(0.0)] if a < 0 < b else [])
        a, b = min(ends), max(ends)
    return None


def _check_domain(domain):
    lo, hi = float(domain[0]), float(domain[1])
    if not (0 < lo < hi) or hi >= 2.0**20:
        raise ProtocolError(f"domain must satisfy 0 < lo < hi < 2^20, got {domain}")
    if hi / lo > 2.0**24:
        raise ProtocolError(f"domain {domain} spans more than 2^24: not supported")
    return lo, hi


@functools.lru_cache(maxsize=64)
def _plan_power(kind: str, lo: float, hi: float, f: int, iterations) -> Plan:
    s = 1.0 if kind == "reciprocal" else 0.5
    margin = 0.02
    n_max = math.ceil(math.log2(hi / lo)) + 3
    best = None
    for n in range(0, n_max + 1):
        try:
            cand = _power_candidate(kind, lo, hi, f, iterations, n, s, margin)
        except OverflowError:  # a chain this long overflows the model: skip it
            continue
        if cand is not None and (best is None or cand[0] < best[0]):
            best = cand
    if best is None:
        raise ProtocolError(f"no {kind} plan for domain ({lo}, {hi}) with {f} fractional bits")
    return best[1]


def _power_candidate(kind, lo, hi, f, iterations, n, s, margin):
    """``((short, rounds), Plan)`` for a chain of ``n`` squarings, or None if it cannot work."""
    A, w = _power_weights(n, hi, s)
    g_lo, g_hi = _power_guess_range(lo, hi, n, s, A, w, f)
    if g_lo <= 0:
        return None
    if kind == "reciprocal":
        gamma = min(2.0 / (g_lo + g_hi), 1.6 / g_hi)  # centre x*y0 on 1, keep it <= 1.6
    else:
        r_lo, r_hi = g_lo**2, g_hi**2
        gamma = math.sqrt(_best_isqrt_scale(r_lo, r_hi))
    W = [gamma * wk for wk in w]
    g_lo, g_hi = _power_guess_range(lo, hi, n, s, gamma * A, W, f)
    g_lo, g_hi = g_lo * (1 - margin), g_hi * (1 + margin)
    if kind == "reciprocal":
        m = _newton_steps(1 - g_hi, 1 - g_lo, lambda e: e * e)
        e_range = (g_lo, g_hi)
    else:
        r_lo, r_hi = g_lo**2, g_hi**2
        m = _newton_steps(1 - r_hi, 1 - r_lo, _isqrt_err)
        e_range = (r_lo, r_hi)
    if m is None or e_range[0] < 0.01 or e_range[1] > 1.9:
        return None
    m = max(m, 1)
    if iterations is not None:
        # a caller's count: prefer the cheapest chain it suffices for, else the best guess
        short = max(m - int(iterations), 0)
        m = max(int(iterations), 1)
    else:
        short = 0
    cost = _power_cost(kind, n, m)
    plan = Plan(
        kind, (lo, hi), n, hi, gamma * A, tuple(W), m, cost["rounds"], cost["products"], cost["truncations"], e_range
    )
    return (short, plan.rounds), plan


def _isqrt_err(e: float) -> float:
    """Error map of the inverse-square-root Newton step, for ``e = 1 - x y^2``."""
    return (3 * e * e + e**3) / 4


def _best_isqrt_scale(r_lo: float, r_hi: float) -> float:
    """The factor ``c`` for ``y0 -> sqrt(c) y0`` that needs the fewest Newton steps."""
    best = None
    for i in range(1, 400):
        c = i / 100.0 / r_hi
        if c * r_hi >= 1.7:
            break
        m = _newton_steps(1 - c * r_hi, 1 - c * r_lo, _isqrt_err)
        if m is None:
            continue
        worst = max(abs(1 - c * r_hi), abs(1 - c * r_lo))
        key = (m, worst)
        if best is None or key < best[0]:
            best = (key, c)
    return best[1] if best else 1.0 / r_hi


def _power_cost(kind: str, n: int, m: int) -> dict:
    """Rounds / product elements / truncation elements of reciprocal or inv_sqrt."""
    rounds = _chain_rounds(n)
    prods = n  # the chain's squarings
    truncs = 2  # chain start and the weighted sum
    if kind == "reciprocal":
        # d0 = x y0; m-2 joint steps (y, d) *= 2 - d; y *= 2 - d; final Newton (2 products)
        if m >= 2:
            rounds += 2 + 2 * (m - 1)
            prods += 1 + 2 * (m - 2) + 1
        rounds += 4
        prods += 2
    else:
        # g0 = x y0; m-1 steps: d = g y, then (y, g) *= (3 - d)/2 (only y in the last);
        # final Newton: g = x y, d = g y, y *= (3 - d)/2
        if m >= 2:
            rounds += 2 + 4 * (m - 1)
            prods += 1 + (m - 1) + 2 * (m - 2) + 1
        rounds += 6
        prods += 3
    return {"rounds": rounds, "products": prods, "truncations": truncs}


_AGREED = set()


def plan_digest(plan: Plan) -> str:
    """SHA-256 of a plan's every field (floats by their exact shortest repr)."""
    return hashlib.sha256(repr(plan).encode()).hexdigest()


def agreed(plan: Plan, rt) -> Plan:
    """``plan``, once the three parties have checked that they hold the same one (collective:
    call on every rank).  The first use of a plan in a process costs one round of a 64-hex-digit
    digest per party, not counted in the communicator's statistics (set-up, like the key
    exchange); later uses are free.  ProtocolError on every rank on a disagreement."""
    digest = plan_digest(plan)
    key = (id(rt), digest)
    if key in _AGREED:
        return plan
    with rt.comm.uncounted():
        rt.comm.agree(
            digest, f"the {plan.kind} plan for domain {plan.domain} (different floating point on the parties?)"
        )
    _AGREED.add(key)
    return plan


def plan_reciprocal(domain=DEFAULT_DOMAIN, iterations=None, rt=None) -> Plan:
    """The plan :func:`reciprocal` follows for ``domain`` (public; see :class:`Plan`)."""
    f = (rt or _rt()).frac_bits
    lo, hi = _check_domain(domain)
    return _plan_power("reciprocal", lo, hi, f, iterations)


def plan_inv_sqrt(domain=DEFAULT_DOMAIN, iterations=None, rt=None) -> Plan:
    """The plan :func:`inv_sqrt` follows for ``domain``."""
    f = (rt or _rt()).frac_bits
    lo, hi = _check_domain(domain)
    return _plan_power("inv_sqrt", lo, hi, f, iterations)


def _rt():
    from ..runtime import get

    return get()


def _guess(x: ArithmeticShare, plan: Plan, sign: int) -> ArithmeticShare:
    """``offset + sign * sum_k weights[k] D_k`` at f bits: ``2 n + 2`` rounds."""
    f = x.rt.frac_bits
    chain = _chain(x, plan.H, plan.chain)
    acc = _weighted_sum(chain, plan.weights, f)
    return (acc if sign > 0 else -acc) + plan.offset


# ---------------------------------------------------------------------------------------
# reciprocal, inv_sqrt, sqrt
# ---------------------------------------------------------------------------------------


def reciprocal(x: ArithmeticShare, iterations=None, domain=DEFAULT_DOMAIN, signed: bool = False) -> ArithmeticShare:
    """``1 / x`` for ``x`` in ``domain`` (default ``[1e-2, 1e3]``), positive; with
    ``signed=True`` for ``|x|`` in the domain, either sign.

    Initial guess from the Laplace-quadrature chain (module docstring), then Newton's
    iteration ``y <- y (2 - x y)`` -- ``iterations`` of them (default: the planned number)
    -- evaluated in Goldschmidt form: with ``d = x y``, ``r = 2 - d``, both ``y <- y r``
    and ``d <- d r`` in one product round; a final plain Newton step removes the drift.

    Accuracy on the domain: ``|err| <= 1e-3 / x + 2^-15`` (measured: relative ~2e-5
    where ``1/x`` is large, within 1-2 units in the last place ``2^-16`` where it is
    small: ``1/1000`` is only 65 units).  Outside the domain the result degrades and for
    ``x`` beyond about ``2 * hi`` or negative it is garbage (no error is raised: the value
    is secret).

    Cost: ``plan_reciprocal(domain).rounds`` rounds -- 48 for the default domain, 20 for
    ``(0.99, 10)`` (softmax over 10 classes); ``products`` / ``truncations`` elements per
    element as in the plan.  ``signed=True`` adds 12 rounds: the sign bit (MSB, 8 rounds)
    and two multiplications by it (``|x|`` before, the sign after; 2 rounds each).
    """
    plan = agreed(plan_reciprocal(domain, iterations, x.rt), x.rt)
    x = _to_scale(x, x.rt.frac_bits)
    if signed:
        from .convert import msb, mul_bit

        negative = msb(x)
        y = reciprocal(x - mul_bit(x, negative) * 2, iterations=iterations, domain=domain)
        return y - mul_bit(y, negative) * 2
    y = _guess(x, plan, -1)
    m = plan.iterations
    if m >= 2:
        d = x * y
        for _ in range(m - 2):
            r = 2 - d
            yd = stack([y, d]) * r
            y, d = yd[0], yd[1]
        y = y * (2 - d)
    return y * (2 - x * y)


def inv_sqrt(x: ArithmeticShare, iterations=None, domain=DEFAULT_DOMAIN) -> ArithmeticShare:
    """``1 / sqrt(x)`` for ``x`` in ``domain`` (default ``[1e-2, 1e3]``).

    Chain guess, then Newton ``y <- y (3 - x y^2) / 2`` in Goldschmidt form (``g = x y``;
    ``d = g y``; ``y, g <- y r, g r`` with ``r = (3 - d)/2``: 4 rounds a step instead of 6)
    and one final plain Newton step (``(x y) y`` in this order keeps precision when ``y``
    is small).

    Accuracy on the domain: ``|err| <= 1e-3 * y + 2^-15`` (measured: ~1e-4 relative at
    worst, a few units in the last place).  ``x = 0`` gives a bounded garbage value
    (so ``sqrt(0) = 0``); outside the domain the result degrades.

    Cost: ``plan_inv_sqrt(domain).rounds`` rounds (54 for the default domain, 26 for
    ``(0.99, 10)``).
    """
    plan = agreed(plan_inv_sqrt(domain, iterations, x.rt), x.rt)
    f = x.rt.frac_bits
    x = _to_scale(x, f)
    y = _guess(x, plan, -1)
    m = plan.iterations
    if m >= 2:
        g = x * y
        for i in range(m - 1):
            d = g * y
            r3 = 3 - d
            if i < m - 2:
                yg = _mul_trunc(stack([y, g]), r3, f + 1, f)  # (y, g) * (3 - d) / 2
                y, g = yg[0], yg[1]
            else:
                y = _mul_trunc(y, r3, f + 1, f)
    d = (x * y) * y
    return _mul_trunc(y, 3 - d, f + 1, f)


def sqrt(x: ArithmeticShare, iterations=None, domain=DEFAULT_DOMAIN) -> ArithmeticShare:
    """``sqrt(x) = x * inv_sqrt(x)``: the rounds of :func:`inv_sqrt` + 2.  ``sqrt(0) = 0``."""
    f = x.rt.frac_bits
    x = _to_scale(x, f)
    return x * inv_sqrt(x, iterations=iterations, domain=domain)


# ---------------------------------------------------------------------------------------
# log
# ---------------------------------------------------------------------------------------


def _log_weights(n: int, H: float):
    """Frullani quadrature on the chain: guess = C + sum_k W_k D_k (before the shift)."""
    b = [2.0**k / H for k in range(n + 1)]
    C = LN2 * (sum(math.exp(-bk) for bk in b) - (n + 1) - b[0])
    W = [2 * LN2] + [LN2] * n
    return C, W


def _series_cost(order: int) -> tuple:
    """Rounds, fused products of log(1 + eps) to ``order`` terms (power tree + one truncation)."""
    if order <= 1:
        return 0, 0
    return 2 * math.ceil(math.log2(order)) + 2, order - 1


@functools.lru_cache(maxsize=64)
def _plan_log(lo: float, hi: float, f: int, iterations: int, order, exp_iterations) -> Plan:
    xr = _grid(lo, hi, f)
    lx = _np.log(xr / 2.0**f)
    tol = 1e-4
    best = None
    for n in range(0, math.ceil(math.log2(hi / lo)) + 4):
        C, W = _log_weights(n, hi)
        c_ring = round(C * 2.0**f)
        g_lo = (c_ring + _model_weighted(_model_chain(xr, hi, n, f, False), W, f)) / 2.0**f - lx
        g_hi = (c_ring + _model_weighted(_model_chain(xr, hi, n, f, True), W, f) + 1) / 2.0**f - lx
        d_lo, d_hi = float(g_lo.min()) - 0.01, float(g_hi.max()) + 0.01
        if d_lo < -3 or d_hi > 3:
            continue
        # shift the guess so that eps = x e^{-y0} - 1 ranges over [-e, e]
        beta = math.log((math.exp(-d_lo) + math.exp(-d_hi)) / 2)
        e = math.exp(-(d_lo + beta)) - 1
        if e >= 0.75:
            continue
        K = 1
        while e ** (K + 1) / (K + 1) / (1 - e) > tol and K < 40:
            K += 1
        if order is not None:
            K = int(order)
        y_lo, y_hi = math.log(lo) + d_lo + beta, math.log(hi) + d_hi + beta
        ymax = max(abs(y_lo), abs(y_hi))
        ne = 1
        while ymax**3 / (6 * 4.0**ne) > tol and ne < 20:
            ne += 1
        if exp_iterations is not None:
            ne = int(exp_iterations)
        if -y_hi < -(2.0**ne):
            continue
        emax = math.exp(-y_lo) * 1.1  # largest e^{-y0}
        extra = max(0, min(8, math.floor(15 - math.log2(max(emax, 1.0)))))
        s_rounds, s_prods = _series_cost(K)
        rounds = _chain_rounds(n) + iterations * (2 * (ne + 1) + 2 + s_rounds)
        prods = n + iterations * ((ne + 1) + 1 + s_prods)
        truncs = 2 + iterations * (1 if K > 1 else 0)
        cand = Plan(
            "log",
            (lo, hi),
            n,
            hi,
            C + beta,
            tuple(W),
            iterations,
            rounds,
            prods,
            truncs,
            (d_lo + beta, d_hi + beta),
            K,
            ne,
            extra,
        )
        if best is None or cand.rounds < best.rounds:
            best = cand
    if best is None:
        raise ProtocolError(f"no log plan for domain ({lo}, {hi})")
    return best


def plan_log(domain=DEFAULT_DOMAIN, iterations: int = 1, order=None, exp_iterations=None, rt=None) -> Plan:
    """The plan :func:`log` follows for ``domain``."""
    f = (rt or _rt()).frac_bits
    lo, hi = _check_domain(domain)
    if int(iterations) < 1:
        raise ProtocolError("log needs iterations >= 1")
    return _plan_log(lo, hi, f, int(iterations), order, exp_iterations)


def _log1p_series(eps: ArithmeticShare, order: int) -> ArithmeticShare:
    """``sum_{j<=order} (-1)^(j+1) eps^j / j``: powers by a product tree (``ceil(log2 order)``
    product rounds), then one truncation of the public combination."""
    if order <= 1:
        return eps
    f = eps.rt.frac_bits
    powers = [eps]
    while len(powers) < order:
        m = len(powers)
        top = powers[-1] if (m & (m - 1)) == 0 else powers[(1 << (m.bit_length() - 1)) - 1]
        take = powers[: min(m, order - m)]
        new = stack(take) * top
        powers.extend(new[i] for i in range(len(take)))
    coef = [(-1.0) ** (j + 1) / j for j in range(1, order + 1)]
    return _weighted_sum(powers, coef, f)


def log(
    x: ArithmeticShare, iterations: int = 1, domain=DEFAULT_DOMAIN, order=None, exp_iterations=None
) -> ArithmeticShare:
    """Natural logarithm for ``x`` in ``domain`` (default ``[1e-2, 1e3]``).

    A Frullani-quadrature guess ``y0`` from the chain (module docstring), then
    ``iterations`` Householder refinements ``y <- y + log(1 + eps)``,
    ``eps = x e^{-y} - 1``, with ``log(1 + eps)`` as its series to ``order`` terms
    (default: planned from the guess's error bound).  ``e^{-y}`` is computed with
    ``exp_iterations`` squarings (default: planned) and 8 extra fractional bits where
    it is small, so ``x e^{-y}`` keeps its precision for large ``x``.

    Accuracy: *absolute* error ``<= 1e-3`` on the domain (measured below ~5e-4; the
    limit is the precision of ``e^{-y}`` at the ends of the domain).

    Cost: ``plan_log(domain).rounds`` rounds (66 for the default domain, 34 for
    ``(0.99, 10)``).
    """
    plan = agreed(plan_log(domain, iterations, order, exp_iterations, x.rt), x.rt)
    f = x.rt.frac_bits
    x = _to_scale(x, f)
    y = _guess(x, plan, +1)
    for _ in range(plan.iterations):
        e = _exp(-y, plan.exp_iterations, plan.exp_extra)
        eps = x * e - 1
        y = y + _log1p_series(eps, plan.order)
    return y


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------


def _keepdims_shape(shape, axis):
    axis = axis % len(shape)
    return tuple(1 if i == axis else s for i, s in enumerate(shape))


def _shifted(x: ArithmeticShare, axis: int) -> ArithmeticShare:
    """``x - max(x, axis)`` (the max from the comparison protocols, kept as a share)."""
    m = x.max(axis=axis)
    return x - m.reshape(*_keepdims_shape(x.shape, axis))


def _sum_domain(n: int):
    """Domain of ``sum exp(z)`` over ``n`` entries whose largest ``z`` is 0."""
    return (0.99, max(1.5, 1.01 * n))


SOFTMAX_DROP_BITS = 0


def softmax_shifted(
    z: ArithmeticShare, axis: int = -1, exp_iterations: int = 8, drop_bits: int = SOFTMAX_DROP_BITS
) -> ArithmeticShare:
    """Softmax of ``z`` whose maximum along ``axis`` is exactly 0 (e.g. ``x - max x``).

    ``e = exp(z)``, ``s = sum e`` (in ``[1, n]``), result ``e * reciprocal(s)``.

    Cost: exp (``2 (exp_iterations + 1)`` rounds, +2 with ``drop_bits``) + reciprocal on
    ``[0.99, 1.01 n]`` (20 rounds for ``n = 10``) + 2: 40 rounds for 10 classes.  Accuracy: absolute error
    below 1e-3 (measured ~1e-4) for ``z`` in ``[-2^exp_iterations, 0]``.
    """
    axis = axis % z.ndim
    e = _exp(z, int(exp_iterations), drop_bits=int(drop_bits))
    s = e.sum(axis=axis, keepdims=True)
    r = reciprocal(s, domain=_sum_domain(z.shape[axis]))
    return e * r


def log_softmax_shifted(
    z: ArithmeticShare, axis: int = -1, exp_iterations: int = 8, drop_bits: int = SOFTMAX_DROP_BITS
) -> ArithmeticShare:
    """Log-softmax of ``z`` whose maximum along ``axis`` is 0: ``z - log(sum exp z)``.

    Cost: exp (as in :func:`softmax_shifted`) + log on ``[0.99, 1.01 n]`` (see
    :func:`plan_log`: 34 rounds for 10 classes); absolute error below 1e-3."""
    axis = axis % z.ndim
    e = _exp(z, int(exp_iterations), drop_bits=int(drop_bits))
    s = e.sum(axis=axis, keepdims=True)
    return z - log(s, domain=_sum_domain(z.shape[axis]))


def softmax(
    x: ArithmeticShare, axis: int = -1, exp_iterations: int = 8, drop_bits: int = SOFTMAX_DROP_BITS
) -> ArithmeticShare:
    """Softmax along ``axis``: ``exp(x - max) / sum``, max-subtracted so that every exp
    argument is ``<= 0`` and the sum lies in ``[1, n]``.

    Cost: the max (comparison protocols: ``ceil(log2 n)`` levels) + :func:`softmax_shifted`.
    Logit differences must stay within ``2^exp_iterations`` (256); accuracy: absolute error
    below 1e-3.
    """
    axis = axis % x.ndim
    return softmax_shifted(_shifted(x, axis), axis, exp_iterations, drop_bits)


def log_softmax(
    x: ArithmeticShare, axis: int = -1, exp_iterations: int = 8, drop_bits: int = SOFTMAX_DROP_BITS
) -> ArithmeticShare:
    """Log-softmax along ``axis``: ``(x - max) - log(sum exp(x - max))``.

    Cost: the max + :func:`log_softmax_shifted`; absolute error below 1e-3."""
    axis = axis % x.ndim
    return log_softmax_shifted(_shifted(x, axis), axis, exp_iterations, drop_bits)
