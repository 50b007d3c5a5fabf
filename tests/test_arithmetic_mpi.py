"""Arithmetic replicated sharing on three real MPI ranks (issue 4)."""

import numpy as np
import pytest

from mpcgpu.ring.encoding import encode
from mpcgpu.errors import EncodingError, ProtocolError
from mpcgpu.sharing.arithmetic import concatenate, stack, truncate
from reference import all_components, conv2d_ref, received, recording, shared

pytestmark = pytest.mark.mpi(min_size=3)
F = 16
ULP = 2.0**-F
LIMIT = 2.0**31


def test_share_reveal_exact_including_range_edges(rt, seeded):
    x = seeded.uniform(-1000, 1000, 100_000)
    x[:6] = [0.0, ULP, -ULP, LIMIT - 1, -(LIMIT - 1), LIMIT - ULP]
    for src in range(3):
        s = shared(rt, x, src=src)
        assert np.array_equal(s.reveal_raw(), encode(x))
        assert np.abs(s.reveal() - x).max() <= ULP / 2


def test_components_are_consistent_replicas(rt, seeded):
    s = shared(rt, seeded.normal(size=50)) + 3.25
    comps = all_components(rt, s)
    for i in range(3):
        assert np.array_equal(comps[i][1], comps[(i + 1) % 3][0])
    # every pair of parties reconstructs the same value
    vals = [s.reveal_raw(to=r) for r in range(3)]
    assert all((v is None) == (r != rt.rank) for r, v in enumerate(vals))
    assert np.array_equal(vals[rt.rank], s.reveal_raw())


def test_share_and_reveal_costs(rt, seeded):
    c = rt.comm
    x = seeded.normal(size=1000)
    with c.measure() as m:
        s = shared(rt, x, src=1)
    assert m.rounds == 2  # shape + data
    assert m.bytes_sent == (16_000 if rt.rank == 1 else 0)
    with c.measure() as m:
        s.reveal()
    assert (m.rounds, m.bytes_sent) == (1, 8000)
    with c.measure() as m:
        v = s.reveal(to=2)
    assert m.rounds == 1 and m.bytes_sent == (8000 if rt.rank == 1 else 0)
    assert (v is None) == (rt.rank != 2)
    if rt.rank == 2:
        assert np.abs(v - x).max() <= ULP


def test_large_arrays_are_shared_in_pieces_exactly(rt, seeded, monkeypatch):
    """Encoded in blocks of SHARE_BLOCK, sent in pieces of DISTRIBUTE_CHUNK (one round each):
    the same ring words as a whole, consistent replicas, the same bytes, and a bad value in
    a late block is still an error on every rank before anything is sent."""
    from mpcgpu.sharing import arithmetic, replicated

    monkeypatch.setattr(arithmetic, "SHARE_BLOCK", 300)
    monkeypatch.setattr(replicated, "DISTRIBUTE_CHUNK", 1000)
    x = seeded.uniform(-1000, 1000, (50, 50))
    x.flat[:6] = [0.0, ULP, -ULP, LIMIT - 1, -(LIMIT - 1), LIMIT - ULP]
    for src in range(3):
        with rt.comm.measure() as m:
            s = shared(rt, x, src=src)
        assert m.rounds == 1 + 3  # shape and verdict, then 3 pieces
        assert m.bytes_sent == (16 * x.size if rt.rank == src else 0)
        assert s.shape == x.shape and np.array_equal(s.reveal_raw(), encode(x))
        comps = all_components(rt, s)
        assert all(np.array_equal(comps[i][1], comps[(i + 1) % 3][0]) for i in range(3))
    ints = seeded.integers(-(2**30), 2**30, 2345)
    assert np.array_equal(shared(rt, ints, integer=True).reveal(), ints)
    bad = x.copy()
    bad.flat[-1] = 2.0**31 + 5  # in the last block
    with rt.comm.measure() as m, pytest.raises(EncodingError, match="party 1" if rt.rank != 1 else "magnitude"):
        shared(rt, bad, src=1)
    assert m.bytes_sent < 1000


