"""The role communicator: the ``k`` ranks that play one party, one in each group.

They belong to one organisation, so they may combine their own share components freely:
an all-reduce of gradient shares mod 2^64, a broadcast of parameter shares from group 0,
the gathering of the result owner's revealed predictions to group 0.  None of it is a
three-party exchange and none of it leaves the organisation, so it costs no security
and is neither sealed nor counted in the protocols' cost (``bytes`` here counts it).

Every operation is point-to-point through group 0's rank (the root), posted non-blocking
and waited for under the peer timeout like the group exchanges: a dead or silent rank
ends the whole job with a message naming its party and group, never a hang.  GPU arrays
are staged through host memory.  With one group every operation returns at once and
sends nothing.

Costs, for arrays of ``S`` bytes in all and ``k`` groups (root = group 0):

* :meth:`RoleComm.allreduce_sum`: 2 steps; each non-root sends and receives ``S``, the root
  ``(k - 1) S`` each way; the sum is exact mod 2^64 (uint64 addition wraps);
* :meth:`RoleComm.bcast`: 1 step, ``S`` to each non-root;
* :meth:`RoleComm.gather`: 2 steps (shapes, then data), each non-root sends its own.
"""

from __future__ import annotations

import hashlib

import numpy

from mpcgpu.comm import traffic
from mpcgpu.comm.transport import fatal_exit, mpi_module, silent_of, wait_all, wait_policy
from mpcgpu.errors import ProtocolError

#: the dtypes :meth:`RoleComm.gather` carries (their codes in the shape header)
DTYPES = ("uint64", "int64", "float64", "float32", "int32", "uint8", "bool")
_TAG = 11


