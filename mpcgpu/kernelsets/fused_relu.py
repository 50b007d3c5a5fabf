"""Fused CPU kernels on ReLU's path (numba): the MSB's adder inputs and the product with a
shared bit.

:func:`mpcgpu.protocols.convert.msb` starts from the adder inputs ``p = a ^ x_2``,
``g = a & x_2`` of ``a = x_0 + x_1`` (of ``-x`` for ReLU's ``[x > 0]``, without forming
``-x`` first): :func:`adder_sum` (party 0) and :func:`adder_and` (parties 1 and 2) do each
party's step in one pass.

:func:`mpcgpu.protocols.convert.mul_bit` (the second half of ReLU) computes, per party,
a round-1 message from its components and PRG words, then the round-2 term

    ``z = (x_i - 2 y_i) (t_i + t_{i+1}) + (x_{i+1} - 2 y_{i+1}) t_i + y_i``
    ``[, z_b]`` ``+ (F(k_i) - F(k_{i+1}))``

with the arithmetic sharing ``t`` of the bit and ``y`` of ``x b_2``: on NumPy about a
dozen passes over memory and as many temporaries.  Here each party's round is one pass;
the components that are 0 for that party (``t_2`` on party 1, ``t_0`` on party 2) drop
out of its formula (a product with 0 is 0 in the ring).  Every word is the same ring
expression mod 2^64 as the array code's, from the same PRG words drawn by the same calls
in the same order, so messages and outputs are bit for bit the same (tested in
tests/test_fused_relu_mpi.py); they are steps of the ``numba`` kernel set
(:mod:`mpcgpu.kernelsets.numba_cpu`), the array steps stay the reference and the GPU path.

Kernels by party (``n`` elements; ``w_own``, ``w_next``: the zero share's two PRG blocks
of ``n`` or ``2n`` words, the second half for the bit when ``with_bit``):

* party 0: :func:`p0_message` ``t_0 = (b_0 ^ b_1) - rho``; :func:`p0_term`;
* party 1: :func:`p1_message` ``v_1 = (x_1 + x_2) b_2 - mu``; :func:`p1_term`;
* party 2: :func:`p2_message` ``v_2 = x_0 b_2 - nu``; :func:`p2_term`.
"""

from __future__ import annotations

import numpy as np

from mpcgpu.kernelsets import fused


def _build(jit):
    """The compiled kernels of this module, by name."""
    u = np.uint64
    ZERO = u(0)
    ONE = u(1)
    TWO = u(2)

    @jit
    def p0_message(bf, bs, rho, out):
        """``t_0 = (b_0 ^ b_1) - rho``."""
        for i in range(out.shape[0]):
            out[i] = (bf[i] ^ bs[i]) - rho[i]
        return out

    @jit
    def p0_term(xf, xs, t0, rho, mu, nu, w_own, w_next, with_bit, z):
        """Party 0: ``t = (t_0, rho)``, ``y = (nu, mu)``: ``z = (x_0 - 2 nu)(t_0 + rho) +
        (x_1 - 2 mu) t_0 + nu``; the bit's term ``t_0 + rho``; plus the zero share."""
        n = t0.shape[0]
        for i in range(n):
            ts = t0[i] + rho[i]
            z[i] = (xf[i] - TWO * nu[i]) * ts + (xs[i] - TWO * mu[i]) * t0[i] + nu[i] + w_own[i] - w_next[i]
            if with_bit:
                z[n + i] = ts + w_own[n + i] - w_next[n + i]
        return z

    @jit
    def p1_message(xf, xs, b2, mu, out):
        """``v_1 = (x_1 + x_2) b_2 - mu``."""
        for i in range(out.shape[0]):
            out[i] = (xf[i] + xs[i]) * b2[i] - mu[i]
        return out

    @jit
    def p1_term(xf, xs, b2, rho, mu, v1, v2, w_own, w_next, with_bit, z):
        """Party 1: ``t = (rho, 0)``, ``y = (mu, v_1 + v_2)``: ``z = (x_1 - 2 mu) rho +
        (x_2 - 2 (v_1 + v_2)) rho + mu``; the bit's term ``-2 b_2 rho``; plus the zero share."""
        n = rho.shape[0]
        for i in range(n):
            r = rho[i]
            z[i] = (xf[i] - TWO * mu[i]) * r + (xs[i] - TWO * (v1[i] + v2[i])) * r + mu[i] + w_own[i] - w_next[i]
            if with_bit:
                z[n + i] = (ZERO - (b2[i] << ONE)) * r + w_own[n + i] - w_next[n + i]
        return z

    @jit
    def p2_message(xs, b2, nu, out):
        """``v_2 = x_0 b_2 - nu`` (party 2's second component is ``x_0``)."""
        for i in range(out.shape[0]):
            out[i] = xs[i] * b2[i] - nu[i]
        return out

    @jit
    def p2_term(xf, b2, t0, v1, v2, w_own, w_next, with_bit, z):
        """Party 2: ``t = (0, t_0)``, ``y = (v_1 + v_2, nu)``: ``z = (x_2 - 2 y_2) t_0 + y_2``
        (its second term has the factor ``t_2 = 0``); the bit's term ``-2 b_2 t_0 + b_2``;
        plus the zero share."""
        n = t0.shape[0]
        for i in range(n):
            y = v1[i] + v2[i]
            t = t0[i]
            z[i] = (xf[i] - TWO * y) * t + y + w_own[i] - w_next[i]
            if with_bit:
                z[n + i] = (ZERO - (b2[i] << ONE)) * t + b2[i] + w_own[n + i] - w_next[n + i]
        return z

    @jit
    def adder_sum(xf, xs, neg, rho, out):
        """Party 0's adder input ``a_0 = (x_0 + x_1) ^ rho``, of ``-x`` with ``neg``
        (``(-x_0) + (-x_1) = -(x_0 + x_1)`` in the ring)."""
        for i in range(out.shape[0]):
            a = xf[i] + xs[i]
            if neg:
                a = ZERO - a
            out[i] = a ^ rho[i]
        return out

    @jit
    def adder_and(x, neg, other, mask, x_out, out):
        """Parties 1 and 2: ``v = (other & x_2) ^ mask`` with ``x_2 = x`` (``-x`` with ``neg``,
        also written to ``x_out``: it is a component of ``p``)."""
        for i in range(out.shape[0]):
            v = x[i]
            if neg:
                v = ZERO - v
                x_out[i] = v
            out[i] = (other[i] & v) ^ mask[i]
        return out

    return {
        "adder_sum": adder_sum,
        "adder_and": adder_and,
        "p0_message": p0_message,
        "p0_term": p0_term,
        "p1_message": p1_message,
        "p1_term": p1_term,
        "p2_message": p2_message,
        "p2_term": p2_term,
    }


_SET = fused.Kernels(_build)
kernels = _SET.kernels

__all__ = ["kernels"]
