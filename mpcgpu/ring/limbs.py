"""Balanced limb digits and the float64 GEMM core behind :mod:`mpcgpu.ring.products`.

A ring element ``x`` (uint64, the integers mod 2^64) is written with ``D``
*balanced signed digits* of ``w`` bits::

    x = d_0 + d_1 2^w + ... + d_{D-1} 2^{(D-1)w}   (mod 2^64),
    -h_i <= d_i < h_i,   h_i = 2^(w_i - 1),

every digit ``w`` bits wide except the top one, ``64 - (D-1)w`` bits
(``D w >= 64``).  Digits are small integers, exact in float64.  In a product
``x y`` the term ``d_i e_j 2^{(i+j)w}`` vanishes mod 2^64 once ``i + j >= D``,
so only the products with ``i + j <= D-1`` matter.

Each operand of a matrix product is stored as a row of *slabs* (a digit, or
a sum of digits), concatenated along the reduction: the left operand as
``[l_0 | l_1 | ...]`` (columns), the right as ``[r_0; r_1; ...]`` (rows).  A
scheme's GEMMs multiply a contiguous run of left slabs by a contiguous run
of right slabs -- plain views, no copies -- and the result is

    x @ y = sum_g  multiplier_g * int64(G_g)   (mod 2^64).

=======  ========  ========  =====  =====================================================
scheme   digits    products  GEMMs  kmax: reduction per chunk (worst GEMM bound)
=======  ========  ========  =====  =====================================================
``K22``  22/22/20  5         4      512   ``(d0+d1)(e0+e1)``: ``2^22 * 2^22 = 2^44`` per term
``W22``  22/22/20  6         3      1024  ``d0 e1 + d1 e0``: ``2 * 2^21 * 2^21 = 2^43``
``W16``  16 x 4    10        4      2^21  ``sum_{i+j=3} d_i e_j``: ``4 * 2^15 * 2^15 = 2^32``
=======  ========  ========  =====  =====================================================

* ``W22``/``W16`` group the products by shift ``t = i + j``:
  ``G_t = [d_0|...|d_t] @ [e_t;...;e_0]``, multiplier ``2^{t w}``; left slabs
  ``[d_0|d_1|...]``, right slabs reversed ``[...;e_1;e_0]``, so ``G_t`` is a
  prefix times a suffix.  ``W22`` GEMMs have reductions K, 2K, 3K.
* ``K22`` (Karatsuba on the middle term): ``d0 e1 + d1 e0 = (d0+d1)(e0+e1) -
  d0 e0 - d1 e1``, so 5 products: ``P00 = d0 e0``, ``P11 = d1 e1``,
  ``S = (d0+d1)(e0+e1)``, ``Q = d0 e2 + d2 e0`` (one GEMM over 2K), combined as
  ``(1 - 2^22) P00 + (2^44 - 2^22) P11 + 2^22 S + 2^44 Q``.  Slabs: left
  ``[d1|d0|d2|d0+d1]``, right ``[e2;e0;e1;e0+e1]``.

Exactness: a GEMM pairing slabs ``(l_p, r_p)`` has every float64 partial sum
over a reduction of ``K`` bounded by ``K * sum_p max|l_p| max|r_p|``
(``max|d_i| = h_i``); float64 holds every integer up to 2^53 whatever the
summation order (or FMA), so the result is exact while ``K <= kmax =
floor(2^53 / worst GEMM bound)``, computed from the plan itself
(:attr:`Scheme.kmax`).  Longer reductions are cut into chunks of at most
``kmax`` whose converted results are added in uint64 (wrapping).  Every
GEMM result converts to int64 exactly (``|G| <= 2^53``); negative values
wrap to their two's complement, which is their value mod 2^64.

Digit extraction uses only adds, shifts, masks and the "magic number"
int->float conversion (``(u | 0x433...) as float - 2^52``), elementwise
operations that NumPy and CuPy both provide.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np  # dtypes and scalar constants only; arrays come from ``xp``

U64 = np.uint64
F64 = np.float64
I64 = np.int64
_EXACT = 2**53  # float64 holds every integer of magnitude <= 2^53
_MAGIC = 0x4330000000000000  # bit pattern of the float 2^52


@dataclass(frozen=True)
class Scheme:
    """A balanced-digit split and the GEMM plan that multiplies two split operands.

    ``left``/``right``: the slabs of each operand in storage order, each a
    tuple of digit indices whose sum it holds (every digit appears alone
    once).  ``gemms``: ``((l0, l1), (r0, r1), multiplier)``: left slabs
    ``l0:l1`` times right slabs ``r0:r1``, weighted by ``multiplier`` mod 2^64.
    """

    name: str
    width: int
    digits: int
    left: tuple
    right: tuple
    gemms: tuple

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
        return sum(h << (i * self.width) for i, h in enumerate(self.halves)) % 2**64

    def slabs(self, side) -> tuple:
        return self.left if side == "left" else self.right

    @property
    def products(self) -> int:
        """Slab products per chunk, in units of one float64 GEMM of the chunk's shape."""
        return sum(l1 - l0 for (l0, l1), _, _ in self.gemms)

    def bound(self, gemm) -> int:
        """Largest magnitude of one reduction term of ``gemm`` (a sum of slab products)."""
        (l0, _), (r0, r1), _ = gemm
        mag = lambda slab: sum(self.halves[i] for i in slab)  # noqa: E731
        return sum(mag(self.left[l0 + p]) * mag(self.right[r0 + p]) for p in range(r1 - r0))

    @property
    def kmax(self) -> int:
        """Longest reduction whose every float64 partial sum stays within 2^53."""
        return _EXACT // max(self.bound(g) for g in self.gemms)


