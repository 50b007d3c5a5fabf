"""The parts of the communicator one at a time, in one process: the meter (counts, blocks
left uncounted), the plain-data reader of the object channel (hostile pickles cost a
peer's message, not our memory or time) and the sealed link's object channel over a
scripted transport (a hostile size prefix is refused before anything is allocated)."""

import pickle
import struct
import time
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

from mpcgpu.comm import plaindata
from mpcgpu.comm.channels import ChannelConfig
from mpcgpu.errors import ProtocolError
from mpcgpu.comm.link import SealedLink
from mpcgpu.comm.meter import CommStats, Meter


# -- the meter -------------------------------------------------------------------------------
def test_meter_counts_measures_and_leaves_set_up_uncounted():
    m = Meter()
    m.record(100, messages=2)
    with m.measure() as block:
        m.record(8, messages=1)
        with m.uncounted():
            m.record(1000, messages=2)
            with m.uncounted():  # nested: still uncounted
                m.record(5, messages=5, rounds=3)
            m.record(7)
        m.record(rounds=1)
    assert (block.bytes_sent, block.rounds, block.messages) == (8, 2, 1)
    assert m.stats == CommStats(108, 3, 3)
    m.reset()
    assert m.stats == CommStats() and m.counting


def test_uncounted_block_that_raises_counts_again_afterwards():
    m = Meter()
    with pytest.raises(RuntimeError):
        with m.uncounted():
            raise RuntimeError
    m.record(3)
    assert m.stats == CommStats(3, 1, 0)


# -- the plain-data reader -------------------------------------------------------------------
def _global(module: bytes, name: bytes) -> bytes:
    return b"c" + module + b"\n" + name + b"\n"


def _long(n: int) -> bytes:  # LONG1 of a non-negative int
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little")
    return b"\x8a" + bytes([len(raw)]) + raw


def _deep_list(depth: int) -> bytes:
    return b"\x80\x05" + b"]" * depth + b"a" * (depth - 1) + b"."


def _paths(levels: int) -> bytes:  # L_k = [L_k-1, L_k-1]: 2^levels paths in ~8 bytes a level
    value = [0]
    for _ in range(levels):
        value = [value, value]
    return pickle.dumps(value, protocol=5)


def _cycle() -> bytes:
    loop = []
    loop.append(loop)
    return pickle.dumps(loop)


