"""The array-module kernel set: every local step as NumPy / CuPy / strict array code.

The reference of :mod:`mpcgpu.kernelsets`: every other set must return these words.  The
steps get the back end's arrays (flat unless said otherwise) and, for the masks of a zero
share, the two raw host PRG streams that the protocol drew
(:meth:`mpcgpu.crypto.prg.PartyPRG.zero_share_parts`); they combine them exactly as
``zero_share`` / ``zero_share_xor`` would (``F(k_i) -/^ F(k_{i+1})``, moved to the device).
Outputs are fresh arrays or the caller's ``out``; nothing returned is a window on a PRG
buffer the caller may reuse.
"""

from __future__ import annotations

import numpy  # the host PRG words of a zero share only; share data uses self.xp

MASK63 = (1 << 63) - 1
BIT63 = 1 << 63
EVEN = 0x5555555555555555

_MASK_CACHE = {}


def level_masks(d: int):
    """Masks of an MSB tree level at distance ``d`` units (32 units of 2 bits: G even, P
    odd): ``lo2`` both bits of the "lo" units (``(u // d)`` even), ``log`` their G bit."""
    if d not in _MASK_CACHE:
        lo2 = log = 0
        for u in range(32):
            if (u // d) % 2 == 0:
                lo2 |= 3 << (2 * u)
                log |= 1 << (2 * u)
        _MASK_CACHE[d] = (lo2, log)
    return _MASK_CACHE[d]


class ArraySteps:
    """The local steps of the protocols as array code (see :mod:`mpcgpu.kernelsets`)."""

    name = "array"
    #: the split / combination steps of the ring products' limbs (:func:`mpcgpu.ring.limbs.use_fused_steps`):
    #: None, the array code of mpcgpu.ring.limbs
    limb_steps = None

    def __init__(self, backend):
        self.backend = backend
        self.xp = backend.xp

    @classmethod
    def why_not(cls, backend) -> str | None:
        return None  # runs everywhere

    def __repr__(self):
        return f"<kernel set {self.name} on {self.backend.name}>"

    # -- helpers -------------------------------------------------------------------------------

    def prg_buffer(self, role: str, count: int):
        """Where a protocol draws ``count`` PRG words that it consumes inside the call:
        ``None`` here (fresh arrays); a set may return a warm host buffer for ``role``."""
        return None

    def _u(self, v):
        return self.xp.uint64(v)

    def _sub_mask(self, own, nxt):
        """The additive zero share ``F(k_i) - F(k_{i+1})`` of two host words, on the device."""
        numpy.subtract(own, nxt, out=own)
        return self.backend.to_device(own)

    def _xor_mask(self, own, nxt):
        """The XOR zero share ``F(k_i) ^ F(k_{i+1})`` of two host words, on the device."""
        numpy.bitwise_xor(own, nxt, out=own)
        return self.backend.to_device(own)

    def _and_local(self, xf, xs, yf, ys):
        """This party's term of the AND: ``x_i&y_i ^ x_i&y_{i+1} ^ x_{i+1}&y_i``."""
        return (xf & (yf ^ ys)) ^ (xs & yf)

    def _fold(self, a, bits):
        """The second half of ``a`` into the free lanes of the first (shift by ``bits``):
        ``m`` words -> ``ceil(m/2)``; an odd count gets an implicit zero word."""
        m = a.shape[0]
        h = (m + 1) // 2
        out = a[:h].copy()
        if m - h:
            out[: m - h] |= a[h:] << self._u(bits)
        return out

    # -- MSB-corrected truncation (mpcgpu.sharing.truncation) --------------------------------

    def trunc_deal(self, ka, kb, summand, d, keep, first, second):
        """The dealer D: ``r = r_A + r_B`` (``ka[0] + kb[0]``), ``T = r_msb 2^(63-d)``,
        ``r_mid = (r mod 2^63) >> d``; returns ``(to_b, to_a)`` (``(rows, n)``; ``to_a`` None
        when D sends A nothing): to B ``T - T_A``, ``r_mid - m_A`` [, ``s + nu``] [, ``rho_B``],
        to A [``s + mu``] [, ``rho_B``] (``s``: the summand, fused with a product; ``rho_B =
        r_lo - rho_D - rho_A`` with ``keep``).  Writes D's components ``u = kb[1]`` and
        ``v = ka[3]`` into ``first`` and ``second``.  ``d``: a uint64 scalar or ``n`` shifts."""
        xp = self.xp
        u64, one = xp.uint64, xp.uint64(1)
        r = ka[0] + kb[0]
        r_mid = (r & u64(MASK63)) >> d
        t = (r >> u64(63)) << (u64(63) - d)
        to_b = [t - ka[1], r_mid - ka[2]]
        to_a = []
        if summand is not None:
            to_a.append(summand + kb[2])  # masked by mu (known to B only)
            to_b.append(summand + ka[4])  # masked by nu (known to A only)
        if keep:
            rho_b = (r & ((one << d) - one)) - kb[-1] - ka[-1]
            to_a.append(rho_b)
            to_b.append(rho_b)
        xp.copyto(first, kb[1])
        xp.copyto(second, ka[3])
        return xp.stack(to_b), (xp.stack(to_a) if to_a else None)

    def trunc_open_message(self, parts, k, fused, row):
        """An opener's round-1 message ``own + k[0] [- k[row]]`` (``own``: the sum of
        ``parts``, its term of ``x``; ``k[row]`` the mask of D's summand, when ``fused``)."""
        own = parts[0] + parts[1] if len(parts) > 1 else parts[0]
        msg = own + k[0]
        if fused:
            msg -= k[row]
        return msg

    def trunc_open_half(self, parts, msg, k, other, dealt, fused, is_a, row, d, const, keep, kept):
        """An opener after round 1: ``c = own + k[0] + other [+ D's masked summand] + const``
        (``= msg + other [+ k[row] + dealt[0 if A else 2]] + const``), then its two-out-of-two
        share of ``y``: ``half = (T or -T by c_msb) - m - mask`` plus, on A, the public part
        ``((c mod 2^63) >> d) + (c_msb << (63 - d)) - 2^(62 - d)``.  A: ``(T, m, mask) = k[1],
        k[2], k[3]``; B: ``dealt[0], dealt[1], k[1]``.  Writes ``mask`` into ``kept``; returns
        ``(half, c mod 2^d if keep else None)``."""
        xp = self.xp
        u64, one = xp.uint64, xp.uint64(1)
        c = msg + other
        if fused:
            c += k[row]
            c += dealt[0 if is_a else 2]
        c += const
        if is_a:
            t_half, m_half, mask_out = k[1], k[2], k[3]
        else:
            t_half, m_half, mask_out = dealt[0], dealt[1], k[1]
        c_msb = c >> u64(63)
        sign = one - (c_msb << one)  # 1 - 2 c_msb, as a ring element
        half = sign * t_half - m_half - mask_out
        if is_a:  # the public part, added once
            half += ((c & u64(MASK63)) >> d) + (c_msb << (u64(63) - d)) - (one << (u64(62) - d))
        xp.copyto(kept, mask_out)
        return half, ((c & ((one << d) - one)) if keep else None)

    # -- adder inputs of A2B and MSB (mpcgpu.protocols.convert) -------------------------------

    def adder_sum(self, xf, xs, negate, rho):
        """Party 0's adder input ``a ^ rho`` with ``a = x_0 + x_1`` (``-(x_0 + x_1)`` with
        ``negate``)."""
        a = xf + xs
        if negate:
            a = -a
        a ^= rho
        return a

    def adder_and(self, x, negate, other, mask):
        """Parties 1 and 2: ``(x_2, (other & x_2) ^ mask)`` with ``x_2 = x`` (``-x`` with
        ``negate``; it is a component of the propagate bits)."""
        x2 = -x if negate else x
        v = other & x2
        v ^= mask
        return x2, v

    # -- the MSB tree (mpcgpu.protocols.convert.msb) ------------------------------------------

    def msb_level1(self, gf, gs, pf, ps, pub_f, pub_s, own, nxt):
        """Level 1 from the adder's ``(g, p)`` components: ``G = g mod 2^63``, ``P = p mod
        2^63`` with the public ``P63 = 1`` in the slots ``pub_f``/``pub_s``; positions
        ``(2j+1, 2j)`` pair into unit ``j``.  Returns the AND's message ``z`` (its local term
        XOR the zero share ``own ^ nxt``) and ``H = G_hi`` of both components."""
        m63, b63, ev, c1 = self._u(MASK63), self._u(BIT63), self._u(EVEN), self._u(1)
        X, Y, H = [], [], []
        for g, p, pub in ((gf, pf, pub_f), (gs, ps, pub_s)):
            g = g & m63  # G63 = 0
            p = p & m63
            if pub:
                p |= b63  # P63 = 1
            lo = (p >> c1) & ev  # P_hi at bit 2j
            Y.append(lo | (lo << c1))
            X.append((g & ev) | ((p & ev) << c1))  # G_lo at 2j, P_lo at 2j+1
            H.append((g >> c1) & ev)  # G_hi at 2j
        z = self._and_local(X[0], X[1], Y[0], Y[1])
        z ^= self._xor_mask(own, nxt)
        return z, H[0], H[1]

    def msb_level(self, h0, z0, h1, z1, d, own, nxt):
        """A later level at distance ``d`` units from ``W = H ^ z`` of both components (the
        previous level's ``H`` and AND result): lo unit ``u`` pairs with hi unit ``u + d``,
        two words folded into one.  Returns ``(z, H0, H1)`` of ``ceil(m / 2)`` words."""
        lo2, log = (self._u(v) for v in level_masks(d))
        sh_g, sh_p, c1 = self._u(2 * d), self._u(2 * d + 1), self._u(1)
        X, Y, H = [], [], []
        for w in (h0 ^ z0, h1 ^ z1):
            t = (w >> sh_p) & log
            Y.append(self._fold(t | (t << c1), 2 * d))
            X.append(self._fold(w & lo2, 2 * d))
            H.append(self._fold((w >> sh_g) & log, 2 * d))
        z = self._and_local(X[0], X[1], Y[0], Y[1])
        z ^= self._xor_mask(own, nxt)
        return z, H[0], H[1]

    def msb_final(self, h0, z0, h1, z1, word, shift, pf, ps):
        """The MSB: the carry (``W = H ^ z`` read at each element's lane ``(word, shift)``)
        XOR the top bit of ``p``; both components."""
        c1, c63 = self._u(1), self._u(63)
        return tuple(((w[word] >> shift) & c1) ^ (p >> c63) for w, p in ((h0 ^ z0, pf), (h1 ^ z1, ps)))

    # -- the product with a shared bit, bit injection (mpcgpu.protocols.convert) ------------
    # Round 1: party 0 shares t = b_0 ^ b_1 as (t_0, rho, 0); y = x b_2 is reshared between
    # parties 1 and 2.  Round 2: z = (x - 2y)_i (t_i + t_{i+1}) + (x - 2y)_{i+1} t_i + y_i,
    # then the bit's term [, z_b], plus the zero share; all flat.  ``x``: this party's
    # components (first, second) or None (b2a); a bit may broadcast against x.

    def inject_p0_message(self, bf, bs, rho):
        """``t_0 = (b_0 ^ b_1) - rho``."""
        return (bf ^ bs) - rho

    def inject_p1_message(self, xf, xs, b2, mu):
        """``v_1 = (x_1 + x_2) b_2 - mu``."""
        return (xf + xs) * b2 - mu

    def inject_p2_message(self, xs, b2, nu):
        """``v_2 = x_0 b_2 - nu`` (party 2's second component is ``x_0``)."""
        return xs * b2 - nu

    def _term(self, parts, own, nxt):
        z = self.xp.concatenate([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0].reshape(-1)
        z += self._sub_mask(own, nxt)
        return z

    def inject_p0_term(self, x, t0, rho, mu, nu, own, nxt, with_bit):
        """Party 0, ``t = (t_0, rho)``, ``y = (nu, mu)``: ``(x_0 - 2 nu)(t_0 + rho) + (x_1 -
        2 mu) t_0 + nu``; the bit's term ``t_0 + rho``."""
        two = self._u(2)
        tsum = t0 + rho
        parts = []
        if x is not None:
            parts.append((x[0] - two * nu) * tsum + (x[1] - two * mu) * t0 + nu)
        if with_bit:
            parts.append(tsum)
        return self._term(parts, own, nxt)

    def inject_p1_term(self, x, b2, rho, mu, v1, v2, own, nxt, with_bit):
        """Party 1, ``t = (rho, 0)``, ``y = (mu, v_1 + v_2)``: ``(x_1 - 2 mu) rho + (x_2 - 2 (v_1
        + v_2)) rho + mu``; the bit's term ``-2 b_2 rho``."""
        two, one, zero = self._u(2), self._u(1), self._u(0)
        parts = []
        if x is not None:
            parts.append((x[0] - two * mu) * rho + (x[1] - two * (v1 + v2)) * rho + mu)
        if with_bit:
            parts.append((zero - (b2 << one)) * rho)
        return self._term(parts, own, nxt)

    def inject_p2_term(self, x, b2, t0, v1, v2, own, nxt, with_bit):
        """Party 2, ``t = (0, t_0)``, ``y = (v_1 + v_2, nu)``: ``(x_2 - 2 y_2) t_0 + y_2`` (the
        second term has the factor ``t_2 = 0``); the bit's term ``-2 b_2 t_0 + b_2``."""
        two, one, zero = self._u(2), self._u(1), self._u(0)
        parts = []
        if x is not None:
            y = v1 + v2
            parts.append((x[0] - two * y) * t0 + y)
        if with_bit:
            parts.append((zero - (b2 << one)) * t0 + b2)
        return self._term(parts, own, nxt)


__all__ = ["ArraySteps", "level_masks"]
