"""The meter of a communicator: what one party's protocols cost in communication.

It holds the counts of one party (:class:`CommStats`: bytes of share data sent, rounds,
messages) and nothing else: it moves no message.  The communicator records every round it
runs; :meth:`Meter.measure` gives the counts of a block, and :meth:`Meter.uncounted` runs a
block whose traffic is set-up (a key exchange, a plan agreement) and not the protocol's
cost, so that it leaves the counts as they were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass
class CommStats:
    """Communication of one party: bytes of data sent, rounds, messages sent."""

    bytes_sent: int = 0
    rounds: int = 0
    messages: int = 0

    def __sub__(self, other: "CommStats") -> "CommStats":
        return CommStats(self.bytes_sent - other.bytes_sent, self.rounds - other.rounds, self.messages - other.messages)

    def copy(self) -> "CommStats":
        return CommStats(self.bytes_sent, self.rounds, self.messages)

    def as_dict(self) -> dict:
        return {"bytes_sent": self.bytes_sent, "rounds": self.rounds, "messages": self.messages}


class Meter:
    """The running :class:`CommStats` of one party (``stats``) and the depth of the
    :meth:`uncounted` blocks it is in (nothing is recorded while that is above 0)."""

    def __init__(self):
        self.stats = CommStats()
        self._paused = 0

    @property
    def counting(self) -> bool:
        return self._paused == 0

    def record(self, bytes_sent: int = 0, messages: int = 0, rounds: int = 1):
        """Add one round (or ``rounds``) with its payload bytes and messages."""
        if self._paused:
            return
        self.stats.bytes_sent += int(bytes_sent)
        self.stats.messages += int(messages)
        self.stats.rounds += int(rounds)

    def reset(self):
        self.stats = CommStats()

    @contextlib.contextmanager
    def measure(self):
        """``with meter.measure() as m: ...`` -> ``m`` holds the CommStats of the block."""
        start = self.stats.copy()
        result = CommStats()
        try:
            yield result
        finally:
            delta = self.stats - start
            result.bytes_sent, result.rounds, result.messages = delta.bytes_sent, delta.rounds, delta.messages

    @contextlib.contextmanager
    def uncounted(self):
        """``with meter.uncounted(): ...``: the block's traffic is set-up, not counted."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