def test_matmul_by_column_blocks_of_a_large_weight_is_exact(rt, seeded, monkeypatch):
    """A shared matmul whose right operand exceeds MATMUL_BLOCK goes by blocks of its
    columns: the same summand words as the whole product, and exact integer results."""
    from mpcgpu.ring import products as ring
    from mpcgpu.sharing import arithmetic

    monkeypatch.setattr(arithmetic, "MATMUL_BLOCK", 200)
    for sa, sb, transposed in (((3, 40), (40, 37), True), ((40,), (40, 9), False), ((2, 2, 40), (40, 11), True)):
        a = seeded.integers(-(2**20), 2**20, sa)
        b = seeded.integers(-(2**20), 2**20, sb)
        a[..., :3] = [0, -1, 2**20]
        xa = shared(rt, a, integer=True)
        xb = shared(rt, np.ascontiguousarray(b.T), src=2, integer=True).transpose() if transposed else None
        xb = xb if transposed else shared(rt, b, src=2, integer=True)
        whole = arithmetic.product_summand(rt, xa.first, xa.second, xb.first, xb.second, ring.matmul)
        captured = []

        def capture(rt_, summand, *args, _orig=arithmetic._summand_product, _into=captured, **kw):
            _into.append(summand.copy())
            return _orig(rt_, summand, *args, **kw)

        monkeypatch.setattr(arithmetic, "_summand_product", capture)
        with rt.comm.measure() as m:
            prod = xa @ xb
        monkeypatch.undo()
        monkeypatch.setattr(arithmetic, "MATMUL_BLOCK", 200)
        assert len(captured) == 1 and np.array_equal(captured[0], whole)
        assert m.rounds == 1  # an integer product: one resharing round, however many blocks
        got = prod.reveal()
        exact = (a.astype(object) @ b.astype(object)).astype(np.int64)
        assert np.array_equal(got, exact)
    # reals through a Linear-like product: truncated, within the usual tolerance
    w = seeded.uniform(-1, 1, (30, 40))
    v = seeded.uniform(-1, 1, (2, 40))
    got = (shared(rt, v) @ shared(rt, w, src=1).transpose()).reveal()
    np.testing.assert_allclose(got, v @ w.T, atol=40 * 4 * ULP)


def test_out_of_range_is_an_error_on_every_rank_naming_only_the_party(rt):
    bad = np.array([1.0, 2.0**31 + 5])
    for src, value, detail in ((2, bad, "magnitude 2.14748e"), (0, np.array([np.nan]), "NaN")):
        with pytest.raises(EncodingError) as err:
            shared(rt, value, src=src)
        text = str(err.value)
        if rt.rank == src:  # the owner of the input sees the details
            assert detail in text
        else:  # the others learn only whose input it was
            assert f"party {src}'s input" in text
            assert "NaN" not in text and "2.14" not in text and "magnitude" not in text
            assert set(c for c in text if c.isdigit()) == {str(src)}


def test_linear_operations(rt, seeded):
    x = seeded.uniform(-100, 100, (4, 5))
    y = seeded.uniform(-100, 100, (4, 5))
    p = seeded.uniform(-100, 100, (5,))
    sx, sy = shared(rt, x), shared(rt, y, src=2)
    cases = {
        "add": (sx + sy, x + y),
        "sub": (sx - sy, x - y),
        "neg": (-sx, -x),
        "add_pub": (sx + p, x + p),
        "radd_pub": (p + sx, x + p),
        "sub_pub": (sx - 7.5, x - 7.5),
        "rsub_pub": (7.5 - sx, 7.5 - x),
        "mul_int": (sx * 3, x * 3),
        "mul_int_arr": (sx * np.arange(5), x * np.arange(5)),
        "sum0": (sx.sum(axis=0), x.sum(axis=0)),
        "sum": (sx.sum(), x.sum()),
        "T": (sx.T, x.T),
        "reshape": (sx.reshape(2, 10), x.reshape(2, 10)),
        "index": (sx[1:3, ::2], x[1:3, ::2]),
        "concat": (concatenate([sx, sy], axis=1), np.concatenate([x, y], axis=1)),
        "pad": (sx.pad(((1, 0), (0, 2))), np.pad(x, ((1, 0), (0, 2)))),
    }
    with rt.comm.measure() as m:
        results = {k: v[0] for k, v in cases.items()}
    assert m.rounds == 0 and m.bytes_sent == 0
    for name, (_, ref) in cases.items():
        np.testing.assert_allclose(results[name].reveal(), ref, atol=4 * ULP, err_msg=name)
    # the public factor 1/5 itself carries a relative error of up to 2^-17
    np.testing.assert_allclose(sx.mean(axis=1).reveal(), x.mean(axis=1), rtol=ULP, atol=2 * ULP)


def test_mul_many_values(rt, seeded):
    n = 100_000
    x = seeded.uniform(-30, 30, n)
    y = seeded.uniform(-30, 30, n)
    x[:4] = [0, ULP, -ULP, 1.5]
    y[:4] = [12345.5, ULP, 3.0, -40000.0]
    sx, sy = shared(rt, x), shared(rt, y, src=1)
    with rt.comm.measure() as m:
        z = sx * sy
    assert m.rounds == 2  # the product's resharing fused with the truncation
    got = z.reveal()
    ref = encode(x).view(np.int64) * encode(y).view(np.int64) / 2.0**32  # exact product of the encodings
    assert np.abs(got - ref).max() < ULP
    assert np.abs(got - x * y).max() <= 40000 * ULP + 2 * ULP


