"""Fused CPU kernels for the local steps of the binary protocols (numba).

Between two exchanges, a protocol's local work is a chain of cheap word operations
(shifts, masks, folds, the AND's cross terms, the XOR of two PRG streams).  On NumPy
each is one pass over memory and one temporary array; here each chain is one pass.
The kernels compute exactly what the array steps of :mod:`mpcgpu.kernelsets.array`
compute -- the same words, from the same PRG words in the same order -- so the messages
are the same bits either way (tested); they run as the steps of the ``numba`` kernel set
(:mod:`mpcgpu.kernelsets.numba_cpu`), chosen once at ``init`` (:mod:`mpcgpu.kernelsets`).

Kernels (``n`` words in, every output a fresh array):

* :func:`msb_level1` -- level 1 of the MSB tree from the adder's ``(G, P)`` pairs,
  with the AND's local term: ``(z, H0, H1)``;
* :func:`msb_level` -- one later level from the previous ``(H, z)`` of both
  components (``W = H ^ z`` formed on the fly), folding two words into one:
  ``(z', H0', H1')`` of ``ceil(m / 2)`` words;
* :func:`msb_final` -- ``W = H ^ z`` read at each element's lane, XOR the top bits.
"""

from __future__ import annotations

import numpy as np

from mpcgpu.ring.native import numba_jit


def _build(jit):
    """The compiled kernels of this module, by name."""
    u = np.uint64
    EVEN = u(0x5555555555555555)
    M63 = u((1 << 63) - 1)
    B63 = u(1 << 63)
    ONE = u(1)

    @jit
    def level1(gf, gs, pf, ps, pub_f, pub_s, own, nxt):
        n = gf.shape[0]
        z = np.empty(n, dtype=np.uint64)
        h0 = np.empty(n, dtype=np.uint64)
        h1 = np.empty(n, dtype=np.uint64)
        for i in range(n):
            g0 = gf[i] & M63
            g1 = gs[i] & M63
            p0 = (pf[i] & M63) | (B63 if pub_f else u(0))
            p1 = (ps[i] & M63) | (B63 if pub_s else u(0))
            lo0 = (p0 >> ONE) & EVEN
            lo1 = (p1 >> ONE) & EVEN
            y0 = lo0 | (lo0 << ONE)
            y1 = lo1 | (lo1 << ONE)
            x0 = (g0 & EVEN) | ((p0 & EVEN) << ONE)
            x1 = (g1 & EVEN) | ((p1 & EVEN) << ONE)
            h0[i] = (g0 >> ONE) & EVEN
            h1[i] = (g1 >> ONE) & EVEN
            z[i] = (x0 & (y0 ^ y1)) ^ (x1 & y0) ^ own[i] ^ nxt[i]
        return z, h0, h1

    @jit
    def level(h0, z0, h1, z1, lo2, log, sh_g, sh_p, fold, own, nxt):
        m = h0.shape[0]
        half = (m + 1) // 2
        z = np.empty(half, dtype=np.uint64)
        oh0 = np.empty(half, dtype=np.uint64)
        oh1 = np.empty(half, dtype=np.uint64)
        for i in range(half):
            wl0 = h0[i] ^ z0[i]
            wl1 = h1[i] ^ z1[i]
            if i + half < m:
                wh0 = h0[i + half] ^ z0[i + half]
                wh1 = h1[i + half] ^ z1[i + half]
            else:
                wh0 = u(0)
                wh1 = u(0)
            tl0 = (wl0 >> sh_p) & log
            th0 = (wh0 >> sh_p) & log
            tl1 = (wl1 >> sh_p) & log
            th1 = (wh1 >> sh_p) & log
            y0 = (tl0 | (tl0 << ONE)) | ((th0 | (th0 << ONE)) << fold)
            y1 = (tl1 | (tl1 << ONE)) | ((th1 | (th1 << ONE)) << fold)
            x0 = (wl0 & lo2) | ((wh0 & lo2) << fold)
            x1 = (wl1 & lo2) | ((wh1 & lo2) << fold)
            oh0[i] = ((wl0 >> sh_g) & log) | (((wh0 >> sh_g) & log) << fold)
            oh1[i] = ((wl1 >> sh_g) & log) | (((wh1 >> sh_g) & log) << fold)
            z[i] = (x0 & (y0 ^ y1)) ^ (x1 & y0) ^ own[i] ^ nxt[i]
        return z, oh0, oh1

    @jit
    def final(h0, z0, h1, z1, word, shift, pf, ps):
        n = word.shape[0]
        b0 = np.empty(n, dtype=np.uint64)
        b1 = np.empty(n, dtype=np.uint64)
        for e in range(n):
            w = word[e]
            s = shift[e]
            b0[e] = (((h0[w] ^ z0[w]) >> s) & ONE) ^ (pf[e] >> u(63))
            b1[e] = (((h1[w] ^ z1[w]) >> s) & ONE) ^ (ps[e] >> u(63))
        return b0, b1

    return {"level1": level1, "level": level, "final": final}


class Kernels:
    """A module's numba kernels, built by ``build(jit) -> {name: kernel}`` on first use
    (compiled once, cached on disk).  Whether they run is the choice of the kernel set
    (:func:`mpcgpu.kernelsets.choose_kernel_set`), not theirs."""

    def __init__(self, build):
        self._build, self._kernels, self._why = build, None, None

    def _compile(self):
        if self._kernels is None and self._why is None:
            jit, self._why = numba_jit()
            if jit is not None:
                self._kernels = self._build(jit)
        return self._kernels

    def kernels(self) -> dict:
        """The compiled kernels (a RuntimeError saying why where numba cannot run)."""
        k = self._compile()
        if k is None:
            raise RuntimeError(self._why)
        return k


_SET = Kernels(_build)
kernels = _SET.kernels

__all__ = ["Kernels", "kernels"]
