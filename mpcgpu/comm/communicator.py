"""Three-party communication: the communicator the protocols use, a facade over three parts.

* the **transport** (:mod:`mpcgpu.comm.transport`): MPI point-to-point, the wait policy, the peer
  timeout, aborts; the one place that talks to mpi4py;
* the **sealed link** (:mod:`mpcgpu.comm.link`): the channels (:mod:`mpcgpu.comm.channels`): the key
  exchange, sealing and opening of every message, GPU staging, the object channel, the
  test hook on outgoing messages;
* the **meter** (:mod:`mpcgpu.comm.meter`): per party, the bytes of share data sent, the rounds
  and the messages; :meth:`Communicator.measure` gives the counts of a block and
  :meth:`Communicator.uncounted` keeps set-up traffic out of them.

Every exchange is a *round*: all three ranks call the same primitive in the same order.

GPU buffers: with CuPy arrays the communicator hands device buffers to mpi4py directly
when the MPI library is CUDA-aware, and otherwise stages them through host memory.
CUDA-awareness is detected once at start-up (``MPIX_Query_cuda_support`` in the loaded
MPI library) and can be forced with ``MPCGPU_CUDA_AWARE=0|1``.  The current stream is
synchronised before any GPU buffer is sent.

Channels: by default every message is sealed with AES-256-GCM under per-pair direction
keys agreed at start-up (2 rounds, 256 bytes per party; 384 with a parties file).  A
sealed message carries 16 extra bytes (its tag); the byte counters count the payload
only, so the cost figures of the protocols do not change (``wire`` counts the tags).
Sealing happens on the host: with channels on, GPU messages are staged through host
memory; ``--insecure-channels`` keeps the CUDA-aware path and sends in clear.  A message
that does not open, or a peer silent for longer than the peer timeout, prints a message
naming the peer and aborts every rank.  Small Python objects (``bcast_object`` and
friends) travel over the same channels (two point-to-point steps: sizes, then pickles of
at most :data:`mpcgpu.comm.plaindata.MAX_OBJECT_BYTES`, unpickled as plain data only: a peer
can send values, never code).
"""

from __future__ import annotations

import numpy

from mpcgpu import settings as settings_mod
from mpcgpu.comm.channels import ChannelConfig
from mpcgpu.comm.link import SealedLink
from mpcgpu.comm.meter import CommStats, Meter
from mpcgpu.comm.transport import (
    PARTIES,
    Transport,
    detect_cuda_aware,
)

__all__ = ["CommStats", "Communicator", "PARTIES"]


