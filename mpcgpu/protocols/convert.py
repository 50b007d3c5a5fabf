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

Security: every message is masked by fresh pseudo-random words (a pair key the
receiver lacks, or a zero share), so it is uniform to its receiver; nothing is
revealed.  Each PRG stream is called in the same order by the two parties that
share its key.
"""

from __future__ import annotations

import numpy

from .. import faults, fused, fused_relu
from ..limbs import scratch
from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare
from ..sharing.binary import BinaryShare, and_words
from ..sharing.replicated import with_public

MASK63 = (1 << 63) - 1
BIT63 = 1 << 63
EVEN = 0x5555555555555555
TREE_DISTANCES = (1, 2, 4, 8, 16)  # levels 2..6 of the MSB tree, in 2-bit units


def _u(xp, v):
    return xp.uint64(v)


# -- rounds 1-2: the two addends a = x0 + x1 and b = x2 -------------------------------------


def _adder_inputs(xf, xs, rt, negate=False):
    """Binary sharings of propagate ``p = a ^ b`` and generate ``g = a & b`` for ``x = a + b``.

    ``xf``, ``xs``: this party's arithmetic components (flat); ``negate``: of ``-x``
    instead.  Returns component arrays ``(pf, ps, gf, gs)``.  2 rounds; 8 bytes/element
    per party (party 0 in round 1, parties 1 and 2 in round 2).  On the CPU the local
    steps run on the kernels of :mod:`mpcgpu.fused_relu` (the same words).
    """
    if fused_relu.enabled(rt) and xf.size:
        return _adder_inputs_fused(xf, xs, rt, negate)
    if negate:
        xf, xs = -xf, -xs
    xp, comm, prg, rank = rt.xp, rt.comm, rt.prg, rt.rank
    shape, u64 = xf.shape, xp.uint64
    # round 1: party 0 inputs a = x0 + x1 as (a ^ rho, rho, 0)
    if rank == 0:
        rho = prg.with_next(shape)  # key of parties 0, 1
        a0 = (xf + xs) ^ rho
        comm.exchange({2: a0}, {})
    elif rank == 1:
        rho = prg.with_prev(shape)
        comm.exchange({}, {})
    else:
        a0 = comm.exchange({}, {0: (shape, u64)})[0]
    # round 2: g = a & x2, 2-out-of-2 between parties 1, 2, made replicated
    if rank == 0:
        mu = prg.with_next(shape)  # g1 (parties 0, 1)
        nu = prg.with_prev(shape)  # g0 (parties 0, 2)
        comm.exchange({}, {})
        return a0, rho, nu, mu  # p = (a0, a1), g = (g0, g1)
    if rank == 1:
        x2 = xs
        mu = prg.with_prev(shape)
        v1 = (rho & x2) ^ mu
        v2 = comm.exchange({2: v1}, {2: (shape, u64)})[2]
        v1 ^= v2
        return rho, x2, mu, v1  # p = (a1, x2), g = (g1, g2)
    x2 = xf
    nu = prg.with_next(shape)
    v2 = (a0 & x2) ^ nu
    v1 = comm.exchange({1: v2}, {1: (shape, u64)})[1]
    v1 ^= v2
    return x2, a0, v1, nu  # p = (x2, a0), g = (g2, g0)


def _adder_inputs_fused(xf, xs, rt, negate):
    """:func:`_adder_inputs` with each party's local step in one pass (same PRG calls,
    messages and components)."""
    xp, comm, prg, rank = rt.xp, rt.comm, rt.prg, rt.rank
    shape, u64 = xf.shape, xp.uint64
    kern = fused_relu.kernels()
    xf, xs = xp.ascontiguousarray(xf), xp.ascontiguousarray(xs)
    if rank == 0:
        rho = prg.with_next(shape)
        a0 = kern["adder_sum"](xf, xs, negate, rho, xp.empty(shape, dtype=u64))
        comm.exchange({2: a0}, {})
        mu = prg.with_next(shape)
        nu = prg.with_prev(shape)
        comm.exchange({}, {})
        return a0, rho, nu, mu
    if rank == 1:
        rho = prg.with_prev(shape)
        comm.exchange({}, {})
        mu = prg.with_prev(shape)
        x2 = xp.empty(shape, dtype=u64) if negate else xs
        v1 = kern["adder_and"](xs, negate, rho, mu, x2, xp.empty(shape, dtype=u64))
        v1 ^= comm.exchange({2: v1}, {2: (shape, u64)})[2]
        return rho, x2, mu, v1
    a0 = comm.exchange({}, {0: (shape, u64)})[0]
    nu = prg.with_next(shape)
    x2 = xp.empty(shape, dtype=u64) if negate else xf
    v2 = kern["adder_and"](xf, negate, a0, nu, x2, xp.empty(shape, dtype=u64))
    v1 = comm.exchange({1: v2}, {1: (shape, u64)})[1]
    v1 ^= v2
    return x2, a0, v1, nu


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

_MASK_CACHE = {}
_LANE_CACHE = {}


def _level_masks(d):
    """Masks for a tree level at distance ``d`` units (32 units of 2 bits: G even, P odd).

    ``lo2``: both bits of the "lo" units (``(u // d)`` even); ``log``: their G bit."""
    if d not in _MASK_CACHE:
        lo2 = log = 0
        for u in range(32):
            if (u // d) % 2 == 0:
                lo2 |= 3 << (2 * u)
                log |= 1 << (2 * u)
        _MASK_CACHE[d] = (lo2, log)
    return _MASK_CACHE[d]


def _fold(a, bits, xp):
    """Pack the second half of ``a`` into the free lanes of the first (shift by ``bits``).

    ``m`` words -> ``ceil(m/2)``; an odd count gets an (implicit) zero word."""
    m = a.shape[0]
    h = (m + 1) // 2
    out = a[:h].copy()
    if m - h:
        out[: m - h] |= a[h:] << _u(xp, bits)
    return out


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
    if fused.enabled(rt):
        bits = _msb_tree_fused(pf, ps, gf, gs, rt)
        return BinaryShare(bits[0].reshape(shape), bits[1].reshape(shape), rt)
    c63, c1 = _u(xp, 63), _u(xp, 1)
    top = (pf >> c63, ps >> c63)
    m63 = _u(xp, MASK63)
    G = [gf & m63, gs & m63]  # G63 = 0
    P = list(with_public(pf & m63, ps & m63, _u(xp, BIT63), rt.rank, xp, lambda a, b: a | b))  # P63 = 1
    # level 1: positions (2j+1, 2j) -> unit j of W (G at bit 2j, P at bit 2j+1)
    ev = _u(xp, EVEN)
    X, Y, H = [], [], []
    for g, p in zip(G, P):
        lo = (p >> c1) & ev  # P_hi at bit 2j
        Y.append(lo | (lo << c1))
        X.append((g & ev) | ((p & ev) << c1))  # G_lo at 2j, P_lo at 2j+1
        H.append((g >> c1) & ev)  # G_hi at 2j
    del G, P
    zf, zs = and_words(X[0], X[1], Y[0], Y[1], rt)
    W = [H[0] ^ zf, H[1] ^ zs]
    # levels 2..6: lo unit u pairs with hi unit u + d; fold two words into one first
    for d in TREE_DISTANCES:
        lo2, log = (_u(xp, v) for v in _level_masks(d))
        sh_g, sh_p = _u(xp, 2 * d), _u(xp, 2 * d + 1)
        X, Y, H = [], [], []
        for w in W:
            t = (w >> sh_p) & log
            Y.append(_fold(t | (t << c1), 2 * d, xp))
            X.append(_fold(w & lo2, 2 * d, xp))
            H.append(_fold((w >> sh_g) & log, 2 * d, xp))
        zf, zs = and_words(X[0], X[1], Y[0], Y[1], rt)
        W = [H[0] ^ zf, H[1] ^ zs]
    word, shift = _lanes(n, xp, rt.backend)
    bits = [((w[word] >> shift) & c1) ^ t for w, t in zip(W, top)]
    return BinaryShare(bits[0].reshape(shape), bits[1].reshape(shape), rt)


def _msb_tree_fused(pf, ps, gf, gs, rt):
    """Levels 1-6 of :func:`msb` and its last step with the kernels of :mod:`mpcgpu.fused`:
    the same words, messages and PRG calls as the array-module code above, one pass per
    level instead of about twenty."""
    kern = fused.kernels()
    prg, comm, xp = rt.prg, rt.comm, rt.xp
    pf, ps, gf, gs = (xp.ascontiguousarray(a) for a in (pf, ps, gf, gs))
    # which of this party's slots hold component 0, which gets P63 = 1 (the public-constant rule)
    pub_f, pub_s = (
        bool(v)
        for v in with_public(
            numpy.bool_(False), numpy.bool_(False), numpy.bool_(True), rt.rank, numpy, numpy.logical_or
        )
    )
    z, h0, h1 = kern["level1"](gf, gs, pf, ps, pub_f, pub_s, *prg.zero_share_xor_parts(gf.shape[0]))
    z2 = comm.pass_prev(z)
    for d in TREE_DISTANCES:
        lo2, log = _level_masks(d)
        half = (h0.shape[0] + 1) // 2
        z, h0, h1 = kern["level"](
            h0,
            z,
            h1,
            z2,
            _u(xp, lo2),
            _u(xp, log),
            _u(xp, 2 * d),
            _u(xp, 2 * d + 1),
            _u(xp, 2 * d),
            *prg.zero_share_xor_parts(half),
        )
        z2 = comm.pass_prev(z)
    word, shift = _lanes(pf.shape[0], xp, rt.backend)
    return kern["final"](h0, z, h1, z2, word, shift, pf, ps)


# -- bit injection and multiplication by a shared bit ------------------------------------------


def _inject(bit: BinaryShare, x: ArithmeticShare | None, with_bit: bool):
    """Core of :func:`b2a` / :func:`mul_bit` (2 rounds).  Returns ``(x*b or None, b or None)``."""
    rt = bit.rt
    xp, comm, prg, rank = rt.xp, rt.comm, rt.prg, rt.rank
    u64 = xp.uint64
    bshape = bit.shape
    if x is not None:
        xshape = numpy.broadcast_shapes(x.shape, bshape)  # shapes only (host)
        if xshape != x.shape:
            raise ProtocolError(f"bit shape {bshape} does not broadcast to the value shape {x.shape}")
    if x is not None and tuple(bshape) == tuple(x.shape) and x.size and fused_relu.enabled(rt):
        return _inject_fused(bit, x, with_bit)
    zero = u64(0)
    # -- round 1: t = b0 ^ b1 shared by party 0 as (t - rho, rho, 0); y = x * b2 reshared
    if rank == 0:
        rho = prg.with_next(bshape)  # t1 (parties 0, 1)
        t0 = (bit.first ^ bit.second) - rho
        T = (t0, rho)
        if x is not None:
            mu = prg.with_next(xshape)  # y1 (parties 0, 1)
            nu = prg.with_prev(xshape)  # y0 (parties 0, 2)
            Yc = (nu, mu)
        comm.exchange({2: t0}, {})
    elif rank == 1:
        rho = prg.with_prev(bshape)
        T = (rho, xp.zeros(bshape, dtype=u64))
        if x is not None:
            b2 = bit.second
            mu = prg.with_prev(xshape)
            v1 = (x.first + x.second) * b2 - mu  # (x1 + x2) b2 - mu
            v2 = comm.exchange({2: v1}, {2: (xshape, u64)})[2]
            Yc = (mu, v1 + v2)
        else:
            comm.exchange({}, {})
    else:
        b2 = bit.first
        recvs = {0: (bshape, u64)}
        if x is not None:
            nu = prg.with_next(xshape)
            v2 = x.second * b2 - nu  # x0 b2 - nu
            got = comm.exchange({1: v2}, {**recvs, 1: (xshape, u64)})
            Yc = (got[1] + v2, nu)
        else:
            got = comm.exchange({}, recvs)
        T = (xp.zeros(bshape, dtype=u64), got[0])
    # -- round 2: z = (x - 2y)_i (t_i + t_{i+1}) + (x - 2y)_{i+1} t_i + y_i + zero share
    Tsum = T[0] + T[1]
    parts = []
    if x is not None:
        two = u64(2)
        zx = (x.first - two * Yc[0]) * Tsum + (x.second - two * Yc[1]) * T[0] + Yc[0]
        parts.append(zx.reshape(-1))
    if with_bit:
        # the bit itself: "x" = public 1 = (1, 0, 0), "y" = b2 = (0, 0, b2)
        one = u64(1)
        if rank == 0:
            zb = Tsum.copy()  # x = (1, 0), y = (0, 0)
        elif rank == 1:
            zb = (zero - (bit.second << one)) * T[0]  # x = (0, 0), y = (0, b2)
        else:
            b2 = bit.first  # x = (0, 1), y = (b2, 0)
            zb = (zero - (b2 << one)) * Tsum + T[0] + b2
        parts.append(zb.reshape(-1))
    z = xp.concatenate(parts) if len(parts) > 1 else parts[0]
    z += prg.zero_share(z.shape)
    second = comm.pass_prev(z)
    out_x = out_b = None
    start = 0
    if x is not None:
        nx = x.size
        out_x = ArithmeticShare(z[:nx].reshape(xshape), second[:nx].reshape(xshape), x.scale, rt)
        start = nx
    if with_bit:
        out_b = ArithmeticShare(z[start:].reshape(bshape), second[start:].reshape(bshape), 0, rt)
    return out_x, out_b


def _inject_fused(bit: BinaryShare, x: ArithmeticShare, with_bit: bool):
    """:func:`_inject` for a bit of ``x``'s shape on the kernels of :mod:`mpcgpu.fused_relu`:
    the same PRG calls in the same order, the same messages and outputs bit for bit, one pass
    per party and round.  The PRG words go into reused scratch buffers (consumed here)."""
    rt = bit.rt
    xp, comm, prg, rank = rt.xp, rt.comm, rt.prg, rt.rank
    u64 = xp.uint64
    kern = fused_relu.kernels()
    shape, n = tuple(x.shape), x.size
    total = 2 * n if with_bit else n
    xf, xs = (xp.ascontiguousarray(a).reshape(-1) for a in (x.first, x.second))
    bf, bs = (xp.ascontiguousarray(a).reshape(-1) for a in (bit.first, bit.second))

    def words(draw, role, count):
        return draw(count, out=scratch(xp, role, (count,), u64))

    if rank == 0:
        rho = words(prg.with_next, "inject-rho", n)
        mu = words(prg.with_next, "inject-mu", n)
        nu = words(prg.with_prev, "inject-nu", n)
        t0 = kern["p0_message"](bf, bs, rho, xp.empty(n, dtype=u64))
        comm.exchange({2: t0.reshape(shape)}, {})
        w_own, w_next = words(prg.with_prev, "inject-own", total), words(prg.with_next, "inject-next", total)
        z = kern["p0_term"](xf, xs, t0, rho, mu, nu, w_own, w_next, with_bit, xp.empty(total, dtype=u64))
    elif rank == 1:
        rho = words(prg.with_prev, "inject-rho", n)
        mu = words(prg.with_prev, "inject-mu", n)
        v1 = kern["p1_message"](xf, xs, bs, mu, xp.empty(n, dtype=u64))
        v2 = comm.exchange({2: v1.reshape(shape)}, {2: (shape, u64)})[2].reshape(-1)
        w_own, w_next = words(prg.with_prev, "inject-own", total), words(prg.with_next, "inject-next", total)
        z = kern["p1_term"](xf, xs, bs, rho, mu, v1, v2, w_own, w_next, with_bit, xp.empty(total, dtype=u64))
    else:
        nu = words(prg.with_next, "inject-nu", n)
        v2 = kern["p2_message"](xs, bf, nu, xp.empty(n, dtype=u64))
        got = comm.exchange({1: v2.reshape(shape)}, {0: (shape, u64), 1: (shape, u64)})
        w_own, w_next = words(prg.with_prev, "inject-own", total), words(prg.with_next, "inject-next", total)
        t0, v1 = got[0].reshape(-1), got[1].reshape(-1)
        z = kern["p2_term"](xf, bf, t0, v1, v2, w_own, w_next, with_bit, xp.empty(total, dtype=u64))
    second = comm.pass_prev(z)
    out_x = ArithmeticShare(z[:n].reshape(shape), second[:n].reshape(shape), x.scale, rt)
    out_b = ArithmeticShare(z[n:].reshape(shape), second[n:].reshape(shape), 0, rt) if with_bit else None
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