class RoleComm:
    """Exchanges among the ranks of one party (see the module docstring).

    ``mpi_comm``: the role communicator (rank = group index), or None with one group;
    ``place``: this rank's :class:`~mpcgpu.comm.groups.Place`; ``backend``: for GPU staging;
    ``peer_timeout`` (seconds, None: for ever) and ``wait`` as for the group exchanges."""

    def __init__(self, mpi_comm, place, backend=None, peer_timeout=None, wait="auto", node_ranks=None):
        self.comm = mpi_comm
        self.place = place
        self.backend = backend
        self.k = place.k
        self.index = place.group
        self.party = place.party
        self.peer_timeout = peer_timeout or None
        self.bytes = 0  # payload sent by this rank over the role communicator
        if mpi_comm is not None:
            self.mpi = mpi_module()
            self.waiting = wait_policy(mpi_comm, node_ranks, wait)
            self.world_of = [place.layout.rank(g, place.party) for g in range(self.k)]
        else:
            self.mpi, self.waiting, self.world_of = None, "spin", [place.world_rank]

    @property
    def root(self) -> bool:
        """True on group 0's rank (the one that writes files and applies shared steps)."""
        return self.index == 0

    # -- raw moves ----------------------------------------------------------------------------
    def _move(self, sends: dict, recvs: dict) -> None:
        """Post receives into ``recvs[g]`` and sends of ``sends[g]`` (contiguous host buffers)
        and wait for all of them under the peer timeout."""
        MPI = self.mpi
        requests, peers = [], []
        for g, buf in recvs.items():
            requests.append(self.comm.Irecv([buf, MPI.BYTE], source=g, tag=_TAG))
            peers.append((g, "recv"))
        for g, buf in sends.items():
            requests.append(self.comm.Isend([buf, MPI.BYTE], dest=g, tag=_TAG))
            peers.append((g, "send"))
            self.bytes += buf.nbytes
            traffic.note("role", self.world_of[g], buf.nbytes)
        statuses = [MPI.Status() for _ in requests]
        wait_all(MPI, requests, statuses, self.waiting, self.peer_timeout, lambda: self._silent(requests, peers))

    def _silent(self, requests, peers):
        silent = silent_of(requests, peers)
        names = " and ".join(f"party {self.party} of group {g}" for g in silent) or "a rank of this party"
        fatal_exit(
            f"mpcgpu [party {self.party} of group {self.index}] error: no message from {names} for "
            f"{self.peer_timeout:g} s (peer timeout: --peer-timeout or MPCGPU_PEER_TIMEOUT): {names} stopped, "
            "crashed or cannot be reached; aborting the job\n"
        )

    def _host(self, arr):
        """A contiguous host copy of ``arr``, of its own shape (0-d stays 0-d)."""
        if self.backend is not None and self.backend.is_gpu:
            arr = self.backend.to_host(arr)
        return numpy.ascontiguousarray(arr).reshape(numpy.shape(arr))

    def _back(self, arr):
        if self.backend is not None and self.backend.is_gpu:
            return self.backend.to_device(arr)
        return arr

    # -- collectives ------------------------------------------------------------------------
    def allreduce_sum(self, arrays: list) -> list:
        """The sum over the ``k`` groups of each array, on every rank of this party: exact mod
        2^64 for uint64 (share components), float addition for floats.  Same shapes and
        dtypes on every rank, or a ProtocolError."""
        if self.k == 1:
            return list(arrays)
        host = [self._host(a) for a in arrays]
        self._check_same([(a.shape, a.dtype.str) for a in host], "the arrays of an all-reduce")
        flat = _pack(host)
        if self.root:
            parts = {g: numpy.empty_like(flat) for g in range(1, self.k)}
            self._move({}, parts)
            total = flat.copy()
            for g in range(1, self.k):
                _add_into(total, parts[g], host)
            self._move({g: total for g in range(1, self.k)}, {})
        else:
            total = numpy.empty_like(flat)
            self._move({0: flat}, {})
            self._move({}, {0: total})
        return [self._back(a) for a in _unpack(total, host)]

    def bcast(self, arrays: list) -> list:
        """Group 0's ``arrays`` on every rank of this party (each rank passes its own arrays of
        the same shapes and dtypes: they say what to receive)."""
        if self.k == 1:
            return list(arrays)
        host = [self._host(a) for a in arrays]
        flat = _pack(host)
        if self.root:
            self._move({g: flat for g in range(1, self.k)}, {})
            return list(arrays)
        self._move({}, {0: flat})
        return [self._back(a) for a in _unpack(flat, host)]

    def gather(self, arr) -> list | None:
        """Every group's ``arr`` (shapes may differ; dtypes from :data:`DTYPES`), in group order,
        on group 0's rank; None on the others."""
        host = self._host(arr)
        if self.k == 1:
            return [host]
        if host.dtype.name not in DTYPES:
            raise ProtocolError(f"the role communicator does not carry {host.dtype} arrays")
        header = numpy.zeros(10, dtype=numpy.int64)
        if host.ndim > 8:
            raise ProtocolError("the role communicator carries arrays of at most 8 dimensions")
        header[0], header[1] = DTYPES.index(host.dtype.name), host.ndim
        header[2 : 2 + host.ndim] = host.shape
        if not self.root:
            self._move({0: header}, {})
            self._move({0: host.reshape(-1).view(numpy.uint8)}, {})
            return None
        heads = {g: numpy.empty(10, dtype=numpy.int64) for g in range(1, self.k)}
        self._move({}, heads)
        bufs = {}
        for g, h in heads.items():
            if not 0 <= h[0] < len(DTYPES) or not 0 <= h[1] <= 8 or (h[2 : 2 + h[1]] < 0).any():
                raise ProtocolError(f"party {self.party} of group {g} sent a malformed array header")
            bufs[g] = numpy.empty(tuple(int(s) for s in h[2 : 2 + h[1]]), dtype=DTYPES[h[0]])
        self._move({}, {g: b.reshape(-1).view(numpy.uint8) for g, b in bufs.items()})
        return [host] + [bufs[g] for g in range(1, self.k)]

    def gather_object(self, obj) -> list | None:
        """Every group's small picklable ``obj`` (counts, timings), in group order, on group 0's
        rank; None on the others (read back as plain data, as the object channel does)."""
        from mpcgpu.comm import plaindata
        from mpcgpu.comm.link import pickle_of

        if self.k == 1:
            return [obj]
        got = self.gather(pickle_of(obj))
        if got is None:
            return None
        return [obj] + [
            plaindata.loads(b.tobytes(), f"party {self.party} of group {g}") for g, b in enumerate(got) if g
        ]

    def bcast_object(self, obj):
        """Group 0's small picklable ``obj`` on every rank of this party."""
        from mpcgpu.comm import plaindata
        from mpcgpu.comm.link import pickle_of

        if self.k == 1:
            return obj
        data = pickle_of(obj) if self.root else numpy.empty(0, dtype=numpy.uint8)
        size = self.bcast([numpy.array([data.size], dtype=numpy.int64)])[0]
        size = plaindata.check_size(int(size[0]), f"party {self.party} of group 0")
        buf = data if self.root else numpy.empty(size, dtype=numpy.uint8)
        buf = self.bcast([buf])[0]
        return obj if self.root else plaindata.loads(self._host(buf).tobytes(), f"party {self.party} of group 0")

    def agree(self, value, what: str):
        """Check that the ``k`` ranks of this party hold the same ``value`` (bytes, or arrays
        compared by SHA-256); ProtocolError on every one of them if not, naming the groups
        that differ from group 0."""
        if self.k == 1:
            return value
        digest = numpy.frombuffer(_digest(value), dtype=numpy.uint8)
        got = self.gather(digest)
        verdict = None
        if self.root:
            verdict = [g for g, d in enumerate(got) if not numpy.array_equal(d, got[0])]
        verdict = self.bcast_object(verdict)
        if verdict:
            groups = ", ".join(str(g) for g in verdict)
            raise ProtocolError(
                f"the {self.k} ranks of party {self.party} disagree on {what}: group{'s' if len(verdict) > 1 else ''} "
                f"{groups} differ{'s' if len(verdict) == 1 else ''} from group 0"
            )
        return value

    def barrier(self):
        """Every rank of this party has arrived here (through group 0's rank)."""
        if self.k == 1:
            return
        empty = numpy.empty(0, dtype=numpy.uint8)
        if self.root:
            self._move({}, {g: numpy.empty(0, dtype=numpy.uint8) for g in range(1, self.k)})
            self._move({g: empty for g in range(1, self.k)}, {})
        else:
            self._move({0: empty}, {})
            self._move({}, {0: numpy.empty(0, dtype=numpy.uint8)})

    def _check_same(self, value, what: str):
        self.agree(repr(value).encode(), what)


