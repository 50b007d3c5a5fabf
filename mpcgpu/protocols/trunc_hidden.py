"""Truncations whose rounding no single party can predict: ``"hidden"`` and ``"exact"``.

Why the default leaks (docs/design.md, "What a truncation leaks")
---------------------------------------------------------------------
The default truncation (:mod:`mpcgpu.sharing.truncation`, ``"prob"``) opens
``c = x + r`` to two parties and returns ``floor(x / 2^d) + [c_lo < x_lo]``
(``_lo``: the low ``d`` bits).  The carry is decided by ``c_lo``, which both
openers see, and equivalently by ``r_lo = c_lo - x_lo mod 2^d``, which the
dealer knows.  Whoever also sees the result (a revealed value, or its effect on
one) learns on which side of a threshold it knows ``x_lo`` lies.  A mask that no
single party knows (truncation *pairs* ``(r, r >> d)`` made by a binary circuit)
does not help: any protocol that opens ``x + r`` hands the openers ``c_lo``, and
the carry is ``[c_lo < x_lo]`` whatever ``r`` is.  The threshold must be a
secret of all three parties together, never opened.

``"hidden"``: stochastic rounding with a jointly secret threshold
----------------------------------------------------------------------
``u = u_0 + u_1 + u_2`` with every component uniform in ``[0, 2^d)`` drawn from
the key of the two parties that hold it (free): each party misses one
component, so ``w = u mod 2^d`` is uniform and independent of its view.  Then,
with :func:`~mpcgpu.protocols.rounding.exact_floor` on ``x + u`` and on ``u``
in the same call,

    y = floor((x + u) / 2^d) - floor(u / 2^d) = floor(x / 2^d) + [x_lo + w >= 2^d]

exactly: unbiased stochastic rounding (the carry is 1 with probability
``x_lo / 2^d``, error below one unit in the last place, as the default) whose
threshold ``w`` no party knows; the exact floor's own dealer and openers learn
nothing about ``x + u`` (its carry is computed inside and subtracted).  What a
party can infer from a revealed result is what the ideal stochastic rounding
reveals: a carry that depends on ``x`` only through its probability.

Cost per element (three parties together): :func:`exact_floor` on two elements
-- 12 rounds; the truncation's 48 bytes (64 fused with a product) + 16 from the
dealer, the MSB's ``8 (n + W(n))`` per party (about 71 bytes per element for
large inputs) and the bit injection's 32, each for the two elements: about
``2 x 167 = 334`` bytes on a replicated input against the default's 48, and
12 rounds against 2 (measured in docs/design.md).  Precondition as for the
default: ``|x| < 2^62`` ring units.

``"exact"``: round to nearest
-----------------------------
:func:`exact_floor` of ``x + 2^(d-1)``: a deterministic function of ``x``
(12 rounds, about 167 bytes per element).  :class:`~mpcgpu.nn.private.PrivateModel`
runs the layers after the output's last product in this mode when the output is
to be revealed (``forward(exact=True)``), so that the revealed value is
exactly rounded whatever the head.

Both are selected like the default (``truncate(x, d, mode="hidden")``, a
product's ``trunc=`` argument, ``MPCGPU_TRUNCATION=hidden`` for every default
truncation, or :class:`~mpcgpu.sharing.truncation.forced`); the kernels of
:mod:`mpcgpu.sharing.truncation` call :func:`hidden` / :func:`nearest` with the
input as a replicated pair ``rss`` or a product's summand.
"""

from __future__ import annotations

import numpy  # host-side shift amounts only

from ..errors import ProtocolError
from ..sharing.replicated import with_public
from ..sharing.truncation import CHUNK
from .rounding import exact_floor


def _amounts(bits, shape):
    """``bits`` as a host int, or an int64 array broadcast to ``shape``; checks ``1..62``."""
    arr = numpy.asarray(bits)
    if arr.size == 0 or int(arr.min()) < 1 or int(arr.max()) > 62:
        raise ProtocolError(f"truncation needs 1 <= bits <= 62, got {bits}")
    if arr.ndim == 0:
        return int(arr)
    return numpy.ascontiguousarray(numpy.broadcast_to(arr.astype(numpy.int64), tuple(shape)))


def _flat_input(rss, summand):
    if (rss is None) == (summand is None):
        raise ProtocolError("a truncation needs exactly one of rss= and summand=")
    return tuple(a.reshape(-1) for a in rss) if rss is not None else (summand.reshape(-1),)


