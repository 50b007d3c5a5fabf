"""Three-rank tests of the communicator and the PRG key set-up."""

import numpy as np
import pytest

pytestmark = pytest.mark.mpi(min_size=3)


def test_pass_next_counts_bytes_and_rounds(rt):
    c = rt.comm
    a = np.arange(1000, dtype=np.uint64) + np.uint64(1000 * c.rank)
    with c.measure() as m:
        got = c.pass_next(a)
    assert m.bytes_sent == 8000 and m.rounds == 1 and m.messages == 1
    assert np.array_equal(got, np.arange(1000, dtype=np.uint64) + np.uint64(1000 * c.prev))


def test_pass_prev_and_asymmetric_exchange(rt):
    c = rt.comm
    a = np.full((7, 3), c.rank, dtype=np.uint64)
    with c.measure() as m:
        got = c.pass_prev(a)
    assert (got == c.next).all() and m.bytes_sent == 168 and m.rounds == 1
    # only party 0 sends (to party 2); everyone still takes part in one round
    sends = {2: np.ones(5, np.uint64)} if c.rank == 0 else {}
    recvs = {0: ((5,), np.uint64)} if c.rank == 2 else {}
    with c.measure() as m:
        out = c.exchange(sends, recvs)
    assert m.rounds == 1
    assert m.bytes_sent == (40 if c.rank == 0 else 0)
    if c.rank == 2:
        assert (out[0] == 1).all()


def test_large_exchange_does_not_deadlock(rt):
    c = rt.comm
    a = np.full(3_000_000, c.rank, dtype=np.uint64)  # 24 MB each way
    got = c.pass_next(a)
    assert got[0] == c.prev and got[-1] == c.prev


def test_shape_disagreement_is_an_error(rt):
    from mpcgpu.errors import ProtocolError

    c = rt.comm
    # every party sends 4 words but party 1 expects 5: only party 1 can notice
    send = np.zeros(4, np.uint64)
    expect = 5 if c.rank == 1 else 4
    if c.rank == 1:
        with pytest.raises(ProtocolError):
            c.exchange({c.next: send}, {c.prev: ((expect,), np.uint64)})
    else:
        c.exchange({c.next: send}, {c.prev: ((expect,), np.uint64)})


def test_pairwise_keys_agree(rt):
    """Party i's `next` stream equals party i+1's `own` stream (same key k_{i+1})."""
    c = rt.comm
    mine_next = rt.prg.with_next((64,))
    mine_own = rt.prg.with_prev((64,))
    from_next = c.pass_prev(mine_own)  # party i+1's own-stream words arrive at party i
    assert np.array_equal(from_next, mine_next)


def test_zero_shares_sum_to_zero_and_are_not_zero(rt):
    c = rt.comm
    z = rt.prg.zero_share((10_000,))
    zx = rt.prg.zero_share_xor((10_000,))
    everyone = c.comm.allgather((z, zx))
    total = everyone[0][0] + everyone[1][0] + everyone[2][0]
    assert (total == 0).all()
    xor = everyone[0][1] ^ everyone[1][1] ^ everyone[2][1]
    assert (xor == 0).all()
    for part, partx in everyone:
        assert np.count_nonzero(part) > 9_990 and np.count_nonzero(partx) > 9_990
    # a second call gives different masks
    z2 = rt.prg.zero_share((10_000,))
    assert np.count_nonzero(z2 == z) < 5


def test_counters_in_step_across_parties(rt):
    c = rt.comm
    counts = c.comm.allgather((rt.prg.own.calls, rt.prg.next.calls))
    for i in range(3):
        assert counts[i][0] == counts[(i - 1) % 3][1], counts


def test_keys_differ_between_parties(rt):
    c = rt.comm
    words = rt.prg.with_next((4,)), rt.prg.with_prev((4,))
    allw = c.comm.allgather(words)
    nexts = [w[0].tobytes() for w in allw]
    assert len(set(nexts)) == 3


def test_init_twice_is_harmless(rt):
    import mpcgpu

    assert mpcgpu.init(device=rt.backend.name) is rt
    assert mpcgpu.get_runtime() is rt
    stats = mpcgpu.comm_stats()
    assert set(stats) == {"bytes_sent", "rounds", "messages"}


def test_init_again_with_another_device_or_precision_is_an_error(rt):
    import mpcgpu

    with pytest.raises(mpcgpu.MPCError, match="cannot switch to device 'cuda'"):
        mpcgpu.init(device="cuda")
    with pytest.raises(mpcgpu.MPCError, match="cannot switch to 20"):
        mpcgpu.init(device=rt.backend.name, precision=20)
    assert mpcgpu.init(device="auto") is rt  # "auto" accepts what is running


def test_prg_state_restores_the_streams_exactly(rt):
    """What a checkpoint keeps of the randomness continues it bit for bit."""
    state = rt.state()
    a = [rt.prg.own.uint64(5), rt.prg.next.uint64(5), rt.prg.local.uint64(5), rt.next_role()]
    rt.restore(state)
    b = [rt.prg.own.uint64(5), rt.prg.next.uint64(5), rt.prg.local.uint64(5), rt.next_role()]
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3])) and a[3] == b[3]


@pytest.mark.parametrize("policy", ["spin", "sleep"])
def test_both_wait_policies_deliver_every_message(rt, monkeypatch, policy):
    """The party's way of waiting (MPI's busy wait, or tests with sleeps in between on an
    oversubscribed node) changes no message: small and large exchanges, in both directions."""
    monkeypatch.setattr(rt.comm, "waiting", policy)
    for n in (1, 1000, 3_000_000):
        mine = np.full(n, rt.rank + 1, dtype=np.uint64)
        got = rt.comm.pass_next(mine)
        assert got.shape == (n,) and (got == rt.comm.prev + 1).all()
        back = rt.comm.pass_prev(mine)
        assert (back == rt.comm.next + 1).all()


def test_wait_policy_follows_cores_and_the_setting(rt, monkeypatch):
    from mpcgpu.comm.transport import wait_policy

    mpi_comm = rt.comm.comm
    for forced in ("spin", "sleep"):
        assert wait_policy(mpi_comm, forced=forced) == forced
    with pytest.raises(ValueError, match="spin or sleep"):
        wait_policy(mpi_comm, forced="nap")
    assert rt.comm.waiting == wait_policy(mpi_comm, forced=rt.settings.wait)  # the runtime's, resolved at init
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert wait_policy(mpi_comm) == "spin"  # a core per rank
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert wait_policy(mpi_comm) == "sleep"  # three ranks on one core
