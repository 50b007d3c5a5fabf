"""2-out-of-3 replicated arithmetic secret sharing over Z_{2^64}.

A secret ``x`` is split as ``x = x0 + x1 + x2 (mod 2^64)``; party ``i`` holds
the pair ``(x_i, x_{i+1})`` (indices mod 3) in :class:`ArithmeticShare`
(``first``, ``second``).  Any two parties can reconstruct, one learns nothing.

Every share carries a ``scale``: the number of fractional bits of its
fixed-point encoding (``rt.frac_bits`` for reals, ``0`` for integers such as
comparison bits).  Products add scales; a product whose scale exceeds the
runtime's ``frac_bits`` is truncated back (:mod:`mpcgpu.sharing.truncation`).

Costs (rounds; bytes sent per output element, per party unless stated;
"truncation" is the default MSB-corrected one, 2 rounds):

=========================  ======  ==========================================
operation                  rounds  bytes / element
=========================  ======  ==========================================
share (from one party)     1 (+1)  8 to each of the two others, from the source
                                   only (+1 tiny round: shape and verdict)
reveal to all              1       8
reveal to one party        1       8, from one party only
add, sub, neg, add public  0       0
mul by public integer      0       0
mul by public real         2       a truncation of 2 elements per element
                                   (1 for a power of two, 0 for 2^k, k >= 0)
mul / matmul / conv        1       8 (integer result, resharing with a zero
(two shares)                       share); a real result fuses the resharing
                                   into the truncation: 2 rounds, 64 bytes in
                                   all (dealer 32, openers 16 each; rotating)
truncation                 2       16 (48 in all)
=========================  ======  ==========================================

Ranges: values are encoded with ``|v| < 2^(63-2f)``; the truncation of a
product needs its ring value below ``2^62``, i.e. ``|a * b| < 2^(62-2f)``
(``2^30`` for ``f = 16``) -- the caller's to respect on secret data, checked
on public data (a public factor is split so that any encodable share times it
stays in range).

The non-linear functions (``relu``, comparisons, ``exp``, ...) are protocols
(:mod:`mpcgpu.protocols`); they are attached to this class as methods in one
place, :mod:`mpcgpu.protocols.methods`, so this module imports nothing from
them.  All share data stays on the runtime's back end (NumPy or CuPy).
"""

from __future__ import annotations

import math
import numbers

import numpy  # public constants and shapes only (host); share data uses rt.xp

from mpcgpu.util import faults
from mpcgpu.ring import products as ring
from mpcgpu.ring.encoding import check_range, decode, encode, safe_limit
from ..errors import EncodingError, ProtocolError
from ..runtime import get as _runtime
from . import replicated
from .replicated import ReplicatedPair, with_public
from .truncation import aby3, check_mode, msb_corrected, reshare


