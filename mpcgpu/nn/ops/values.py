"""The kinds of values the private executor of graph models passes between operators
(:mod:`mpcgpu.nn.dag_run`), and how public values meet shares.

A value is one of

* a public host NumPy array (float64, int64 or bool): known to the three parties;
* an :class:`~mpcgpu.sharing.arithmetic.ArithmeticShare`: secret, fixed point at
  ``rt.frac_bits`` (reals) or scale 0 (integers);
* a :class:`~mpcgpu.sharing.compact.CompactShare` (a parameter kept compact): read as an
  ordinary share where it is used (:func:`held`);
* a :class:`MaskedShare`: a share plus a public boolean ``keep`` meaning "minus infinity
  where not keep" (attention masks: Add of a public mask holding ``-inf`` / ``<= -1e4``,
  Where selecting such a constant); Softmax consumes it;
* a :class:`OneHotShare`: a secret integer tensor (token ids) held as a one-hot integer share
  whose last axis is the vocabulary; its *logical* shape is that of the ids.  Gather of a
  table by it is a product ``one_hot @ table``; shape operators move its logical axes.

Public values never reach the back end implicitly: :func:`device` moves a host array onto
the share's device (``rt.backend.to_device``), and every public operand of a share goes
through it (then through the share's own encoding, :mod:`mpcgpu.sharing.arithmetic`).
"""

from __future__ import annotations

import numpy

from ...sharing.arithmetic import ArithmeticShare
from ...sharing.compact import CompactShare, held
from ..dag import GraphError

#: a public addend at or below this (or -inf) means "masked out" (HF uses finfo.min or -1e4)
MASK_BELOW = -1e4


class MaskedShare:
    """``share`` where ``keep``, minus infinity elsewhere (``keep``: public host bool array,
    broadcastable to ``share.shape``).  The share's entries where not keep are unspecified
    (finite)."""

    def __init__(self, share: ArithmeticShare, keep):
        keep = numpy.asarray(keep, dtype=bool)
        try:
            numpy.broadcast_shapes(keep.shape, share.shape)
        except ValueError:
            raise GraphError(f"a mask of shape {keep.shape} does not broadcast to {share.shape}") from None
        if numpy.broadcast_shapes(keep.shape, share.shape) != tuple(share.shape):
            share = share.broadcast_to(numpy.broadcast_shapes(keep.shape, share.shape))
        self.share = share
        self.keep = keep

    @property
    def shape(self):
        return self.share.shape

    @property
    def ndim(self):
        return self.share.ndim

    @property
    def rt(self):
        return self.share.rt

    def full_keep(self):
        """``keep`` broadcast to the share's shape (a host array)."""
        return numpy.broadcast_to(self.keep, self.shape)

    def __repr__(self):
        return f"MaskedShare(shape={self.shape}, kept={int(self.full_keep().sum())}/{self.share.size})"


class OneHotShare:
    """A secret integer tensor of logical shape ``share.shape[:-1]`` held as the one-hot
    integer share ``share`` (scale 0, last axis: the vocabulary)."""

    def __init__(self, share: ArithmeticShare):
        if share.scale != 0 or share.ndim < 1:
            raise GraphError(f"a one-hot share must be an integer share with a class axis, got {share!r}")
        self.share = share

    @property
    def shape(self):
        return self.share.shape[:-1]

    @property
    def ndim(self):
        return self.share.ndim - 1

    @property
    def vocab(self) -> int:
        return self.share.shape[-1]

    @property
    def rt(self):
        return self.share.rt

    def __repr__(self):
        return f"OneHotShare(shape={self.shape}, vocab={self.vocab})"


SECRET_KINDS = (ArithmeticShare, CompactShare, MaskedShare, OneHotShare)


def is_secret(v) -> bool:
    return isinstance(v, SECRET_KINDS)


def is_public(v) -> bool:
    return isinstance(v, (numpy.ndarray, numpy.generic, bool, int, float))


def public(v) -> numpy.ndarray:
    """A public value as a host array (float64, int64 or bool)."""
    a = numpy.asarray(v)
    if a.dtype.kind == "f":
        return a.astype(numpy.float64, copy=False)
    if a.dtype.kind in "iu":
        return a.astype(numpy.int64, copy=False)
    if a.dtype.kind == "b":
        return a
    raise GraphError(f"public value of dtype {a.dtype} is not float, int or bool")


def kind(v) -> str:
    """A short name of the value's kind, for error messages."""
    if isinstance(v, MaskedShare):
        return "masked share"
    if isinstance(v, OneHotShare):
        return "one-hot share"
    if isinstance(v, (ArithmeticShare, CompactShare)):
        return "integer share" if v.scale == 0 else "secret"
    if v is None:
        return "absent"
    return f"public {public(v).dtype}"


def shape_of(v) -> tuple:
    return tuple(v.shape) if not is_public(v) else numpy.shape(v)


