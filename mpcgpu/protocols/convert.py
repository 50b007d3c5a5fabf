"""Conversions between arithmetic and binary sharing: A2B, MSB, bit injection (B2A).

Notation: party ``i`` holds ``(x_i, x_{i+1})`` of ``x = x0 + x1 + x2 (mod 2^64)``.
Bytes below are *per party* (each party sends the same amount unless stated),
``n`` is the number of elements; sum over the three parties for the total.

Adder inputs (rounds 1-2 of A2B and MSB)
    The brief's carry-save layer (3 addends -> 2 with ``maj``, 1 AND round) is
    replaced by a cheaper split with the same depth: party 0 knows
    ``a = x0 + x1`` and parties 1, 2 both know ``b = x2``, so
    ``x = a + b`` is a sum of *two* addends from the start.

    * round 1: party 0 inputs ``a`` as the binary sharing
      ``(a ^ rho, rho, 0)`` (``rho`` from the key of parties 0, 1) by sending
      ``a ^ rho`` to party 2: 8 bytes/element from party 0 only.
      ``b = x2`` is locally the binary sharing ``(0, 0, x2)``.
    * round 2: generate bits ``g = a & b``.  Only parties 1 and 2 have a
      cross term (``rho & x2`` and ``(a ^ rho) & x2``): a 2-out-of-2
      sharing.  It is made replicated with ``g1 = mu`` (key of parties 0, 1),
      ``g0 = nu`` (key of parties 0, 2) and ``g2 = (u1 ^ mu) ^ (u2 ^ nu)``,
      party 1 sending ``u1 ^ mu`` to party 2 and party 2 ``u2 ^ nu`` to party
      1: 8 bytes/element from parties 1 and 2 only.
    Propagate bits ``p = a ^ b`` are local.  Every party thus sends 8
    bytes/element in rounds 1-2 (24 in all, against 48 for carry-save + a
    generic generate round).

A2B (:func:`a2b`): 8 rounds, 96 bytes/element per party (288 in all)
    adder inputs (2 rounds, 8 bytes) + Kogge-Stone over 64 bits: 6 levels at
    distances 1, 2, ..., 32, each one exchange of ``G ^= P & (G << d)`` and
    ``P &= P << d`` (2 words; the last level only ``G``: 1 word):
    ``8 + 8 * 11 = 96`` bytes/element.

MSB (:func:`msb`): 8 rounds, ``8 * (n + W(n))`` bytes per party
    Only the carry into bit 63 is needed: the group generate of bits 0..62.
    Setting ``(G63, P63) = (0, 1)`` makes it the group generate of all 64
    positions, computed by a *pruned* binary tree of 6 levels (pairs of
    positions, then pairs of pairs, ...).  Level 1 works on the 64 positions
    of one element (1 AND word/element: ``P_hi & G_lo`` and ``P_hi & P_lo``
    interleaved) and leaves 32 ``(G, P)`` units of 2 bits in one word.  Each
    later level halves the live units, so two elements' words are *folded*
    into one before the AND: the AND payload halves level by level:
    ``W(n) = n + m2 + m3 + m4 + m5 + m6`` words with ``m2 = ceil(n/2)`` and
    ``m(k+1) = ceil(m(k)/2)`` (about ``1.97 n``).  Per element for large n:
    ``8 * 2.97 = 23.75`` bytes per party, 71.25 in all.
    ``MSB = p63 ^ carry63``; the result is a bit share (components 0/1).

Bit injection (:func:`b2a`): 2 rounds; party 0: 16 bytes/bit, parties 1, 2: 8
    ``b = b0 ^ b1 ^ b2``.  Party 0 knows ``t = b0 ^ b1`` and shares it as the
    arithmetic sharing ``(t - rho, rho, 0)`` (round 1, sending ``t - rho`` to
    party 2); ``b2`` is locally the arithmetic sharing ``(0, 0, b2)``.  Round
    2: ``b = t + b2 - 2 t b2`` (one resharing).

Multiply by a shared bit (:func:`mul_bit`): 2 rounds
    ``x * b = x t + y - 2 t y`` with ``y = x * b2``.  Round 1: party 0 shares
    ``t`` as above (8 bytes per *bit*, party 0) while ``y`` -- a 2-out-of-2
    sharing between party 1 (``(x1 + x2) b2``) and party 2 (``x0 b2``) -- is
    made replicated like ``g`` above (8 bytes per element of ``x``, parties 1
    and 2).  Round 2: one resharing of ``x t + y - 2 t y`` (8 bytes per element
    of ``x``, every party).  Per party: party 0 ``8 nb + 8 nx``, parties 1
    and 2 ``16 nx``; with ``with_bit=True`` the arithmetic bit rides along in
    round 2 (``+ 8 nb`` each).

Local steps: the adder inputs, the MSB tree and the product with a bit are written once;
their local computation between two exchanges is a step of ``rt.kernels``
(:mod:`mpcgpu.kernelsets`: array code, numba kernels on the CPU, the GPU slot), each set
computing the same words, so rounds, bytes and messages do not depend on the set.  The
Kogge-Stone levels of A2B are array code (no faster set has them).

Security: every message is masked by fresh pseudo-random words (a pair key the
receiver lacks, or a zero share), so it is uniform to its receiver; nothing is
revealed.  Each PRG stream is called in the same order by the two parties that
share its key.
"""

