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

Channels (:mod:`mpcgpu.channels`): by default every message is sealed with
AES-256-GCM under per-pair direction keys agreed at start-up (2 rounds, 256 bytes
per party; 384 with a parties file).  A sealed message carries 16 extra bytes (its
tag); the byte counters count the payload only, so the cost figures of the protocols
do not change (``wire`` counts the tags).  Sealing happens on the host: with channels
on, GPU messages are staged through host memory; ``--insecure-channels`` keeps the
CUDA-aware path and sends in clear.  A message that does not open, or a peer silent
for longer than the peer timeout, prints a message naming the peer and aborts every
rank.  Small Python objects (``bcast_object`` and friends) travel over the same
channels (two point-to-point steps: sizes, then pickles, unpickled as plain data only: a peer
can send values, never code).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import socket
import sys
import time
from dataclasses import dataclass

import numpy

from .backend import is_device_array
from . import settings as settings_mod
from .channels import HELLO_BYTES, SIG_BYTES, TAG_BYTES, ChannelConfig, Handshake
from .errors import ChannelError, ProtocolError, RankCountError

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

    The ``cuda_aware`` setting (``MPCGPU_CUDA_AWARE=1`` / ``=0``) overrides the detection
    (:class:`Communicator`).
    """
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


def wait_policy(mpi_comm, forced: str = "auto") -> str:
    """How a party waits for its messages: ``"spin"`` (MPI's own wait: busy polling, the
    lowest latency) when every rank on this node has a core, ``"sleep"`` when the node has
    fewer cores than ranks (three parties on a laptop or a 2-core VM: a spinning party
    would take the CPU from the ones still computing; measured on 2 cores, median of
    four: a secret 1024 x 1024 matmul 0.34 s -> 0.26 s).  ``forced`` (the ``wait`` setting,
    ``MPCGPU_WAIT=spin|sleep``) overrides.  Each party decides alone (it changes no message)."""
    forced = (forced or "auto").strip().lower()
    if forced in ("spin", "sleep"):
        return forced
    if forced != "auto":
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


#: what a peer's pickle may name: plain data only (containers, numbers, strings, NumPy arrays,
#: dtypes and scalars, the strict back end's arrays), never a callable that runs code
_PICKLE_ALLOWED = frozenset(
    [("builtins", name) for name in ("set", "frozenset", "slice", "complex", "range", "bytearray")]
    + [("collections", "OrderedDict"), ("numpy", "dtype"), ("numpy", "ndarray"), ("mpcgpu.strict", "ndarray")]
    + [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + [("numpy.dtypes", name) for name in dir(numpy.dtypes) if name.endswith("DType")]
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles data, refuses anything else: a peer that is authenticated but not trusted
    with our process (another organisation's server) can send values, not code."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _data_only_loads(data: bytes, peer: int):
    import io

    try:
        return _DataOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"party {peer} sent a message that is not plain data ({exc})") from None


#: TEST-ONLY hook, called for every outgoing message as ``WIRE_HOOK(comm, peer, counter,
#: wire, reseal)`` just before it is sent: ``wire`` is the uint8 array that goes on the wire
#: (ciphertext + tag; the plain bytes with insecure channels, where ``counter`` and
#: ``reseal`` are None), ``reseal(counter)`` seals the same payload under another counter.
#: It may return a replacement array (tamper, replay and reorder tests) or None.
WIRE_HOOK = None


class Communicator:
    """Exchanges between the three parties of one MPI communicator."""

    def __init__(
        self,
        mpi_comm=None,
        backend=None,
        cuda_aware: bool | None = None,
        channels: ChannelConfig | None = None,
        settings=None,
    ):
        settings = settings if settings is not None else settings_mod.active()  # see mpcgpu.settings
        cuda_aware = settings.cuda_aware if cuda_aware is None else cuda_aware
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
        self.waiting = wait_policy(self.comm, settings.wait)
        self.channels = channels if channels is not None else ChannelConfig.from_settings(settings)
        self.peer_timeout = self.channels.peer_timeout or None  # 0: wait for ever
        self.sealed = self.channels.mode != "insecure"
        self._direct_gpu = self.cuda_aware and not self.sealed  # sealing happens on the host
        #: what the channels add: sealed messages, their tag bytes, seconds spent sealing and opening
        self.wire = {"messages": 0, "tag_bytes": 0, "seconds": 0.0}
        self._directions = {}
        self._payload_sent = 0
        self.hosts = None
        self._set_up_channels()

    # -- channels -------------------------------------------------------------------------
    def _set_up_channels(self):
        """The key exchange with both peers (see :mod:`mpcgpu.channels`): 1 round of 128-byte
        hellos (also with insecure channels: the parties check that they agree on the mode),
        then 1 round of 64-byte signatures with a parties file."""
        peers = (self.prev, self.next)
        try:
            hs = Handshake(self.rank, self.channels, socket.gethostname())
            got = self._transfer(
                {p: numpy.frombuffer(hs.hello[p], dtype=numpy.uint8) for p in peers},
                {p: ((HELLO_BYTES,), numpy.uint8) for p in peers},
                raw=True,
            )
            self.hosts = hs.receive_hellos({p: _host(a) for p, a in got.items()})  # device buffers: CUDA-aware
            if self.channels.mode == "ephemeral" and len(set(self.hosts)) > 1:
                raise ChannelError(
                    f"the parties run on different hosts ({', '.join(self.hosts)}) without a parties file: "
                    "the channels would be encrypted but not authenticated. Give every party its key and the "
                    "parties file (--key, --parties; see `mpcgpu keygen --help`), or accept clear-text "
                    "channels with --insecure-channels"
                )
            if self.channels.mode == "authenticated":
                sigs = self._transfer(
                    {p: numpy.frombuffer(s, dtype=numpy.uint8) for p, s in hs.signatures().items()},
                    {p: ((SIG_BYTES,), numpy.uint8) for p in peers},
                    raw=True,
                )
                hs.verify(sigs)
            if self.sealed:
                self._directions = hs.directions()
        except ChannelError as exc:
            self._fatal(str(exc))

    def describe_channels(self) -> str:
        on_gpu = self.backend is not None and self.backend.is_gpu
        return self.channels.describe(gpu_staged=on_gpu and self.sealed)

    def _fatal(self, message: str):
        """Print ``message`` (flushed, one write) and abort every rank: a channel that
        failed cannot be trusted, and a silent peer would otherwise leave the others
        waiting for ever.  Nothing secret is in the message."""
        from .crashreport import report_then_wait

        try:
            sys.stdout.flush()
        except Exception:
            pass
        report_then_wait(f"mpcgpu [party {self.rank}] error: {message}\n")  # read by the launcher before the abort
        # MPI_Abort can block when the launcher is already tearing the job down around a
        # stopped process: this party then ends by itself
        import threading

        watchdog = threading.Timer(2.0, os._exit, args=(1,))
        watchdog.daemon = True
        watchdog.start()
        try:
            self.comm.Abort(1)
        finally:
            os._exit(1)

    def _wait(self, requests, statuses, peers):
        """Wait for ``requests`` (``peers[k]`` is the peer of request ``k``), politely or
        spinning (:func:`wait_policy`), and never longer than the peer timeout."""
        MPI = self.mpi
        timeout = self.peer_timeout
        if timeout is None:
            if self.waiting == "sleep":
                _wait_politely(MPI, requests, statuses)
            else:
                MPI.Request.Waitall(requests, statuses)
            return
        start = time.monotonic()
        pause = SLEEP_FIRST
        polite = self.waiting == "sleep"
        while not MPI.Request.Testall(requests, statuses):
            if polite:
                time.sleep(pause)
                pause = min(2 * pause, SLEEP_CAP)
            if time.monotonic() - start > timeout:
                self._silent_peer(requests, peers, timeout)

    def _silent_peer(self, requests, peers, timeout):
        waiting_recv, waiting_send = [], []
        for req, (peer, kind) in zip(requests, peers):
            if not req.Test():
                (waiting_recv if kind == "recv" else waiting_send).append(peer)
        silent = sorted(set(waiting_recv or waiting_send))
        names = " and ".join(f"party {p}" for p in silent) or "a peer"
        self._fatal(
            f"no message from {names} for {timeout:g} s (peer timeout: --peer-timeout or MPCGPU_PEER_TIMEOUT): "
            f"{names} stopped, crashed or cannot be reached; aborting the job"
        )

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
        """A buffer mpi4py can send: device buffer if CUDA-aware (and in clear), else host memory."""
        if is_device_array(arr):
            self.backend.synchronize()
            if self._direct_gpu:
                return arr if arr.flags.c_contiguous else arr.copy()
            return numpy.ascontiguousarray(arr.get())
        return numpy.ascontiguousarray(arr)

    def _incoming(self, shape, dtype):
        on_gpu = self.backend is not None and self.backend.is_gpu
        if on_gpu and self._direct_gpu:
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
        one that sends and receives nothing.  Returns ``{peer: array}``.  Counts the
        payload bytes (not the 16-byte tags of sealed messages: see ``wire``)."""
        sends = sends or {}
        recvs = recvs or {}
        got = self._transfer(sends, recvs)
        self.stats.bytes_sent += self._payload_sent
        self.stats.messages += len(sends)
        self.stats.rounds += 1
        return {peer: self._finish(buf) for peer, buf in got.items()}

    def _transfer(self, sends: dict, recvs: dict, raw: bool = False) -> dict:
        """Move the messages of one round (sealed unless ``raw`` or insecure); returns the
        received arrays (host arrays, or device arrays on the CUDA-aware clear path)."""
        MPI = self.mpi
        seal = self.sealed and not raw
        requests, peers, expect, incoming, keep = [], [], [], {}, []
        for peer, (shape, dtype) in recvs.items():
            self._check_peer(peer)
            shape, dtype = tuple(int(s) for s in shape), numpy.dtype(dtype)
            if seal:
                nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
                buf = numpy.empty(nbytes + TAG_BYTES, dtype=numpy.uint8)
            else:
                buf = self._incoming(shape, dtype)
            incoming[peer] = (buf, shape, dtype)
            requests.append(self.comm.Irecv([buf, MPI.BYTE], source=peer, tag=self._tag))
            peers.append((peer, "recv"))
            expect.append((peer, buf.nbytes))
        hook = WIRE_HOOK
        self._payload_sent = 0
        for peer, arr in sends.items():
            self._check_peer(peer)
            buf = self._outgoing(arr)
            self._payload_sent += buf.nbytes
            if seal:
                direction = self._directions[peer][0]
                counter = direction.counter
                t0 = time.perf_counter()
                wire = direction.seal(buf)
                self.wire["seconds"] += time.perf_counter() - t0
                self.wire["messages"] += 1
                self.wire["tag_bytes"] += TAG_BYTES
                if hook is not None:
                    reseal = lambda c, _d=direction, _b=buf: _d.seal(_b, counter=c)
                    wire = _replace(hook(self, peer, counter, wire, reseal), wire)
                buf = wire
            elif hook is not None and not raw and not is_device_array(buf):
                buf = _replace(hook(self, peer, None, buf.reshape(-1).view(numpy.uint8), None), buf)
            keep.append(buf)
            requests.append(self.comm.Isend([buf, MPI.BYTE], dest=peer, tag=self._tag))
            peers.append((peer, "send"))
        status_objs = [MPI.Status() for _ in requests]
        self._wait(requests, status_objs, peers)
        for (peer, expected), st in zip(expect, status_objs):
            got = st.Get_count(MPI.BYTE)
            if got != expected:
                extra = TAG_BYTES if seal else 0
                if seal:  # the message is consumed unread: keep the channel's counter in step
                    for p in incoming:
                        self._directions[p][1].counter += 1
                raise ProtocolError(
                    f"party {self.rank} expected {expected - extra} bytes from party {peer} but got {got - extra}: "
                    "the parties disagree on a shape (are all ranks running the same program and data?)"
                )
        if not seal:
            return {peer: buf for peer, (buf, _, _) in incoming.items()}
        out = {}
        t0 = time.perf_counter()
        for peer, (buf, shape, dtype) in incoming.items():
            try:
                out[peer] = self._directions[peer][1].open(buf, shape, dtype)
            except ChannelError as exc:
                self._fatal(str(exc))
        self.wire["seconds"] += time.perf_counter() - t0
        return out

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
    def _objects(self, sends: dict, sources) -> dict:
        """Send pickled objects ``sends[peer]`` and receive one from each peer of ``sources``
        (two point-to-point steps over the channels: sizes, then the pickles)."""
        data = {p: numpy.frombuffer(pickle.dumps(obj), dtype=numpy.uint8) for p, obj in sends.items()}
        sizes = self._transfer(
            {p: numpy.array([d.size], dtype=numpy.int64) for p, d in data.items()},
            {p: ((1,), numpy.int64) for p in sources},
        )
        got = self._transfer(data, {p: ((int(_host(sizes[p])[0]),), numpy.uint8) for p in sources})
        return {p: _data_only_loads(_host(got[p]).tobytes(), p) for p in sources}

    def bcast_object(self, obj, root: int = 0):
        """Broadcast a small picklable object (shapes, ids); counts one round."""
        self.stats.rounds += 1
        peers = (self.prev, self.next)
        if self.rank == root:
            self._objects({p: obj for p in peers}, ())
            return obj
        self._check_peer(root)
        return self._objects({}, (root,))[root]

    def allgather_object(self, obj):
        """Every party's small picklable object, in rank order; counts one round."""
        self.stats.rounds += 1
        peers = (self.prev, self.next)
        got = self._objects({p: obj for p in peers}, peers)
        got[self.rank] = obj
        return [got[i] for i in range(PARTIES)]

    def _allgather_quiet(self, value):
        peers = (self.prev, self.next)
        got = self._objects({p: value for p in peers}, peers)
        return [value, *got.values()]

    def allreduce_max(self, value):
        """The largest of the parties' numbers (timings); counts one round."""
        self.stats.rounds += 1
        return max(self._allgather_quiet(value))

    def allreduce_sum(self, value):
        """The sum of the parties' numbers (byte counts); counts one round."""
        self.stats.rounds += 1
        values = self._allgather_quiet(value)
        return sum(values[1:], values[0])

    def agree(self, value, what: str):
        """Check that all parties hold the same small value; ProtocolError on every rank if not."""
        values = self.allgather_object(value)
        if any(v != values[0] for v in values):
            raise ProtocolError(f"parties disagree on {what}: {values}")
        return values[0]

    def barrier(self):
        """Wait until both peers have arrived here (an empty message each way; under the
        peer timeout like every exchange)."""
        peers = (self.prev, self.next)
        empty = numpy.empty(0, dtype=numpy.uint8)
        self._transfer({p: empty for p in peers}, {p: ((0,), numpy.uint8) for p in peers})

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


def _replace(new, old):
    return old if new is None else numpy.ascontiguousarray(new)


def _host(arr):
    return arr.get() if is_device_array(arr) else arr