class ArithmeticShare(ReplicatedPair):
    """This party's two components of a replicated arithmetic sharing."""

    def __init__(self, first, second, scale: int, rt=None):
        self.rt = rt or _runtime()
        xp = self.rt.xp
        if not isinstance(first, xp.ndarray):  # 0-d results of reductions come back as scalars
            first, second = xp.asarray(first), xp.asarray(second)
        if first.shape != second.shape:
            raise ProtocolError(f"component shapes differ: {first.shape} vs {second.shape}")
        self.first = first
        self.second = second
        self.scale = int(scale)

    def __repr__(self):
        return f"ArithmeticShare(shape={self.shape}, scale={self.scale}, party={self.rt.rank})"

    def _new(self, first, second, scale=None):
        return ArithmeticShare(first, second, self.scale if scale is None else scale, self.rt)

    def _compatible(self, other) -> bool:
        return isinstance(other, ArithmeticShare) and other.scale == self.scale

    def relabel(self, scale: int) -> "ArithmeticShare":
        """The same ring elements read with ``scale`` fractional bits (free)."""
        return self._new(self.first, self.second, scale)

    # -- reconstruction ----------------------------------------------------------------
    def reveal_raw(self, to: int | None = None):
        """The secret as uint64 ring elements on the back end (``None`` on parties other than ``to``).

        To all: 1 round, 8 bytes/element per party.  To party ``r`` only: 1 round, 8
        bytes/element from party ``r-1``.
        """
        return self._reconstruct(to, lambda a, b, c: a + b + c)

    def reveal(self, to: int | None = None):
        """Decode the secret to a host NumPy array: float64 (int64 for scale 0).

        ``to=None`` reveals to all three parties, ``to=r`` to party ``r`` only (others get None).
        """
        raw = self.reveal_raw(to)
        if raw is None:
            return None
        return self.rt.backend.to_host(decode(raw, self.scale))

    # -- public operands ---------------------------------------------------------------
    def _encode_public(self, value, scale: int):
        """A public number or array as ring elements at ``scale`` fractional bits.

        Range-checked like a shared value (EncodingError outside ``|v| < 2^(63-2f)``)."""
        xp, f = self.xp, self.rt.frac_bits
        if _is_int(value):
            if abs(int(value)) >= safe_limit(f):
                raise EncodingError(f"public integer {value} is outside the fixed-point range (|v| < 2^{63 - 2 * f})")
            return xp.asarray((int(value) << scale) % (1 << 64), dtype=xp.uint64)
        arr = value if isinstance(value, xp.ndarray) else self.rt.backend.to_device(numpy.asarray(value))
        check_range(arr, f, "public operand")
        return encode(arr, scale, check=False)

    def _plus_public(self, value, sign: int = 1):
        """``x + sign * value`` for a public ``value``; an integer share meeting a public
        real is promoted to ``rt.frac_bits`` first (never rounded to an integer)."""
        x = self
        if x.scale < x.rt.frac_bits and not _is_integral(value):
            x = to_scale(x, x.rt.frac_bits)
        c = x._encode_public(value, x.scale)
        op = (lambda a, b: a + b) if sign > 0 else (lambda a, b: a - b)
        first, second = with_public(x.first, x.second, c, x.rt.rank, x.xp, op)
        return x._new(first, second)

    # -- linear operations (local, 0 rounds) --------------------------------------------
    def _aligned(self, other: "ArithmeticShare"):
        """Bring two shares to a common scale (an integer share is promoted; reals must agree)."""
        if self.scale == other.scale:
            return self, other
        if self.scale == 0:
            return to_scale(self, other.scale), other
        if other.scale == 0:
            return self, to_scale(other, self.scale)
        raise ProtocolError(f"cannot combine shares with different scales ({self.scale} and {other.scale})")

    def __add__(self, other):
        if isinstance(other, ArithmeticShare):
            a, b = self._aligned(other)
            return a._new(a.first + b.first, a.second + b.second)
        if isinstance(other, ReplicatedPair):
            return NotImplemented
        return self._plus_public(other)

    __radd__ = __add__

    def __neg__(self):
        return self._new(-self.first, -self.second)

    def __sub__(self, other):
        if isinstance(other, ArithmeticShare):
            return self + (-other)
        if isinstance(other, ReplicatedPair):
            return NotImplemented
        return self._plus_public(other, -1)

    def __rsub__(self, other):
        return (-self) + other

    # -- products ----------------------------------------------------------------------
    def __mul__(self, other):
        if isinstance(other, ArithmeticShare):
            return mul(self, other)
        if isinstance(other, ReplicatedPair):
            return NotImplemented
        return mul_public(self, other)

    __rmul__ = __mul__

    def __matmul__(self, other):
        if isinstance(other, ArithmeticShare):
            return matmul(self, other)
        return matmul_public(self, other)

    def __rmatmul__(self, other):
        return matmul_public(self, other, left=True)

    def __truediv__(self, other):
        """Division by a public number (``x / share`` is a protocol: see ``reciprocal``)."""
        if isinstance(other, ReplicatedPair):
            return NotImplemented
        if isinstance(other, self.xp.ndarray):
            other = self.rt.backend.to_host(other)
        return mul_public(self, numpy.reciprocal(numpy.asarray(other, dtype=numpy.float64)))

    def matmul(self, w, trunc=None):
        return matmul(self, w, trunc=trunc) if isinstance(w, ArithmeticShare) else matmul_public(self, w)

    def conv2d(self, w, stride=1, padding=0, groups=1, trunc=None):
        """Convolution (NCHW input, OIHW weight; ``w`` a share or a public real array)."""
        return conv2d(self, w, stride=stride, padding=padding, groups=groups, trunc=trunc)

    def truncate(self, bits: int | None = None, mode=None):
        """Divide by ``2^bits`` (default ``rt.frac_bits``), keeping the scale label minus ``bits``."""
        bits = self.rt.frac_bits if bits is None else bits
        return truncate(self, bits, self.scale - bits, mode=mode)

    def square(self):
        return self * self

    # -- reductions (local) ---------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return self._map(lambda a: a.sum(axis=axis, keepdims=keepdims, dtype=a.dtype))

    def mean(self, axis=None, keepdims=False):
        """Mean: a local sum times the public ``1/n`` (2 rounds; 0 when ``n`` is 1)."""
        n = self.size if axis is None else _axis_count(self.shape, axis)
        total = self.sum(axis=axis, keepdims=keepdims)
        return total if n == 1 else total * (1.0 / n)