def plain_share(node, v, what: str = "input") -> ArithmeticShare:
    """``v`` as an ordinary share, or a GraphError naming the node (a masked or one-hot
    share where the operator cannot take one)."""
    if isinstance(v, CompactShare):
        return held(v)
    if isinstance(v, ArithmeticShare):
        return v
    node.fail(f"{what} is a {kind(v)}, which this operator cannot take")


def device(rt, arr):
    """A public host array on the runtime's device (explicit: ``rt.backend.to_device``)."""
    return rt.backend.to_device(numpy.ascontiguousarray(arr))


def to_host(rt, arr):
    return rt.backend.to_host(arr)


def as_factor(c):
    """A public multiplier: an int64 array when every entry is a small integer (an exact,
    free product), else float64."""
    c = public(c)
    if c.dtype == bool:
        return c.astype(numpy.int64)
    if c.dtype.kind == "f" and numpy.all(numpy.isfinite(c)) and numpy.all(c == numpy.rint(c)):
        if c.size == 0 or numpy.abs(c).max() < 2**20:
            return c.astype(numpy.int64)
    return c


def add_public(x: ArithmeticShare, c, sign: int = 1) -> ArithmeticShare:
    """``x + sign * c`` for a public host array ``c`` (exact, local): ``c`` moved to the
    share's device first, then encoded by the share (an integer share meeting reals is
    promoted)."""
    c = public(c)
    if c.dtype == bool:
        c = c.astype(numpy.int64)
    if c.dtype.kind == "i" and x.scale == 0:
        val = device(x.rt, c)
    elif c.dtype.kind == "i":
        val = device(x.rt, c.astype(numpy.float64))
    else:
        val = device(x.rt, c)
    return x + val if sign > 0 else x - val


#: relative precision of a public real factor (:func:`mul_public`): 2^-24 keeps the product
#: within one unit in the last place for ``|x| < 2^8`` and needs 2 integer parts for any
#: factor (the library default, 2^-28, needs 3 for most: 50% more bytes)
FACTOR_REL = 2.0**-24


def mul_public(x: ArithmeticShare, c) -> ArithmeticShare:
    """``x * c`` for a public host array or number: exact and free for integers (moved to
    the device and multiplied), else :func:`~mpcgpu.sharing.arithmetic.mul_public` at
    relative precision :data:`FACTOR_REL` (one truncation call, 2 rounds, 16 bytes per
    element per part and party: 1 part for a power of two, else 2; 0 rounds for ``2^k``,
    ``k >= 0``)."""
    from ...sharing.arithmetic import mul_public as _mul_public

    c = as_factor(c)
    if c.dtype.kind == "i":
        if c.size and numpy.abs(c).max() >= 2**31:
            raise GraphError(f"public integer factor {numpy.abs(c).max()} is too large for fixed point")
        k = device(x.rt, c.astype(numpy.uint64))  # two's complement: exact mod 2^64
        shape = numpy.broadcast_shapes(x.shape, c.shape)
        first, second = x.first * k, x.second * k
        if first.shape != shape:
            first, second = x.xp.broadcast_to(first, shape), x.xp.broadcast_to(second, shape)
        return ArithmeticShare(first, second, x.scale, x.rt)
    return _mul_public(x, c, rel=FACTOR_REL)


def select(rt, cond, a, b):
    """``where(cond, a, b)`` with a public ``cond`` (host bool) on back-end arrays (local)."""
    xp = rt.xp
    c = device(rt, numpy.asarray(cond, dtype=bool))
    return xp.where(c, a, b)


def map_local(rt, v, fn):
    """Apply a structural function ``fn(array, xp, to)`` to a value's arrays: both components
    of a share (``xp``: the runtime's module, ``to``: host -> device), also the (broadcast)
    ``keep`` of a masked share (``xp``: NumPy), or a public array.  A one-hot share's arrays
    carry the class axis last: ``fn`` must leave trailing axes alone (positive axes)."""
    if isinstance(v, CompactShare):
        v = held(v)
    if isinstance(v, ArithmeticShare):
        to = rt.backend.to_device
        return v._new(fn(v.first, v.xp, to), fn(v.second, v.xp, to))
    if isinstance(v, MaskedShare):
        return MaskedShare(map_local(rt, v.share, fn), fn(numpy.ascontiguousarray(v.full_keep()), numpy, numpy.asarray))
    if isinstance(v, OneHotShare):
        return OneHotShare(map_local(rt, v.share, fn))
    return fn(public(v), numpy, numpy.asarray)


__all__ = [
    "MASK_BELOW",
    "MaskedShare",
    "OneHotShare",
    "is_secret",
    "is_public",
    "public",
    "kind",
    "shape_of",
    "plain_share",
    "device",
    "to_host",
    "as_factor",
    "add_public",
    "mul_public",
    "select",
    "map_local",
]
