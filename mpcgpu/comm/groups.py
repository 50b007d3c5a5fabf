"""Many groups of three under one ``mpirun``: the layout of ``3k`` ranks into ``k`` groups.

Every organisation (party) contributes ``k`` ranks; group ``g`` is one rank of each party,
and runs the three-party protocols exactly as a 3-rank job does.  The ranks that play
the same party belong to one organisation, so they may add up their own share
components, or pass them around, freely: that is the **role communicator**
(:mod:`mpcgpu.comm.role`).  Nothing crosses from one party's ranks to another's except the
group exchanges (:mod:`mpcgpu.comm.communicator`, sealed channels as always).

Layouts (``--layout``, ``MPCGPU_LAYOUT``):

* ``block`` (the default): ranks ``[0, k)`` play party 0, ``[k, 2k)`` party 1, ``[2k, 3k)``
  party 2; rank ``p k + g`` is party ``p`` of group ``g``.  Under SLURM's block
  distribution over three nodes, each organisation's node then holds only its own
  party's ranks.
* ``cyclic``: rank ``r`` plays party ``r % 3`` in group ``r // 3`` (one machine: the first
  three ranks are group 0, as in a 3-rank job).

With 3 ranks both layouts are the 3-rank job of old, unchanged.  Any count that is not a
positive multiple of three is an error naming the rule, raised alike on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcgpu.errors import RankCountError

PARTIES = 3
LAYOUTS = ("block", "cyclic")
LAYOUT_ENV = "MPCGPU_LAYOUT"


def rank_count_message(size: int) -> str:
    return (
        f"mpcgpu runs groups of three parties, one rank per party in each group, so a job has 3k "
        f"ranks (3, 6, 9, ...: k groups); this job has {size} rank{'s' if size != 1 else ''}. "
        "Launch it with `mpirun -n 3 ...` (one group) or `mpirun -n 3k ...` (k groups; --layout "
        "block or cyclic), or `srun -n 3k ...` under SLURM."
    )


@dataclass(frozen=True)
class Layout:
    """Which party and group each of ``size`` world ranks plays (``kind``: block | cyclic)."""

    size: int
    kind: str = "block"

    def __post_init__(self):
        if self.kind not in LAYOUTS:
            raise RankCountError(f"layout {self.kind!r}: use one of {', '.join(LAYOUTS)} ({LAYOUT_ENV}, --layout)")
        if self.size < PARTIES or self.size % PARTIES:
            raise RankCountError(rank_count_message(self.size))

    @property
    def k(self) -> int:
        """The number of groups."""
        return self.size // PARTIES

    def party(self, rank: int) -> int:
        return rank // self.k if self.kind == "block" else rank % PARTIES

    def group(self, rank: int) -> int:
        return rank % self.k if self.kind == "block" else rank // PARTIES

    def rank(self, group: int, party: int) -> int:
        """The world rank of ``party`` in ``group``."""
        if not (0 <= group < self.k and 0 <= party < PARTIES):
            raise ValueError(f"no party {party} of group {group} in {self.k} groups")
        return party * self.k + group if self.kind == "block" else group * PARTIES + party

    def group_ranks(self, group: int) -> list:
        """World ranks of ``group``, in party order."""
        return [self.rank(group, p) for p in range(PARTIES)]

    def role_ranks(self, party: int) -> list:
        """World ranks that play ``party``, in group order."""
        return [self.rank(g, party) for g in range(self.k)]

    def describe(self) -> str:
        if self.k == 1:
            return "3 ranks: one group of three parties"
        return f"{self.size} ranks: {self.k} groups of three ({self.kind} layout)"


@dataclass(frozen=True)
class Place:
    """This rank's place in the layout: its ``world_rank``, ``group`` and ``party``."""

    layout: Layout
    world_rank: int

    @property
    def k(self) -> int:
        return self.layout.k

    @property
    def group(self) -> int:
        return self.layout.group(self.world_rank)

    @property
    def party(self) -> int:
        return self.layout.party(self.world_rank)

    def name(self, party: int | None = None) -> str:
        """``"party P"`` (one group) or ``"party P of group G"``: for messages."""
        party = self.party if party is None else party
        return f"party {party}" if self.k == 1 else f"party {party} of group {self.group}"

    def share_of(self, n: int) -> range:
        """The rows of ``n`` (in order) that this rank's group takes: ``k`` contiguous slices,
        the first ``n % k`` one row longer (group 0 takes the first)."""
        return split_range(n, self.k)[self.group]


def split_range(n: int, k: int) -> list:
    """``range(n)`` cut into ``k`` contiguous, ordered slices as even as possible."""
    base, extra = divmod(int(n), int(k))
    out, lo = [], 0
    for g in range(k):
        hi = lo + base + (1 if g < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return out


def split_communicators(world_comm, place: Place):
    """The MPI communicators of this rank: its group's (ranks ordered by party) and its
    role's (the ``k`` ranks of its party, ordered by group).  A collective call on
    ``world_comm``; with one group, ``(world_comm, None)``."""
    if place.k == 1:
        return world_comm, None
    group = world_comm.Split(color=place.group, key=place.party)
    role = world_comm.Split(color=place.party, key=place.group)
    return group, role


__all__ = ["LAYOUTS", "Layout", "Place", "rank_count_message", "split_communicators", "split_range"]
