"""Where the words of one share component live: held in memory, or drawn again from the PRG.

A secret dealt by party ``s`` (:func:`mpcgpu.sharing.replicated.distribute`) has two
pseudo-random components, ``x_s`` and ``x_{s+1}``, drawn from keys that ``s`` shares with
its neighbours, and one computed component ``x_{s+2}``, sent.  A party may keep a
pseudo-random component as the :class:`~mpcgpu.crypto.prg.Recipe` of its PRG calls (24 bytes per
call) and draw its words again where they are used: a dealt weight then costs each party
one component instead of two (VGG-16: 1.1 GB less per party).
Drawing words again costs AES-CTR time (4-8 GB/s per core here), no communication.

Both kinds read the component as a flat array of words in C order, ``read(lo, hi)``
returning words ``lo:hi`` on the back end.
"""

from __future__ import annotations

from mpcgpu.crypto.prg import draw_range


class Held:
    """A component held in memory (``words``: a back-end array of any shape)."""

    __slots__ = ("words",)

    def __init__(self, words):
        self.words = words

    @property
    def shape(self) -> tuple:
        return tuple(self.words.shape)

    @property
    def held_bytes(self) -> int:
        return int(self.words.nbytes)

    def read(self, lo: int, hi: int):
        return self.words.reshape(-1)[lo:hi]


class Regenerated:
    """A pseudo-random component kept as the recipes of the PRG calls that drew it, in
    order (one call per piece of the dealing), of a component of ``shape``; ``to_device``
    moves host words to the back end."""

    __slots__ = ("recipes", "shape", "to_device")

    def __init__(self, recipes, shape, to_device):
        self.recipes = tuple(recipes)
        self.shape = tuple(int(s) for s in shape)
        self.to_device = to_device

    @property
    def held_bytes(self) -> int:
        return 0

    def read(self, lo: int, hi: int):
        return self.to_device(draw_range(self.recipes, lo, hi))


__all__ = ["Held", "Regenerated"]
