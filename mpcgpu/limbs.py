"""Balanced limb digits and the float64 GEMM core behind :mod:`mpcgpu.ring`.

A ring element ``x`` (uint64, the integers mod 2^64) is written with ``D``
*balanced signed digits* of ``w`` bits::

    x = d_0 + d_1 2^w + ... + d_{D-1} 2^{(D-1)w}   (mod 2^64),
    -h_i <= d_i < h_i,   h_i = 2^(w_i - 1),

where every digit has ``w_i = w`` bits except the top one, which has
``64 - (D-1)w`` bits (``D w >= 64``).  The digits are small integers, exact
in float64.  For a product ``x y`` the term ``d_i e_j 2^{(i+j)w}`` vanishes
mod 2^64 as soon as ``i + j >= D``, so only the ``D(D+1)/2`` products with
``i + j <= D-1`` are computed, grouped by ``t = i + j`` into ``D`` GEMMs:

    G_t = [d_0 | d_1 | ... | d_t] @ [e_t ; ... ; e_1 ; e_0]

(digit blocks concatenated along the reduction).  Storing the left operand's
digits as ``[d_0 | ... | d_{D-1}]`` and the right operand's in reverse,
``[e_{D-1}; ... ; e_0]``, makes every ``G_t`` a *prefix* times a *suffix* of
the two buffers: plain views, no copies.  Then

    x @ y = sum_t int64(G_t) << (t w)   (mod 2^64).

Exactness: with ``|d_i| <= h_i`` every partial sum of ``G_t`` over a
reduction of length ``K`` is an integer of magnitude at most
``K * B_t``, ``B_t = sum_{i+j=t} h_i h_j``; float64 represents all integers
up to 2^53, whatever order (or FMA) the GEMM uses, so the result is exact
while ``K <= kmax = floor(2^53 / max_t B_t)``.  Longer reductions are cut
into chunks of at most ``kmax`` whose converted results are added in uint64
(wrapping).  The two schemes:

=======  ======  =========  ======  ==========================================
scheme   digits  products   GEMMs   kmax (reduction per chunk)
=======  ======  =========  ======  ==========================================
``W22``  22/22/20  6        3       1024  (``B_1 = 2 * 2^21 * 2^21 = 2^43``)
``W16``  16 x 4    10       4       2^21  (``B_3 = 4 * 2^15 * 2^15 = 2^32``)
=======  ======  =========  ======  ==========================================

The GEMMs of ``W22`` have reductions K, 2K, 3K: the work of 6 float64 GEMMs
of the same shape.  Digit extraction uses only shifts, masks and the
"magic number" int->float conversion (``(u | 0x433...) as float - 2^52``),
elementwise operations that NumPy and CuPy both provide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np  # dtypes and scalar constants only; arrays come from ``xp``

U64 = np.uint64
F64 = np.float64
I64 = np.int64
_EXACT = 2 ** 53                       # float64 holds every integer of magnitude <= 2^53
_MAGIC = 0x4330000000000000            # bit pattern of the float 2^52


@dataclass(frozen=True)
class Scheme:
    """A balanced-digit split: ``digits`` digits of ``width`` bits (the top one narrower)."""

    name: str
    width: int
    digits: int

    @property
    def widths(self) -> tuple:
        w, D = self.width, self.digits
        return (w,) * (D - 1) + (64 - (D - 1) * w,)

    @property
    def halves(self) -> tuple:
        """``h_i``: digit ``i`` lies in ``[-h_i, h_i)``."""
        return tuple(2 ** (wi - 1) for wi in self.widths)

    @property
    def bias(self) -> int:
        """``sum h_i 2^(i w) mod 2^64``: adding it turns balanced digits into plain ones."""
        return sum(h << (i * self.width) for i, h in enumerate(self.halves)) % 2 ** 64

    @property
    def products(self) -> int:
        return self.digits * (self.digits + 1) // 2

    @property
    def kmax(self) -> int:
        """Longest reduction whose every float64 partial sum stays within 2^53."""
        h, D = self.halves, self.digits
        worst = max(sum(h[i] * h[t - i] for i in range(t + 1)) for t in range(D))
        return _EXACT // worst


W22 = Scheme("W22", 22, 3)
W16 = Scheme("W16", 16, 4)
SCHEMES = {s.name: s for s in (W22, W16)}

assert W22.kmax == 1024 and W16.kmax == 2 ** 21 and W22.widths == (22, 22, 20)


def scheme_named(scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError(f"unknown limb scheme {scheme!r}; choose one of {', '.join(SCHEMES)}") from None


def chunking(k: int, kmax: int) -> tuple:
    """``(n_chunks, chunk_len)`` covering a reduction of length ``k`` with chunks of at most ``kmax``.

    The chunks are balanced; ``n_chunks * chunk_len - k`` (< ``n_chunks``) is zero padding.
    """
    n = max(1, math.ceil(k / kmax))
    return n, math.ceil(k / n)


def scratch(xp, role, shape, dtype=F64):
    """A scratch array for ``role``, reused from call to call (NumPy only; uninitialised).

    Fresh NumPy buffers of megabytes cost a page fault per 4 KiB when first
    written (about as much as the digit split itself), so each role keeps
    one buffer, grown as needed (up to :data:`SCRATCH_LIMIT` bytes).  A
    scratch array is valid until the next request for the same role: never
    return one to a caller or keep it.  CuPy has its own memory pool, so on
    CuPy this is plain ``xp.empty``.
    """
    size = math.prod(shape)
    nbytes = size * np.dtype(dtype).itemsize
    if getattr(xp, "__name__", "") != "numpy" or nbytes > SCRATCH_LIMIT:
        return xp.empty(shape, dtype=dtype)
    buf = _SCRATCH.get(role)
    if buf is None or buf.nbytes < nbytes:
        buf = _SCRATCH[role] = xp.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


SCRATCH_LIMIT = 256 * 2 ** 20
_SCRATCH = {}


def release_scratch():
    """Drop the cached scratch buffers (they are re-created on demand)."""
    _SCRATCH.clear()


def split_into(xp, src, dsts, scheme: Scheme):
    """Write the balanced digits of ``src`` (uint64, any strides) into float64 arrays.

    ``dsts[i]`` (same shape as ``src``, any strides, typically a slab of a
    GEMM buffer) receives digit ``i`` as an exact float64 integer in
    ``[-h_i, h_i)``.  The destinations double as integer scratch (viewed as
    uint64), so nothing is allocated: about 4 elementwise passes per digit.
    """
    w, top = scheme.width, scheme.digits - 1
    y = dsts[top].view(U64)
    xp.add(src, U64(scheme.bias), out=y)           # wraps mod 2^64: digits of y are d_i + h_i
    for i in list(range(top)) + [top]:              # the top digit (held in y) last
        u, wi, h = dsts[i].view(U64), scheme.widths[i], scheme.halves[i]
        if i == 0:
            xp.bitwise_and(y, U64(2 ** wi - 1), out=u)
        else:
            xp.right_shift(y, U64(i * w), out=u)
            if i < top:
                xp.bitwise_and(u, U64(2 ** wi - 1), out=u)
        xp.bitwise_or(u, U64(_MAGIC), out=u)       # bits of the float 2^52 + u   (u < 2^52)
        xp.subtract(dsts[i], F64(2 ** 52 + h), out=dsts[i])


def split(xp, src, dst, scheme: Scheme):
    """Digits of ``src`` into ``dst``, a float64 view of shape ``(D,) + src.shape``.

    Where the slabs ``dst[i]`` are strided (rows of a GEMM layout, the
    interior of a padded image), NumPy pays its iterator overhead per row on
    every elementwise pass; the digits are then computed in a contiguous
    scratch array and copied into place in one pass.
    """
    slabs = [dst[i] for i in range(scheme.digits)]
    if getattr(xp, "__name__", "") != "numpy" or all(s.flags.c_contiguous for s in slabs):
        split_into(xp, src, slabs, scheme)
        return
    tmp = scratch(xp, "split", dst.shape)
    split_into(xp, src, list(tmp), scheme)
    xp.copyto(dst, tmp)


def contract(xp, left, right, scheme: Scheme, kc: int):
    """Ring product from split operands.

    ``left``: float64 ``(..., n_chunks, M, D*kc)`` holding ``[d_0|...|d_{D-1}]`` per chunk;
    ``right``: float64 ``(..., n_chunks, D*kc, N)`` holding ``[e_{D-1};...;e_0]``.
    Batch dimensions broadcast as in ``matmul``.  Returns a new uint64
    ``(..., M, N)``: ``D`` GEMMs per chunk, exact while ``kc <= scheme.kmax``.
    """
    if kc > scheme.kmax:
        raise ValueError(f"chunk length {kc} exceeds the exact bound {scheme.kmax} of {scheme.name}")
    D, w = scheme.digits, scheme.width
    shape = _broadcast_shapes(left.shape[:-3], right.shape[:-3]) + (left.shape[-2], right.shape[-1])
    g = scratch(xp, "gemm", shape)
    gi = scratch(xp, "gemm-int", shape, I64).view(U64)
    acc = None
    for c in range(left.shape[-3]):
        lc, rc = left[..., c, :, :], right[..., c, :, :]
        for t in range(D):
            xp.matmul(lc[..., : (t + 1) * kc], rc[..., (D - 1 - t) * kc:, :], out=g)
            if acc is None:                        # exact: |G_t| <= 2^53; negative -> two's complement
                acc = g.astype(I64).view(U64)
                continue
            xp.copyto(gi.view(I64), g, casting="unsafe")
            if t:
                xp.left_shift(gi, U64(t * w), out=gi)
            xp.add(acc, gi, out=acc)               # wraps mod 2^64
    return acc


def _broadcast_shapes(s, t):
    n = max(len(s), len(t))
    s, t = (1,) * (n - len(s)) + tuple(s), (1,) * (n - len(t)) + tuple(t)
    out = []
    for i, j in zip(s, t):
        if i != j and 1 not in (i, j):
            raise ValueError(f"batch shapes {s} and {t} do not broadcast")
        out.append(j if i == 1 else i)
    return tuple(out)
