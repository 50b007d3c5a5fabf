"""2-out-of-3 replicated arithmetic secret sharing over Z_{2^64}.

A secret ``x`` is split as ``x = x0 + x1 + x2 (mod 2^64)``; party ``i`` holds
the pair ``(x_i, x_{i+1})`` (indices mod 3) in :class:`ArithmeticShare`
(``first``, ``second``).  Any two parties can reconstruct, one learns nothing.

Every share carries a ``scale``: the number of fractional bits of its
fixed-point encoding (``rt.frac_bits`` for reals, ``0`` for integers such as
comparison bits).  Products add scales; a product whose scale exceeds the
runtime's ``frac_bits`` is truncated back (one extra round).

Costs (rounds; bytes sent per output element, per party unless stated):

=========================  ======  ==========================================
operation                  rounds  bytes / element
=========================  ======  ==========================================
share (from one party)     1 (+1)  8 to each of the two others, from the source
                                   only (+1 tiny round for the shape)
reveal to all              1       8
reveal to one party        1       8, from one party only
add, sub, neg, add public  0       0
mul by public integer      0       0
mul by public real         1       8 from one party (the truncation)
mul / matmul / conv        1       8 (integer scale) -- +1 round, +8 bytes from
                                   one party for the truncation of reals
truncation                 1       8 from one party (the role rotates)
=========================  ======  ==========================================

All share data stays on the runtime's back end (NumPy or CuPy); this module
never imports an array library for share data.
"""
from __future__ import annotations

import math
import numbers

from .. import ring
from ..encoding import check_range, decode, encode
from ..errors import EncodingError, ProtocolError
from ..runtime import get as _runtime
from .replicated import ReplicatedPair



