"""The sealed link: the channels of one party (:mod:`mpcgpu.comm.channels`) over the transport.

It holds the channel configuration, the two directions (send, receive) of each peer's
channel with their message counters, the job id the three parties agreed in the key
exchange, what sealing costs (``wire``: messages, tag bytes, seconds), the host names the
peers reported (for messages only), and an optional test hook that sees every outgoing
message.  It seals what it sends, opens what it receives, stages GPU buffers through host
memory when it seals (or hands them to a CUDA-aware MPI in clear), and carries small
Python objects as pickles read back as plain data (:mod:`mpcgpu.comm.plaindata`).  It counts
nothing of the protocols' cost (that is the meter's) and moves no byte itself (that is
the transport's).

The wire hook (tests only) is called for every outgoing message of ``transfer`` as
``hook(link, peer, counter, wire, reseal)`` just before it is sent: ``wire`` is the uint8
array that goes on the wire (ciphertext + tag; the plain bytes with insecure channels,
where ``counter`` and ``reseal`` are None), ``reseal(counter)`` seals the same payload
under another counter.  It may return a replacement array (tamper, replay and reorder
tests) or None.
"""

from __future__ import annotations

import socket
import time

import numpy

from mpcgpu.comm import plaindata
from mpcgpu.device.backend import is_device_array
from mpcgpu.comm.channels import HELLO_BYTES, SIG_BYTES, TAG_BYTES, ChannelConfig, Handshake
from mpcgpu.errors import ChannelError, ProtocolError


