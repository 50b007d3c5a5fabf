"""The numba kernel set: the local steps as fused CPU kernels, one pass over memory each.

Between two exchanges a protocol's local work is a chain of cheap word operations; on NumPy
each is one pass and one temporary.  Here each step is one compiled loop (the kernels of
:mod:`mpcgpu.kernelsets.fused` -- the MSB tree --, :mod:`mpcgpu.kernelsets.fused_trunc` -- the truncation -- and
:mod:`mpcgpu.kernelsets.fused_relu` -- adder inputs, the product with a shared bit; and
:mod:`mpcgpu.kernelsets.fused_limbs`, the digit split and combination of the ring products'
limbs, installed into :mod:`mpcgpu.ring.limbs` when the set is chosen), computing the same
ring expressions mod 2^64 as :class:`~mpcgpu.kernelsets.array.ArraySteps` from the same
inputs, so the words are the same bit for bit (tests/test_kernelsets_mpi.py).  The PRG words
a step consumes go into warm per-thread scratch buffers (:meth:`prg_buffer`, consumed inside
the call).  What the kernels do not cover runs the array steps: a truncation with ``keep``
(exact rounding), a bit broadcast against ``x`` or ``b2a`` alone.

NumPy back end only, numba importable (compiled once, cached on disk).
"""

from __future__ import annotations

import numpy  # scalar flags and host scratch; the arrays are the NumPy back end's

from mpcgpu.kernelsets import fused, fused_limbs, fused_relu, fused_trunc
from mpcgpu.ring.limbs import scratch
from mpcgpu.ring.native import numba_jit
from .array import ArraySteps, level_masks

U64 = numpy.uint64


def _flat(a):
    return numpy.ascontiguousarray(a).reshape(-1)


