"""What arithmetic and binary replicated shares have in common.

Party ``i`` holds the pair ``(x_i, x_{i+1})`` (indices mod 3) of a secret
``x = x0 op x1 op x2`` where ``op`` is ``+ mod 2^64`` (arithmetic) or XOR
(binary).  This module holds everything that does not depend on ``op``, once:

* :class:`ReplicatedPair`, the base class: the pair, its shape, the local shape
  operations (reshape, transpose, indexing, broadcasting, padding, copy) and the
  reconstruction;
* :func:`with_public` -- the rule for a public constant, written once: it goes
  into ONE component, in both places that component is held;
* :func:`concatenate`, :func:`stack` -- for either kind;
* :func:`distribute` -- secret-sharing an array held by one party.
"""

from __future__ import annotations

import numpy  # shapes only (broadcast_shapes on tuples); never share data

from ..errors import EncodingError, ProtocolError
from mpcgpu.crypto.prg import reserve

PARTIES = 3


def holders(component: int) -> tuple[int, int]:
    """The two parties that hold ``component``: party ``k`` (first slot), party ``k-1`` (second)."""
    return component % PARTIES, (component - 1) % PARTIES


def with_public(first, second, value, rank: int, xp, op, component: int = 0):
    """This party's pair after ``x_component = op(x_component, value)`` for a public ``value``.

    A public constant changes one component, and that component is held twice: as the
    FIRST slot of party ``component`` and the SECOND slot of party ``component - 1``.
    Changing only one copy leaves the replicas inconsistent (the error shows once a
    different pair of parties reconstructs), so every public constant in mpcgpu goes
    through here.  ``value`` broadcasts against the share; untouched slots are returned
    as they are (or broadcast) and never modified in place.
    """
    shape = numpy.broadcast_shapes(tuple(first.shape), tuple(getattr(value, "shape", ())))
    if tuple(first.shape) != shape:
        first, second = xp.broadcast_to(first, shape), xp.broadcast_to(second, shape)
    own, prev = holders(component)
    if rank == own:
        first = op(first, value)
    elif rank == prev:
        second = op(second, value)
    return first, second


class ReplicatedPair:
    """This party's two components ``first = x_i``, ``second = x_{i+1}`` of a sharing.

    Shares are values: every operation returns a new share and never writes into the
    arrays of its operands (results may share memory with their operands).
    """

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

    def _compatible(self, other) -> bool:
        """Whether ``other`` can be concatenated with this share (same kind and encoding)."""
        return type(other) is type(self)

    def _map(self, fn):
        """Apply the same local (shape-only) function to both components."""
        return self._new(fn(self.first), fn(self.second))

    # -- local shape operations (0 rounds) ---------------------------------------------
    def reshape(self, *shape):
        return self._map(lambda a: a.reshape(*shape))

    def ravel(self):
        return self._map(lambda a: a.reshape(-1))

    def flatten(self, start: int = 0):
        """Merge the axes from ``start`` on: ``(N, C, H, W).flatten(1) -> (N, C*H*W)``."""
        return self.reshape(*self.shape[:start], -1)

    def transpose(self, *axes):
        return self._map(lambda a: a.transpose(*axes))

    @property
    def T(self):
        return self.transpose()

    def swapaxes(self, a1, a2):
        return self._map(lambda a: a.swapaxes(a1, a2))

    def __getitem__(self, index):
        return self._map(lambda a: a[index])

    def broadcast_to(self, shape):
        return self._map(lambda a: self.xp.broadcast_to(a, shape).copy())

    def pad(self, pad_width):
        """Zero padding (zeros are a valid sharing of zero for either kind)."""
        return self._map(lambda a: self.xp.pad(a, pad_width))

    def copy(self):
        return self._map(lambda a: a.copy())

    def contiguous(self):
        return self._map(self.xp.ascontiguousarray)

    # -- reconstruction ----------------------------------------------------------------
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
        if not 0 <= to < PARTIES:
            raise ProtocolError(f"reveal target must be party 0, 1 or 2, got {to}")
        sender = (to - 1) % PARTIES
        sends = {to: self.first} if comm.rank == sender else {}
        recvs = {sender: (self.shape, self.first.dtype)} if comm.rank == to else {}
        got = comm.exchange(sends, recvs)
        if comm.rank != to:
            return None
        return combine(self.first, self.second, got[sender])


