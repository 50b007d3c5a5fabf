"""LayerNorm on three ranks (issue 21): accuracy against float64 over the variance domain
and its edges, weight/bias secret or public, the clamp outside the domain, costs pinned."""

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.protocols import normalize
from mpcgpu.sharing import compact
from reference import enc, shared
from test_approx_mpi import run

pytestmark = pytest.mark.mpi(min_size=3)
F = 16


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


def rows_with_stds(rng, stds, n):
    means = rng.uniform(-3, 3, (len(stds), 1))
    return enc(means + rng.standard_normal((len(stds), n)) * np.asarray(stds)[:, None])


def check(got, want, tol=1e-3, std=None):
    """The documented bound: tol (1 + |y|) + 2^-15 / std (a unit of the centred values' last
    place magnified by the division)."""
    err = np.abs(got - want)
    bound = tol * (1 + np.abs(want)) + (0 if std is None else 2.0**-15 / std)
    assert (err <= bound).all(), float(np.max(err / bound))


def test_accuracy_over_the_domain_secret_weight(rt, seeded):
    n = 768
    stds = np.exp(np.linspace(np.log(0.04), np.log(95.0), 30))  # var from 1.6e-3 to 9e3
    x = rows_with_stds(seeded, stds, n)
    w = enc(seeded.uniform(-2, 2, n))
    b = enc(seeded.uniform(-1, 1, n))
    y, rounds, nbytes = run(rt, normalize.layer_norm, shared(rt, x), shared(rt, w), shared(rt, b))
    cost = normalize.layer_norm_cost(len(stds), n)
    assert rounds == cost["rounds"]
    assert nbytes == cost["bytes"]
    assert y.shape == x.shape and y.scale == F
    std = x.std(axis=1, keepdims=True)
    check(y.reveal(), ln_ref(x, w, b), std=std / np.abs(w))


def test_public_and_absent_weight_and_axis(rt, seeded):
    x = enc(seeded.standard_normal((2, 3, 4, 16)) * 2 + 1)
    w = seeded.uniform(0.5, 1.5, (4, 16))
    b = seeded.uniform(-1, 1, (4, 16))
    y, rounds, nbytes = run(rt, normalize.layer_norm, shared(rt, x), w, b, 1e-5, -2)
    cost = normalize.layer_norm_cost(6, 64, secret_weight=False)
    assert rounds == cost["rounds"] and nbytes == cost["bytes"]
    check(y.reveal(), ln_ref(x, enc(w), b, axis=-2))
    y, rounds, nbytes = run(rt, normalize.layer_norm, shared(rt, x))
    assert nbytes == normalize.layer_norm_cost(24, 16, secret_weight=False)["bytes"]
    check(y.reveal(), ln_ref(x))
    # a compactly held weight (as the model's params may be) is taken as a secret one
    wc = compact.share(enc(w[0]) if rt.rank == 0 else None, src=0)
    y = normalize.layer_norm(shared(rt, x), wc, b[0])
    check(y.reveal(), ln_ref(x, enc(w[0]), b[0]))


def test_clamp_outside_the_domain(rt, seeded):
    n = 64
    x = np.zeros((5, n))
    x[0] = 3.0  # constant row: var = 0 -> clamped to lo; y = 0
    x[1] = enc(seeded.standard_normal(n) * 0.005)  # var ~ 2.5e-5 < lo
    x[2] = enc(seeded.standard_normal(n) * 300.0)  # var ~ 9e4 > hi
    x[3] = enc(seeded.standard_normal(n))  # inside
    x[4, ::2], x[4, 1::2] = 0.03, -0.03  # var = 9e-4 (+eps), just below lo
    y = normalize.layer_norm(shared(rt, x)).reveal()
    lo, hi = normalize.DEFAULT_DOMAIN
    m = x.mean(axis=1, keepdims=True)
    var = ((x - m) ** 2).mean(axis=1, keepdims=True) + 1e-5
    clamped = np.clip(var, lo, hi)
    want = (x - m) / np.sqrt(clamped)  # the documented rule
    check(y, want, tol=3e-3)
    assert np.abs(y[0]).max() <= 2.0**-14
    exact = ln_ref(x)
    assert (np.abs(y[[1, 4]]) <= np.abs(exact[[1, 4]]) + 1e-3).all()  # below lo: shrunk, never larger
    ratio = np.sqrt(var[2, 0] / hi)  # above hi: larger by sqrt(var / hi), as documented
    np.testing.assert_allclose(y[2], exact[2] * ratio, atol=3e-3 * ratio)
    np.testing.assert_allclose(y[3], exact[3], atol=3e-3)


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


def test_input_range_end_and_domain_edges(rt, seeded):
    n = 768
    x = np.zeros((4, n))
    x[0, ::2], x[0, 1::2] = 1150.0, -1150.0  # |x| near 2^15 / sqrt(n): var 1.3e6, clamped to hi
    x[1, ::2], x[1, 1::2] = 100.0, -100.0  # var = hi - eps exactly: var + eps = hi
    x[2] = enc(seeded.standard_normal(n) * 0.0316 + 5.0)  # var ~ lo
    x[3] = enc(seeded.uniform(-1, 1, n) * 1000.0)  # large but inside the range, var ~ 3.3e5 > hi
    y = normalize.layer_norm(shared(rt, x)).reveal()
    lo, hi = normalize.DEFAULT_DOMAIN
    m = x.mean(axis=1, keepdims=True)
    var = ((x - m) ** 2).mean(axis=1, keepdims=True) + 1e-5
    want = (x - m) / np.sqrt(np.clip(var, lo, hi))
    check(y, want, tol=2e-3)
    np.testing.assert_allclose(np.abs(y[0]), 11.5, atol=0.03)
