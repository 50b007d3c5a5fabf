"""Fused CPU kernels for the limbs of exact ring products (numba): split and combination.

A ring product on float64 GEMMs (:mod:`mpcgpu.ring.limbs`) has three parts: the digit split
of both operands into float64 slabs, the GEMMs, and the combination of the GEMM results
mod 2^64.  In array code the split is about four elementwise passes per digit and one per
sum slab (each over a block in cache, then a copy into the GEMM layout), and the
combination three or four passes per GEMM result (convert, shift or multiply, add).  Here
each is one compiled loop:

* :func:`split_rows` -- the left operand ``A`` (B, M, K) into its GEMM layout
  (B, n_chunks, M, S*kc): for every row and chunk, the S slabs of ``A[b, i, chunk]`` one
  after the other (zero padding past ``K``);
* :func:`split_cols` -- the right operand ``B`` (B, K, N) into (B, n_chunks, S*kc, N): for
  every reduction index, its S slab rows;
* :func:`combine` -- ``acc (+)= mult * int64(G) mod 2^64`` for one GEMM result ``G``, right
  after its GEMM (while it is in cache): one pass instead of three or four.

A slab is a sum of digits ``d_i = u_i - h_i`` with ``u_i = ((x + bias) >> s_i) & mask_i``
(see :mod:`mpcgpu.ring.limbs`); its value ``sum u_i - sum h_i`` is formed in integers
(``sum u_i < 2^52``), turned into a float by the bit pattern of ``2^52 + sum u_i`` and one
subtraction (exact: both are integers below 2^53).  The same integers as the array code,
so the same float64 slabs, the same GEMM results and the same words, bit for bit
(tests/test_fused_limbs.py checks against Python integers at every tile and chunk edge).

The steps of the ``numba`` kernel set (:attr:`mpcgpu.kernelsets.numba_cpu.NumbaSteps.limb_steps`),
installed into :mod:`mpcgpu.ring.limbs` when the kernel set is chosen; the array code of
:mod:`mpcgpu.ring.limbs` stays the reference and the path of CuPy and the strict back end.
"""

from __future__ import annotations

import numpy as np

from mpcgpu.ring.native import numba_jit

U64 = np.uint64
_MAGIC = 0x4330000000000000  # bit pattern of the float 2^52


def _build(jit):
    magic = U64(_MAGIC)

    # (the slab loop is written out in both kernels: a jitted helper held in this closure
    # would make numba's disk cache miss on every start)

    @jit
    def split_rows(a, out, out_u, kc, slabs, counts, shifts, masks, bias, offsets):
        """``a`` (B, M, K) uint64 -> ``out`` (B, nc, M, S*kc) float64 (``out_u``: its uint64 view)."""
        nb, m, k = a.shape
        nc = out.shape[1]
        for b in range(nb):
            for c in range(nc):
                lo = c * kc
                n = min(kc, k - lo) if k > lo else 0
                for i in range(m):
                    x = a[b, i, lo : lo + n]
                    for p in range(slabs.shape[0]):
                        at = p * kc
                        ou = out_u[b, c, i, at : at + kc]
                        of = out[b, c, i, at : at + kc]
                        d0 = slabs[p, 0]
                        s0, m0 = shifts[d0], masks[d0]
                        if counts[p] == 1:
                            for j in range(n):
                                ou[j] = (((x[j] + bias) >> s0) & m0) | magic
                        else:
                            d1 = slabs[p, 1]
                            s1, m1 = shifts[d1], masks[d1]
                            for j in range(n):
                                y = x[j] + bias
                                ou[j] = (((y >> s0) & m0) + ((y >> s1) & m1)) | magic
                            for q in range(2, counts[p]):
                                dq = slabs[p, q]
                                for j in range(n):
                                    ou[j] += ((x[j] + bias) >> shifts[dq]) & masks[dq]
                        off = offsets[p]
                        for j in range(n):
                            of[j] -= off
                        for j in range(n, kc):
                            of[j] = 0.0

    @jit
    def split_cols(a, out, out_u, kc, slabs, counts, shifts, masks, bias, offsets):
        """``a`` (B, K, N) uint64 -> ``out`` (B, nc, S*kc, N) float64 (``out_u``: its uint64 view)."""
        nb, k, n = a.shape
        nc = out.shape[1]
        for b in range(nb):
            for c in range(nc):
                for j in range(kc):
                    row = c * kc + j
                    for p in range(slabs.shape[0]):
                        r = p * kc + j
                        of = out[b, c, r]
                        if row >= k:
                            for t in range(n):
                                of[t] = 0.0
                            continue
                        x = a[b, row]
                        ou = out_u[b, c, r]
                        d0 = slabs[p, 0]
                        s0, m0 = shifts[d0], masks[d0]
                        if counts[p] == 1:
                            for t in range(n):
                                ou[t] = (((x[t] + bias) >> s0) & m0) | magic
                        else:
                            d1 = slabs[p, 1]
                            s1, m1 = shifts[d1], masks[d1]
                            for t in range(n):
                                y = x[t] + bias
                                ou[t] = (((y >> s0) & m0) + ((y >> s1) & m1)) | magic
                            for q in range(2, counts[p]):
                                dq = slabs[p, q]
                                for t in range(n):
                                    ou[t] += ((x[t] + bias) >> shifts[dq]) & masks[dq]
                        off = offsets[p]
                        for t in range(n):
                            of[t] -= off

    @jit
    def combine(g, mult, acc, first):
        """``acc (+)= mult * int64(g)`` mod 2^64 (``g``: float64 holding integers of magnitude
        <= 2^53; ``acc``: uint64 of the same length, overwritten when ``first``)."""
        if first:
            for j in range(acc.shape[0]):
                acc[j] = U64(np.int64(g[j])) * mult
        else:
            for j in range(acc.shape[0]):
                acc[j] += U64(np.int64(g[j])) * mult

    return {"split_rows": split_rows, "split_cols": split_cols, "combine": combine}


