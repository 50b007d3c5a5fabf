"""The transport: MPI point-to-point between the three parties, the one module that talks
to mpi4py.

It holds the MPI communicator and this party's place in it (``rank``, ``prev``, ``next``),
how the party waits for its messages (:func:`wait_policy`), the peer timeout, and the way
out (:meth:`Transport.fatal`: print and abort every rank).  It moves byte buffers and knows
nothing of what is in them: sealing is the link's (:mod:`mpcgpu.comm.link`), counting the
meter's (:mod:`mpcgpu.comm.meter`).

Every move is a *round*: all three ranks call it in the same order, each posts its
non-blocking receives and sends (``Irecv`` / ``Isend``) and waits for all of them, so
messages of any size cannot deadlock on buffering.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

from mpcgpu.comm import traffic
from mpcgpu.comm.groups import rank_count_message
from mpcgpu.errors import ProtocolError, RankCountError

PARTIES = 3


def _mpi():
    from mpi4py import MPI

    return MPI


def mpi_module():
    """mpi4py's ``MPI`` (for the role communicator's requests: this module stays the one that
    imports mpi4py)."""
    return _mpi()


def detect_cuda_aware() -> bool:
    """True if the MPI library in this process reports CUDA support.

    The ``cuda_aware`` setting (``MPCGPU_CUDA_AWARE=1`` / ``=0``) overrides the detection
    (:class:`mpcgpu.comm.communicator.Communicator`).
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


def _world_ranks(comm) -> list:
    """The world rank of each rank of ``comm``."""
    MPI = _mpi()
    if comm == MPI.COMM_WORLD:
        return list(range(comm.Get_size()))
    return list(MPI.Group.Translate_ranks(comm.Get_group(), list(range(comm.Get_size())), MPI.COMM_WORLD.Get_group()))