def _digest(value) -> bytes:
    h = hashlib.sha256()
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (bytes, bytearray)):
            h.update(bytes(item))
        else:
            a = numpy.ascontiguousarray(
                item.get() if hasattr(item, "get") and not isinstance(item, numpy.ndarray) else item
            )
            h.update(repr((a.shape, a.dtype.str)).encode())
            h.update(a.view(numpy.uint8).reshape(-1).tobytes())
    return h.digest()


def _pack(arrays: list) -> numpy.ndarray:
    """The arrays' bytes, end to end, as one uint8 buffer."""
    if not arrays:
        return numpy.empty(0, dtype=numpy.uint8)
    return numpy.concatenate([a.reshape(-1).view(numpy.uint8) for a in arrays])


def _unpack(flat: numpy.ndarray, like: list) -> list:
    out, at = [], 0
    for a in like:
        n = a.nbytes
        out.append(flat[at : at + n].view(a.dtype).reshape(a.shape).copy())
        at += n
    return out


def _add_into(total: numpy.ndarray, part: numpy.ndarray, like: list):
    """``total += part`` array by array in each array's own dtype (uint64 wraps: mod 2^64)."""
    at = 0
    for a in like:
        n = a.nbytes
        t = total[at : at + n].view(a.dtype)
        t += part[at : at + n].view(a.dtype)
        at += n


__all__ = ["RoleComm"]