_KERNELS = None


def kernels() -> dict:
    """The compiled kernels by name (compiled on first use, cached on disk)."""
    global _KERNELS
    if _KERNELS is None:
        jit, why = numba_jit()
        if jit is None:
            raise RuntimeError(why)
        _KERNELS = _build(jit)
    return _KERNELS


class _Plan:
    """A scheme's split as arrays for the kernels: per slab its digits, and per digit the
    shift and mask of its biased part."""

    def __init__(self, scheme, side):
        spec = scheme.slabs(side)
        d = scheme.digits
        self.slabs = np.zeros((len(spec), d), dtype=np.int64)
        self.counts = np.array([len(s) for s in spec], dtype=np.int64)
        for p, slab in enumerate(spec):
            self.slabs[p, : len(slab)] = slab
        self.shifts = np.array([i * scheme.width for i in range(d)], dtype=np.uint64)
        self.masks = np.array([2**wi - 1 for wi in scheme.widths], dtype=np.uint64)
        self.bias = np.uint64(scheme.bias)
        self.offsets = np.array([2.0**52 + sum(scheme.halves[i] for i in s) for s in spec], dtype=np.float64)

    def args(self):
        return self.slabs, self.counts, self.shifts, self.masks, self.bias, self.offsets


class LimbSteps:
    """The fused split and combination, the interface :func:`mpcgpu.ring.limbs.use_fused_steps`
    takes (``name``, :meth:`split_rows`, :meth:`split_cols`, :meth:`combine`)."""

    name = "numba"

    def __init__(self):
        self._k = kernels()
        self._plans = {}

    def _plan(self, scheme, side):
        key = (scheme.name, side)
        if key not in self._plans:
            self._plans[key] = _Plan(scheme, side)
        return self._plans[key]

    def split_rows(self, a, out, kc, scheme, side="left"):
        """``a`` (B, M, K) uint64 (C order) -> ``out`` (B, nc, M, S*kc) float64 (C order)."""
        self._k["split_rows"](a, out, out.view(np.uint64), kc, *self._plan(scheme, side).args())

    def split_cols(self, a, out, kc, scheme, side="right"):
        """``a`` (B, K, N) uint64 (C order) -> ``out`` (B, nc, S*kc, N) float64 (C order)."""
        self._k["split_cols"](a, out, out.view(np.uint64), kc, *self._plan(scheme, side).args())

    def combine(self, g, mult, acc, first):
        """``acc (+)= mult * int64(g)`` mod 2^64; ``g`` float64 (L,), ``acc`` uint64 (L,)."""
        self._k["combine"](g, np.uint64(mult), acc, first)


_STEPS = None


def steps() -> LimbSteps:
    """The one :class:`LimbSteps` of this process."""
    global _STEPS
    if _STEPS is None:
        _STEPS = LimbSteps()
    return _STEPS


__all__ = ["kernels", "steps", "LimbSteps"]
