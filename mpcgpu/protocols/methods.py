"""The protocols as methods of :class:`~mpcgpu.sharing.arithmetic.ArithmeticShare`.

Protocols are free functions over shares (:mod:`~mpcgpu.protocols.compare`,
:mod:`~mpcgpu.protocols.pooling`, :mod:`~mpcgpu.protocols.approx`,
:mod:`~mpcgpu.protocols.rounding`); this module, and only this module, makes
them available as methods and operators (``x.relu()``, ``x < y``,
``x.softmax()``, ``x / y``), so that :mod:`mpcgpu.sharing` imports nothing
from :mod:`mpcgpu.protocols`.  It runs once, when :mod:`mpcgpu.protocols` is
imported (``import mpcgpu`` does that).
"""

from __future__ import annotations

from ..sharing import truncation
from ..sharing.arithmetic import ArithmeticShare
from . import approx, compare, pooling, rounding, trunc_hidden

#: method name -> protocol function (its first argument is the share)
METHODS = {
    "relu": compare.relu,
    "__lt__": compare.lt,
    "__gt__": compare.gt,
    "__le__": compare.le,
    "__ge__": compare.ge,
    "sign": compare.sign,
    "abs": compare.abs,
    "__abs__": compare.abs,
    "max": compare.max,
    "min": compare.min,
    "argmax": compare.argmax,
    "max_pool2d": compare.max_pool2d,
    "avg_pool2d": pooling.avg_pool2d,
    "adaptive_avg_pool2d": pooling.adaptive_avg_pool2d,
    "exp": approx.exp,
    "reciprocal": approx.reciprocal,
    "inv_sqrt": approx.inv_sqrt,
    "sqrt": approx.sqrt,
    "log": approx.log,
    "softmax": approx.softmax,
    "log_softmax": approx.log_softmax,
    "round_exact": rounding.round_exact,
}

_divide_by_public = ArithmeticShare.__truediv__


def _truediv(self, other):
    """``x / y``: by a share, ``x * reciprocal(y)`` (``y`` in the reciprocal's default
    domain); by a public number, a public product."""
    if isinstance(other, ArithmeticShare):
        return self * approx.reciprocal(other)
    return _divide_by_public(self, other)


def attach():
    for name, fn in METHODS.items():
        setattr(ArithmeticShare, name, fn)
    ArithmeticShare.__truediv__ = _truediv
    truncation.REGISTERED.update(trunc_hidden.PROTOCOLS)  # truncate(..., mode="hidden" | "exact")


attach()
