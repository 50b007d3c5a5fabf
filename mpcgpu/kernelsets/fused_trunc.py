"""Fused CPU kernels for the local steps of the MSB-corrected truncation (numba).

:func:`mpcgpu.sharing.truncation._msb_corrected_call` does, between its exchanges, a
chain of word operations over the PRG blocks (sums, masks, shifts, the sign of
``c``): on NumPy each is one pass over memory and one temporary array.  Here each
party's local step is one pass:

* :func:`deal` -- the dealer: ``r = r_A + r_B``, its split into ``T`` and ``r_mid``,
  the messages to B (``T - T_A``, ``r_mid - m_A`` [, ``s + nu``]) and to A
  ([``s + mu``]), and its two output components (copies of ``u`` and ``v``);
* :func:`open_message` -- an opener's round-1 message ``own + r_X [- mask]``;
* :func:`open_half` -- an opener's ``c``, its two-out-of-two share ``half`` of ``y``
  and its kept component (a copy of its output mask).

The kernels read the SAME PRG words as the array code (the same calls, in the same
order, into the same ``(rows, n)`` blocks) and compute the same ring expressions mod
2^64 (sums and differences commute exactly in the ring; ``sign * T`` with
``sign = 1 - 2 c_msb`` is ``T`` or ``-T``; the shifts are by ``d``, ``63 - d`` and
``62 - d`` in ``[0, 62]``), so every message and output is bit for bit what the array
code produces (tests/test_fused_trunc_mpi.py, tests/test_kernelsets_mpi.py).  They are
the truncation steps of the ``numba`` kernel set (:mod:`mpcgpu.kernelsets.numba_cpu`:
``trunc_deal``, ``trunc_open_message``, ``trunc_open_half``); the array steps stay the
reference and the GPU path, and ``keep=True`` runs them.

The PRG blocks are drawn into per-thread scratch buffers (:func:`mpcgpu.ring.limbs.scratch`),
warm from call to call: they are consumed inside the call (every message is a fresh
array, every output a fresh array or the caller's ``out``), so no buffer is handed out
twice.
"""

from __future__ import annotations

import numpy as np

from mpcgpu.kernelsets import fused


def _build(jit):
    """The compiled kernels of this module, by name."""
    u = np.uint64
    ZERO = u(0)
    ONE = u(1)
    M63 = u((1 << 63) - 1)
    S63 = u(63)
    S62 = u(62)

    @jit
    def deal(ka, kb, summand, d, per, fz, tob, toa, out0, out1):
        """Dealer, one pass: ``r = ka[0] + kb[0]``, ``tob[0] = (r >> 63) << (63 - d) - ka[1]``,
        ``tob[1] = ((r mod 2^63) >> d) - ka[2]``; fused (``fz``): ``toa[0] = s + kb[2]``,
        ``tob[2] = s + ka[4]``; outputs ``out0 = kb[1]``, ``out1 = ka[3]`` (copies)."""
        n = out0.shape[0]
        dd = d[0]
        for i in range(n):
            if per:
                dd = d[i]
            r = ka[0, i] + kb[0, i]
            tob[0, i] = ((r >> S63) << (S63 - dd)) - ka[1, i]
            tob[1, i] = ((r & M63) >> dd) - ka[2, i]
            out0[i] = kb[1, i]
            out1[i] = ka[3, i]
        if fz:
            for i in range(n):
                s = summand[i]
                toa[0, i] = s + kb[2, i]
                tob[2, i] = s + ka[4, i]

    @jit
    def open_message(x0, x1, two, k, fz, row, msg):
        """Opener's round-1 message: ``own + k[0] - (k[row] if fz else 0)`` with
        ``own = x0 (+ x1 if two)``."""
        n = msg.shape[0]
        for i in range(n):
            own = x0[i] + x1[i] if two else x0[i]
            m = own + k[0, i]
            if fz:
                m -= k[row, i]
            msg[i] = m
        return msg

    @jit
    def open_half(x0, x1, two, k, other, dealt, fz, is_a, d, per, const, half, kept):
        """Opener after round 1: ``c = own + k[0] + other [+ dealt[0 if A else 2]] + const``,
        ``half = (T if c < 2^63 else -T) - m - mask`` (+ on A the public part
        ``((c mod 2^63) >> d) + (c_msb << (63 - d)) - 2^(62 - d)``), ``kept = mask``.
        A: ``(T, m, mask) = k[1], k[2], k[3]``; B: ``dealt[0], dealt[1], k[1]``."""
        n = half.shape[0]
        dd = d[0]
        drow = 0 if is_a else 2
        for i in range(n):
            if per:
                dd = d[i]
            own = x0[i] + x1[i] if two else x0[i]
            c = own + k[0, i] + other[i] + const
            if fz:
                c += dealt[drow, i]
            if is_a:
                t, m, mask = k[1, i], k[2, i], k[3, i]
            else:
                t, m, mask = dealt[0, i], dealt[1, i], k[1, i]
            c_msb = c >> S63
            h = (ZERO - t if c_msb else t) - m - mask
            if is_a:
                h += ((c & M63) >> dd) + (c_msb << (S63 - dd)) - (ONE << (S62 - dd))
            half[i] = h
            kept[i] = mask

    return {"deal": deal, "open_message": open_message, "open_half": open_half}


_SET = fused.Kernels(_build)
kernels = _SET.kernels

__all__ = ["kernels"]