class ArithmeticShare(ReplicatedPair):
    """This party's two components of a replicated arithmetic sharing."""

    def __init__(self, first, second, scale: int, rt=None):
        self.rt = rt or _runtime()
        xp = self.rt.xp
        if not isinstance(first, xp.ndarray):   # 0-d results of reductions come back as scalars
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

    def _map(self, fn, scale=None):
        """Apply the same local (linear, shape-only) function to both components."""
        return self._new(fn(self.first), fn(self.second), scale)

    # -- reconstruction ----------------------------------------------------------------
    def reveal_raw(self, to: int | None = None):
        """The secret as uint64 ring elements on the back end (``None`` on parties other than ``to``).

        To all: party ``i`` sends ``x_i`` to party ``i+1``, which lacks it: 1 round, 8 bytes/element.
        To party ``r`` only: party ``r-1`` sends ``x_{r-1}``: 1 round, 8 bytes/element from one party.
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
    def _public(self, value, scale: int):
        """Encode a public scalar/array on the back end at ``scale`` fractional bits."""
        xp = self.xp
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            if abs(int(value)) >= 2 ** (63 - 2 * self.rt.frac_bits):
                raise EncodingError(f"public integer {value} is outside the fixed-point range")
            return xp.asarray((int(value) << scale) % (1 << 64), dtype=xp.uint64)
        arr = self.rt.backend.to_device(value) if not _is_backend_array(value, xp) else value
        arr = xp.asarray(arr)
        check_range(arr, self.rt.frac_bits, "public operand")
        return encode(arr, scale, check=False)

    def _add_public_raw(self, c):
        """Add ring constant ``c`` to x0, in both places it is held (party 0 first, party 2 second)."""
        xp = self.xp
        shape = xp.broadcast_shapes(self.shape, getattr(c, "shape", ()))
        first = xp.broadcast_to(self.first, shape).copy()
        second = xp.broadcast_to(self.second, shape).copy()
        if self.rt.rank == 0:
            first += c
        elif self.rt.rank == 2:
            second += c
        return self._new(first, second)

    # -- linear operations (local, 0 rounds) --------------------------------------------
    def _aligned(self, other: "ArithmeticShare"):
        """Bring two shares to a common scale (an integer share is promoted; reals must agree)."""
        if self.scale == other.scale:
            return self, other
        if self.scale == 0:
            return self._rescale_up(other.scale), other
        if other.scale == 0:
            return self, other._rescale_up(self.scale)
        raise ProtocolError(f"cannot combine shares with different scales ({self.scale} and {other.scale})")

    def _rescale_up(self, scale):
        factor = self.xp.uint64(1 << (scale - self.scale))
        return self._new(self.first * factor, self.second * factor, scale)

    def __add__(self, other):
        if isinstance(other, ArithmeticShare):
            a, b = self._aligned(other)
            return a._new(a.first + b.first, a.second + b.second)
        if _is_share_like(other):
            return NotImplemented
        return self._add_public_raw(self._public(other, self.scale))

    __radd__ = __add__

    def __neg__(self):
        return self._new(-self.first, -self.second)

    def __sub__(self, other):
        if isinstance(other, ArithmeticShare):
            return self + (-other)
        if _is_share_like(other):
            return NotImplemented
        return self._add_public_raw(-self._public(other, self.scale))

    def __rsub__(self, other):
        return (-self) + other

    # -- products ----------------------------------------------------------------------
    def __mul__(self, other):
        if isinstance(other, ArithmeticShare):
            return mul(self, other)
        if _is_share_like(other):
            return NotImplemented
        return mul_public(self, other)

    __rmul__ = __mul__

    def __matmul__(self, other):
        if isinstance(other, ArithmeticShare):
            return matmul(self, other)
        return matmul_public(self, other)

    def __rmatmul__(self, other):
        return matmul_public(self, other, left=True)

    def matmul(self, w):
        return self @ w

    def conv2d(self, w, stride=1, padding=0, groups=1):
        """Convolution (NCHW input, OIHW weight; ``w`` a share or a public real array)."""
        return conv2d(self, w, stride=stride, padding=padding, groups=groups)

    def truncate(self, bits: int | None = None):
        """Divide by ``2^bits`` (default: rt.frac_bits): 1 round, 8 bytes/element from one party."""
        bits = self.rt.frac_bits if bits is None else bits
        return truncate(self, bits, self.scale - bits)

    def square(self):
        return self * self

    # -- reductions and shape manipulation (local) --------------------------------------
    def sum(self, axis=None, keepdims=False):
        return self._map(lambda a: a.sum(axis=axis, keepdims=keepdims, dtype=a.dtype))

    def mean(self, axis=None, keepdims=False):
        n = self.size if axis is None else _axis_count(self.shape, axis)
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / n)

    def reshape(self, *shape):
        return self._map(lambda a: a.reshape(*shape))

    def flatten(self, start: int = 0):
        lead = self.shape[:start]
        return self.reshape(*lead, -1)

    def transpose(self, *axes):
        return self._map(lambda a: a.transpose(*axes))

    @property
    def T(self):
        return self.transpose()

    def swapaxes(self, a1, a2):
        return self._map(lambda a: a.swapaxes(a1, a2))

    def __getitem__(self, index):
        return self._map(lambda a: a[index])

    def __setitem__(self, index, value):
        if not isinstance(value, ArithmeticShare) or value.scale != self.scale:
            raise ProtocolError("can only assign a share of the same scale into a share")
        self.first[index] = value.first
        self.second[index] = value.second

    def broadcast_to(self, shape):
        return self._map(lambda a: self.xp.broadcast_to(a, shape).copy())

    def pad(self, pad_width):
        """Zero padding (zeros are a valid sharing of zero): ``pad_width`` as in numpy.pad."""
        return self._map(lambda a: self.xp.pad(a, pad_width))

    def copy(self):
        return self._map(lambda a: a.copy())

    # -- the non-linear protocols (see mpcgpu.protocols) --------------------------------
    def relu(self, **kw):
        """max(x, 0); keeps the derivative bits (``relu_bits``) for backward; see compare.relu."""
        from ..protocols import compare
        return compare.relu(self, **kw)

    def __lt__(self, other):
        from ..protocols import compare
        return compare.lt(self, other)

    def __gt__(self, other):
        from ..protocols import compare
        return compare.gt(self, other)

    def __le__(self, other):
        from ..protocols import compare
        return compare.le(self, other)

    def __ge__(self, other):
        from ..protocols import compare
        return compare.ge(self, other)

    def sign(self):
        from ..protocols import compare
        return compare.sign(self)

    def abs(self):
        from ..protocols import compare
        return compare.abs(self)

    __abs__ = abs

    def max(self, axis=None):
        from ..protocols import compare
        return compare.max(self, axis=axis)

    def min(self, axis=None):
        from ..protocols import compare
        return compare.min(self, axis=axis)

    def argmax(self, axis=None):
        from ..protocols import compare
        return compare.argmax(self, axis=axis)

    def max_pool2d(self, kernel, stride=None, padding=0, return_indices=False):
        from ..protocols import compare
        return compare.max_pool2d(self, kernel, stride=stride, padding=padding,
                                  return_indices=return_indices)

    def avg_pool2d(self, kernel, stride=None, padding=0):
        from ..protocols import pooling
        return pooling.avg_pool2d(self, kernel, stride=stride, padding=padding)

    def adaptive_avg_pool2d(self, output_size):
        from ..protocols import pooling
        return pooling.adaptive_avg_pool2d(self, output_size)

    def exp(self, **kw):
        from ..protocols import approx
        return approx.exp(self, **kw)

    def reciprocal(self, **kw):
        from ..protocols import approx
        return approx.reciprocal(self, **kw)

    def inv_sqrt(self, **kw):
        from ..protocols import approx
        return approx.inv_sqrt(self, **kw)

    def sqrt(self, **kw):
        from ..protocols import approx
        return approx.sqrt(self, **kw)

    def log(self, **kw):
        from ..protocols import approx
        return approx.log(self, **kw)

    def softmax(self, axis=-1, **kw):
        from ..protocols import approx
        return approx.softmax(self, axis=axis, **kw)

    def log_softmax(self, axis=-1, **kw):
        from ..protocols import approx
        return approx.log_softmax(self, axis=axis, **kw)

    def __truediv__(self, other):
        if isinstance(other, ArithmeticShare):
            return self * other.reciprocal()
        return self * (1.0 / other)


# -- helpers ----------------------------------------------------------------------------

def _is_backend_array(value, xp):
    return isinstance(value, xp.ndarray)


def _is_share_like(value):
    return hasattr(value, "first") and hasattr(value, "second") and not isinstance(value, ArithmeticShare)


def _axis_count(shape, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _broadcast_pair(a, b, xp):
    shape = xp.broadcast_shapes(a.shape, b.shape)
    return xp.broadcast_to(a, shape), xp.broadcast_to(b, shape)


# -- construction ------------------------------------------------------------------------

def share(x=None, src: int = 0, integer: bool = False, rt=None) -> ArithmeticShare:
    """Secret-share the array ``x`` held by party ``src`` (other parties pass ``None``).

    The others learn only the shape.  Reals are encoded with ``rt.frac_bits``
    fractional bits (``integer=True``: as integers, scale 0), and the range is
    checked on ``src`` *before* anything is sent: an out-of-range value raises
    EncodingError on every party.

    Protocol: components ``x_src`` and ``x_{src+1}`` come from the keys ``src``
    shares with its neighbours (no communication); ``src`` computes
    ``x_{src+2} = x - x_src - x_{src+1}`` and sends it to both other parties.
    Cost: 1 round of 8 bytes/element to each of the two others (from ``src``
    only), after one small metadata round (shape and the verdict of the range
    check, so that a bad value stops every party instead of leaving two waiting).
    """
    rt = rt or _runtime()
    comm, xp = rt.comm, rt.xp
    scale = 0 if integer else rt.frac_bits
    encoded, error = None, None
    if comm.rank == src:
        if x is None:
            raise ProtocolError(f"party {src} is the source of share() but passed no data")
        arr = rt.backend.to_device(x) if not isinstance(x, xp.ndarray) else x
        try:
            if integer and arr.dtype.kind == "f":
                raise EncodingError("integer=True needs an integer array")
            check_range(arr, rt.frac_bits, "shared value")
            encoded = encode(arr, scale, check=False)
        except EncodingError as exc:
            error = str(exc)
        meta = (tuple(arr.shape), error)
    else:
        meta = None
    shape, error = comm.bcast_object(meta, root=src)
    if error:
        raise EncodingError(f"party {src}: {error}")
    shape = tuple(shape)
    rank = comm.rank
    if rank == src:
        own = rt.prg.with_prev(shape)     # x_src   (key k_src, shared with src-1)
        nxt = rt.prg.with_next(shape)     # x_src+1 (key k_src+1, shared with src+1)
        rest = encoded - own - nxt        # x_src+2
        comm.exchange({(src + 1) % 3: rest, (src + 2) % 3: rest}, {})
        return ArithmeticShare(own, nxt, scale, rt)
    got = comm.exchange({}, {src: (shape, xp.uint64)})[src]
    if rank == (src + 1) % 3:             # holds (x_src+1, x_src+2)
        return ArithmeticShare(rt.prg.with_prev(shape), got, scale, rt)
    # rank == src+2 == src-1: holds (x_src+2, x_src)
    return ArithmeticShare(got, rt.prg.with_next(shape), scale, rt)


def from_components(first, second, scale: int, rt=None) -> ArithmeticShare:
    """Wrap two components already on the back end (e.g. read from a shard)."""
    return ArithmeticShare(first, second, scale, rt)


def zeros(shape, scale=None, rt=None) -> ArithmeticShare:
    """A (trivial) sharing of zeros."""
    rt = rt or _runtime()
    z = rt.xp.zeros(shape, dtype=rt.xp.uint64)
    return ArithmeticShare(z, z.copy(), rt.frac_bits if scale is None else scale, rt)


def public(value, scale=None, rt=None) -> ArithmeticShare:
    """A public value as a (trivial, no-communication) sharing: x0 = value, x1 = x2 = 0."""
    rt = rt or _runtime()
    scale = rt.frac_bits if scale is None else scale
    z = zeros(rt.xp.asarray(rt.backend.to_device(value)).shape, scale, rt)
    return z + value


def random_share(shape, scale=0, rt=None) -> ArithmeticShare:
    """A sharing of a uniformly random ring element unknown to every party (0 rounds)."""
    rt = rt or _runtime()
    first, second = rt.prg.random_pair(tuple(shape))
    return ArithmeticShare(first, second, scale, rt)


def concatenate(shares, axis=0) -> ArithmeticShare:
    """Concatenate shares of a common scale (local)."""
    shares = list(shares)
    scale = shares[0].scale
    if any(s.scale != scale for s in shares):
        raise ProtocolError("concatenate needs shares of one scale")
    xp = shares[0].xp
    return ArithmeticShare(xp.concatenate([s.first for s in shares], axis=axis),
                           xp.concatenate([s.second for s in shares], axis=axis), scale, shares[0].rt)


def stack(shares, axis=0) -> ArithmeticShare:
    shares = list(shares)
    xp = shares[0].xp
    return ArithmeticShare(xp.stack([s.first for s in shares], axis=axis),
                           xp.stack([s.second for s in shares], axis=axis), shares[0].scale, shares[0].rt)


# -- the multiplication family -----------------------------------------------------------

def _reshare(z, scale, rt) -> ArithmeticShare:
    """From a 3-out-of-3 sharing ``z_i`` (already masked) back to replicated: party ``i``
    sends ``z_i`` to party ``i-1``.  1 round, 8 bytes/element."""
    return ArithmeticShare(z, rt.comm.pass_prev(z), scale, rt)


def _product(x: ArithmeticShare, y: ArithmeticShare, op, rt) -> ArithmeticShare:
    """``op`` is bilinear (elementwise mul, matmul, conv): the replicated product.

    Local: ``z_i = op(x_i, y_i + y_{i+1}) + op(x_{i+1}, y_i) + a_i`` with a fresh zero
    share ``a_i`` (two local products); then one resharing round.  Integer scales: 1 round,
    8 bytes/element; reals: +1 round for the truncation (8 bytes/element from one party).
    """
    z = op(x.first, y.first + y.second) + op(x.second, y.first)
    z = z + rt.prg.zero_share(z.shape)
    out = _reshare(z, x.scale + y.scale, rt)
    return _rescale(out)


def _rescale(s: ArithmeticShare) -> ArithmeticShare:
    """Truncate a product back to ``rt.frac_bits`` fractional bits when it carries more."""
    f = s.rt.frac_bits
    if s.scale > f:
        return truncate(s, s.scale - f, f)
    return s


def mul(x: ArithmeticShare, y: ArithmeticShare) -> ArithmeticShare:
    """Elementwise product with broadcasting (see :func:`_product` for the cost)."""
    return _product(x, y, lambda a, b: a * b, x.rt)


def matmul(x: ArithmeticShare, y: ArithmeticShare) -> ArithmeticShare:
    """Matrix product of two shares (numpy.matmul semantics, exact mod 2^64 via limb GEMMs)."""
    return _product(x, y, ring.matmul, x.rt)


def conv2d(x: ArithmeticShare, w, stride=1, padding=0, groups=1) -> ArithmeticShare:
    """Convolution of a shared NCHW input with a shared or public OIHW weight.

    Shared weight: like :func:`mul` (1 round + truncation).  Public weight: local products
    of each component, then the truncation round.
    """
    def op(a, b):
        return ring.conv2d(a, b, stride=stride, padding=padding, groups=groups)
    if isinstance(w, ArithmeticShare):
        return _product(x, w, op, x.rt)
    wpub = x._public(w, x.rt.frac_bits)
    return _rescale(x._new(op(x.first, wpub), op(x.second, wpub), x.scale + x.rt.frac_bits))


def mul_public(x: ArithmeticShare, c) -> ArithmeticShare:
    """Multiply by a public value: integers are exact and free; reals cost the truncation round."""
    if isinstance(c, numbers.Integral) and not isinstance(c, bool):
        k = x._public(c, 0)
        return x._new(x.first * k, x.second * k)
    if _is_int_array(c):
        k = x._public(c, 0)
        a, b = x.first * k, x.second * k
        return x._new(a, b)
    f = x.rt.frac_bits
    if isinstance(c, numbers.Real):
        # a small constant (1/n of a mean, a learning rate) gets extra fractional bits so its
        # relative precision is 2^-f; the product magnitude stays that of an ordinary product
        extra = 0 if c == 0 or abs(c) >= 1 else min(int(math.floor(-math.log2(abs(c)))), f)
        k = x.xp.asarray(int(round(c * 2 ** (f + extra))) % (1 << 64), dtype=x.xp.uint64)
        out = x._new(x.first * k, x.second * k, x.scale + f + extra)
        return truncate(out, f + extra, x.scale) if x.scale else _rescale(out)
    k = x._public(c, f)
    return _rescale(x._new(x.first * k, x.second * k, x.scale + f))


def _is_int_array(c):
    dtype = getattr(c, "dtype", None)
    return dtype is not None and dtype.kind in "iub"


def matmul_public(x: ArithmeticShare, w, left: bool = False) -> ArithmeticShare:
    """``x @ w`` (or ``w @ x`` with ``left``) for a public real matrix ``w``: local + truncation."""
    k = x._public(w, x.rt.frac_bits)
    if left:
        a, b = ring.matmul(k, x.first), ring.matmul(k, x.second)
    else:
        a, b = ring.matmul(x.first, k), ring.matmul(x.second, k)
    return _rescale(x._new(a, b, x.scale + x.rt.frac_bits))


# -- truncation ----------------------------------------------------------------------------

def truncate(x: ArithmeticShare, bits: int, new_scale: int | None = None) -> ArithmeticShare:
    """Divide by ``2^bits`` (ABY3-style, one round, one sender).

    With role ``j`` (rotating per call): party ``j`` forms ``a = x_j + x_{j+1}``, parties
    ``j+1`` and ``j+2`` hold ``b = x_{j+2}``.  ``a' = a >> bits`` and
    ``b' = -((-b) >> bits)`` (arithmetic shifts).  New components: ``y_{j+2} = b'``,
    ``y_{j+1} = r`` from the key of parties ``j, j+1``, ``y_j = a' - r`` sent by party ``j``
    to party ``j+2``.  1 round; 8 bytes/element sent by party ``j`` only.  The result is off
    by at most 1 unit in the last place; it fails (jumps by about ``2^(64-bits)``) with
    probability about ``|x| / 2^63`` per element.
    """
    rt = x.rt
    xp, comm, rank = rt.xp, rt.comm, rt.comm.rank
    if bits <= 0:
        return x
    new_scale = x.scale - bits if new_scale is None else new_scale
    j = rt.next_role()
    shift = xp.int64(bits)
    if rank == j:
        a = (x.first + x.second).view(xp.int64) >> shift
        r = rt.prg.with_next(x.shape)                   # y_{j+1}, known to j and j+1
        y_j = a.view(xp.uint64) - r
        comm.exchange({(j + 2) % 3: y_j}, {})
        return ArithmeticShare(y_j, r, new_scale, rt)
    if rank == (j + 1) % 3:
        r = rt.prg.with_prev(x.shape)
        b = x.second                                    # x_{j+2}
        b_shift = (-((-b).view(xp.int64) >> shift)).view(xp.uint64)
        comm.exchange({}, {})
        return ArithmeticShare(r, b_shift, new_scale, rt)
    # rank == j+2: holds (x_{j+2}, x_j)
    b = x.first
    b_shift = (-((-b).view(xp.int64) >> shift)).view(xp.uint64)
    y_j = comm.exchange({}, {j: (x.shape, xp.uint64)})[j]
    return ArithmeticShare(b_shift, y_j, new_scale, rt)