class NumbaSteps(ArraySteps):
    """Fused CPU kernels (see the module docstring); the array steps where they do not apply."""

    name = "numba"
    _WHY = {}

    @classmethod
    def why_not(cls, backend) -> str | None:
        if backend.name != "cpu":
            return f"numba kernels run on the NumPy back end, not on {backend.name}"
        if "why" not in cls._WHY:
            cls._WHY["why"] = numba_jit()[1]
        return cls._WHY["why"]

    def __init__(self, backend):
        super().__init__(backend)
        self._tree, self._trunc, self._relu = fused.kernels(), fused_trunc.kernels(), fused_relu.kernels()
        self.limb_steps = fused_limbs.steps()  # the limbs' split and combination (ring products)

    def prg_buffer(self, role, count):
        """A warm host buffer per role and thread (:func:`mpcgpu.ring.limbs.scratch`)."""
        return scratch(numpy, role, (int(count),), U64)

    # -- truncation ----------------------------------------------------------------------------

    @staticmethod
    def _shifts(d):
        per = numpy.ndim(d) > 0
        return (d if per else numpy.full(1, d, dtype=U64)), per

    def trunc_deal(self, ka, kb, summand, d, keep, first, second):
        if keep:
            return super().trunc_deal(ka, kb, summand, d, keep, first, second)
        n, fz = first.shape[0], summand is not None
        dv, per = self._shifts(d)
        tob, toa = numpy.empty((2 + fz, n), dtype=U64), numpy.empty((1 if fz else 0, n), dtype=U64)
        self._trunc["deal"](ka, kb, summand if fz else first, dv, per, fz, tob, toa, first, second)
        return tob, (toa if fz else None)

    def trunc_open_message(self, parts, k, fused, row):
        x0 = parts[0]
        x1 = parts[1] if len(parts) > 1 else x0
        return self._trunc["open_message"](x0, x1, len(parts) > 1, k, fused, row, numpy.empty(x0.shape[0], dtype=U64))

    def trunc_open_half(self, parts, msg, k, other, dealt, fused, is_a, row, d, const, keep, kept):
        if keep:
            return super().trunc_open_half(parts, msg, k, other, dealt, fused, is_a, row, d, const, keep, kept)
        x0 = parts[0]
        x1 = parts[1] if len(parts) > 1 else x0
        dv, per = self._shifts(d)
        half = numpy.empty(x0.shape[0], dtype=U64)
        self._trunc["open_half"](
            x0, x1, len(parts) > 1, k, other, k if dealt is None else dealt, fused, is_a, dv, per, const, half, kept
        )
        return half, None

    # -- adder inputs ----------------------------------------------------------------------------

    def adder_sum(self, xf, xs, negate, rho):
        return self._relu["adder_sum"](_flat(xf), _flat(xs), negate, rho, numpy.empty(xf.shape, dtype=U64))

    def adder_and(self, x, negate, other, mask):
        x = _flat(x)
        x2 = numpy.empty(x.shape, dtype=U64) if negate else x
        return x2, self._relu["adder_and"](x, negate, other, mask, x2, numpy.empty(x.shape, dtype=U64))

    # -- the MSB tree ---------------------------------------------------------------------------

    def msb_level1(self, gf, gs, pf, ps, pub_f, pub_s, own, nxt):
        gf, gs, pf, ps = (_flat(a) for a in (gf, gs, pf, ps))
        return self._tree["level1"](gf, gs, pf, ps, bool(pub_f), bool(pub_s), own, nxt)

    def msb_level(self, h0, z0, h1, z1, d, own, nxt):
        lo2, log = level_masks(d)
        return self._tree["level"](h0, z0, h1, z1, U64(lo2), U64(log), U64(2 * d), U64(2 * d + 1), U64(2 * d), own, nxt)

    def msb_final(self, h0, z0, h1, z1, word, shift, pf, ps):
        return self._tree["final"](h0, z0, h1, z1, word, shift, _flat(pf), _flat(ps))

    # -- the product with a shared bit ------------------------------------------------------------

    def inject_p1_message(self, xf, xs, b2, mu):
        if xf.shape != b2.shape:
            return super().inject_p1_message(xf, xs, b2, mu)
        return self._relu["p1_message"](_flat(xf), _flat(xs), _flat(b2), _flat(mu), numpy.empty(xf.size, dtype=U64))

    def inject_p2_message(self, xs, b2, nu):
        if xs.shape != b2.shape:
            return super().inject_p2_message(xs, b2, nu)
        return self._relu["p2_message"](_flat(xs), _flat(b2), _flat(nu), numpy.empty(xs.size, dtype=U64))

    def inject_p0_message(self, bf, bs, rho):
        return self._relu["p0_message"](_flat(bf), _flat(bs), _flat(rho), numpy.empty(bf.size, dtype=U64))

    @staticmethod
    def _covers(x, b):
        return x is not None and x[0].shape == b.shape

    def _z(self, n, with_bit):
        return numpy.empty(2 * n if with_bit else n, dtype=U64)

    def inject_p0_term(self, x, t0, rho, mu, nu, own, nxt, with_bit):
        if not self._covers(x, rho):
            return super().inject_p0_term(x, t0, rho, mu, nu, own, nxt, with_bit)
        f = [_flat(a) for a in (x[0], x[1], t0, rho, mu, nu)]
        return self._relu["p0_term"](*f, own, nxt, with_bit, self._z(f[0].size, with_bit))

    def inject_p1_term(self, x, b2, rho, mu, v1, v2, own, nxt, with_bit):
        if not self._covers(x, b2):
            return super().inject_p1_term(x, b2, rho, mu, v1, v2, own, nxt, with_bit)
        f = [_flat(a) for a in (x[0], x[1], b2, rho, mu, v1, v2)]
        return self._relu["p1_term"](*f, own, nxt, with_bit, self._z(f[0].size, with_bit))

    def inject_p2_term(self, x, b2, t0, v1, v2, own, nxt, with_bit):
        if not self._covers(x, b2):
            return super().inject_p2_term(x, b2, t0, v1, v2, own, nxt, with_bit)
        f = [_flat(a) for a in (x[0], b2, t0, v1, v2)]
        return self._relu["p2_term"](*f, own, nxt, with_bit, self._z(f[0].size, with_bit))


__all__ = ["NumbaSteps"]
