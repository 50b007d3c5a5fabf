"""A record of the messages this process sends (tests only): which kind of exchange, to which
world rank, how many bytes.  Off unless a test turns it on with :func:`recording`; the
separation test of several groups reads it to show that nothing leaves a party's ranks
for another party's except the group exchanges."""

from __future__ import annotations

import contextlib

_LOG = None


@contextlib.contextmanager
def recording():
    """``with recording() as log: ...``: ``log`` gets ``(kind, world_rank, nbytes)`` per message
    sent in the block (``kind``: ``"group"`` or ``"role"``)."""
    global _LOG
    previous, _LOG = _LOG, []
    try:
        yield _LOG
    finally:
        _LOG = previous


def note(kind: str, world_rank: int, nbytes: int):
    if _LOG is not None:
        _LOG.append((kind, int(world_rank), int(nbytes)))


__all__ = ["note", "recording"]