def _joined(shares, how: str, axis):
    shares = list(shares)
    if not shares:
        raise ProtocolError(f"{how} needs at least one share")
    head = shares[0]
    for s in shares[1:]:
        if not head._compatible(s):
            raise ProtocolError(f"{how} needs shares of one kind and one scale: {head!r} and {s!r}")
    join = getattr(head.xp, how)
    return head._new(join([s.first for s in shares], axis=axis), join([s.second for s in shares], axis=axis))


def concatenate(shares, axis=0):
    """Concatenate shares of one kind and scale along ``axis`` (local)."""
    return _joined(shares, "concatenate", axis)


def stack(shares, axis=0):
    """Stack shares of one kind and scale along a new ``axis`` (local)."""
    return _joined(shares, "stack", axis)


def distribute(x, src: int, rt, encode, mask, check=None, encode_checked=None, compact: bool = False):
    """Secret-share the array ``x`` held by party ``src`` (other parties pass None).

    ``encode(array) -> ring words`` runs on ``src`` and may raise EncodingError;
    ``mask(words, r1, r2) -> x_{src+2}`` removes the two pseudo-random components.
    Optionally ``check(array)`` (raises EncodingError) and ``encode_checked(array)`` (the
    words of a checked array): an array sent in pieces is then checked whole first and
    encoded piece by piece, so its words never exist whole.
    Components ``x_src`` and ``x_{src+1}`` come from the keys ``src`` shares with its
    neighbours (no communication); ``src`` sends ``x_{src+2}`` to both other parties.

    Cost: 1 round of 8 bytes/element to each of the two others (16 bytes/element from
    ``src`` only; one round per :data:`DISTRIBUTE_CHUNK` elements), after one small
    metadata round carrying the shape and whether the input could be encoded.  That
    verdict is all the others learn of a bad input: the error they raise names the party,
    never a value, a magnitude or NaN-ness (the source party's own error carries the
    details).  Returns ``(first, second)``; with ``compact`` the two as
    :mod:`~mpcgpu.sharing.components` (same messages, same words): every party holds one
    component and keeps the other, pseudo-random one as recipes, drawn again where it is
    used (``x_{src+1}`` on ``src`` and ``src+1``, ``x_src`` on ``src+2``).
    """
    comm, xp = rt.comm, rt.xp
    local_error = words = None
    if comm.rank == src:
        if x is None:
            raise ProtocolError(f"party {src} is the source of share() but passed no data")
        arr = x if isinstance(x, xp.ndarray) else rt.backend.to_device(numpy.asarray(x))
        try:
            if check is not None and encode_checked is not None and arr.size > DISTRIBUTE_CHUNK:
                check(arr)
                words = arr.reshape(-1)  # encoded piece by piece below
            else:
                words, encode_checked = encode(arr), None
        except EncodingError as exc:
            local_error, words = exc, None
        meta = (tuple(arr.shape), local_error is not None)
    else:
        meta = None
    shape, failed = comm.bcast_object(meta, root=src)
    if failed:
        if local_error is not None:
            raise local_error
        raise EncodingError(
            f"party {src}'s input could not be encoded (it is outside the fixed-point "
            "range or not a finite number); only that party sees the details"
        )
    shape = tuple(shape)
    n = int(numpy.prod(shape, dtype=numpy.int64))
    if compact:
        flat = words.reshape(-1) if words is not None else None
        return _distribute_compact(comm, rt, src, shape, flat, mask, encode_checked)
    if n <= DISTRIBUTE_CHUNK:
        return _distribute_words(comm, rt, src, shape, words, mask)
    # a large array goes in pieces written into place: besides its input (and its encoding,
    # without encode_checked) and the result, the source holds one piece's masks at a time
    flat = words.reshape(-1) if words is not None else None
    first, second = xp.empty(n, dtype=xp.uint64), xp.empty(n, dtype=xp.uint64)
    for lo in range(0, n, DISTRIBUTE_CHUNK):
        hi = min(n, lo + DISTRIBUTE_CHUNK)
        piece = flat[lo:hi] if flat is not None else None
        if piece is not None and encode_checked is not None:
            piece = encode_checked(piece)
        first[lo:hi], second[lo:hi] = _distribute_words(comm, rt, src, (hi - lo,), piece, mask)
    return first.reshape(shape), second.reshape(shape)


