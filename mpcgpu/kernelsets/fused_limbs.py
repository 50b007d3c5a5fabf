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

    @jit
    def slab_row(x, n, out_u, out_f, digits, shifts, masks, bias, offset):
        """``out[:n]`` = the slab of ``x[:n]`` summing ``digits`` (its biased parts); the
        rest of ``out`` zero (padding)."""
        s0, m0 = shifts[digits[0]], masks[digits[0]]
        if digits.shape[0] == 1:
            for j in range(n):
                out_u[j] = (((x[j] + bias) >> s0) & m0) | magic
        elif digits.shape[0] == 2:
            s1, m1 = shifts[digits[1]], masks[digits[1]]
            for j in range(n):
                y = x[j] + bias
                out_u[j] = (((y >> s0) & m0) + ((y >> s1) & m1)) | magic
        else:
            for j in range(n):
                y = x[j] + bias
                t = U64(0)
                for d in digits:
                    t += (y >> shifts[d]) & masks[d]
                out_u[j] = t | magic
        for j in range(n):
            out_f[j] -= offset
        for j in range(n, out_f.shape[0]):
            out_f[j] = 0.0

    @jit
    def split_rows(a, out, out_u, kc, slabs, counts, shifts, masks, bias, offsets):
        """``a`` (B, M, K) uint64 -> ``out`` (B, nc, M, S*kc) float64 (``out_u``: its uint64 view)."""
        nb, m, k = a.shape
        nc = out.shape[1]
        n_slabs = slabs.shape[0]
        for b in range(nb):
            for c in range(nc):
                lo = c * kc
                n = min(kc, k - lo) if k > lo else 0
                for i in range(m):
                    x = a[b, i, lo : lo + n]
                    for p in range(n_slabs):
                        at = p * kc
                        slab_row(
                            x,
                            n,
                            out_u[b, c, i, at : at + kc],
                            out[b, c, i, at : at + kc],
                            slabs[p, : counts[p]],
                            shifts,
                            masks,
                            bias,
                            offsets[p],
                        )

    @jit
    def split_cols(a, out, out_u, kc, slabs, counts, shifts, masks, bias, offsets):
        """``a`` (B, K, N) uint64 -> ``out`` (B, nc, S*kc, N) float64 (``out_u``: its uint64 view)."""
        nb, k, n = a.shape
        nc = out.shape[1]
        n_slabs = slabs.shape[0]
        for b in range(nb):
            for c in range(nc):
                for j in range(kc):
                    row = c * kc + j
                    for p in range(n_slabs):
                        r = p * kc + j
                        if row < k:
                            slab_row(
                                a[b, row],
                                n,
                                out_u[b, c, r],
                                out[b, c, r],
                                slabs[p, : counts[p]],
                                shifts,
                                masks,
                                bias,
                                offsets[p],
                            )
                        else:
                            out[b, c, r, :] = 0.0

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