from __future__ import annotations

import numpy

from mpcgpu.util import faults
from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare
from ..sharing.binary import BinaryShare, and_words
from ..sharing.replicated import with_public

TREE_DISTANCES = (1, 2, 4, 8, 16)  # levels 2..6 of the MSB tree, in 2-bit units


def _u(xp, v):
    return xp.uint64(v)


# -- rounds 1-2: the two addends a = x0 + x1 and b = x2 -------------------------------------


def _adder_inputs(xf, xs, rt, negate=False):
    """Binary sharings of propagate ``p = a ^ b`` and generate ``g = a & b`` for ``x = a + b``.

    ``xf``, ``xs``: this party's arithmetic components (flat); ``negate``: of ``-x``
    instead.  Returns component arrays ``(pf, ps, gf, gs)``.  2 rounds; 8 bytes/element
    per party (party 0 in round 1, parties 1 and 2 in round 2).  Local steps:
    ``rt.kernels.adder_sum`` (party 0), ``adder_and`` (parties 1, 2).
    """
    xp, comm, prg, rank, ks = rt.xp, rt.comm, rt.prg, rt.rank, rt.kernels
    shape, u64 = xf.shape, xp.uint64
    # round 1: party 0 inputs a = x0 + x1 as (a ^ rho, rho, 0)
    if rank == 0:
        rho = prg.with_next(shape)  # key of parties 0, 1
        a0 = ks.adder_sum(xf, xs, negate, rho)
        comm.exchange({2: a0}, {})
        # round 2: g = a & x2, 2-out-of-2 between parties 1, 2, made replicated
        mu = prg.with_next(shape)  # g1 (parties 0, 1)
        nu = prg.with_prev(shape)  # g0 (parties 0, 2)
        comm.exchange({}, {})
        return a0, rho, nu, mu  # p = (a0, a1), g = (g0, g1)
    if rank == 1:
        rho = prg.with_prev(shape)
        comm.exchange({}, {})
        mu = prg.with_prev(shape)
        x2, v1 = ks.adder_and(xs, negate, rho, mu)  # (rho & x2) ^ mu
        v1 ^= comm.exchange({2: v1}, {2: (shape, u64)})[2]
        return rho, x2, mu, v1  # p = (a1, x2), g = (g1, g2)
    a0 = comm.exchange({}, {0: (shape, u64)})[0]
    nu = prg.with_next(shape)
    x2, v2 = ks.adder_and(xf, negate, a0, nu)  # (a0 & x2) ^ nu
    v1 = comm.exchange({1: v2}, {1: (shape, u64)})[1]
    v1 ^= v2
    return x2, a0, v1, nu  # p = (x2, a0), g = (g2, g0)


def _flat_components(x: ArithmeticShare):
    return x.first.reshape(-1), x.second.reshape(-1)


# -- A2B ---------------------------------------------------------------------------------------


def a2b(x: ArithmeticShare) -> BinaryShare:
    """Bit decomposition: the binary sharing of the ring value of ``x`` (any uint64).

    8 rounds (2 adder-input rounds + 6 Kogge-Stone levels); 96 bytes/element per party
    (8 in rounds 1-2, 16 in each of levels 1-5, 8 in level 6).
    """
    rt = x.rt
    xp = rt.xp
    shape = x.shape
    n = x.size
    xf, xs = _flat_components(x)
    pf, ps, gf, gs = _adder_inputs(xf, xs, rt)
    faults.point("a2b")  # tests: a party lost between the rounds of the protocol
    Gf, Gs, Pf, Ps = gf, gs, pf, ps
    for k in range(6):
        d = _u(xp, 1 << k)
        if k < 5:
            # one exchange: [P & (G << d), P & (P << d)]
            lf = xp.concatenate([Pf, Pf])
            ls = xp.concatenate([Ps, Ps])
            rf = xp.concatenate([Gf << d, Pf << d])
            rs = xp.concatenate([Gs << d, Ps << d])
            zf, zs = and_words(lf, ls, rf, rs, rt)
            Gf, Gs = Gf ^ zf[:n], Gs ^ zs[:n]
            Pf, Ps = zf[n:], zs[n:]
        else:
            zf, zs = and_words(Pf, Ps, Gf << d, Gs << d, rt)
            Gf, Gs = Gf ^ zf, Gs ^ zs
    one = _u(xp, 1)
    # G_i is the carry out of bit i, i.e. the carry into bit i + 1
    return BinaryShare((pf ^ (Gf << one)).reshape(shape), (ps ^ (Gs << one)).reshape(shape), rt)