#: elements per message of :func:`distribute` (larger arrays go in pieces, 1 round each)
DISTRIBUTE_CHUNK = 1 << 22


def _distribute_compact(comm, rt, src, shape, flat, mask, encode_checked):
    """:func:`distribute` keeping one pseudo-random component per party as recipes: the
    same PRG calls and messages, piece by piece; the words of that component are never kept
    (on the parties other than ``src``, not even drawn here).  One held component each
    (not none on ``src``): every party then draws the same number of words per use."""
    from .components import Held, Regenerated

    xp, rank = rt.xp, comm.rank
    n = int(numpy.prod(shape, dtype=numpy.int64))
    own_calls, next_calls = [], []
    held = xp.empty(n, dtype=xp.uint64)
    for lo in range(0, n, DISTRIBUTE_CHUNK):
        hi = min(n, lo + DISTRIBUTE_CHUNK)
        if rank == src:
            piece = flat[lo:hi]
            if encode_checked is not None:
                piece = encode_checked(piece)
            held[lo:hi] = rt.prg.with_prev((hi - lo,))  # x_src (key k_src): held
            next_calls.append(reserve(rt.prg.next, hi - lo))  # x_src+1 (key k_src+1): drawn again
            nxt = rt.backend.to_device(next_calls[-1].words())
            rest = mask(piece, held[lo:hi], nxt)
            del nxt
            comm.exchange({(src + 1) % PARTIES: rest, (src + 2) % PARTIES: rest}, {})
            continue
        held[lo:hi] = comm.exchange({}, {src: ((hi - lo,), xp.uint64)})[src]
        if rank == (src + 1) % PARTIES:
            own_calls.append(reserve(rt.prg.own, hi - lo))  # x_src+1, as with_prev
        else:
            next_calls.append(reserve(rt.prg.next, hi - lo))  # x_src, as with_next
    device = rt.backend.to_device
    if rank == src:
        return Held(held.reshape(shape)), Regenerated(next_calls, shape, device)
    if rank == (src + 1) % PARTIES:  # holds (x_src+1, x_src+2)
        return Regenerated(own_calls, shape, device), Held(held.reshape(shape))
    return Held(held.reshape(shape)), Regenerated(next_calls, shape, device)  # (x_src+2, x_src)


def _distribute_words(comm, rt, src, shape, words, mask):
    """One round of :func:`distribute`: ``src`` masks ``words`` (ring words of ``shape``)."""
    rank = comm.rank
    if rank == src:
        own = rt.prg.with_prev(shape)  # x_src   (key k_src, shared with src-1)
        nxt = rt.prg.with_next(shape)  # x_src+1 (key k_src+1, shared with src+1)
        rest = mask(words, own, nxt)  # x_src+2
        comm.exchange({(src + 1) % PARTIES: rest, (src + 2) % PARTIES: rest}, {})
        return own, nxt
    got = comm.exchange({}, {src: (shape, rt.xp.uint64)})[src]
    if rank == (src + 1) % PARTIES:  # holds (x_src+1, x_src+2)
        return rt.prg.with_prev(shape), got
    return got, rt.prg.with_next(shape)  # src+2 == src-1: holds (x_src+2, x_src)