def test_integer_mul_is_exact_mod_2_64(rt, seeded):
    a = seeded.integers(-(2**20), 2**20, 5000)
    b = seeded.integers(-(2**20), 2**20, 5000)
    sa, sb = shared(rt, a, integer=True), shared(rt, b, integer=True)
    with rt.comm.measure() as m:
        z = sa * sb
    assert m.rounds == 1 and m.bytes_sent == 8 * 5000
    raw = z.reveal_raw()
    ref = np.array([(int(p) * int(q)) % (1 << 64) for p, q in zip(a, b)], dtype=np.uint64)
    assert np.array_equal(raw, ref)


def test_mul_broadcasting_and_public_reals(rt, seeded):
    x = seeded.uniform(-50, 50, (3, 1, 4))
    y = seeded.uniform(-50, 50, (5, 1))
    np.testing.assert_allclose((shared(rt, x) * shared(rt, y)).reveal(), x * y, atol=200 * ULP)
    np.testing.assert_allclose((shared(rt, x) * 0.37).reveal(), x * 0.37, rtol=2.0**-28, atol=2 * ULP)
    p = seeded.uniform(-50, 50, (1, 5, 1))
    np.testing.assert_allclose((shared(rt, x) * p).reveal(), x * p, atol=50 * ULP)


def test_public_reals_are_range_checked_and_promote_integers(rt, seeded):
    sx = shared(rt, seeded.uniform(-1, 1, 10))
    with pytest.raises(EncodingError, match="public factor"):
        sx * 1e15  # used to wrap silently
    with pytest.raises(EncodingError, match="public operand"):
        sx + 1e12
    k = shared(rt, np.arange(10), integer=True)
    half = k + 0.5  # used to round 0.5 to an integer
    assert half.scale == F
    np.testing.assert_array_equal(half.reveal(), np.arange(10) + 0.5)
    np.testing.assert_allclose((k * 0.25).reveal(), np.arange(10) * 0.25, atol=ULP)
    np.testing.assert_array_equal((k + 3).reveal(), np.arange(10) + 3)
    assert (k + 3).scale == 0


def test_stack_and_concatenate_check_scales(rt, seeded):
    a = shared(rt, seeded.uniform(-1, 1, 4))
    b = shared(rt, np.arange(4), integer=True)
    for join in (stack, concatenate):
        with pytest.raises(ProtocolError, match="one scale"):
            join([a, b])
    np.testing.assert_allclose(stack([a, a]).reveal(), np.stack([a.reveal()] * 2))


def test_matmul_shapes(rt, seeded):
    for sa, sb in [((7, 13), (13, 5)), ((2, 3, 4), (4, 6)), ((2, 1, 3, 4), (5, 4, 2)), ((6,), (6, 3))]:
        a = seeded.uniform(-10, 10, sa)
        b = seeded.uniform(-10, 10, sb)
        xa, xb = shared(rt, a), shared(rt, b, src=2)
        np.testing.assert_allclose((xa @ xb).reveal(), a @ b, atol=sa[-1] * 40 * ULP)
        np.testing.assert_allclose((xa @ b).reveal(), a @ b, atol=sa[-1] * 40 * ULP)
        np.testing.assert_allclose((a @ xb).reveal(), a @ b, atol=sa[-1] * 40 * ULP)


def test_matmul_costs(rt, seeded):
    a = seeded.uniform(-1, 1, (20, 30))
    b = seeded.uniform(-1, 1, (30, 10))
    xa, xb = shared(rt, a), shared(rt, b)
    sent = []
    for _ in range(3):
        with rt.comm.measure() as m:
            xa @ xb
        assert m.rounds == 2
        sent.append(m.bytes_sent)
    # fused product + truncation: the dealer sends 32 bytes/output element, the openers 16;
    # the role rotates, so over three calls every party sends 64 bytes/element
    assert sorted(sent) == [16 * 200, 16 * 200, 32 * 200] and sum(sent) == 64 * 200


