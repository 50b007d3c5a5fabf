"""GELU (both forms), erf, tanh, sigmoid, SiLU on three ranks (issue 21).

Accuracy against float64 (math.erf / NumPy) on the encoded inputs over the whole real
line: dense values around the segment, the segment ends +-T and +-1 ulp around them, 0,
large values and the fixed-point range ends.  Rounds and bytes (summed over the parties)
pinned to :func:`activation_cost`; reveals are disabled while the protocols run.
"""

import math

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.protocols import activations
from reference import enc, shared
from test_approx_mpi import run

pytestmark = pytest.mark.mpi(min_size=3)
F = 16
ULP = 2.0**-F

ERF = np.vectorize(math.erf, otypes=[float])


def gelu_ref(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def gelu_tanh_ref(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def sigmoid_ref(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


CASES = {
    # name: (protocol, float64 reference, asserted max error)
    "gelu": (activations.gelu, gelu_ref, 0.0075),
    "gelu_tanh": (lambda s: activations.gelu(s, approximate="tanh"), gelu_tanh_ref, 0.0075),
    "erf": (activations.erf, ERF, 0.0035),
    "tanh": (activations.tanh, np.tanh, 0.0035),
    "sigmoid": (activations.sigmoid, sigmoid_ref, 0.003),
    "silu": (activations.silu, lambda x: x * sigmoid_ref(x), 0.0095),
}


def inputs(rng, T):
    """Dense over [-3T, 3T], the edges, and large values up to the fixed-point range ends."""
    edges = [0.0, ULP, -ULP, T, -T, T - ULP, -T + ULP, T + ULP, -T - ULP, 1.0, -1.0]
    big = [100.0, -100.0, 1e4, -1e4, 2.0**30, -(2.0**30), 2.0**31 - 1.0, -(2.0**31) + 1.0]
    x = np.concatenate([edges, big, rng.uniform(-3 * T, 3 * T, 20_000), rng.uniform(-1e3, 1e3, 2000)])
    return enc(x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_accuracy_rounds_and_bytes(rt, seeded, name):
    fn, ref, bound = CASES[name]
    p = activations.plan(name)
    x = inputs(seeded, p.domain[1])
    y, rounds, nbytes = run(rt, fn, shared(rt, x))
    cost = activations.activation_cost(name, x.size)
    assert rounds == cost["rounds"] == p.rounds
    assert nbytes == cost["bytes"]
    assert y.shape == x.shape and y.scale == F
    got, want = y.reveal(), ref(x)
    err = np.abs(got - want)
    assert err.max() <= bound, (name, float(err.max()), float(x[np.argmax(err)]))
    assert p.max_error <= bound
    # the outer pieces are exact: 0 / x / +-1 (x itself to the last place)
    T = p.domain[1]
    far = np.abs(x) >= T + 1.0
    outer = np.where(x < 0, p.left[0] * x + p.left[1], p.right[0] * x + p.right[1])
    assert np.array_equal(got[far], outer[far])


def test_documented_costs_and_shapes(rt, seeded):
    expected_rounds = {"gelu": 16, "gelu_tanh": 16, "erf": 18, "tanh": 22, "sigmoid": 20, "silu": 20}
    for name, r in expected_rounds.items():
        assert activations.activation_cost(name, 10)["rounds"] == r
    x = enc(seeded.uniform(-4, 4, (2, 3, 5)))
    y = activations.gelu(shared(rt, x))
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y.reveal(), gelu_ref(x), atol=0.0075)
    # integer shares are promoted
    xi = np.array([-3, -1, 0, 1, 2, 5], dtype=np.int64)
    yi = activations.tanh(shared(rt, xi, integer=True))
    np.testing.assert_allclose(yi.reveal(), np.tanh(xi), atol=0.0035)


def test_bad_arguments_fail_on_every_rank(rt):
    x = shared(rt, enc([0.5]))
    with pytest.raises(ProtocolError, match="approximate"):
        activations.gelu(x, approximate="fast")
    with pytest.raises(ProtocolError, match="unknown activation"):
        activations.activation_cost("relu6", 3)
