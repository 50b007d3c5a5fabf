"""Three-party communication over MPI: the one place that talks to mpi4py.

Every exchange is a *round*: all three ranks call the same primitive in the
same order, each posts its non-blocking receives and sends (``Irecv`` /
``Isend``) and waits for all of them, so messages of any size cannot deadlock
on buffering.  The communicator counts, per party, the bytes of share data it
sends and the rounds it takes part in; :meth:`Communicator.measure` gives the
counts of a block.

GPU buffers: with CuPy arrays the communicator hands device buffers to mpi4py
directly when the MPI library is CUDA-aware, and otherwise stages them through
host memory.  CUDA-awareness is detected once at start-up (``MPIX_Query_cuda_support``
in the loaded MPI library) and can be forced with ``MPCGPU_CUDA_AWARE=0|1``.
The current stream is synchronised before any GPU buffer is sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from dataclasses import dataclass

import numpy

from .backend import is_device_array
from .errors import ProtocolError, RankCountError

PARTIES = 3


def _mpi():
    from mpi4py import MPI

    return MPI


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


def detect_cuda_aware() -> bool:
    """True if the MPI library in this process reports CUDA support.

    ``MPCGPU_CUDA_AWARE=1`` / ``=0`` overrides the detection.
    """
    forced = os.environ.get("MPCGPU_CUDA_AWARE")
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() in ("1", "true", "yes", "on")
    _mpi()  # make sure the MPI library is loaded
    libs = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libmpi" in os.path.basename(path):
                    libs.add(path)
    except OSError:
        return False
    for path in sorted(libs):
        try:
            fn = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        try:
            return bool(fn())
        except Exception:
            return False
    return False


def world():
    """MPI's world communicator (initialising MPI on first use)."""
    return _mpi().COMM_WORLD


def world_rank():
    """This process's rank in the world communicator ("?" if MPI cannot be loaded): for
    messages and per-rank files before (or without) a runtime."""
    try:
        return world().Get_rank()
    except Exception:
        return "?"


def mpi_library_version() -> str:
    """The first line of the MPI library's version string (for `mpcgpu info`)."""
    return _mpi().Get_library_version().splitlines()[0].strip()


def abort_world(code: int = 1):
    """Abort every rank of the world (if MPI is running with more than one rank)."""
    try:
        MPI = _mpi()
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Abort(code)
    except Exception:
        pass


def rank_count_message(size: int) -> str:
    return (
        f"mpcgpu runs exactly three parties, one per MPI rank, but this job has {size} "
        f"rank{'s' if size != 1 else ''}. Launch it with three ranks: "
        "`mpirun -n 3 ...` (or `srun -n 3 ...` under SLURM)."
    )


WAIT_ENV = "MPCGPU_WAIT"
#: polite waiting: test, then sleep between tests, the pause doubling up to the cap (no
#: spinning first: measured, it only costs CPU time the computing parties need)
SLEEP_FIRST, SLEEP_CAP = 20e-6, 200e-6


def wait_policy(mpi_comm) -> str:
    """How a party waits for its messages: ``"spin"`` (MPI's own wait: busy polling, the
    lowest latency) when every rank on this node has a core, ``"sleep"`` when the node has
    fewer cores than ranks (three parties on a laptop or a 2-core VM: a spinning party
    would take the CPU from the ones still computing; measured on 2 cores, median of
    four: a secret 1024 x 1024 matmul 0.34 s -> 0.26 s).  ``MPCGPU_WAIT=spin|sleep``
    overrides.  Each party decides alone (it changes no message)."""
    forced = os.environ.get(WAIT_ENV, "").strip().lower()
    if forced in ("spin", "sleep"):
        return forced
    if forced:
        raise ValueError(f"{WAIT_ENV}={forced!r}: use spin or sleep")
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    local = mpi_comm.Split_type(_mpi().COMM_TYPE_SHARED)
    try:
        ranks_here = local.Get_size()
    finally:
        local.Free()
    return "sleep" if ranks_here > cores else "spin"


def _wait_politely(MPI, requests, statuses):
    """``Waitall`` that sleeps between tests while the messages are late (see :func:`wait_policy`)."""
    pause = SLEEP_FIRST
    while not MPI.Request.Testall(requests, statuses):
        time.sleep(pause)
        pause = min(2 * pause, SLEEP_CAP)


