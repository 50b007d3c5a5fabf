"""Private domain guards: a protocol whose input may lie outside its domain counts the
offending rows as a secret integer share; the counts of a whole run are added up and ONE
bit is revealed at the end, "some input was outside a domain", so that every party stops
with the same error instead of returning a silently wrong value.

    with guarded(rt) as g:          # e.g. PrivateGraph.run: one guard per run
        g.label = "node ln_1 (LayerNormalization)"
        y = layer_norm(x)           # records its count (record(rt, count, what))
    # on leaving: one comparison and one revealed bit; a DomainError on every party if set

Disclosure (stated): each guard reveals one bit to all three parties, whether any
recorded count is nonzero.  Only when that bit is 1 (the run stops with an error) is a
second set of bits revealed, one per recorded call, to name the offending calls in the
error (their labels and bounds); no counts or values are revealed.

Cost per guard: one MSB of one element (8 rounds, 120 bytes in all) and one reveal
(1 round, 24 bytes); per recorded call nothing (the counts are added locally).  A call
recorded outside any guard is checked at once, as a guard of its own.
"""

from __future__ import annotations

import contextlib

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare
from .convert import msb

#: guards in force, per runtime (innermost last)
_STACKS: dict = {}


class DomainError(ProtocolError):
    """A secret input was outside the domain of a protocol (raised on every party alike)."""


class Guard:
    """The counts recorded while it is in force (:func:`guarded`)."""

    def __init__(self, rt):
        self.rt = rt
        #: prefixed to what the next recorded calls say (an executor sets the node's name)
        self.label = ""
        self.entries: list = []  # (what, count share of shape (1,), scale 0)
        self.on_pass: list = []  # callables run when the check passes

    def add(self, count: ArithmeticShare, what: str, on_pass=None):
        if not isinstance(count, ArithmeticShare) or count.scale != 0:
            raise ProtocolError("a domain count must be an integer share (scale 0)")
        what = f"{self.label}: {what}" if self.label else what
        self.entries.append((what, count.reshape(1)))
        if on_pass is not None:
            self.on_pass.append(on_pass)

    def check(self):
        """Reveal whether any count is nonzero (one bit); raise :class:`DomainError` naming
        the offending calls (one more bit per call, revealed only then) if so."""
        if not self.entries:
            return
        total = self.entries[0][1]
        for _, c in self.entries[1:]:
            total = total + c
        if not int(msb(total, negate=True).reveal()[0]) & 1:  # [total > 0]
            for fn in self.on_pass:
                fn()
            return
        from ..sharing.arithmetic import stack

        counts = stack([c for _, c in self.entries]) if len(self.entries) > 1 else self.entries[0][1]
        bits = msb(counts.reshape(len(self.entries)), negate=True).reveal()
        bad = [what for (what, _), b in zip(self.entries, bits.reshape(-1)) if int(b) & 1]
        raise DomainError("input outside the domain (the computation stopped): " + "; ".join(bad))


@contextlib.contextmanager
def guarded(rt):
    """A :class:`Guard` in force for ``rt`` inside the block, checked on leaving it normally
    (not when the block raises: the error goes on as it is)."""
    g = Guard(rt)
    stack = _STACKS.setdefault(id(rt), [])
    stack.append(g)
    try:
        yield g
    finally:
        stack.remove(g)
        if not stack:
            _STACKS.pop(id(rt), None)
    g.check()


def record(count: ArithmeticShare, what: str, on_pass=None):
    """Add ``count`` (an integer share: how many rows or elements were out of the domain,
    any positive value meaning "some") to the innermost guard of its runtime, or, with
    none in force, check it at once (one revealed bit).  ``on_pass``: called (on every
    party alike) once the check has passed, e.g. to remember that a weight was checked."""
    stack = _STACKS.get(id(count.rt))
    if stack:
        stack[-1].add(count, what, on_pass)
        return
    g = Guard(count.rt)
    g.add(count, what, on_pass)
    g.check()


def active(rt) -> Guard | None:
    """The innermost guard in force for ``rt`` (None if none)."""
    stack = _STACKS.get(id(rt))
    return stack[-1] if stack else None


__all__ = ["DomainError", "Guard", "guarded", "record", "active"]