def _by_shift(name, width, digits):
    """The scheme that groups the products by shift ``t = i + j`` (one GEMM per t)."""
    d = digits
    gemms = tuple(((0, t + 1), (d - 1 - t, d), (1 << (t * width)) % 2**64) for t in range(d))
    return Scheme(name, width, digits, tuple((i,) for i in range(d)), tuple((i,) for i in reversed(range(d))), gemms)


W22 = _by_shift("W22", 22, 3)
W16 = _by_shift("W16", 16, 4)
K22 = Scheme(
    "K22",
    22,
    3,
    left=((1,), (0,), (2,), (0, 1)),
    right=((2,), (0,), (1,), (0, 1)),
    gemms=(
        ((1, 2), (1, 2), (1 - 2**22) % 2**64),  # P00 = d0 e0
        ((0, 1), (2, 3), (2**44 - 2**22) % 2**64),  # P11 = d1 e1
        ((3, 4), (3, 4), 2**22),  # S = (d0 + d1)(e0 + e1)
        ((1, 3), (0, 2), 2**44),
    ),
)  # Q = d0 e2 + d2 e0
SCHEMES = {s.name: s for s in (K22, W22, W16)}

assert (K22.kmax, W22.kmax, W16.kmax) == (512, 1024, 2**21)
assert (K22.products, W22.products, W16.products) == (5, 6, 10)


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
    written (measured: about as much as the digit split itself), so each
    role keeps one buffer per thread, grown as needed (up to
    :data:`SCRATCH_LIMIT` bytes).  A scratch array is valid until the next
    request for the same role in the same thread: never return one to a
    caller or keep it.  CuPy has its own memory pool: there this is
    ``xp.empty``.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if getattr(xp, "__name__", "") != "numpy" or nbytes > SCRATCH_LIMIT:
        return xp.empty(shape, dtype=dtype)
    pool = _LOCAL.__dict__.setdefault("buffers", {})
    buf = pool.get(role)
    if buf is None or buf.nbytes < nbytes:
        buf = pool[role] = xp.empty(max(nbytes, 1), dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


SCRATCH_LIMIT = 256 * 2**20
_LOCAL = threading.local()


def release_scratch():
    """Drop this thread's cached scratch buffers (they are re-created on demand)."""
    _LOCAL.__dict__.pop("buffers", None)


def split_into(xp, src, dsts, scheme: Scheme):
    """Write the balanced digits of ``src`` (uint64, any strides) into float64 arrays.

    ``dsts[i]`` (same shape as ``src``, any strides, typically a slab of a
    GEMM buffer) receives digit ``i`` as an exact float64 integer in
    ``[-h_i, h_i)``.  The destinations double as integer scratch (viewed as
    uint64), so nothing is allocated: about 4 elementwise passes per digit.
    """
    w, top = scheme.width, scheme.digits - 1
    y = dsts[top].view(U64)
    xp.add(src, U64(scheme.bias), out=y)  # wraps mod 2^64: digits of y are d_i + h_i
    for i in list(range(top)) + [top]:  # the top digit (held in y) last
        u, wi, h = dsts[i].view(U64), scheme.widths[i], scheme.halves[i]
        if i == 0:
            xp.bitwise_and(y, U64(2**wi - 1), out=u)
        else:
            xp.right_shift(y, U64(i * w), out=u)
            if i < top:
                xp.bitwise_and(u, U64(2**wi - 1), out=u)
        xp.bitwise_or(u, U64(_MAGIC), out=u)  # bits of the float 2^52 + u   (u < 2^52)
        xp.subtract(dsts[i], F64(2**52 + h), out=dsts[i])


def split(xp, src, dst, scheme: Scheme, side: str):
    """The ``side`` slabs of ``src`` into ``dst``, a float64 view of shape ``(n_slabs,) + src.shape``.

    On CuPy: one elementwise pass per operation.  On NumPy, where every
    operation is a separate pass over memory, the work goes in cache-sized
    blocks: each block's slabs are computed in a small contiguous scratch
    array (so strided destinations such as GEMM-layout rows or the interior
    of a padded image cost one copy, not a slow iterator on every pass) and
    copied into place.
    """
    spec = scheme.slabs(side)
    if getattr(xp, "__name__", "") != "numpy":
        _slabs_into(xp, src, dst, scheme, spec)
        return
    tmp = scratch(xp, "split", (len(spec), min(src.size, SPLIT_BLOCK)))
    for idx in _blocks(src.shape, SPLIT_BLOCK):
        s = src[idx]
        t = tmp[:, : s.size].reshape((len(spec),) + s.shape)
        _slabs_into(xp, s, t, scheme, spec)
        xp.copyto(dst[(slice(None),) + idx], t)


def _slabs_into(xp, src, dst, scheme, spec):
    at = {slab[0]: p for p, slab in enumerate(spec) if len(slab) == 1}
    split_into(xp, src, [dst[at[i]] for i in range(scheme.digits)], scheme)
    for p, slab in enumerate(spec):
        if len(slab) > 1:  # a sum of digits (exact: tiny integers)
            xp.add(dst[at[slab[0]]], dst[at[slab[1]]], out=dst[p])
            for i in slab[2:]:
                xp.add(dst[p], dst[at[i]], out=dst[p])


SPLIT_BLOCK = 2**16
"""Elements per block of the NumPy digit split (measured best between 2^15 and 2^17)."""


def _blocks(shape, target):
    """Index tuples cutting an array of ``shape`` into pieces of at most ``target`` elements
    (whole trailing dimensions where possible)."""
    if not shape or math.prod(shape) <= target:
        yield ()
        return
    inner = math.prod(shape[1:])
    if inner <= target:
        step = max(1, target // max(inner, 1))
        for i in range(0, shape[0], step):
            yield (slice(i, i + step),)
    else:
        for i in range(shape[0]):
            for rest in _blocks(shape[1:], target):
                yield (slice(i, i + 1),) + rest


_FUSED = None


def use_fused_steps(steps):
    """Install fused split / combination steps (``None``: the array code of this module).

    ``steps`` (the ``numba`` kernel set's, :mod:`mpcgpu.kernelsets.fused_limbs`) has a
    ``name`` and ``split_rows(a, out, kc, scheme, side)`` (``a`` (B, M, K) -> ``out``
    (B, nc, M, S*kc)), ``split_cols(a, out, kc, scheme, side)`` (``a`` (B, K, N) -> ``out``
    (B, nc, S*kc, N)) and ``combine(g, mult, acc, first)`` (``acc (+)= mult * int64(g)``), computing the same words as
    :func:`split` and :func:`contract`.  They serve NumPy arrays only.  Returns the steps
    installed before."""
    global _FUSED
    previous, _FUSED = _FUSED, steps
    return previous


def fused_steps_name() -> str:
    """``"array"`` or the name of the installed fused steps."""
    return "array" if _FUSED is None else _FUSED.name


def fused_steps(xp):
    """The installed fused steps where they serve ``xp`` (NumPy), else None."""
    return _FUSED if _FUSED is not None and getattr(xp, "__name__", "") == "numpy" else None


def contract(xp, left, right, scheme: Scheme, kc: int, check: bool = True):
    """Ring product from split operands.

    ``left``: float64 ``(..., n_chunks, M, n_left_slabs*kc)``, ``right``:
    float64 ``(..., n_chunks, n_right_slabs*kc, N)``, each chunk holding the
    scheme's slabs.  Batch dimensions broadcast as in ``matmul``.  Returns a
    new uint64 ``(..., M, N)``: ``len(scheme.gemms)`` GEMMs per chunk, exact
    while ``kc <= scheme.kmax`` (``check=False`` skips that guard: tests only).
    """
    if check and kc > scheme.kmax:
        raise ValueError(f"chunk length {kc} exceeds the exact bound {scheme.kmax} of {scheme.name}")
    shape = _broadcast_shapes(left.shape[:-3], right.shape[:-3]) + (left.shape[-2], right.shape[-1])
    fused = fused_steps(xp)
    if fused is not None:
        return _contract_fused(xp, fused, left, right, scheme, kc, shape)
    g = scratch(xp, "gemm", shape)
    gi = scratch(xp, "gemm-int", shape, I64).view(U64)
    acc = None
    for c in range(left.shape[-3]):
        lc, rc = left[..., c, :, :], right[..., c, :, :]
        for (l0, l1), (r0, r1), mult in scheme.gemms:
            xp.matmul(lc[..., l0 * kc : l1 * kc], rc[..., r0 * kc : r1 * kc, :], out=g)
            if acc is None and mult == 1:  # exact: |G| <= 2^53; negative -> two's complement
                acc = g.astype(I64).view(U64)
                continue
            xp.copyto(gi.view(I64), g, casting="unsafe")
            if mult & (mult - 1) == 0:
                xp.left_shift(gi, U64(mult.bit_length() - 1), out=gi)
            else:
                xp.multiply(gi, U64(mult), out=gi)  # wraps mod 2^64
            if acc is None:
                acc = gi.copy()
            else:
                xp.add(acc, gi, out=acc)  # wraps mod 2^64
    return acc


def _contract_fused(xp, fused, left, right, scheme, kc, shape):
    """:func:`contract` with each GEMM result added into the sum by one fused pass."""
    g = scratch(xp, "gemm", shape)
    acc = xp.empty(shape, dtype=U64)
    flat_g, flat_acc = g.reshape(-1), acc.reshape(-1)
    for c in range(left.shape[-3]):
        lc, rc = left[..., c, :, :], right[..., c, :, :]
        for t, ((l0, l1), (r0, r1), mult) in enumerate(scheme.gemms):
            xp.matmul(lc[..., l0 * kc : l1 * kc], rc[..., r0 * kc : r1 * kc, :], out=g)
            fused.combine(flat_g, mult, flat_acc, c == 0 and t == 0)
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
