"""Graph-model operators on three parties: every registered operator's examples, private
facet against the plaintext one (on the fixed-point grid), plus edge values and the
GraphErrors of value kinds an operator cannot take."""

import numpy as np
import pytest

from mpcgpu.nn import dag
from mpcgpu.nn.dag import GraphError, Node
from mpcgpu.nn.dag_run import Context, one_hot
from mpcgpu.nn.ops import values as V
from mpcgpu.nn.ops._common import EXAMPLE_TOL, example_value
from reference import enc, shared

pytestmark = pytest.mark.mpi(min_size=3)

#: operators whose protocols live in modules another branch adds (skipped until merged)
NEEDS = {"Softmax": "mpcgpu.protocols.attention", "LayerNormalization": "mpcgpu.protocols.normalize"}


def _available(op):
    import importlib.util

    return op not in NEEDS or importlib.util.find_spec(NEEDS[op]) is not None


def _examples():
    out = []
    for t in dag.registered_ops():
        for node, infos in t.examples:
            if any(i.role == "secret" for i in infos):
                out.append(pytest.param(t, node, infos, id=node.name))
    return out


def _feed(rt, node, infos, rng):
    """(plaintext args, private args): secret floats shared on the 2^-16 grid, secret ints
    of a Gather as one-hot shares, other secret ints as integer shares."""
    plain, private = {}, {}
    for t in infos:
        v = example_value(node, t, rng)
        if t.role == "public":
            plain[t.name] = private[t.name] = V.public(v)
        elif t.dtype == "float":
            plain[t.name] = enc(v)
            private[t.name] = shared(rt, plain[t.name])
        elif node.op == "Gather":
            width = next(i for i in infos if i.name == node.inputs[0]).shape[0]
            plain[t.name] = v
            private[t.name] = V.OneHotShare(shared(rt, one_hot(v, width), integer=True))
        else:
            plain[t.name] = v
            private[t.name] = shared(rt, v, integer=True)
    return plain, private


def reveal_value(v):
    """(values, keep or None) of a private result, on every party."""
    if isinstance(v, V.MaskedShare):
        return v.share.reveal(), v.full_keep()
    if isinstance(v, V.OneHotShare):
        return v.share.reveal(), None
    if V.is_public(v):
        return V.public(v), None
    return v.reveal(), None


