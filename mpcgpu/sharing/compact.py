"""Shares held compactly: pseudo-random components drawn again where they are used.

A model's weights are dealt once and then only read.  :func:`share` (the dealing of
:func:`mpcgpu.sharing.arithmetic.share`) keeps, on every party, one of its two
components as PRG recipes (:mod:`mpcgpu.sharing.components`): each party holds one
component of the weight instead of two.  A :class:`CompactShare` is not an
:class:`~mpcgpu.sharing.arithmetic.ArithmeticShare`; it hands out ordinary shares of its
rows (:meth:`CompactShare.rows`, :meth:`CompactShare.materialize`), and
:func:`matmul_transposed` multiplies by a stored ``(out, in)`` weight block by block, so
that even VGG-16's first fully connected layer (103M weights) never exists whole.

Costs: no communication; drawing a component again is AES-CTR on the host (4-8 GB/s
per core here), once per use, the same number of words on every party.  What a party
holds and sees is what it holds after an ordinary dealing (its own two components, or
the keys that draw them).
"""

from __future__ import annotations

import math

from .arithmetic import ArithmeticShare, dealt_components, matmul_by_columns


def share(x=None, src: int = 0, integer: bool = False, rt=None) -> "CompactShare":
    """:func:`mpcgpu.sharing.arithmetic.share` (same checks, messages and words), kept
    compactly: every party holds one component and keeps the other as a PRG recipe."""
    return CompactShare(*dealt_components(x, src, integer, rt, compact=True))


class CompactShare:
    """This party's two components of a dealt secret, each held or drawn again
    (``first``/``second``: :class:`~mpcgpu.sharing.components.Held` or
    :class:`~mpcgpu.sharing.components.Regenerated`), at ``scale`` fractional bits."""

    def __init__(self, first, second, scale: int, rt):
        if tuple(first.shape) != tuple(second.shape):
            raise ValueError(f"components of shapes {first.shape} and {second.shape}")
        self.first, self.second = first, second
        self.shape = tuple(first.shape)
        self.scale = int(scale)
        self.rt = rt

    def __reduce__(self):
        raise TypeError("a compact share holds PRG keys: it is never pickled, sent or saved")

    def __repr__(self):
        return f"CompactShare(shape={self.shape}, scale={self.scale}, held={self.held_bytes} B)"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def held_bytes(self) -> int:
        """Bytes of words this party holds for the share (the recipes aside)."""
        return self.first.held_bytes + self.second.held_bytes

    def rows(self, lo: int, hi: int) -> ArithmeticShare:
        """Rows ``lo:hi`` (along the first axis) as an ordinary share (held words are views,
        drawn words fresh)."""
        if not self.shape:
            raise ValueError("a 0-d share has no rows: use materialize()")
        per_row = self.size // self.shape[0] if self.shape[0] else 0
        shape = (hi - lo,) + self.shape[1:]
        pair = (c.read(lo * per_row, hi * per_row).reshape(shape) for c in (self.first, self.second))
        return ArithmeticShare(*pair, self.scale, self.rt)

    def materialize(self) -> ArithmeticShare:
        """The whole share as an ordinary one (a temporary: the words drawn again are not kept)."""
        if not self.shape:
            pair = (c.read(0, 1).reshape(()) for c in (self.first, self.second))
            return ArithmeticShare(*pair, self.scale, self.rt)
        return self.rows(0, self.shape[0])


def matmul_transposed(x: ArithmeticShare, w: CompactShare, trunc=None) -> ArithmeticShare:
    """``x @ w.T`` for a stored 2-D weight ``w`` of shape ``(out, in)`` (a linear layer):
    the rows of ``w`` (columns of ``w.T``) drawn in blocks of about
    :data:`~mpcgpu.sharing.arithmetic.MATMUL_BLOCK` elements; as
    :func:`~mpcgpu.sharing.arithmetic.matmul` otherwise (same rounds and bytes)."""
    if w.ndim != 2:
        raise ValueError(f"matmul_transposed needs a 2-D weight, got shape {w.shape}")

    def columns(lo, hi):
        block = w.rows(lo, hi)
        return block.first.T, block.second.T

    return matmul_by_columns(x, (w.shape[1], w.shape[0]), w.scale, columns, trunc)


def held(value) -> ArithmeticShare:
    """``value`` as an ordinary share: a :class:`CompactShare` materialized, anything else as it is."""
    return value.materialize() if isinstance(value, CompactShare) else value


__all__ = ["CompactShare", "share", "matmul_transposed", "held"]