HOSTILE = {
    # 30 bytes that asked for 256 MiB
    "bytearray(2**28)": _global(b"builtins", b"bytearray") + _long(2**28) + b"\x85R.",
    # ... and for 4 EiB (a MemoryError)
    "bytearray(2**62)": _global(b"builtins", b"bytearray") + _long(2**62) + b"\x85R.",
    # 48 bytes, 2 s and 269 MiB
    "frozenset(range(3e6))": _global(b"builtins", b"frozenset")
    + _global(b"builtins", b"range")
    + _long(3_000_000)
    + b"\x85R\x85R.",
    "set(range(3e6))": _global(b"builtins", b"set")
    + _global(b"builtins", b"range")
    + _long(3_000_000)
    + b"\x85R\x85R.",
    "numpy.ndarray((2**30,))": _global(b"numpy", b"ndarray") + b"(" + _long(2**30) + b"\x85tR.",
    "_reconstruct of 2**28 bytes": _global(b"numpy._core.multiarray", b"_reconstruct")
    + _global(b"numpy", b"ndarray")
    + b"("
    + _long(2**28)
    + b"\x85C\x01bt"
    + b"R.",
    "an array of objects": pickle.dumps(np.array([[1], "x"], dtype=object)),
    "a dtype of 999999999-byte items": _global(b"numpy", b"dtype") + b"X\n\x00\x00\x00V999999999\x85R.",
    "nested 3000 deep": _deep_list(3000),
    "a cycle": _cycle(),
    "2^60 paths through shared lists": _paths(60),
    "more than MAX_OBJECT_BYTES": b"\x80\x05" + b"N0" * (plaindata.MAX_OBJECT_BYTES // 2) + b"N.",
    "a BINBYTES8 of 2**62 bytes": b"\x80\x05\x8e" + struct.pack("<Q", 2**62) + b".",
}


def _cost(fn):
    """(seconds, peak bytes traced) of ``fn()`` (its exception swallowed), each measured alone."""
    for trace in (False, True):
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        try:
            fn()
        except ProtocolError:
            pass
        took = time.perf_counter() - t0
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        else:
            seconds = took
    return seconds, peak


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pickle_is_a_protocol_error_in_10_ms_and_1_mib(name):
    data = HOSTILE[name]
    with pytest.raises(ProtocolError, match="party 2 "):
        plaindata.loads(data, 2)
    best = min(_cost(lambda: plaindata.loads(data, 2)) for _ in range(10))
    seconds, peak = best
    assert seconds < 0.010, f"{name}: {seconds * 1e3:.1f} ms"
    assert peak < 1 << 20, f"{name}: {peak / 2**20:.1f} MiB"


def test_any_deep_nesting_is_refused():
    """Deeper still: refused too (the cost grows with the message, bounded by its cap)."""
    with pytest.raises(ProtocolError, match="nested deeper than 100 levels"):
        plaindata.loads(_deep_list(200_000), 2)


def test_a_large_list_shared_over_and_over_is_refused():
    """Walking a shared list once per reference is bounded by the pickle's length."""
    big = list(range(100_000))
    with pytest.raises(ProtocolError, match="too many shared references"):
        plaindata.loads(pickle.dumps([big] * 10_000, protocol=5), 1)


def test_nesting_at_the_limit_still_reads():
    deep = []
    for _ in range(plaindata.MAX_DEPTH - 1):
        deep = [deep]
    back = plaindata.loads(pickle.dumps(deep), 0)
    depth = 1
    while back:
        back, depth = back[0], depth + 1
    assert depth == plaindata.MAX_DEPTH
    with pytest.raises(ProtocolError, match="nested deeper than"):
        plaindata.loads(pickle.dumps([deep]), 0)


def test_plain_data_round_trips_with_the_channel_protocol():
    from mpcgpu.device import strict

    shared = (1, 2)
    samples = [
        None,
        {"a": [1, np.float64(2.0)], "b": {3, 4}, "c": frozenset({5})},
        bytearray(b"\x00\x01"),
        b"\xff" * 1000,
        OrderedDict([("x", 1), ("y", slice(1, None, 2))]),
        complex(1, -2),
        [shared, shared, shared],
        np.arange(12, dtype=np.uint64).reshape(3, 4),
        np.zeros((2, 3), dtype=np.float32)[:, :2],
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        np.dtype("uint64"),
        np.uint64(2**64 - 1),
        list(range(5000)),
        [(i, float(i)) for i in range(3000)],
    ]
    for obj in samples:
        back = plaindata.loads(pickle.dumps(obj, protocol=plaindata.PROTOCOL), 1)
        assert type(back) is type(obj)
        if isinstance(obj, np.ndarray):
            assert back.dtype == obj.dtype and np.array_equal(back, obj)
        else:
            assert back == obj
    a = strict.ndarray(np.arange(4, dtype=np.uint64))
    back = plaindata.loads(pickle.dumps(a, protocol=plaindata.PROTOCOL), 1)
    assert isinstance(back, strict.ndarray) and np.array_equal(back._a, a._a)


# -- the object channel of the sealed link, over a scripted transport --------------------------
class ScriptedTransport:
    """Party 0 of three; each ``move`` fills the receive buffers from the next script step
    (``{peer: bytes}``) and keeps what was sent."""

    rank, prev, next = 0, 2, 1
    one_machine, ranks_here = True, 3

    def __init__(self, steps):
        self.steps = list(steps)
        self.sent = []

    def check_peer(self, peer):
        assert peer in (1, 2)

    def move(self, sends, recvs):
        self.sent.append({p: bytes(np.asarray(b).reshape(-1).view(np.uint8)) for p, b in sends.items()})
        step = self.steps.pop(0)
        counts = {}
        for p, buf in recvs.items():
            raw = step[p]
            view = buf.reshape(-1).view(np.uint8)
            n = min(len(raw), view.size)
            view[:n] = np.frombuffer(raw[:n], dtype=np.uint8)
            counts[p] = len(raw)
        return counts

    def fatal(self, message):
        raise AssertionError(message)


def _link(steps):
    return SealedLink(ScriptedTransport(steps), None, ChannelConfig("insecure"))


def _size(n):
    return struct.pack("<q", n)


def test_object_channel_carries_plain_objects():
    obj = {"shape": (3, 4), "id": "abc"}
    data = pickle.dumps(obj, protocol=plaindata.PROTOCOL)
    link = _link([{2: _size(len(data))}, {2: data}])
    assert link.objects({1: [1, 2]}, (2,)) == {2: obj}
    sent = link.transport.sent
    assert pickle.loads(sent[1][1]) == [1, 2] and struct.unpack("<q", sent[0][1])[0] == len(sent[1][1])


@pytest.mark.parametrize("size", [-1, -(2**63), 2**62, plaindata.MAX_OBJECT_BYTES + 1])
def test_hostile_size_prefix_is_refused_before_allocating(size):
    def receive():
        _link([{2: _size(size)}, {2: b""}]).objects({}, (2,))

    with pytest.raises(ProtocolError, match=f"party 2 announced an object of {size} bytes"):
        receive()
    seconds, peak = min(_cost(receive) for _ in range(10))
    assert seconds < 0.010 and peak < 1 << 20, (seconds, peak)


def test_a_party_refuses_to_send_an_object_too_large_for_the_channel():
    link = _link([{}, {}])
    with pytest.raises(ProtocolError, match="larger than the object channel carries"):
        link.objects({1: b"\0" * (plaindata.MAX_OBJECT_BYTES + 1)}, ())
    # the size went out first, so that the peers stop too (they refuse it)
    assert struct.unpack("<q", link.transport.sent[0][1])[0] > plaindata.MAX_OBJECT_BYTES
