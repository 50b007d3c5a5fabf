"""What arithmetic and binary replicated shares have in common.

Party ``i`` holds the pair ``(x_i, x_{i+1})`` (indices mod 3) of a secret
``x = x0 op x1 op x2`` where ``op`` is ``+ mod 2^64`` (arithmetic) or XOR
(binary).  This base holds the pair, its shape and the reconstruction, which
differ between the two kinds only in ``op``.
"""
from __future__ import annotations

from ..errors import ProtocolError


class ReplicatedPair:
    """This party's two components ``first = x_i``, ``second = x_{i+1}``."""

    __array_priority__ = 1000  # NumPy defers `ndarray (op) share` to our reflected operators

    first = second = rt = None

    @property
    def shape(self):
        return tuple(self.first.shape)

    @property
    def ndim(self):
        return self.first.ndim

    @property
    def size(self):
        return int(self.first.size)

    @property
    def xp(self):
        return self.rt.xp

    def __len__(self):
        return self.shape[0]

    def _new(self, first, second):  # pragma: no cover - provided by the subclasses
        raise NotImplementedError

    def _map(self, fn):
        """Apply the same local (shape-only) function to both components."""
        return self._new(fn(self.first), fn(self.second))

    def _reconstruct(self, to, combine):
        """``combine(x_i, x_{i+1}, x_{i-1})`` on the back end (None on parties other than ``to``).

        To all: party ``i`` sends ``x_i`` to party ``i+1``, which lacks it: 1 round,
        8 bytes/element per party.  To party ``r`` only: party ``r-1`` sends ``x_{r-1}``:
        1 round, 8 bytes/element from one party.
        """
        comm = self.rt.comm
        if to is None:
            return combine(self.first, self.second, comm.pass_next(self.first))
        to = int(to)
        if not 0 <= to < 3:
            raise ProtocolError(f"reveal target must be party 0, 1 or 2, got {to}")
        sender = (to - 1) % 3
        sends = {to: self.first} if comm.rank == sender else {}
        recvs = {sender: (self.shape, self.first.dtype)} if comm.rank == to else {}
        got = comm.exchange(sends, recvs)
        if comm.rank != to:
            return None
        return combine(self.first, self.second, got[sender])
