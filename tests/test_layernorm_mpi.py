"""LayerNorm on three ranks (issue 21): accuracy against float64 over the whole variance
domain and its edges, weight/bias secret or public, the clamp below the domain, the error
above it (on every rank, from one revealed bit per guard), costs pinned."""

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.nn.dag import GraphModel, Node, TensorInfo
from mpcgpu.nn.dag_run import PrivateGraph
from mpcgpu.protocols import domain, normalize
from mpcgpu.sharing import compact
from reference import enc, shared
from test_approx_mpi import run

pytestmark = pytest.mark.mpi(min_size=3)
F = 16
LO, HI = normalize.DEFAULT_DOMAIN


def ln_ref(x, w=None, b=None, eps=1e-5, axis=-1):
    axes = tuple(range(axis % x.ndim, x.ndim))
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    y = (x - m) / np.sqrt(v + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def rows_with_stds(rng, stds, n, mean=3.0):
    means = rng.uniform(-mean, mean, (len(stds), 1))
    return enc(means + rng.standard_normal((len(stds), n)) * np.asarray(stds)[:, None])


def check(got, want, tol=1e-3, std=None):
    """The documented bound: tol (1 + |y|) + 2^-15 / std (a unit of the centred values' last
    place magnified by the division)."""
    err = np.abs(got - want)
    bound = tol * (1 + np.abs(want)) + (0 if std is None else 2.0**-15 / std)
    assert (err <= bound).all(), float(np.max(err / bound))


def guarded_run(rt, *args, **kw):
    """``run`` (rounds and bytes of the call alone) inside a guard, checked after it."""
    with domain.guarded(rt) as g:
        out = run(rt, normalize.layer_norm, *args, **kw)
        assert len(g.entries) == 1  # one count per call
    return out


def test_accuracy_over_the_domain_secret_weight(rt, seeded):
    n = 768
    stds = np.exp(np.linspace(np.log(0.0102), np.log(255.0), 30))  # var + eps from 1.1e-4 to 6.5e4
    x = rows_with_stds(seeded, stds, n)
    x[-1] += 1e5  # a large mean: only x - mean matters
    w = enc(seeded.uniform(-2, 2, n))
    w[:2] = [35.0, -35.0]  # near the weight bound (36 at n = 768)
    b = enc(seeded.uniform(-1, 1, n))
    y, rounds, nbytes = guarded_run(rt, shared(rt, x), shared(rt, w), shared(rt, b))
    cost = normalize.layer_norm_cost(len(stds), n)
    assert rounds == cost["rounds"] == 43
    assert nbytes == cost["bytes"]
    assert y.shape == x.shape and y.scale == F
    std = x.std(axis=1, keepdims=True)
    check(y.reveal(), ln_ref(x, w, b), std=std / np.abs(w))
    # the same weight share again: its bound was checked (the guard passed), not compared again
    ws = shared(rt, w)
    guarded_run(rt, shared(rt, x[:2]), ws)
    y, rounds, nbytes = guarded_run(rt, shared(rt, x[:2]), ws, b)
    assert nbytes == normalize.layer_norm_cost(2, n, weight_checked=True)["bytes"]
    assert nbytes < normalize.layer_norm_cost(2, n)["bytes"]
    check(y.reveal(), ln_ref(x[:2], w, b), std=std[:2] / np.abs(w))


def test_public_and_absent_weight_and_axis(rt, seeded):
    x = enc(seeded.standard_normal((2, 3, 4, 16)) * 2 + 1)
    w = seeded.uniform(0.5, 1.5, (4, 16))
    b = seeded.uniform(-1, 1, (4, 16))
    y, rounds, nbytes = guarded_run(rt, shared(rt, x), w, b, 1e-5, -2)
    cost = normalize.layer_norm_cost(6, 64, secret_weight=False)
    assert rounds == cost["rounds"] and nbytes == cost["bytes"]
    check(y.reveal(), ln_ref(x, enc(w), b, axis=-2))
    y, rounds, nbytes = guarded_run(rt, shared(rt, x))
    assert nbytes == normalize.layer_norm_cost(24, 16, secret_weight=False)["bytes"]
    check(y.reveal(), ln_ref(x))
    # a compactly held weight (as the model's params may be) is taken as a secret one
    wc = compact.share(enc(w[0]) if rt.rank == 0 else None, src=0)
    y = normalize.layer_norm(shared(rt, x), wc, b[0])  # outside a guard: checked at once
    check(y.reveal(), ln_ref(x, enc(w[0]), b[0]))


def test_clamp_below_the_domain(rt, seeded):
    n = 64
    x = np.zeros((4, n))
    x[0] = 3.0  # constant row: var = 0 -> clamped to lo; y = 0
    x[1] = enc(seeded.standard_normal(n) * 0.002)  # var ~ 4e-6 < lo
    x[2] = enc(seeded.standard_normal(n))  # inside
    x[3, ::2], x[3, 1::2] = 0.0094, -0.0094  # var + eps = 9.8e-5, just below lo
    y = normalize.layer_norm(shared(rt, x)).reveal()
    m = x.mean(axis=1, keepdims=True)
    var = ((x - m) ** 2).mean(axis=1, keepdims=True) + 1e-5
    want = (x - m) / np.sqrt(np.clip(var, LO, HI))  # the documented rule
    check(y, want, tol=3e-3)
    assert np.abs(y[0]).max() <= 2.0**-14
    exact = ln_ref(x)
    assert (np.abs(y[[1, 3]]) <= np.abs(exact[[1, 3]]) + 1e-3).all()  # shrunk, never larger
    np.testing.assert_allclose(y[2], exact[2], atol=3e-3)


def test_domain_edges(rt, seeded):
    """var + eps at hi (just inside), at lo, a spike, a mean far beyond the old input range."""
    n = 768
    x = np.zeros((5, n))
    x[0, ::2], x[0, 1::2] = 255.98, -255.98  # var + eps = 65525.8 < hi = 65536
    x[1] = enc(seeded.standard_normal(n) * 0.01 + 5.0)  # var ~ lo
    x[2, 7] = 7000.0  # one spike: var = 63,720 (|x - mean| 6991, six times the old bound)
    x[3] = enc(seeded.uniform(-1, 1, n) * 400.0 + 30000.0)  # var ~ 5.3e4, |x| ~ 3e4
    x[4] = enc(seeded.standard_normal(n) * 3e-4 - 20000.0)  # below lo, far from 0
    with domain.guarded(rt):
        y = normalize.layer_norm(shared(rt, x))
    y = y.reveal()
    m = x.mean(axis=1, keepdims=True)
    var = ((x - m) ** 2).mean(axis=1, keepdims=True) + 1e-5
    want = (x - m) / np.sqrt(np.clip(var, LO, HI))
    check(y, want, tol=2e-3, std=np.sqrt(var))
    np.testing.assert_allclose(np.abs(y[0]), 1.0, atol=2e-3)
    np.testing.assert_allclose(y[2, 7], (7000 - 7000 / n) / np.sqrt(var[2, 0]), rtol=2e-3)


def bad_rows(case, n):
    x = np.zeros((3, n))
    x[0] = np.linspace(-1, 1, n)  # inside
    x[2] = 2.0  # inside (clamped below)
    if case == "above hi":
        x[1, ::2], x[1, 1::2] = 256.1, -256.1  # var + eps = 65587 > hi
    elif case == "far above hi":
        x[1, ::2], x[1, 1::2] = 3000.0, -3000.0  # var 9e6 (old domain: wrapped past 1182)
    else:  # "wraps": sum (x - mean)^2 = 2^48 makes v wrap to ~0 mod 2^64: only [T2 >= 2^36] sees it
        x[1, 0] = 2.0**24 * np.sqrt(n / (n - 1))
    return x


@pytest.mark.parametrize("case", ["above hi", "far above hi", "wraps"])
def test_outside_the_domain_is_an_error_on_every_rank(rt, case):
    n = 64
    x = bad_rows(case, n)
    with pytest.raises(domain.DomainError, match=r"outside the domain.*layer_norm over 64 elements.*above 65536"):
        with domain.guarded(rt):
            normalize.layer_norm(shared(rt, x))
    # outside a guard: at once, the same
    with pytest.raises(domain.DomainError, match="outside the domain"):
        normalize.layer_norm(shared(rt, x))
    # the same rows without the bad one pass
    with domain.guarded(rt):
        normalize.layer_norm(shared(rt, x[[0, 2]]))


def test_weight_outside_the_bound_is_an_error(rt, seeded):
    n = 768
    B = normalize.weight_bound(n)
    assert 35.5 < B < 36.0
    x = enc(seeded.standard_normal((2, n)))
    w = np.ones(n)
    w[5] = -1.01 * B
    big = shared(rt, enc(w))
    for _ in range(2):  # a failed check is not remembered: the second call compares again
        with pytest.raises(domain.DomainError, match=r"\|weight\| above 35"):
            normalize.layer_norm(shared(rt, x), big)
    with pytest.raises(ProtocolError, match="public weight of magnitude"):
        normalize.layer_norm(shared(rt, x), w)
    w[5] = 0.99 * B  # inside: no error
    y = normalize.layer_norm(shared(rt, x), shared(rt, enc(w))).reveal()
    check(y, ln_ref(x, enc(w)), tol=2e-3)


def ln_graph(n, rows):
    nodes = [
        Node("Add", "pre", ["x", "x"], ["x2"]),
        Node("LayerNormalization", "ln_ok", ["x", "s"], ["y1"], {"epsilon": 1e-5}),
        Node("LayerNormalization", "ln_big", ["x2", "s"], ["y2"], {"epsilon": 1e-5}),
    ]
    return GraphModel(
        "ln", [TensorInfo("x", (rows, n))], ["y1", "y2"], nodes, consts=[TensorInfo("s", (n,), "float", "public")]
    )


def test_graph_run_reveals_one_bit_and_names_the_node(rt, monkeypatch):
    n = 16
    g = ln_graph(n, 2)
    private = PrivateGraph(g, {}, {"s": np.ones(n)}, rt)
    x = np.zeros((2, n))
    x[0] = np.linspace(-100, 100, n)  # var 3,630 inside; doubled: 14,519, inside
    revealed = []
    original = domain.Guard.check

    def counted(self):
        revealed.append(len(self.entries))
        return original(self)

    monkeypatch.setattr(domain.Guard, "check", counted)
    out = private.run({"x": shared(rt, x)})
    assert revealed == [2]  # one guard, two counts, one check
    np.testing.assert_allclose(out["y2"].reveal(), ln_ref(2 * x), atol=3e-3)
    x[1] = np.linspace(-150, 150, n)  # var 8,168, inside; doubled: 32,672, inside
    x[1, 0] = -800.0  # var 43,600, inside; doubled: 174,400 > hi
    with pytest.raises(domain.DomainError) as err:
        private.run({"x": shared(rt, x)})
    msg = str(err.value)
    assert "node ln_big (LayerNormalization)" in msg and "ln_ok" not in msg
    assert "above 65536" in msg


def test_bad_arguments_fail_on_every_rank(rt):
    x = shared(rt, enc(np.ones((2, 4))))
    with pytest.raises(ProtocolError, match="domain"):
        normalize.layer_norm(x, domain=(1.0, 0.5))
    with pytest.raises(ProtocolError, match="domain"):
        normalize.layer_norm(x, domain=(1e-3, 1e6))
    with pytest.raises(ProtocolError, match="broadcast"):
        normalize.layer_norm(x, weight=np.ones(3))
    with pytest.raises(ProtocolError, match="eps"):
        normalize.layer_norm(x, eps=-1.0)


def test_guard_bounds():
    """The stated constants: the guard's threshold lies above every domain, below the wrap."""
    n = 768
    # T2 >= 2^36 means sum c^2 >= 16^2 (2^18 - sqrt(n))^2 > n 2^16 (any hi) for n <= 2^20
    assert 256 * (2.0**18 - np.sqrt(2.0**20)) ** 2 > 2.0**20 * 2.0**16
    # and below it v = 2^24 T2 + ... stays under 2^62 ring units: no wrap in the comparison
    assert 2.0**24 * 2.0**36 * (1 + 2.0**-5) < 2.0**62
    assert abs(normalize.input_bound(n) - 2.0**35.5 / np.sqrt(n)) < 1
    assert normalize.input_bound(2048) >= 2.0**30