# -- MSB -----------------------------------------------------------------------------------------

_LANE_CACHE = {}


def tree_words(n: int) -> int:
    """AND words per party of the 6 MSB tree levels for ``n`` elements: ``n + m2 + ... + m6``."""
    total, m = n, n
    for _ in TREE_DISTANCES:
        m = (m + 1) // 2
        total += m
    return total


def _lanes(n, xp, backend):
    """Where element ``e``'s carry ends up after the folds: (word index, bit shift)."""
    key = (n, backend.name)
    if key not in _LANE_CACHE:
        word = numpy.arange(n, dtype=numpy.int64)
        off = numpy.zeros(n, dtype=numpy.uint64)
        m = n
        for d in TREE_DISTANCES:
            h = (m + 1) // 2
            sel = word >= h
            word[sel] -= h
            off[sel] += numpy.uint64(d)
            m = h
        if len(_LANE_CACHE) >= 32:  # a few sizes repeat (layers, tree levels): keep them
            _LANE_CACHE.pop(next(iter(_LANE_CACHE)))
        _LANE_CACHE[key] = (backend.to_device(word), backend.to_device(off * numpy.uint64(2)))
    return _LANE_CACHE[key]


def msb(x: ArithmeticShare, negate: bool = False) -> BinaryShare:
    """The most significant (sign) bit of every ring element of ``x``, as a bit share.

    Exact for every uint64 ring value.  ``x < 0`` in two's complement.  8 rounds;
    ``8 * (n + tree_words(n))`` bytes per party (about 23.75 bytes/element for large n).
    ``negate=True``: the MSB of ``-x`` (``[x > 0]`` for ReLU), the same words as
    ``msb(-x)`` without forming ``-x`` first.
    """
    rt = x.rt
    xp = rt.xp
    shape = x.shape
    n = x.size
    if n == 0:
        z = xp.zeros(shape, dtype=xp.uint64)
        return BinaryShare(z, z.copy(), rt)
    xf, xs = _flat_components(x)
    pf, ps, gf, gs = _adder_inputs(xf, xs, rt, negate)
    faults.point("a2b")  # tests: a party lost between the rounds of the protocol
    ks, prg, comm = rt.kernels, rt.prg, rt.comm
    # which of this party's slots hold component 0, which gets P63 = 1 (the public-constant rule)
    pub_f, pub_s = (
        bool(v)
        for v in with_public(
            numpy.bool_(False), numpy.bool_(False), numpy.bool_(True), rt.rank, numpy, numpy.logical_or
        )
    )
    # level 1: positions (2j+1, 2j) -> unit j (G at bit 2j, P at bit 2j+1); one AND word per
    # element, masked by an XOR zero share (its two PRG streams, combined by the step)
    z, h0, h1 = ks.msb_level1(gf, gs, pf, ps, pub_f, pub_s, *prg.zero_share_xor_parts(n))
    z2 = comm.pass_prev(z)
    # levels 2..6: lo unit u pairs with hi unit u + d; two words folded into one first
    for d in TREE_DISTANCES:
        z, h0, h1 = ks.msb_level(h0, z, h1, z2, d, *prg.zero_share_xor_parts((h0.shape[0] + 1) // 2))
        z2 = comm.pass_prev(z)
    word, shift = _lanes(n, xp, rt.backend)
    bits = ks.msb_final(h0, z, h1, z2, word, shift, pf, ps)
    return BinaryShare(bits[0].reshape(shape), bits[1].reshape(shape), rt)


# -- bit injection and multiplication by a shared bit ------------------------------------------


def _inject(bit: BinaryShare, x: ArithmeticShare | None, with_bit: bool):
    """Core of :func:`b2a` / :func:`mul_bit` (2 rounds).  Returns ``(x*b or None, b or None)``.

    Local steps: ``rt.kernels.inject_p{0,1,2}_message`` (round 1) and
    ``inject_p{0,1,2}_term`` (round 2, with the zero share's two PRG streams)."""
    rt = bit.rt
    xp, comm, prg, rank, ks = rt.xp, rt.comm, rt.prg, rt.rank, rt.kernels
    u64 = xp.uint64
    bshape = tuple(bit.shape)
    xshape = None
    if x is not None:
        xshape = numpy.broadcast_shapes(x.shape, bshape)  # shapes only (host)
        if xshape != x.shape:
            raise ProtocolError(f"bit shape {bshape} does not broadcast to the value shape {x.shape}")
    nb = bit.size
    nx = x.size if x is not None else 0
    total = nx + (nb if with_bit else 0)
    xc = (x.first, x.second) if x is not None else None

    def words(draw, shape, role, count):  # PRG words consumed inside this call
        return draw(shape, out=ks.prg_buffer(role, count))

    def zero_parts():  # the zero share of round 2: host F(k_i), F(k_{i+1}) (combined by the step)
        return prg.zero_share_parts(
            total, out=(ks.prg_buffer("inject-own", total), ks.prg_buffer("inject-next", total))
        )

    # -- round 1: t = b0 ^ b1 shared by party 0 as (t - rho, rho, 0); y = x * b2 reshared
    if rank == 0:
        rho = words(prg.with_next, bshape, "inject-rho", nb)  # t1 (parties 0, 1)
        mu = nu = None
        if x is not None:
            mu = words(prg.with_next, xshape, "inject-mu", nx)  # y1 (parties 0, 1)
            nu = words(prg.with_prev, xshape, "inject-nu", nx)  # y0 (parties 0, 2)
        t0 = ks.inject_p0_message(bit.first, bit.second, rho).reshape(bshape)
        comm.exchange({2: t0}, {})
        # -- round 2: z = (x - 2y)_i (t_i + t_{i+1}) + (x - 2y)_{i+1} t_i + y_i + zero share
        z = ks.inject_p0_term(xc, t0, rho, mu, nu, *zero_parts(), with_bit)
    elif rank == 1:
        b2 = bit.second
        rho = words(prg.with_prev, bshape, "inject-rho", nb)
        mu = v1 = v2 = None
        if x is not None:
            mu = words(prg.with_prev, xshape, "inject-mu", nx)
            v1 = ks.inject_p1_message(x.first, x.second, b2, mu).reshape(xshape)  # (x1 + x2) b2 - mu
            v2 = comm.exchange({2: v1}, {2: (xshape, u64)})[2]
        else:
            comm.exchange({}, {})
        z = ks.inject_p1_term(xc, b2, rho, mu, v1, v2, *zero_parts(), with_bit)
    else:
        b2 = bit.first
        recvs = {0: (bshape, u64)}
        v1 = v2 = None
        if x is not None:
            nu = words(prg.with_next, xshape, "inject-nu", nx)
            v2 = ks.inject_p2_message(x.second, b2, nu).reshape(xshape)  # x0 b2 - nu
            got = comm.exchange({1: v2}, {**recvs, 1: (xshape, u64)})
            v1 = got[1]
        else:
            got = comm.exchange({}, recvs)
        z = ks.inject_p2_term(xc, b2, got[0], v1, v2, *zero_parts(), with_bit)
    second = comm.pass_prev(z)
    out_x = out_b = None
    if x is not None:
        out_x = ArithmeticShare(z[:nx].reshape(xshape), second[:nx].reshape(xshape), x.scale, rt)
    if with_bit:
        out_b = ArithmeticShare(z[nx:].reshape(bshape), second[nx:].reshape(bshape), 0, rt)
    return out_x, out_b


def b2a(bit: BinaryShare) -> ArithmeticShare:
    """Bit injection: a bit share (components 0/1) -> arithmetic 0/1 share, scale 0.

    2 rounds; party 0 sends 16 bytes/bit, parties 1 and 2 send 8 bytes/bit.
    """
    return _inject(bit, None, True)[1]


def mul_bit(x: ArithmeticShare, bit: BinaryShare, with_bit: bool = False):
    """``x * b`` for a shared bit ``b`` (bit share broadcastable to ``x``), without truncation.

    2 rounds.  Bytes per party: party 0 ``8 nb + 8 nx``, parties 1 and 2 ``16 nx``
    (``nx = x.size``, ``nb = bit.size``).  ``with_bit=True`` also returns the arithmetic
    bit (scale 0) from the same rounds (``+ 8 nb`` bytes per party): ``(x*b, b)``.
    """
    out_x, out_b = _inject(bit, x, with_bit)
    return (out_x, out_b) if with_bit else out_x
