"""Top-k of every row, privately: the k largest values and their indices, nothing else.

For ``j = 1..k``: the one-hot of the row maximum (:func:`~mpcgpu.protocols.compare.argmax`,
ties to the lowest index), then the chosen entry is pushed down by ``2^61`` ring units
(local), so that the next maximum is the next value.  At the end, in one product for
all ``j``: the values (one-hots times the row, summed: a product by an integer bit, no
truncation, 1 round) and the indices (one-hots times ``0..K-1``, local).  The order is that of a stable sort
by decreasing value (``numpy.argsort(-x, kind="stable")``), and the values are the
row's entries themselves (no rounding is added).

Cost for ``n`` rows of ``K`` entries: ``k`` argmaxes over ``K`` (``10 ceil(log2 K)``
rounds each; bytes in :mod:`~mpcgpu.protocols.compare`) and one round of ``8 n k K``
bytes per party for the values.  Domain: ``|x| < 2^60`` ring units (every fixed-point
value), so that a pushed-down entry stays below every other and no difference wraps.
"""

from __future__ import annotations

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, stack
from .compare import argmax

PUSH_DOWN = 1 << 61  # ring units subtracted from an entry once chosen


def topk(x: ArithmeticShare, k: int, with_onehots: bool = False):
    """``(values, indices)`` of the ``k`` largest entries of each row of a 2-D share
    ``x`` (rows, K), in decreasing order: values at ``x.scale``, indices as integer
    shares (scale 0), both of shape (rows, k); ``with_onehots`` adds the one-hots of
    the choices (rows, k, K), e.g. to score the first against secret labels.  See the
    module docstring for the cost."""
    if len(x.shape) != 2:
        raise ProtocolError(f"topk needs a 2-D share (rows, entries), got shape {x.shape}")
    width = x.shape[1]
    k = int(k)
    if not 1 <= k <= width:
        raise ProtocolError(f"topk needs 1 <= k <= {width} (entries per row), got k = {k}")
    xp = x.xp
    push = xp.uint64(PUSH_DOWN)
    rest, onehots = x, []
    for j in range(k):
        onehots.append(argmax(rest, axis=1))
        if j + 1 < k:
            oh = onehots[-1]  # 0/1 times a public ring constant, on both components: local
            rest = rest - ArithmeticShare(oh.first * push, oh.second * push, x.scale, x.rt)
    chosen = stack(onehots, axis=1)  # (rows, k, K), scale 0
    values = (chosen * x.reshape(x.shape[0], 1, width)).sum(axis=2)  # bit times value: exact, 1 round
    indices = (chosen * xp.arange(width, dtype=xp.int64)).sum(axis=2)  # local
    return (values, indices, chosen) if with_onehots else (values, indices)


__all__ = ["topk", "PUSH_DOWN"]