def _chunks(rt, shape, bits, rss, summand, one_chunk, per_element: int):
    """Run ``one_chunk(parts, bits)`` on pieces of at most ``CHUNK // per_element`` elements;
    returns this party's pair of the whole result, shaped ``shape``."""
    xp = rt.xp
    shape = tuple(shape)
    n = int(numpy.prod(shape, dtype=numpy.int64)) if shape else 1
    parts = _flat_input(rss, summand)
    flat_bits = bits.reshape(-1) if numpy.ndim(bits) else bits
    step = max(1, CHUNK // per_element)
    if n <= step:
        first, second = one_chunk(parts, flat_bits)
        return first.reshape(shape), second.reshape(shape)
    first, second = xp.empty(n, dtype=xp.uint64), xp.empty(n, dtype=xp.uint64)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        piece_bits = flat_bits[lo:hi] if numpy.ndim(flat_bits) else flat_bits
        first[lo:hi], second[lo:hi] = one_chunk(tuple(a[lo:hi] for a in parts), piece_bits)
    return first.reshape(shape), second.reshape(shape)


def _plus_public(rt, parts, const):
    """The input ``parts`` (a flat replicated pair or a summand) plus a public ring constant."""
    xp = rt.xp
    if len(parts) == 2:
        return with_public(parts[0], parts[1], const, rt.rank, xp, lambda a, b: a + b)
    return (parts[0] + const,) if rt.rank == 0 else parts


def _low_mask(xp, d):
    one = xp.uint64(1)
    if numpy.ndim(d):
        return (one << xp.asarray(d.astype(numpy.uint64))) - one
    return xp.uint64((1 << d) - 1)


def hidden(rt, shape, bits, *, rss=None, summand=None, offset=0):
    """``floor((x + offset) / 2^bits) + carry`` with ``P(carry = 1) = ((x + offset) mod 2^bits)
    / 2^bits`` decided by a threshold no party knows (module docstring): this party's pair.
    12 rounds per :data:`~mpcgpu.sharing.truncation.CHUNK` / 2 elements; bytes for the three
    parties together, ``m = 2n`` exact floors: ``96 m + 24 (m + tree_words(m))`` on a
    replicated input (about 334 per element), ``112 m + 24 (m + tree_words(m))`` fused with a
    product.  Precondition: ``-2^62 <= x + offset < 2^62 - 3 2^bits``."""
    d = _amounts(bits, shape)

    def one_chunk(parts, d):
        xp, prg = rt.xp, rt.prg
        n = parts[0].size
        mask = _low_mask(xp, d)
        u_first = prg.with_prev((n,)) & mask  # component i (parties i, i-1)
        u_second = prg.with_next((n,)) & mask  # component i + 1 (parties i, i+1)
        if offset:
            parts = _plus_public(rt, parts, xp.uint64(int(offset) % (1 << 64)))
        dd = numpy.concatenate([d, d]) if numpy.ndim(d) else d
        if len(parts) == 2:  # replicated: (x + u, u)
            pair = (xp.concatenate([parts[0] + u_first, u_first]), xp.concatenate([parts[1] + u_second, u_second]))
            first, second = exact_floor(rt, (2 * n,), dd, rss=pair)
        else:  # three-out-of-three: every party adds its first component of u
            first, second = exact_floor(rt, (2 * n,), dd, summand=xp.concatenate([parts[0] + u_first, u_first]))
        return first[:n] - first[n:], second[:n] - second[n:]

    return _chunks(rt, shape, d, rss, summand, one_chunk, 2)


def nearest(rt, shape, bits, *, rss=None, summand=None, offset=0):
    """``floor((x + offset + 2^(bits-1)) / 2^bits)``: round to nearest (ties up), exactly; this
    party's pair.  12 rounds per :data:`~mpcgpu.sharing.truncation.CHUNK` elements;
    ``96 n + 24 (n + tree_words(n))`` bytes for the three parties together on a replicated
    input (about 167 per element), ``112 n + ...`` fused with a product."""
    d = _amounts(bits, shape)

    def one_chunk(parts, d):
        xp = rt.xp
        half = (xp.uint64(1) << (xp.asarray(d.astype(numpy.uint64)) - xp.uint64(1))) if numpy.ndim(d) else None
        const = int(offset) + (0 if numpy.ndim(d) else 1 << (d - 1))
        if numpy.ndim(d):
            parts = _plus_public(rt, parts, half + xp.uint64(int(offset) % (1 << 64)))
        elif const:
            parts = _plus_public(rt, parts, xp.uint64(const % (1 << 64)))
        n = parts[0].size
        if len(parts) == 2:
            return exact_floor(rt, (n,), d, rss=parts)
        return exact_floor(rt, (n,), d, summand=parts[0])

    return _chunks(rt, shape, d, rss, summand, one_chunk, 1)


PROTOCOLS = {"hidden": hidden, "exact": nearest}

__all__ = ["hidden", "nearest", "PROTOCOLS"]
