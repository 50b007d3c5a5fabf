"""Channels on three ranks (the default of the whole three-rank suite): what goes on the
wire is ciphertext that looks uniform and changes from call to call, the byte counters
still count the payload, and the small-object collectives travel over the channels."""

import numpy as np
import pytest

from mpcgpu.comm.channels import TAG_BYTES

pytestmark = pytest.mark.mpi(min_size=3)


class Wire:
    """Records what this party puts on the wire (the test hook of the communicator ``comm``)."""

    def __init__(self, comm):
        self.comm = comm
        self.sent = []

    def __enter__(self):
        self.comm.wire_hook = lambda link, peer, counter, wire, reseal: self.sent.append((peer, counter, wire.copy()))
        return self

    def __exit__(self, *exc):
        self.comm.wire_hook = None


def test_suite_runs_with_sealed_channels(rt):
    assert rt.comm.sealed and rt.comm.channels.mode in ("ephemeral", "authenticated")
    assert "AES-256-GCM" in rt.describe()


def test_wire_is_ciphertext_uniform_and_fresh(rt):
    n = 1 << 14
    zeros = np.zeros(n, dtype=np.uint64)
    with Wire(rt.comm) as w:
        a = rt.comm.pass_next(zeros)
        b = rt.comm.pass_next(zeros)
    assert np.array_equal(a, zeros) and np.array_equal(b, zeros)  # received in clear after opening
    assert [(p, c is not None) for p, c, _ in w.sent] == [(rt.comm.next, True)] * 2
    first, second = w.sent[0][2], w.sent[1][2]
    assert first.nbytes == zeros.nbytes + TAG_BYTES
    assert w.sent[1][1] == w.sent[0][1] + 1  # the counter advances per message
    assert not np.array_equal(first, second)
    assert (first[:-TAG_BYTES] == second[:-TAG_BYTES]).mean() < 0.01  # ~1/256 by chance
    counts = np.bincount(first, minlength=256)
    expected = first.size / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < 400  # chi-square, 255 dof
    assert abs(np.unpackbits(first).mean() - 0.5) < 0.005


def test_shares_do_not_appear_on_the_wire(rt, seeded):
    from mpcgpu.sharing.arithmetic import share

    x = share(seeded.integers(-1000, 1000, size=4096).astype(float) if rt.rank == 0 else None, src=0)
    with Wire(rt.comm) as w:
        y = x * x
    mine = {bytes(np.ascontiguousarray(c).view(np.uint8)[:64]) for c in (y.first, y.second, x.first, x.second)}
    for _, _, wire in w.sent:
        assert bytes(wire[:64]) not in mine


def test_counters_count_the_payload_and_wire_counts_the_tags(rt):
    x = np.arange(1000, dtype=np.uint64)
    before = dict(rt.comm.wire)
    with rt.comm.measure() as m:
        rt.comm.exchange(
            {p: x for p in (rt.comm.prev, rt.comm.next)}, {p: (x.shape, x.dtype) for p in (0, 1, 2) if p != rt.rank}
        )
    assert (m.bytes_sent, m.rounds, m.messages) == (16000, 1, 2)
    assert rt.comm.wire["messages"] - before["messages"] == 2
    assert rt.comm.wire["tag_bytes"] - before["tag_bytes"] == 2 * TAG_BYTES


def test_object_collectives_over_the_channels(rt):
    with Wire(rt.comm) as w:
        assert rt.comm.bcast_object({"r": rt.rank, "k": [1, 2]} if rt.rank == 1 else None, root=1) == {
            "r": 1,
            "k": [1, 2],
        }
        assert rt.comm.allgather_object(("p", rt.rank)) == [("p", 0), ("p", 1), ("p", 2)]
        assert rt.comm.allreduce_max(rt.rank * 1.5) == 3.0
        assert rt.comm.allreduce_sum(rt.rank + 1) == 6
        rt.comm.barrier()
    assert w.sent and all(c is not None for _, c, _ in w.sent)  # all sealed
    import pickle

    clear = pickle.dumps(("p", rt.rank))
    assert not any(clear in bytes(wire) for _, _, wire in w.sent)  # the pickles are not in clear


def test_a_shape_disagreement_leaves_the_channels_in_step(rt):
    from mpcgpu.errors import ProtocolError

    c = rt.comm
    send = np.arange(4, dtype=np.uint64)
    expect = 5 if c.rank == 1 else 4  # only party 1 notices; it discards the message unread
    if c.rank == 1:
        with pytest.raises(ProtocolError, match="expected 40 bytes from party 0 but got 32"):
            c.exchange({c.next: send}, {c.prev: ((expect,), np.uint64)})
    else:
        c.exchange({c.next: send}, {c.prev: ((expect,), np.uint64)})
    for _ in range(3):  # the next messages on every channel still open
        assert np.array_equal(c.pass_next(send + c.rank), send + c.prev)
        assert np.array_equal(c.pass_prev(send + c.rank), send + c.next)


def test_an_object_too_large_for_the_channel_stops_every_party_in_step(rt):
    from mpcgpu.errors import ProtocolError
    from mpcgpu.comm.plaindata import MAX_OBJECT_BYTES

    big = b"\0" * (MAX_OBJECT_BYTES + 1) if rt.rank == 1 else None
    # the sender refuses after announcing the size, the receivers refuse the size: no
    # pickle is sent or expected, so every channel stays in step
    with pytest.raises(ProtocolError, match="object channel carries"):
        rt.comm.bcast_object(big, root=1)
    assert rt.comm.allgather_object(("after", rt.rank)) == [("after", 0), ("after", 1), ("after", 2)]