class _PartAttribute:
    """An attribute of the communicator that is the attribute of the same name of one of its
    parts, read and set there: ``comm.stats`` is ``comm.meter.stats``."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj, value):
        setattr(getattr(obj, self.part), self.name, value)


class Communicator:
    """Exchanges between the three parties of one MPI communicator (with several groups:
    this rank's group, :mod:`mpcgpu.comm.groups`; ``place`` names it in messages).

    Holds its three parts: ``transport`` (a :class:`~mpcgpu.comm.transport.Transport`), ``link``
    (a :class:`~mpcgpu.comm.link.SealedLink`, connected at construction: the key exchange) and
    ``meter`` (a :class:`~mpcgpu.comm.meter.Meter`).  ``wire_hook``: a test hook on every
    outgoing message (see :mod:`mpcgpu.comm.link`; also settable later as ``comm.wire_hook``)."""

    def __init__(
        self,
        mpi_comm=None,
        backend=None,
        cuda_aware: bool | None = None,
        channels: ChannelConfig | None = None,
        wire_hook=None,
        settings=None,
        place=None,
        node_ranks=None,
    ):
        settings = settings if settings is not None else settings_mod.active()  # see mpcgpu.settings
        cuda_aware = settings.cuda_aware if cuda_aware is None else cuda_aware
        channels = channels if channels is not None else ChannelConfig.from_settings(settings)
        self.transport = Transport(
            mpi_comm, peer_timeout=channels.peer_timeout, wait=settings.wait, place=place, node_ranks=node_ranks
        )
        self.meter = Meter()
        self.backend = backend
        on_gpu = backend is not None and backend.is_gpu
        self.cuda_aware = bool(on_gpu and (detect_cuda_aware() if cuda_aware is None else cuda_aware))
        self.link = SealedLink(self.transport, backend, channels, cuda_aware=self.cuda_aware, wire_hook=wire_hook)
        t = self.transport
        self.mpi, self.comm, self.size = t.mpi, t.comm, t.size
        self.rank, self.next, self.prev = t.rank, t.next, t.prev
        self.channels = channels
        self.sealed = self.link.sealed
        #: what the channels add: sealed messages, their tag bytes, seconds spent sealing and opening
        self.wire = self.link.wire
        self.link.connect()
        self.hosts = self.link.hosts
        self.job_id = self.link.job_id

    # -- the parts' settings, as attributes of the communicator ----------------------------
    stats = _PartAttribute("meter")  # a CommStats
    waiting = _PartAttribute("transport")  # the wait policy's name
    peer_timeout = _PartAttribute("transport")
    wire_hook = _PartAttribute("link")

    def describe_channels(self) -> str:
        return self.link.describe()

    # -- accounting -------------------------------------------------------------------------
    def reset_stats(self):
        self.meter.reset()

    def measure(self):
        """``with comm.measure() as m: ...`` -> ``m`` holds the CommStats of the block."""
        return self.meter.measure()

    def uncounted(self):
        """``with comm.uncounted(): ...``: set-up traffic, left out of ``stats``."""
        return self.meter.uncounted()

    # -- the primitive ----------------------------------------------------------------------
    def exchange(self, sends: dict | None = None, recvs: dict | None = None) -> dict:
        """One round: send ``sends[peer]`` (an array) to each peer and receive arrays of
        ``recvs[peer] = (shape, dtype)`` from each peer.  Every rank must call this, also
        one that sends and receives nothing.  Returns ``{peer: array}``.  Counts the
        payload bytes (not the 16-byte tags of sealed messages: see ``wire``)."""
        sends = sends or {}
        recvs = recvs or {}
        got, payload = self.link.transfer(sends, recvs)
        self.meter.record(payload, messages=len(sends))
        return {peer: self.link.finish(buf) for peer, buf in got.items()}

    # -- the common patterns ----------------------------------------------------------------
    def pass_next(self, arr):
        """Send ``arr`` to party i+1 and receive the same-shaped array from party i-1 (1 round)."""
        return self.exchange({self.next: arr}, {self.prev: (arr.shape, arr.dtype)})[self.prev]

    def pass_prev(self, arr):
        """Send ``arr`` to party i-1 and receive the same-shaped array from party i+1 (1 round)."""
        return self.exchange({self.prev: arr}, {self.next: (arr.shape, arr.dtype)})[self.next]

    # -- metadata (small Python objects; not share data, not counted as bytes) --------------
    def bcast_object(self, obj, root: int = 0):
        """Broadcast a small picklable object (shapes, ids); counts one round."""
        self.meter.record(rounds=1)
        peers = (self.prev, self.next)
        if self.rank == root:
            self.link.objects({p: obj for p in peers}, ())
            return obj
        self.transport.check_peer(root)
        return self.link.objects({}, (root,))[root]

    def allgather_object(self, obj):
        """Every party's small picklable object, in rank order; counts one round."""
        self.meter.record(rounds=1)
        peers = (self.prev, self.next)
        got = self.link.objects({p: obj for p in peers}, peers)
        got[self.rank] = obj
        return [got[i] for i in range(PARTIES)]

    def _allgather_quiet(self, value):
        peers = (self.prev, self.next)
        got = self.link.objects({p: value for p in peers}, peers)
        return [value, *got.values()]

    def allreduce_max(self, value):
        """The largest of the parties' numbers (timings); counts one round."""
        self.meter.record(rounds=1)
        return max(self._allgather_quiet(value))

    def allreduce_sum(self, value):
        """The sum of the parties' numbers (byte counts); counts one round."""
        self.meter.record(rounds=1)
        values = self._allgather_quiet(value)
        return sum(values[1:], values[0])

    def agree(self, value, what: str):
        """Check that all parties hold the same small value; ProtocolError on every rank if not."""
        from mpcgpu.errors import ProtocolError

        values = self.allgather_object(value)
        if any(v != values[0] for v in values):
            raise ProtocolError(f"parties disagree on {what}: {values}")
        return values[0]

    def barrier(self):
        """Wait until both peers have arrived here (an empty message each way; under the
        peer timeout like every exchange)."""
        peers = (self.prev, self.next)
        empty = numpy.empty(0, dtype=numpy.uint8)
        self.link.transfer({p: empty for p in peers}, {p: ((0,), numpy.uint8) for p in peers})

    def settle(self, limit: float) -> bool:
        """For the excepthook before an abort: wait (at most ``limit`` s) until every party has
        reached this call, so that an error raised on all ranks is printed by all of them
        before the first abort ends the job.  True if all came."""
        return self.transport.settle(limit)

    def abort(self, code: int = 1):
        self.transport.abort(code)