class Communicator:
    """Exchanges between the three parties of one MPI communicator."""

    def __init__(self, mpi_comm=None, backend=None, cuda_aware: bool | None = None):
        MPI = _mpi()
        self.mpi = MPI
        self.comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.size = self.comm.Get_size()
        if self.size != PARTIES:
            raise RankCountError(rank_count_message(self.size))
        self.rank = self.comm.Get_rank()
        self.next = (self.rank + 1) % PARTIES
        self.prev = (self.rank - 1) % PARTIES
        self.backend = backend
        on_gpu = backend is not None and backend.is_gpu
        self.cuda_aware = bool(on_gpu and (detect_cuda_aware() if cuda_aware is None else cuda_aware))
        self.stats = CommStats()
        self._settle_comm = self.comm.Dup()  # only for settle(): never matches a protocol's call
        self._tag = 7
        self.waiting = wait_policy(self.comm)

    # -- accounting -----------------------------------------------------------------
    def reset_stats(self):
        self.stats = CommStats()

    @contextlib.contextmanager
    def measure(self):
        """``with comm.measure() as m: ...`` -> ``m`` holds the CommStats of the block."""
        start = self.stats.copy()
        result = CommStats()
        try:
            yield result
        finally:
            delta = self.stats - start
            result.bytes_sent, result.rounds, result.messages = delta.bytes_sent, delta.rounds, delta.messages

    # -- buffers --------------------------------------------------------------------
    def _outgoing(self, arr):
        """A buffer mpi4py can send: device buffer if CUDA-aware, else host memory."""
        if is_device_array(arr):
            self.backend.synchronize()
            if self.cuda_aware:
                return arr if arr.flags.c_contiguous else arr.copy()
            return numpy.ascontiguousarray(arr.get())
        return numpy.ascontiguousarray(arr)

    def _incoming(self, shape, dtype):
        on_gpu = self.backend is not None and self.backend.is_gpu
        if on_gpu and self.cuda_aware:
            return self.backend.xp.empty(shape, dtype=dtype)
        return numpy.empty(shape, dtype=dtype)

    def _finish(self, buf):
        on_gpu = self.backend is not None and self.backend.is_gpu
        if on_gpu and not is_device_array(buf):
            return self.backend.to_device(buf)
        return buf

    # -- the primitive ----------------------------------------------------------------
    def exchange(self, sends: dict | None = None, recvs: dict | None = None) -> dict:
        """One round: send ``sends[peer]`` (an array) to each peer and receive arrays of
        ``recvs[peer] = (shape, dtype)`` from each peer.  Every rank must call this, also
        one that sends and receives nothing.  Returns ``{peer: array}``."""
        sends = sends or {}
        recvs = recvs or {}
        MPI = self.mpi
        requests, statuses, incoming, keep = [], [], {}, []
        for peer, (shape, dtype) in recvs.items():
            self._check_peer(peer)
            buf = self._incoming(tuple(shape), numpy.dtype(dtype))
            incoming[peer] = buf
            requests.append(self.comm.Irecv([buf, MPI.BYTE], source=peer, tag=self._tag))
            statuses.append((peer, buf.nbytes))
        sent = 0
        for peer, arr in sends.items():
            self._check_peer(peer)
            buf = self._outgoing(arr)
            keep.append(buf)
            requests.append(self.comm.Isend([buf, MPI.BYTE], dest=peer, tag=self._tag))
            sent += buf.nbytes
        status_objs = [MPI.Status() for _ in requests]
        if self.waiting == "sleep":
            _wait_politely(MPI, requests, status_objs)
        else:
            MPI.Request.Waitall(requests, status_objs)
        for (peer, expected), st in zip(statuses, status_objs):
            got = st.Get_count(MPI.BYTE)
            if got != expected:
                raise ProtocolError(
                    f"party {self.rank} expected {expected} bytes from party {peer} but got {got}: "
                    "the parties disagree on a shape (are all ranks running the same program and data?)"
                )
        self.stats.bytes_sent += sent
        self.stats.messages += len(sends)
        self.stats.rounds += 1
        return {peer: self._finish(buf) for peer, buf in incoming.items()}

    def _check_peer(self, peer):
        if peer == self.rank or not 0 <= peer < PARTIES:
            raise ProtocolError(f"party {self.rank} cannot exchange with party {peer}")

    # -- the common patterns ----------------------------------------------------------
    def pass_next(self, arr):
        """Send ``arr`` to party i+1 and receive the same-shaped array from party i-1 (1 round)."""
        return self.exchange({self.next: arr}, {self.prev: (arr.shape, arr.dtype)})[self.prev]

    def pass_prev(self, arr):
        """Send ``arr`` to party i-1 and receive the same-shaped array from party i+1 (1 round)."""
        return self.exchange({self.prev: arr}, {self.next: (arr.shape, arr.dtype)})[self.next]

    # -- metadata (small Python objects; not share data, not counted as bytes) ----------
    def bcast_object(self, obj, root: int = 0):
        """Broadcast a small picklable object (shapes, ids); counts one round."""
        self.stats.rounds += 1
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj):
        """Every party's small picklable object, in rank order; counts one round."""
        self.stats.rounds += 1
        return self.comm.allgather(obj)

    def allreduce_max(self, value):
        """The largest of the parties' numbers (timings); counts one round."""
        self.stats.rounds += 1
        return self.comm.allreduce(value, op=self.mpi.MAX)

    def allreduce_sum(self, value):
        """The sum of the parties' numbers (byte counts); counts one round."""
        self.stats.rounds += 1
        return self.comm.allreduce(value, op=self.mpi.SUM)

    def agree(self, value, what: str):
        """Check that all parties hold the same small value; ProtocolError on every rank if not."""
        values = self.allgather_object(value)
        if any(v != values[0] for v in values):
            raise ProtocolError(f"parties disagree on {what}: {values}")
        return values[0]

    def barrier(self):
        self.comm.Barrier()

    def settle(self, limit: float) -> bool:
        """For the excepthook before an abort: wait (at most ``limit`` s) until every party has
        reached this call, on a communicator of its own, so that an error raised on all ranks
        is printed by all of them before the first abort ends the job.  True if all came."""
        request = self._settle_comm.Ibarrier()
        deadline = time.monotonic() + limit
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def abort(self, code: int = 1):
        self.comm.Abort(code)