def ranks_on_this_node(mpi_comm) -> int:
    """How many ranks of ``mpi_comm`` share this party's memory (MPI's shared-memory
    communicator, ``COMM_TYPE_SHARED``): the ranks MPI itself places on this machine, not
    what any party says about itself.  A collective call."""
    local = mpi_comm.Split_type(_mpi().COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


WAIT_ENV = "MPCGPU_WAIT"
#: polite waiting: test, then sleep between tests, the pause doubling up to the cap (no
#: spinning first: measured, it only costs CPU time the computing parties need)
SLEEP_FIRST, SLEEP_CAP = 20e-6, 200e-6


def wait_policy(mpi_comm, ranks_here: int | None = None, forced: str = "auto") -> str:
    """How a party waits for its messages: ``"spin"`` (MPI's own wait: busy polling, the
    lowest latency) when every rank on this node has a core, ``"sleep"`` when the node has
    fewer cores than ranks (three parties on a laptop or a 2-core VM: a spinning party
    would take the CPU from the ones still computing; measured on 2 cores, median of
    four: a secret 1024 x 1024 matmul 0.34 s -> 0.26 s).  ``forced`` (the ``wait`` setting,
    ``MPCGPU_WAIT=spin|sleep``) overrides.  Each party decides alone (it changes no message).  ``ranks_here``: the
    ranks on this node, if already known (else asked of MPI: a collective call)."""
    forced = (forced or "auto").strip().lower()
    if forced in ("spin", "sleep"):
        return forced
    if forced != "auto":
        raise ValueError(f"{WAIT_ENV}={forced!r}: use spin or sleep")
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if ranks_here is None:
        ranks_here = ranks_on_this_node(mpi_comm)
    return "sleep" if ranks_here > cores else "spin"


def _wait_politely(MPI, requests, statuses):
    """``Waitall`` that sleeps between tests while the messages are late (see :func:`wait_policy`)."""
    pause = SLEEP_FIRST
    while not MPI.Request.Testall(requests, statuses):
        time.sleep(pause)
        pause = min(2 * pause, SLEEP_CAP)


def wait_all(MPI, requests, statuses, waiting: str, timeout, on_timeout):
    """Wait for every request: MPI's own wait (``"spin"``) or politely (``"sleep"``), and
    call ``on_timeout()`` (which does not return: it aborts) once ``timeout`` seconds pass
    (None: wait for ever).  The one waiting loop of the group and role exchanges."""
    if timeout is None:
        if waiting == "sleep":
            _wait_politely(MPI, requests, statuses)
        else:
            MPI.Request.Waitall(requests, statuses)
        return
    start = time.monotonic()
    pause = SLEEP_FIRST
    polite = waiting == "sleep"
    while not MPI.Request.Testall(requests, statuses):
        if polite:
            time.sleep(pause)
            pause = min(2 * pause, SLEEP_CAP)
        if time.monotonic() - start > timeout:
            on_timeout()


def silent_of(requests, peers) -> list:
    """The peers whose requests are still pending (receives first: the silent ones)."""
    waiting_recv, waiting_send = [], []
    for req, (peer, kind) in zip(requests, peers):
        if not req.Test():
            (waiting_recv if kind == "recv" else waiting_send).append(peer)
    return sorted(set(waiting_recv or waiting_send))


def fatal_exit(message: str, comm=None):
    """Print ``message`` (flushed, one write, read by the launcher) and abort every rank of
    the job (the world communicator: with several groups, all of them), ending this
    process by itself if the abort blocks."""
    from mpcgpu.util.crashreport import report_then_wait

    try:
        sys.stdout.flush()
    except Exception:
        pass
    report_then_wait(message)
    # MPI_Abort can block when the launcher is already tearing the job down around a
    # stopped process: this party then ends by itself
    import threading

    watchdog = threading.Timer(2.0, os._exit, args=(1,))
    watchdog.daemon = True
    watchdog.start()
    try:
        (comm if comm is not None else world()).Abort(1)
    finally:
        os._exit(1)


class Transport:
    """MPI point-to-point for one party of three.

    Holds: ``comm`` (the MPI communicator), ``rank`` / ``prev`` / ``next``, ``ranks_here``
    (ranks MPI puts on this machine), ``waiting`` (the wait policy), ``peer_timeout``
    (seconds; None waits for ever) and a duplicate communicator for :meth:`settle`."""

    def __init__(
        self, mpi_comm=None, peer_timeout: float | None = None, wait: str = "auto", place=None, node_ranks=None
    ):
        MPI = _mpi()
        self.mpi = MPI
        self.comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.size = self.comm.Get_size()
        if self.size != PARTIES:
            raise RankCountError(rank_count_message(self.size))
        self.rank = self.comm.Get_rank()
        self.next = (self.rank + 1) % PARTIES
        self.prev = (self.rank - 1) % PARTIES
        self.peer_timeout = peer_timeout or None  # 0: wait for ever
        self._settle_comm = self.comm.Dup()  # only for settle(): never matches a protocol's call
        self._tag = 7
        self.ranks_here = ranks_on_this_node(self.comm)
        #: this rank's place among several groups (:class:`mpcgpu.comm.groups.Place`; None: one group)
        self.place = place if place is not None and place.k > 1 else None
        #: ranks of the whole job on this machine (several groups: more than this group's)
        self.node_ranks = self.ranks_here if node_ranks is None else int(node_ranks)
        self.waiting = wait_policy(self.comm, self.node_ranks, wait)
        #: world rank of each party (for the traffic record of tests)
        self.world_of = _world_ranks(self.comm)

    @property
    def one_machine(self) -> bool:
        """True when MPI places all three parties on this machine (one shared-memory group)."""
        return self.ranks_here == PARTIES

    def check_peer(self, peer):
        if peer == self.rank or not 0 <= peer < PARTIES:
            raise ProtocolError(f"party {self.rank} cannot exchange with party {peer}")

    def move(self, sends: dict, recvs: dict) -> dict:
        """One round of raw bytes: post a receive into ``recvs[peer]`` (a contiguous buffer
        mpi4py can fill: host, or device with CUDA-aware MPI) for each peer, send
        ``sends[peer]`` to each peer, wait for all (under the peer timeout).  Returns
        ``{peer: bytes received}`` (a message shorter than its buffer is not an error here)."""
        MPI = self.mpi
        requests, peers = [], []
        for peer, buf in recvs.items():
            self.check_peer(peer)
            requests.append(self.comm.Irecv([buf, MPI.BYTE], source=peer, tag=self._tag))
            peers.append((peer, "recv"))
        for peer, buf in sends.items():
            self.check_peer(peer)
            requests.append(self.comm.Isend([buf, MPI.BYTE], dest=peer, tag=self._tag))
            peers.append((peer, "send"))
            traffic.note("group", self.world_of[peer], buf.nbytes)
        statuses = [MPI.Status() for _ in requests]
        self._wait(requests, statuses, peers)
        return {peer: st.Get_count(MPI.BYTE) for (peer, kind), st in zip(peers, statuses) if kind == "recv"}

    def _wait(self, requests, statuses, peers):
        """Wait for ``requests`` (``peers[k]`` is the peer of request ``k``), politely or
        spinning (:func:`wait_policy`), and never longer than the peer timeout."""
        wait_all(
            self.mpi, requests, statuses, self.waiting, self.peer_timeout, lambda: self._silent_peer(requests, peers)
        )

    def _silent_peer(self, requests, peers):
        timeout = self.peer_timeout
        silent = silent_of(requests, peers)
        names = " and ".join(self.name(p) for p in silent) or "a peer"
        self.fatal(
            f"no message from {names} for {timeout:g} s (peer timeout: --peer-timeout or MPCGPU_PEER_TIMEOUT): "
            f"{names} stopped, crashed or cannot be reached; aborting the job"
        )

    def name(self, party: int | None = None) -> str:
        """``"party P"``, or ``"party P of group G"`` when the job has several groups."""
        party = self.rank if party is None else party
        return f"party {party}" if self.place is None else self.place.name(party)

    def fatal(self, message: str):
        """Print ``message`` (flushed, one write) and abort every rank: a channel that
        failed cannot be trusted, and a silent peer would otherwise leave the others
        waiting for ever.  Nothing secret is in the message."""
        fatal_exit(f"mpcgpu [{self.name()}] error: {message}\n", None if self.place is not None else self.comm)

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