def check(got, keep, want, tol):
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if keep is not None:
        assert not keep.all()
        assert np.all(want[~keep] <= V.MASK_BELOW), "masked entries must be minus infinity in the plaintext"
        assert np.all(np.isfinite(want[keep]))
        got, want = got[keep], want[keep]
    if want.dtype.kind == "f" or got.dtype.kind == "f":
        np.testing.assert_allclose(got, want.astype(np.float64), rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op,node,infos", _examples())
def test_private_facet_matches_plain(rt, op, node, infos):
    if not _available(op.name):
        pytest.skip(f"{NEEDS[op.name]} is not there yet")
    rng = np.random.default_rng(11)
    plain, private = _feed(rt, node, infos, rng)
    want = op.plain(node, [plain[n] if n else None for n in node.inputs])
    got = op.private(Context(rt, None), node, [private[n] if n else None for n in node.inputs])
    assert len(got) == len(want) == len(node.outputs)
    for g, w in zip(got, want):
        values, keep = reveal_value(g)
        check(values, keep, w, EXAMPLE_TOL[node.name])


def test_edge_values(rt):
    """Mask threshold exactly at -1e4, ids at both ends, the range limits of mul_public."""
    from mpcgpu.nn.ops.arith import add_private, mul_private, sub_private
    from mpcgpu.nn.ops.shape import gather_private, slice_private

    ctx = Context(rt, None)
    x = np.array([[1.5, -2.0, 0.0, 2.0**-16]])
    xs = shared(rt, x)
    m = np.array([[-1e4, -9999.0, -np.inf, 0.0]])
    (y,) = add_private(ctx, Node("Add", "a", ["x", "m"], ["y"]), [xs, m])
    assert isinstance(y, V.MaskedShare)
    np.testing.assert_array_equal(y.full_keep(), [[False, True, False, True]])
    np.testing.assert_allclose(y.share.reveal()[0, [1, 3]], [-10001.0, 2.0**-16], atol=2**-16)
    # a finite all-kept addend stays a plain share; public - share, share - public
    (z,) = add_private(ctx, Node("Add", "a", ["m", "x"], ["y"]), [np.array([3.0]), xs])
    assert isinstance(z, type(xs)) and np.allclose(z.reveal(), x + 3)
    (z,) = sub_private(ctx, Node("Sub", "s", ["c", "x"], ["y"]), [np.array(1.0), xs])
    np.testing.assert_allclose(z.reveal(), 1 - x, atol=2**-16)
    # integral float factors are exact and free
    with rt.comm.measure() as stats:
        (z,) = mul_private(ctx, Node("Mul", "m", ["x", "c"], ["y"]), [xs, np.array(-3.0)])
    assert stats.rounds == 0 and np.array_equal(z.reveal(), -3 * x)
    # ids at -V and V-1
    table = np.arange(12.0).reshape(6, 2)
    ts = shared(rt, table)
    (g,) = gather_private(ctx, Node("Gather", "g", ["t", "i"], ["y"]), [ts, np.array([-6, 5, -1])])
    np.testing.assert_array_equal(g.reveal(), table[[0, 5, 5]])
    with pytest.raises(GraphError, match="node g \\(Gather\\): indices outside"):
        gather_private(ctx, Node("Gather", "g", ["t", "i"], ["y"]), [ts, np.array([6])])
    # a slice past both ends is empty / clamped
    node = Node("Slice", "s", ["t", "a", "b"], ["y"])
    (s,) = slice_private(ctx, node, [ts, np.array([4]), np.array([100])])
    np.testing.assert_array_equal(s.reveal(), table[4:])


def test_value_kinds_refused_with_the_node_named(rt):
    from mpcgpu.nn.ops.arith import add_private, mul_private, pow_private, sub_private
    from mpcgpu.nn.ops.linear import matmul_private
    from mpcgpu.nn.ops.shape import gather_private, where_private

    ctx = Context(rt, None)
    xs = shared(rt, np.ones((2, 3)))
    masked = V.MaskedShare(xs, np.array([True, False, True]))
    ids = shared(rt, np.array([[1, 2, 0]]), integer=True)
    cases = [
        (where_private, Node("Where", "w", ["c", "a", "b"], ["y"]), [xs, xs, xs], "needs a public condition"),
        (matmul_private, Node("MatMul", "mm", ["a", "b"], ["y"]), [masked, np.ones((3, 2))], "masked share"),
        (gather_private, Node("Gather", "ga", ["t", "i"], ["y"]), [xs, ids], "must be fed one-hot"),
        (pow_private, Node("Pow", "pw", ["x", "e"], ["y"]), [xs, np.array(4.0)], "exponent 4.0"),
        (sub_private, Node("Sub", "sb", ["a", "b"], ["y"]), [xs, masked], "subtracting a masked share"),
        (mul_private, Node("Mul", "ml", ["a", "b"], ["y"]), [masked, np.array(-1.0)], "not positive"),
        (add_private, Node("Add", "ad", ["a", "b"], ["y"]), [V.OneHotShare(ids), np.array(1)], "one-hot"),
    ]
    for fn, node, args, msg in cases:
        with pytest.raises(GraphError, match=f"node {node.name} \\({node.op}\\): .*{msg}"):
            fn(ctx, node, args)


def _cost(rt, fn):
    """(rounds, bytes sent by the three parties together) of ``fn()``."""
    with rt.comm.measure() as stats:
        fn()
    return stats.rounds, sum(rt.comm.allgather_object(stats.bytes_sent))


def test_costs_of_the_private_facets(rt):
    """Rounds and bytes (three parties together) as the operator docs state them."""
    from mpcgpu.nn.ops.arith import div_private, mul_private
    from mpcgpu.nn.ops.linear import matmul_private
    from mpcgpu.nn.ops.shape import gather_private, reshape_private, where_private

    ctx = Context(rt, None)
    x = shared(rt, np.ones((1, 3, 4)))
    w = shared(rt, np.ones((4, 5)))
    n = x.size
    mm = Node("MatMul", "mm", ["a", "b"], ["y"])
    ml = Node("Mul", "ml", ["a", "b"], ["y"])
    cases = [
        (lambda: mul_private(ctx, ml, [x, np.array(2**-0.5)]), 2, 2 * 48 * n),  # 2 parts
        (lambda: mul_private(ctx, ml, [x, np.array(0.5)]), 2, 48 * n),  # a power of two: 1 part
        (lambda: mul_private(ctx, ml, [x, np.array(4.0)]), 0, 0),
        (lambda: div_private(ctx, Node("Div", "d", ["a", "b"], ["y"]), [x, np.array(8.0)]), 2, 48 * n),
        (lambda: mul_private(ctx, ml, [x, x]), 2, 64 * n),
        (lambda: matmul_private(ctx, mm, [x, np.ones((4, 5))]), 2, 48 * 15),
        (lambda: matmul_private(ctx, mm, [x, w]), 2, 64 * 15),
        (lambda: reshape_private(ctx, Node("Reshape", "r", ["a", "s"], ["y"]), [x, np.array([4, 3])]), 0, 0),
        (
            lambda: where_private(
                ctx, Node("Where", "w", ["c", "a", "b"], ["y"]), [np.array(True), x, np.array(-np.inf)]
            ),
            0,
            0,
        ),
    ]
    for fn, rounds, nbytes in cases:
        assert _cost(rt, fn) == (rounds, nbytes)
    ids = V.OneHotShare(shared(rt, one_hot(np.array([[1, 0, 3]]), 4), integer=True))
    cost = _cost(rt, lambda: gather_private(ctx, Node("Gather", "g", ["t", "i"], ["y"]), [w, ids]))
    assert cost == (1, 3 * 8 * 15)  # one-hot (scale 0) @ table: a resharing, no truncation


def test_nonlinear_edge_values(rt):
    """Activations at 0, +-1 ulp, their segment ends and far out; softmax ties, a single
    entry, a spread of 50; LayerNorm of a constant row (variance 0: clamped, output = bias)."""
    from mpcgpu.nn.ops.nonlinear import erf_host, gelu_host, layer_norm_plain, softmax_host

    ctx = Context(rt, None)
    u = 2.0**-16
    x = np.array([0.0, u, -u, 2.125, -2.125, 2.8125, -2.8125, 3.25, -3.25, 6.0, -6.0, 100.0, -100.0, 1000.0])
    xs = shared(rt, x)
    refs = {
        "Erf": (erf_host(x), 4e-3),
        "Tanh": (np.tanh(x), 4e-3),
        "Sigmoid": (1 / (1 + np.exp(-x)), 3.5e-3),
        "Gelu": (gelu_host(x), 8e-3),
        "Relu": (np.maximum(x, 0), 0),
    }
    for name, (want, tol) in refs.items():
        (got,) = dag.op_type(name).private(ctx, Node(name, "n", ["x"], ["y"]), [xs])
        np.testing.assert_allclose(got.reveal(), want, atol=tol, rtol=tol, err_msg=name)
    rows = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, -50.0, -50.0, -50.0], [3.0, 3.0, -2.0, 0.0]])
    (p,) = dag.op_type("Softmax").private(ctx, Node("Softmax", "sm", ["x"], ["y"]), [shared(rt, rows)])
    np.testing.assert_allclose(p.reveal(), softmax_host(rows, -1), atol=2e-3)
    (one,) = dag.op_type("Softmax").private(ctx, Node("Softmax", "sm", ["x"], ["y"]), [shared(rt, np.array([[7.5]]))])
    np.testing.assert_allclose(one.reveal(), [[1.0]], atol=2e-3)
    flat = np.array([[2.0, 2.0, 2.0, 2.0], [0.5, -0.5, 1.5, -1.5]])
    bias = np.array([0.1, -0.2, 0.3, 0.0])
    node = Node("LayerNormalization", "ln", ["x", "s", "b"], ["y"], {"epsilon": 1e-5})
    (y,) = dag.op_type("LayerNormalization").private(ctx, node, [shared(rt, flat), np.ones(4), bias])
    (want,) = layer_norm_plain(node, [flat, np.ones(4), bias])
    np.testing.assert_allclose(y.reveal(), want, atol=5e-3, rtol=5e-3)