@pytest.mark.parametrize(
    "stride,padding,groups", [(1, 0, 1), (1, 1, 1), (2, 1, 1), ((2, 1), (0, 2), 1), (1, 1, 2), (2, 0, 4), (1, 1, 8)]
)
def test_conv2d_cases(rt, seeded, stride, padding, groups):
    x = seeded.uniform(-2, 2, (2, 8, 9, 7))
    w = seeded.uniform(-1, 1, (8, 8 // groups, 3, 3))
    ref = conv2d_ref(x, w, stride, padding, groups)
    sx, sw = shared(rt, x), shared(rt, w, src=1)
    tol = 9 * 8 * 4 * ULP
    with rt.comm.measure() as m:
        out = sx.conv2d(sw, stride=stride, padding=padding, groups=groups)
    assert m.rounds == 2
    np.testing.assert_allclose(out.reveal(), ref, atol=tol)
    np.testing.assert_allclose(sx.conv2d(w, stride=stride, padding=padding, groups=groups).reveal(), ref, atol=tol)


def test_mul_messages_change_and_look_uniform(rt, seeded):
    """What a party receives in a multiplication: fresh each run, uniform bits, never a held component."""
    x = seeded.uniform(-3, 3, 20_000)
    sx, sy = shared(rt, x), shared(rt, x, src=1)
    with recording(rt.comm) as log:
        for _ in range(6):  # three calls play every role once; then the same roles again
            sx * sy
    runs = [got for _, got in log]
    first_run = [v for d in runs[:6] for v in d.values()]
    second_run = [v for d in runs[6:] for v in d.values()]
    assert len(first_run) == len(second_run) > 0
    for a, b in zip(first_run, second_run):
        assert np.count_nonzero(a == b) < 3
    words = np.concatenate([v.ravel() for v in first_run])
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 64).mean(axis=0)
    assert np.abs(bits - 0.5).max() < 0.02
    # never a component the receiver already holds
    mine = [sx.first, sx.second, sy.first, sy.second]
    for v in first_run:
        for c in mine:
            if v.shape == c.shape:
                assert np.count_nonzero(v == c) < 3


@pytest.mark.parametrize("op", ["mul", "matmul", "conv", "truncate", "reveal", "share"])
def test_no_message_repeats_a_component_the_receiver_holds(rt, seeded, op):
    x = seeded.uniform(-3, 3, (6, 6))
    sx, sy = shared(rt, x), shared(rt, x.T, src=2)
    img = shared(rt, seeded.uniform(-1, 1, (1, 2, 5, 5)))
    ker = shared(rt, seeded.uniform(-1, 1, (3, 2, 3, 3)), src=1)
    held = [a for s in (sx, sy, img, ker) for a in (s.first, s.second)]
    with recording(rt.comm) as log:
        for _ in range(3):  # the truncation's roles rotate: every party opens twice
            if op == "mul":
                sx * sy
            elif op == "matmul":
                sx @ sy
            elif op == "conv":
                img.conv2d(ker, padding=1)
            elif op == "truncate":
                truncate(sx, 3)
            elif op == "reveal":
                sx.reveal()
            else:
                shared(rt, x, src=1)
    got = received(log)
    if op != "share":
        assert got  # every party receives in these
    for v in got:
        for h in held:
            if v.shape == h.shape:
                assert np.count_nonzero(v == h) < 2, op


def test_product_summands_sum_to_the_product_with_five_ring_products(rt, seeded):
    """The three parties' terms (:func:`product_summand`) add up to ``op(x, y)`` exactly for
    every choice of the light party, over full-range ring words; the light party computes
    one ring product, the other two two each (five in all, not six)."""
    from mpcgpu.ring import products as ring
    from mpcgpu.sharing.arithmetic import product_summand

    from reference import shared_ring

    ops = {
        "mul": (lambda a, b: a * b, (7, 5), (7, 5)),
        "matmul": (ring.matmul, (6, 9), (9, 4)),
        "conv": (lambda a, b: ring.conv2d(a, b, stride=1, padding=1), (2, 3, 5, 5), (4, 3, 3, 3)),
    }
    for name, (op, sx, sy) in ops.items():
        words = [seeded.integers(-(2**63), 2**63, shape, dtype=np.int64) for shape in (sx, sy)]
        for w in words:  # edge words
            w.flat[:3] = [-(2**63), 2**63 - 1, -1]
        xs, ys = (shared_ring(rt, w, seeded) for w in words)
        x_plain, y_plain = xs.reveal_raw(), ys.reveal_raw()
        want = op(x_plain, y_plain)
        for _ in range(3):  # each party light once
            calls = []

            def counting(a, b, _op=op, calls=calls):
                calls.append(1)
                return _op(a, b)

            term = product_summand(rt, xs.first, xs.second, ys.first, ys.second, counting)
            terms = rt.comm.allgather_object(term)
            counts = rt.comm.allgather_object(len(calls))
            light = rt.peek_role()
            assert counts[light] == 1 and sorted(counts) == [1, 2, 2], (name, counts)
            assert np.array_equal(terms[0] + terms[1] + terms[2], want), name
            rt.next_role()