class SealedLink:
    """One party's sealed channels to its two peers, over a :class:`mpcgpu.comm.transport.Transport`."""

    def __init__(
        self, transport, backend=None, channels: ChannelConfig | None = None, cuda_aware=False, wire_hook=None
    ):
        self.transport = transport
        self.rank = transport.rank
        self.peers = (transport.prev, transport.next)
        self.backend = backend
        self.on_gpu = backend is not None and backend.is_gpu
        self.channels = channels if channels is not None else ChannelConfig.resolve()
        self.sealed = self.channels.mode != "insecure"
        self.direct_gpu = bool(cuda_aware) and not self.sealed  # sealing happens on the host
        self.wire_hook = wire_hook
        #: what the channels add: sealed messages, their tag bytes, seconds spent sealing and opening
        self.wire = {"messages": 0, "tag_bytes": 0, "seconds": 0.0}
        self.directions = {}
        self.hosts = None
        self.job_id = None

    # -- the key exchange ---------------------------------------------------------------------
    def connect(self):
        """The key exchange with both peers (see :mod:`mpcgpu.comm.channels`): 1 round of 128-byte
        hellos (also with insecure channels: the parties check that they agree on the mode),
        then 1 round of 64-byte signatures with a parties file.  Ephemeral keys are refused
        unless MPI places all three parties on this machine.  A failure ends the job."""
        peers = self.peers
        try:
            hs = Handshake(self.rank, self.channels, socket.gethostname())
            got = self.transfer(
                {p: numpy.frombuffer(hs.hello[p], dtype=numpy.uint8) for p in peers},
                {p: ((HELLO_BYTES,), numpy.uint8) for p in peers},
                raw=True,
            )[0]
            self.hosts = hs.receive_hellos({p: _host(a) for p, a in got.items()})  # device buffers: CUDA-aware
            self.job_id = hs.job_id
            if self.channels.mode == "ephemeral" and not self.transport.one_machine:
                raise ChannelError(
                    f"the parties do not all run on one machine (MPI places {self.transport.ranks_here} of the 3 "
                    f"ranks on party {self.rank}'s machine; reported host names: {', '.join(self.hosts)}) and "
                    "there is no parties file: the channels would be encrypted but not authenticated. Give every "
                    "party its key and the parties file (--key, --parties; see `mpcgpu keygen --help`), or accept "
                    "clear-text channels with --insecure-channels"
                )
            if self.channels.mode == "authenticated":
                sigs = self.transfer(
                    {p: numpy.frombuffer(s, dtype=numpy.uint8) for p, s in hs.signatures().items()},
                    {p: ((SIG_BYTES,), numpy.uint8) for p in peers},
                    raw=True,
                )[0]
                hs.verify(sigs)
            if self.sealed:
                self.directions = hs.directions()
        except ChannelError as exc:
            self.transport.fatal(str(exc))

    def describe(self) -> str:
        return self.channels.describe(gpu_staged=self.on_gpu and self.sealed)

    # -- buffers --------------------------------------------------------------------------------
    def _outgoing(self, arr):
        """A buffer mpi4py can send: device buffer if CUDA-aware (and in clear), else host memory."""
        if is_device_array(arr):
            self.backend.synchronize()
            if self.direct_gpu:
                return arr if arr.flags.c_contiguous else arr.copy()
            return numpy.ascontiguousarray(arr.get())
        return numpy.ascontiguousarray(arr)

    def _incoming(self, shape, dtype):
        if self.on_gpu and self.direct_gpu:
            return self.backend.xp.empty(shape, dtype=dtype)
        return numpy.empty(shape, dtype=dtype)

    def finish(self, buf):
        """A received array where the protocols want it (on the device with a GPU back end)."""
        if self.on_gpu and not is_device_array(buf):
            return self.backend.to_device(buf)
        return buf

    # -- one round -----------------------------------------------------------------------------
    def transfer(self, sends: dict, recvs: dict, raw: bool = False):
        """Move the messages of one round (sealed unless ``raw`` or insecure).  Returns the
        received arrays (host arrays, or device arrays on the CUDA-aware clear path) and the
        payload bytes sent (without tags)."""
        seal = self.sealed and not raw
        check_peer = self.transport.check_peer
        incoming, recv_bufs = {}, {}
        for peer, (shape, dtype) in recvs.items():
            check_peer(peer)
            shape, dtype = tuple(int(s) for s in shape), numpy.dtype(dtype)
            if seal:
                nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
                buf = numpy.empty(nbytes + TAG_BYTES, dtype=numpy.uint8)
            else:
                buf = self._incoming(shape, dtype)
            incoming[peer] = (buf, shape, dtype)
            recv_bufs[peer] = buf
        hook = self.wire_hook
        payload = 0
        send_bufs = {}
        for peer, arr in sends.items():
            check_peer(peer)
            buf = self._outgoing(arr)
            payload += buf.nbytes
            if seal:
                direction = self.directions[peer][0]
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
            send_bufs[peer] = buf
        counts = self.transport.move(send_bufs, recv_bufs)
        for peer, buf in recv_bufs.items():
            got, expected = counts[peer], buf.nbytes
            if got != expected:
                extra = TAG_BYTES if seal else 0
                if seal:  # the message is consumed unread: keep the channel's counter in step
                    for p in incoming:
                        self.directions[p][1].counter += 1
                raise ProtocolError(
                    f"party {self.rank} expected {expected - extra} bytes from party {peer} but got {got - extra}: "
                    "the parties disagree on a shape (are all ranks running the same program and data?)"
                )
        if not seal:
            return {peer: buf for peer, (buf, _, _) in incoming.items()}, payload
        out = {}
        t0 = time.perf_counter()
        for peer, (buf, shape, dtype) in incoming.items():
            try:
                out[peer] = self.directions[peer][1].open(buf, shape, dtype)
            except ChannelError as exc:
                self.transport.fatal(str(exc))
        self.wire["seconds"] += time.perf_counter() - t0
        return out, payload

    # -- small Python objects ------------------------------------------------------------------
    def objects(self, sends: dict, sources) -> dict:
        """Send the objects ``sends[peer]`` and receive one from each peer of ``sources``
        (two steps over the channels: sizes, then the pickles, read back as plain data; a
        size outside 0..MAX_OBJECT_BYTES is refused before anything is allocated)."""
        data = {p: pickle_of(obj) for p, obj in sends.items()}
        sizes = self.transfer(
            {p: numpy.array([d.size], dtype=numpy.int64) for p, d in data.items()},
            {p: ((1,), numpy.int64) for p in sources},
        )[0]
        expect = {p: plaindata.check_size(_host(sizes[p])[0], p) for p in sources}
        for p, d in data.items():
            if d.size > plaindata.MAX_OBJECT_BYTES:  # the peers refuse it: so does this party
                raise ProtocolError(
                    f"party {self.rank} has an object of {d.size} bytes for party {p}: larger than the object "
                    f"channel carries ({plaindata.MAX_OBJECT_BYTES} bytes; send share data with exchange())"
                )
        got = self.transfer(data, {p: ((n,), numpy.uint8) for p, n in expect.items()})[0]
        return {p: plaindata.loads(_host(got[p]).tobytes(), p) for p in sources}


def pickle_of(obj) -> numpy.ndarray:
    """The pickle the object channel sends for ``obj`` (as uint8; its size is checked by
    both ends: see :meth:`SealedLink.objects`)."""
    import pickle

    return numpy.frombuffer(pickle.dumps(obj, protocol=plaindata.PROTOCOL), dtype=numpy.uint8)


def _replace(new, old):
    return old if new is None else numpy.ascontiguousarray(new)


def _host(arr):
    return arr.get() if is_device_array(arr) else arr
