"""Exact rounding: a truncation whose result depends on the value alone.

The MSB-corrected probabilistic truncation (:mod:`mpcgpu.sharing.truncation`)
returns ``floor(x / 2^d) + carry`` with ``carry = [c mod 2^d < r_lo]``: the
dealer knows ``r_lo`` and the two openers know ``c``, so the last bit of a
*revealed* result is correlated with what those parties saw (they could tell
the rounding direction if they also knew ``x``).  For values that are revealed
as real numbers, :func:`round_exact` computes that carry inside the protocol
and subtracts it, after adding ``2^(d-1)``:

    y = floor((x + 2^(d-1)) / 2^d)        (rounding to nearest, ties up)

a deterministic function of ``x``: what a party saw (``c`` is uniform, every
other message masked) says nothing about the rounding.

Protocol: the MSB-corrected truncation with the dealer also dealing a
replicated sharing of ``r_lo`` (+16 bytes/element from the dealer); the
openers put the public ``c_lo = c mod 2^d`` into the component they both hold;
the carry is the sign of ``(c_lo - r_lo) 2^(63-d)``
(:func:`~mpcgpu.protocols.convert.msb`, 8 rounds), injected into the ring
(:func:`~mpcgpu.protocols.convert.b2a`, 2 rounds) and subtracted.

Cost: 12 rounds; bytes per element: the truncation's 48 (+16 from the
dealer), the MSB's ``8 (n + tree_words(n))`` per party and the bit
injection's 16 (party 0) / 8 (parties 1, 2).  Use it where a value leaves the
computation, not inside it.  Precondition as for the truncation:
``|x| < 2^62`` (ring units).
"""

from __future__ import annotations

import numpy  # host-side shift amounts only

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, concatenate
from ..sharing.replicated import with_public
from ..sharing.truncation import CHUNK, msb_corrected
from .convert import b2a, msb


def round_exact(x: ArithmeticShare, bits: int | None = None, new_scale: int | None = None) -> ArithmeticShare:
    """``x / 2^bits`` rounded to nearest, exactly (default: ``bits = x.scale - rt.frac_bits``,
    read at ``rt.frac_bits``).  12 rounds (per chunk of :data:`~mpcgpu.sharing.truncation.CHUNK`
    elements); see the module docstring."""
    if x.size > CHUNK:
        flat = x.reshape(-1)
        pieces = [round_exact(flat[lo : lo + CHUNK], bits, new_scale) for lo in range(0, x.size, CHUNK)]
        return concatenate(pieces).reshape(*x.shape)
    rt = x.rt
    if bits is None:
        bits = x.scale - rt.frac_bits
    bits = int(bits)
    new_scale = x.scale - bits if new_scale is None else new_scale
    if bits <= 0:
        return x.relabel(new_scale)
    if bits > 62:
        raise ProtocolError(f"round_exact needs bits <= 62, got {bits}")
    first, second = exact_floor(rt, x.shape, bits, rss=(x.first, x.second), offset=1 << (bits - 1))
    return ArithmeticShare(first, second, new_scale, rt)


def exact_floor(rt, shape, bits, *, rss=None, summand=None, offset: int = 0):
    """This party's pair of ``floor((x + offset) / 2^bits)``, exactly: the MSB-corrected
    truncation with the carry computed and subtracted (module docstring; 12 rounds, at most
    :data:`~mpcgpu.sharing.truncation.CHUNK` elements).  Input as for
    :func:`~mpcgpu.sharing.truncation.msb_corrected`: a replicated pair ``rss`` or this
    party's ``summand`` of a three-out-of-three sum; ``bits`` an int or an array of shifts
    broadcast to ``shape``; ``offset`` a ring constant."""
    xp = rt.xp
    (first, second), (opener_component, c_lo, r_lo) = msb_corrected(
        rt, shape, bits, rss=rss, summand=summand, offset=offset, keep=True
    )
    if numpy.ndim(bits):
        up = xp.asarray((63 - numpy.broadcast_to(numpy.asarray(bits), tuple(shape))).astype(numpy.uint64))
    else:
        up = xp.uint64(63 - int(bits))
    v_first, v_second = -(r_lo[0] << up), -(r_lo[1] << up)
    if c_lo is not None:
        c_lo = c_lo << up
    v_first, v_second = with_public(
        v_first, v_second, c_lo, rt.rank, xp, lambda a, b: a + b, component=opener_component
    )
    carry = b2a(msb(ArithmeticShare(v_first, v_second, 0, rt)))
    return (first - carry.first).reshape(shape), (second - carry.second).reshape(shape)


__all__ = ["round_exact", "exact_floor"]
