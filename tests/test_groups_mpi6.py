"""Two groups of three under one mpiexec (mpcgpu.comm.groups, mpcgpu.comm.role): six ranks.

Run by tests/run.sh as ``mpiexec -n 6 ... --only-mpi tests/test_*_mpi6.py``; skipped elsewhere."""

import hashlib

import numpy as np
import pytest

from mpcgpu.comm import traffic
from mpcgpu.errors import ProtocolError
from mpcgpu.sharing.arithmetic import share

pytestmark = pytest.mark.mpi(min_size=6)

MASK = (1 << 64) - 1


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def test_each_group_is_a_job_of_three_parties_with_its_own_data(rt6):
    rt = rt6
    assert rt.groups == 2 and rt.comm.size == 3
    lay = rt.place.layout
    assert lay.rank(rt.group, rt.rank) == _world().Get_rank()
    # each group shares and multiplies its own values: the result is its own, exactly
    rng = np.random.default_rng(100 + rt.group)
    a, b = rng.uniform(-50, 50, 64), rng.uniform(-50, 50, 64)
    x = share(a if rt.rank == 0 else None, src=0)
    y = share(b if rt.rank == 1 else None, src=1)
    got = (x * y).reveal()
    assert np.abs(got - a * b).max() < 2e-3


def test_the_role_all_reduce_is_the_exact_sum_mod_2_64_word_for_word(rt6):
    rt = rt6
    rng = np.random.default_rng(7 + rt.place.world_rank)
    edge = np.array([0, 1, MASK, MASK - 1, 1 << 63, (1 << 63) - 1], dtype=np.uint64)
    mine = np.concatenate([edge, rng.integers(0, MASK, 200, dtype=np.uint64, endpoint=True)])
    other = rng.integers(0, 1 << 64, (3, 5), dtype=np.uint64)
    floats = rng.normal(size=4)
    summed = rt.role.allreduce_sum([mine, other, floats])
    everything = _world().allgather((rt.group, rt.rank, mine, other, floats))
    same_party = [e for e in everything if e[1] == rt.rank]
    assert len(same_party) == 2
    for got, idx in ((summed[0], 2), (summed[1], 3)):
        want = [sum(int(v) for v in col) & MASK for col in zip(*[e[idx].reshape(-1) for e in same_party])]
        assert [int(v) for v in got.reshape(-1)] == want
    assert np.allclose(summed[2], sum(e[4] for e in same_party))


def test_all_reduced_share_components_reconstruct_the_sum_of_the_groups_values(rt6):
    rt = rt6
    rng = np.random.default_rng(55 + rt.group)
    v = rng.integers(-(1 << 30), 1 << 30, 300)
    x = share(v if rt.rank == 2 else None, src=2, integer=True)
    first, second = rt.role.allreduce_sum([x.first, x.second])
    total = x._new(first, second)
    got = total.reveal_raw()
    values = _world().allgather(v if rt.rank == 2 else None)
    want = [sum(int(w) for w in col) & MASK for col in zip(*[values[r] for r in rt.place.layout.role_ranks(2)])]
    assert [int(w) for w in got] == want


def test_broadcast_gather_and_agree_among_the_ranks_of_one_party(rt6):
    rt = rt6
    mine = np.full(5, rt.group * 10 + rt.rank, dtype=np.int64)
    got = rt.role.bcast([mine])[0]
    assert np.array_equal(got, np.full(5, rt.rank, dtype=np.int64))  # group 0's
    rows = rt.role.gather(np.arange(rt.group + 3, dtype=np.float64))
    objs = rt.role.gather_object({"group": rt.group})
    if rt.group == 0:
        assert [r.tolist() for r in rows] == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]]
        assert objs == [{"group": 0}, {"group": 1}]
    else:
        assert rows is None and objs is None
    rt.role.agree(b"the same", "a test value")
    with pytest.raises(ProtocolError, match="group 1 differs from group 0"):
        rt.role.agree(f"group {rt.group}".encode(), "a test value")


def test_nothing_crosses_between_parties_except_the_group_exchanges(rt6):
    """Every message this rank sends while it computes, reveals and combines with its
    role: to another party only within its group, across groups only to its own party."""
    rt = rt6
    lay = rt.place.layout
    with traffic.recording() as log:
        x = share(np.arange(40.0) if rt.rank == 0 else None, src=0)
        y = (x * x).reveal(to=1)
        s = rt.role.allreduce_sum([x.first, x.second])
        rt.role.bcast([x.first])
        rt.role.gather(np.zeros(3))
        rt.role.agree(b"x", "x")
        if rt.rank == 1:
            assert np.abs(y - np.arange(40.0) ** 2).max() < 1e-2
    assert {kind for kind, _, _ in log} == {"group", "role"}  # both kinds were seen
    mine = set(lay.group_ranks(rt.group))
    for kind, dst, nbytes in log:
        if lay.party(dst) != rt.rank:
            assert kind == "group" and dst in mine, (kind, dst, nbytes)
        else:
            assert kind == "role" and lay.group(dst) != rt.group, (kind, dst, nbytes)
    # and every rank saw the same rule hold
    assert all(_world().allgather(True))
    assert s[0].shape == x.first.shape


def test_no_prg_stream_is_shared_between_groups(rt6):
    """Every key a rank holds (its own, its next party's, its local one) is the key of its
    group only: pairs agree within a group, nothing is common to two groups."""
    rt = rt6
    state = rt.prg.state()
    digests = {name: hashlib.sha256(bytes(state[name][0])).hexdigest() for name in ("own", "next", "local")}
    draws = rt.prg.own.uint64(4).tolist()
    rt.prg.next.uint64(4)  # the same draw from the partner stream: the pair stays in step
    everything = _world().allgather((rt.group, rt.rank, digests, draws))
    by = {(g, p): (d, w) for g, p, d, w in everything}
    for g in range(2):
        for p in range(3):
            assert by[(g, p)][0]["next"] == by[(g, (p + 1) % 3)][0]["own"]  # the pair key of the group
    keys = {}
    for (g, _), (d, _) in by.items():
        for h in d.values():
            keys.setdefault(h, set()).add(g)
    assert all(len(groups) == 1 for groups in keys.values())
    firsts = {tuple(w) for (_, _), (_, w) in by.items()}
    assert len(firsts) == 6  # every rank's own stream starts elsewhere
    for p in range(3):
        assert by[(0, p)][1] != by[(1, p)][1]