# -- helpers ----------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_integral(value) -> bool:
    """A Python int or an array of an integer dtype (public integers: exact, no truncation)."""
    return _is_int(value) or getattr(getattr(value, "dtype", None), "kind", "f") in "iub"


def _axis_count(shape, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(shape[a] for a in axes)


# -- construction ------------------------------------------------------------------------


def share(x=None, src: int = 0, integer: bool = False, rt=None) -> ArithmeticShare:
    """Secret-share the array ``x`` held by party ``src`` (other parties pass ``None``).

    The others learn the shape.  Reals are encoded with ``rt.frac_bits`` fractional
    bits (``integer=True``: as integers, scale 0), range-checked on ``src`` *before*
    anything is sent: a bad value raises EncodingError on every party, naming only the
    party whose input it was.  Cost: see :func:`mpcgpu.sharing.replicated.distribute`
    (16 bytes/element from ``src``, 2 rounds with the metadata round).
    :func:`mpcgpu.sharing.compact.share` deals the same way and keeps one component per
    party as a PRG recipe.
    """
    first, second, scale, rt = dealt_components(x, src, integer, rt)
    return ArithmeticShare(first, second, scale, rt)


def dealt_components(x, src: int, integer: bool, rt, compact: bool = False):
    """:func:`share`'s work: ``(first, second, scale, rt)``, the components as arrays, or
    with ``compact`` as :mod:`~mpcgpu.sharing.components` (:mod:`~mpcgpu.sharing.compact`)."""
    faults.point("share")  # tests: a party lost while the others wait in the share
    rt = rt or _runtime()
    scale = 0 if integer else rt.frac_bits

    def checked(arr):  # block by block: the temporaries of the check stay small
        if integer and arr.dtype.kind == "f":
            raise EncodingError("integer=True needs an integer array")
        flat = arr.reshape(-1)
        for lo in range(0, max(flat.size, 1), SHARE_BLOCK):
            check_range(flat[lo : lo + SHARE_BLOCK], rt.frac_bits, "shared value")

    def encoded_checked(arr):
        if arr.size <= SHARE_BLOCK:
            return encode(arr, scale, check=False)
        flat = arr.reshape(-1)
        words = rt.xp.empty(flat.size, dtype=rt.xp.uint64)
        for lo in range(0, flat.size, SHARE_BLOCK):
            words[lo : lo + SHARE_BLOCK] = encode(flat[lo : lo + SHARE_BLOCK], scale, check=False)
        return words.reshape(arr.shape)

    def encoded(arr):
        checked(arr)
        return encoded_checked(arr)

    def masked(words, a, b):  # x_src+2 = words - x_src - x_src+1, in place (words are ours)
        rt.xp.subtract(words, a, out=words)
        return rt.xp.subtract(words, b, out=words)

    first, second = replicated.distribute(x, src, rt, encoded, masked, checked, encoded_checked, compact=compact)
    return first, second, scale, rt


#: elements encoded at a time by :func:`share` (bounds its temporaries on the source party)
SHARE_BLOCK = 1 << 20


def zeros(shape, scale=None, rt=None) -> ArithmeticShare:
    """A (trivial) sharing of zeros."""
    rt = rt or _runtime()
    z = rt.xp.zeros(shape, dtype=rt.xp.uint64)
    return ArithmeticShare(z, z.copy(), rt.frac_bits if scale is None else scale, rt)


def public(value, scale=None, rt=None) -> ArithmeticShare:
    """A public value as a (trivial, no-communication) sharing: x0 = value, x1 = x2 = 0."""
    rt = rt or _runtime()
    scale = rt.frac_bits if scale is None else scale
    shape = numpy.shape(value) if not isinstance(value, rt.xp.ndarray) else value.shape
    return zeros(shape, scale, rt) + value


concatenate = replicated.concatenate
stack = replicated.stack


def sum_over_groups(x: ArithmeticShare) -> ArithmeticShare:
    """The sum of ``x`` over the ``k`` groups of three of the job (``mpirun -n 3k``): each
    party adds up both of its components across its ``k`` ranks (the role communicator,
    :mod:`mpcgpu.comm.role`: exact mod 2^64, inside one organisation), which gives every group
    the same replicated sharing of the total.  No message between parties; every rank of
    every group calls it.  ``x`` itself with one group."""
    role = x.rt.role
    if role.k == 1:
        return x
    first, second = role.allreduce_sum([x.first, x.second])
    return x._new(first, second)


def to_scale(x: ArithmeticShare, scale: int, mode=None) -> ArithmeticShare:
    """Re-encode at ``scale`` fractional bits: free upwards (exact), a truncation downwards."""
    if scale >= x.scale:
        factor = x.xp.uint64(1 << (scale - x.scale))
        return x._new(x.first * factor, x.second * factor, scale)
    return truncate(x, x.scale - scale, scale, mode=mode)


# -- the multiplication family -----------------------------------------------------------


def _product(
    x: ArithmeticShare, y: ArithmeticShare, op, trunc, bits=None, out_scale=None, summand=None
) -> ArithmeticShare:
    """``op`` is bilinear (elementwise mul, matmul, conv and its gradients).

    Local: a three-out-of-three sharing of the product from five ring products in all
    (:func:`product_summand`).  A result with more than ``rt.frac_bits``
    fractional bits is truncated back (or by ``bits``, read at ``out_scale``) in the same
    two rounds as the resharing (``trunc``: None = the default mode, "prob", "aby3",
    "hidden" or "exact", see :mod:`~mpcgpu.sharing.truncation`;
    ``False`` keeps all ``x.scale + y.scale`` bits, 1 round).  An integer result: 1
    resharing round, 8 bytes/element.
    """
    if summand is None:  # (a caller may have computed it in blocks)
        summand = product_summand(x.rt, x.first, x.second, y.first, y.second, op)
    return _summand_product(x.rt, summand, x.scale + y.scale, trunc, bits, out_scale)


def _summand_product(rt, summand, scale: int, trunc, bits=None, out_scale=None) -> ArithmeticShare:
    """The rest of :func:`_product` from this party's summand of a product at ``scale``."""
    if bits is None:
        bits, out_scale = scale - rt.frac_bits, rt.frac_bits
    if bits <= 0 or trunc is False:
        first, second = reshare(rt, summand)
        return ArithmeticShare(first, second, scale, rt)
    mode = check_mode(trunc)
    if mode != "aby3":
        first, second = msb_corrected(rt, summand.shape, bits, summand=summand, mode=mode)
    else:
        first, second = aby3(rt, *reshare(rt, summand), bits)
    return ArithmeticShare(first, second, out_scale, rt)


def product_summand(rt, x0, x1, y0, y1, op):
    """This party's term of a three-out-of-three sharing of ``op(x, y)`` from its pairs
    ``(x0, x1) = (x_i, x_{i+1})`` and ``(y0, y1)``: the nine cross terms ``op(x_a, y_b)``
    split so that the three parties compute **five** ring products in all, not six.

    The *light* party ``L`` (the dealer of the next truncation, :meth:`peek_role`, so the
    party with the most to send has the least to compute) takes the four terms of its block
    in one product, ``op(x_L + x_{L+1}, y_L + y_{L+1})``; party ``L+1`` takes
    ``op(x_{L+2}, y_{L+1} + y_{L+2}) + op(x_{L+1}, y_{L+2})`` and party ``L+2``
    ``op(x_{L+2}, y_L) + op(x_L, y_{L+2})`` (two each).  Every term of every party is a
    function of its own components; the sum is ``op(x, y)`` exactly (bilinearity mod 2^64),
    and the resharing or truncation that follows masks each term with fresh randomness,
    so what is sent is as before.  (Over a field three products would do; mod 2^64 the
    split needs two units summing to one, which no ring of even order has.)"""
    light = rt.peek_role()
    me = rt.rank
    if me == light:
        return op(x0 + x1, y0 + y1)
    if me == (light + 1) % 3:
        return op(x1, y0 + y1) + op(x0, y1)
    return op(x0, y1) + op(x1, y0)


def mul_trunc(x: ArithmeticShare, y: ArithmeticShare, bits: int, out_scale: int, mode=None) -> ArithmeticShare:
    """The ring product ``x * y`` (broadcasting) divided by ``2^bits`` and read at ``out_scale``:
    one fused product and truncation, 2 rounds (for protocols that manage their own scales)."""
    return _product(x, y, lambda a, b: a * b, mode, bits, out_scale)


def mul(x: ArithmeticShare, y: ArithmeticShare, trunc=None) -> ArithmeticShare:
    """Elementwise product with broadcasting (see :func:`_product` for the cost)."""
    return _product(x, y, lambda a, b: a * b, trunc)


def matmul(x: ArithmeticShare, y: ArithmeticShare, trunc=None) -> ArithmeticShare:
    """Matrix product of two shares (numpy.matmul semantics, exact mod 2^64 via limb GEMMs).

    A large 2-D right operand (a weight: VGG-16's first fully connected layer holds 103M
    elements) is taken in blocks of columns (:data:`MATMUL_BLOCK` elements each), so the
    sum of its two components never exists whole (822 MB for that layer)."""
    if y.ndim == 2 and x.ndim >= 1 and y.size > MATMUL_BLOCK and y.shape[1] > 1:
        return matmul_by_columns(x, y.shape, y.scale, lambda lo, hi: (y.first[:, lo:hi], y.second[:, lo:hi]), trunc)
    return _product(x, y, ring.matmul, trunc)


#: elements of the right operand of a shared matmul taken at a time (see :func:`matmul`)
MATMUL_BLOCK = 1 << 22


def matmul_by_columns(x: ArithmeticShare, y_shape, y_scale: int, columns, trunc=None) -> ArithmeticShare:
    """``x @ y`` for a 2-D shared ``y`` of ``y_shape`` (scale ``y_scale``) whose blocks of
    columns ``columns(lo, hi)`` gives as this party's pair ``(y_i[:, lo:hi], y_{i+1}[:, lo:hi])``:
    :func:`product_summand` block by block (exact: each output column depends on its own
    column of ``y`` only), blocks of about :data:`MATMUL_BLOCK` elements, so that neither
    the sum of ``y``'s two components nor (for a weight regenerated where it is used,
    :mod:`mpcgpu.sharing.compact`) ``y`` itself ever exists whole.  Then as :func:`matmul`."""
    xp = x.xp
    k, n = (int(v) for v in y_shape)
    step = max(1, MATMUL_BLOCK // max(k, 1))
    summand = None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        y0, y1 = columns(lo, hi)
        part = product_summand(x.rt, x.first, x.second, y0, y1, ring.matmul)
        del y0, y1
        if summand is None:
            summand = xp.empty(part.shape[:-1] + (n,), dtype=xp.uint64)
        summand[..., lo:hi] = part
    return _summand_product(x.rt, summand, x.scale + y_scale, trunc)


def conv2d(x: ArithmeticShare, w, stride=1, padding=0, groups=1, trunc=None) -> ArithmeticShare:
    """Convolution of a shared NCHW input with a shared or public OIHW weight.

    Shared weight: like :func:`mul`.  Public weight: local products of each component,
    then one truncation of the replicated result."""

    def op(a, b):
        return ring.conv2d(a, b, stride=stride, padding=padding, groups=groups)

    if isinstance(w, ArithmeticShare):
        return _product(x, w, op, trunc)
    wpub = x._encode_public(w, x.rt.frac_bits)
    return _rescale(x._new(op(x.first, wpub), op(x.second, wpub), x.scale + x.rt.frac_bits), trunc)


def conv2d_grad_input(
    grad: ArithmeticShare, w: ArithmeticShare, input_shape, stride=1, padding=0, groups=1, trunc=None
) -> ArithmeticShare:
    """Gradient of a convolution w.r.t. its input (the transposed convolution), two shares."""
    return _product(
        grad,
        w,
        lambda a, b: ring.conv2d_grad_input(a, b, input_shape, stride=stride, padding=padding, groups=groups),
        trunc,
    )


def conv2d_grad_weight(
    x: ArithmeticShare, grad: ArithmeticShare, weight_shape, stride=1, padding=0, groups=1, trunc=None
) -> ArithmeticShare:
    """Gradient of a convolution w.r.t. its weight (correlation of input and output grads)."""
    return _product(
        x,
        grad,
        lambda a, b: ring.conv2d_grad_weight(a, b, weight_shape, stride=stride, padding=padding, groups=groups),
        trunc,
    )


def _rescale(s: ArithmeticShare, trunc=None) -> ArithmeticShare:
    """Truncate a replicated product back to ``rt.frac_bits`` fractional bits when it carries more."""
    f = s.rt.frac_bits
    if s.scale > f and trunc is not False:
        return truncate(s, s.scale - f, f, mode=trunc)
    return s


def matmul_public(x: ArithmeticShare, w, left: bool = False, trunc=None) -> ArithmeticShare:
    """``x @ w`` (or ``w @ x`` with ``left``) for a public real matrix ``w``: local + truncation."""
    k = x._encode_public(w, x.rt.frac_bits)
    if left:
        a, b = ring.matmul(k, x.first), ring.matmul(k, x.second)
    else:
        a, b = ring.matmul(x.first, k), ring.matmul(x.second, k)
    return _rescale(x._new(a, b, x.scale + x.rt.frac_bits), trunc)


def public_factor_parts(c, scale_in: int, frac_bits: int, bound=None, rel: float = 2.0**-28):
    """How :func:`mul_public` multiplies by public reals ``c``: a list of ``(K, shift)``.

    The result is ``sum_i trunc(X * K_i, shift_i)`` for ring values ``X`` at
    ``scale_in`` bits, read at ``max(scale_in, frac_bits)`` bits; ``shift_i`` is an int
    (``<= 0``: an exact multiplication by ``2^-shift_i``) or, for an array ``c``, an
    array of per-element shifts (each >= 1), so that every element keeps its own
    relative precision.  Every ``|X * K_i|`` stays below ``2^62`` for any encodable
    ``X`` (``|x| < 2^(63-2f)``) -- or for ``|x| < bound`` when the caller knows a
    smaller public bound, which allows wider factors (fewer parts) -- as long as the
    result itself is in range, and the parts represent every element of ``c`` to a
    relative ``rel`` (a power of two exactly, with one part)."""
    c = numpy.asarray(c, dtype=numpy.float64)
    if not numpy.isfinite(c).all():
        raise EncodingError("a public factor is NaN or infinite")
    limit = safe_limit(frac_bits)
    big = float(numpy.abs(c).max()) if c.size else 0.0
    if big >= limit:
        raise EncodingError(
            f"public factor of magnitude {big:.6g} is outside the fixed-point range (|c| < 2^{63 - 2 * frac_bits})"
        )
    up = max(scale_in, frac_bits) - scale_in
    if big == 0.0:
        return []
    if c.ndim == 0:
        m, e = math.frexp(abs(float(c)))
        if m == 0.5:  # +-2^(e-1): one exact shift
            return [(-1 if c < 0 else 1, -(e - 1 + up))]
    value_bits = 63 - 2 * frac_bits if bound is None else math.ceil(math.log2(bound))
    kb = max(4, min(31, 62 - value_bits - scale_in))  # |K| < 2^kb keeps |X K| < 2^62
    mag = numpy.where(c != 0, numpy.abs(c), 1.0)
    q = (kb - 2 - numpy.floor(numpy.log2(mag))).astype(numpy.int64)
    q = numpy.maximum(q, up + 1)  # a huge factor: its result must fit
    parts, rest = [], c.copy()
    for _ in range(3):
        k = numpy.rint(rest * numpy.exp2(q)).astype(numpy.int64)
        shift = numpy.minimum(q - up, 62)  # beyond 62 bits: below one unit
        if numpy.any(k):
            parts.append((k, shift) if c.ndim else (int(k), int(shift)))
        rest = rest - k / numpy.exp2(q)
        if numpy.all(numpy.abs(rest) <= numpy.abs(c) * rel):
            break
        q = q + kb - 2
    return parts


def mul_public(x: ArithmeticShare, c, trunc=None, bound=None, rel: float = 2.0**-28) -> ArithmeticShare:
    """Multiply by a public value.  Integers: exact and free.  Reals (a number or an array
    broadcasting against ``x``): split into at most three integer factors of bounded size
    (:func:`public_factor_parts`; ``bound``: a public bound on ``|x|`` that allows wider
    factors; ``rel``: the relative precision wanted of ``c``) whose products are truncated
    in ONE call (2 rounds; a power of two: one element per element, or nothing for
    ``2^k, k >= 0``).  The result has ``max(x.scale, rt.frac_bits)`` fractional bits (an
    integer share times a real is a real) and is off by at most one unit in the last
    place per part."""
    rt = x.rt
    if _is_integral(c):
        k = x._encode_public(c, 0)
        return x._new(x.first * k, x.second * k)
    c_host = rt.backend.to_host(c) if isinstance(c, rt.xp.ndarray) else c
    parts = public_factor_parts(c_host, x.scale, rt.frac_bits, bound, rel)
    return _times_parts(x, parts, numpy.broadcast_shapes(x.shape, numpy.shape(c_host)), trunc)


def public_combinations(shares, rows, bound: float) -> list:
    """Public linear combinations ``y_r = sum_i rows[r][i] * shares[i]`` with ONE truncation
    per output element (all outputs in one call: 2 rounds, 16 bytes/element from each party).

    Every row's reals are scaled by a common ``2^q_r`` and rounded to integers; the
    integer sum is formed locally and truncated by ``q_r``.  ``bound`` is a public bound on
    every ``|share|``: ``q_r`` is the largest shift that keeps the integer sum below
    ``2^60`` (ring units), so the largest constant of a row keeps about
    ``60 - log2(bound) - scale`` bits of relative precision and smaller ones fewer in
    proportion (a constant ``2^-10`` times the largest loses 10 bits).  The shares share
    one shape and scale; the results have that scale and are off by at most one unit in
    the last place (unbiased)."""
    if not shares:
        raise ProtocolError("a linear combination of no shares")
    first = shares[0]
    rt, xp, scale, shape = first.rt, first.xp, first.scale, first.shape
    for s in shares:
        if s.scale != scale or s.shape != shape:
            raise ProtocolError("linear combinations need shares of one shape and scale")
    head = 60 - math.ceil(math.log2(bound)) - scale
    firsts, seconds, shifts = [], [], []
    for row in rows:
        if len(row) != len(shares):
            raise ProtocolError(f"{len(row)} constants for {len(shares)} shares")
        total = sum(abs(float(c)) for c in row)
        if total == 0.0:
            q, ks = 1, [0] * len(row)
        else:
            q = min(62, head - math.ceil(math.log2(total)))
            if q < 1:
                raise EncodingError(
                    f"constants summing to {total:.6g} times values up to {bound:.6g} leave the ring at scale {scale}"
                )
            ks = [round(float(c) * 2.0**q) for c in row]
        a = b = None
        for k, s in zip(ks, shares):
            if k == 0:
                continue
            kk = xp.uint64(k % (1 << 64))
            a = s.first * kk if a is None else a + s.first * kk
            b = s.second * kk if b is None else b + s.second * kk
        if a is None:
            a, b = xp.zeros(shape, dtype=xp.uint64), xp.zeros(shape, dtype=xp.uint64)
        firsts.append(a)
        seconds.append(b)
        shifts.append(q)
    stacked = ArithmeticShare(xp.stack(firsts), xp.stack(seconds), scale, rt)
    bits = numpy.asarray(shifts, dtype=numpy.int64).reshape((len(rows),) + (1,) * len(shape))
    out = truncate(stacked, bits, scale)
    return [out[i] for i in range(len(rows))]


def _times_parts(x: ArithmeticShare, parts, shape, trunc) -> ArithmeticShare:
    """``sum_i trunc(x * K_i, shift_i)`` (see :func:`public_factor_parts`) in one truncation call."""
    rt, xp = x.rt, x.xp
    out_scale = max(x.scale, rt.frac_bits)
    if not parts:
        return zeros(shape, out_scale, rt)
    exact, cut, shifts = [], [], []
    for k, shift in parts:
        kk = xp.asarray(numpy.asarray(k, dtype=numpy.int64).astype(numpy.uint64))
        if numpy.ndim(shift) == 0 and shift <= 0:
            kk = kk * xp.uint64(1 << -shift)
            exact.append((x.first * kk, x.second * kk))
            continue
        cut.append((xp.broadcast_to(x.first * kk, shape), xp.broadcast_to(x.second * kk, shape)))
        shifts.append(numpy.broadcast_to(shift, shape) if numpy.ndim(shift) else shift)
    total = None
    if cut:
        stacked = ArithmeticShare(xp.stack([p[0] for p in cut]), xp.stack([p[1] for p in cut]), 0, rt)
        if len(cut) == 1 and numpy.ndim(shifts[0]) == 0:
            bits = shifts[0]
        else:
            bits = numpy.stack([numpy.broadcast_to(b, shape) for b in shifts])
        total = truncate(stacked, bits, out_scale, mode=trunc).sum(axis=0)
    for first, second in exact:
        term = ArithmeticShare(xp.broadcast_to(first, shape), xp.broadcast_to(second, shape), out_scale, rt)
        total = term if total is None else total + term
    return total


# -- truncation ----------------------------------------------------------------------------


def truncate(x: ArithmeticShare, bits, new_scale: int | None = None, mode=None) -> ArithmeticShare:
    """Divide the ring value of ``x`` by ``2^bits`` (int, or an array broadcast against
    ``x``: one shift per element), read at ``new_scale`` (default ``x.scale - bits``).

    ``mode``: None/"prob" -- MSB-corrected probabilistic truncation, 2 rounds, 16
    bytes/element from each party, unbiased, never off by more than one unit in the last
    place while ``|x| < 2^62`` (ring units); "aby3" -- 1 round, fails with probability
    ``|x| / 2^64``; "hidden" -- a rounding threshold no party knows, "exact" -- round to
    nearest, 12 rounds each (see :mod:`mpcgpu.sharing.truncation`); None: the setting
    ``MPCGPU_TRUNCATION`` (default "prob")."""
    if numpy.ndim(bits) == 0:
        bits = int(bits)
        if bits <= 0:
            return x if new_scale is None else x.relabel(new_scale)
        new_scale = x.scale - bits if new_scale is None else new_scale
    elif new_scale is None:
        raise ProtocolError("truncate by per-element amounts needs new_scale")
    rt = x.rt
    mode = check_mode(mode)
    if mode != "aby3":
        first, second = msb_corrected(rt, x.shape, bits, rss=(x.first, x.second), mode=mode)
    else:
        first, second = aby3(rt, x.first, x.second, bits)
    return ArithmeticShare(first, second, new_scale, rt)
