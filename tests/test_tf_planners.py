"""The host-side planners of the transformer protocols (issue 21), single process: the
fitted activation plans, the attention exp plan and the cost formulas (public numbers
only; the three-rank tests check them against the protocols)."""

import math

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.protocols import activations, attention, normalize

ERF = np.vectorize(math.erf, otypes=[float])

BOUNDS = {"gelu": 0.0075, "gelu_tanh": 0.0075, "erf": 0.0035, "tanh": 0.0035, "sigmoid": 0.003, "silu": 0.0095}


@pytest.mark.parametrize("name", sorted(activations.FUNCTIONS))
def test_activation_plans_fit_their_bounds_deterministically(name):
    p = activations.plan(name)
    assert p.max_error <= BOUNDS[name] * 0.97  # room for the fixed-point rounding
    again = activations.plan.__wrapped__(name)  # refit, no cache: the very same floats
    assert again == p
    T = p.domain[1]
    assert T * 16 == int(T * 16)  # exact in fixed point
    assert 2.0**p.m >= T * T > 2.0 ** (p.m - 1)
    assert p.rounds == 8 + 2 * p.products + 2


def test_the_fits_against_independent_references():
    x = np.linspace(-6, 6, 4001)
    ref = {"gelu": 0.5 * x * (1 + ERF(x / math.sqrt(2))), "erf": ERF(x), "tanh": np.tanh(x)}
    for name, want in ref.items():
        p = activations.plan(name)
        T = p.domain[1]
        v = x * x / 2.0**p.m
        q = sum(c * v**k for k, c in enumerate(p.coeffs))
        inside = x / 2 + q if p.parity == "even" else p.offset + x * q
        outer = np.where(x < 0, p.left[0] * x + p.left[1], p.right[0] * x + p.right[1])
        got = np.where((x >= -T) & (x < T), inside, outer)
        assert np.abs(got - want).max() <= p.max_error + 1e-12


def test_costs():
    c = activations.activation_cost("gelu", 1000)
    assert c["rounds"] == 16 and c["products"] == 3
    per = activations.activation_cost("gelu", 10**6)["bytes"] / 10**6
    assert 420 < per < 440
    assert activations.activation_cost("gelu", 0)["bytes"] == 0
    with pytest.raises(ProtocolError):
        activations.activation_cost("swish", 1)
    s = attention.softmax_cost(12 * 128, 128)
    assert 560 < s["bytes"] / (12 * 128 * 128) < 580
    ln = normalize.layer_norm_cost(128, 768)
    assert ln["rounds"] == 43
    assert normalize.layer_norm_cost(128, 768, secret_weight=False)["bytes"] < ln["bytes"]
    with pytest.raises(ProtocolError, match="domain"):
        normalize.layer_norm_cost(1, 8, domain=(1e-3, 1e5))


def test_exp_plan():
    p = attention.exp_plan()
    assert p == attention.exp_plan.__wrapped__()
    z = np.linspace(-12, 0, 2001)
    t = z / 2.0**p.shift
    e = sum(c * t**k for k, c in enumerate(p.coeffs)) ** (2**p.shift)
    assert np.max(np.abs(e / np.exp(z) - 1) * np.minimum(1, 512 * np.exp(z))) <= p.max_error + 1e-12
    assert p.max_error < 2e-4
    assert math.exp(-attention.CLIP) < 2.0**-17  # below -CLIP e^z rounds to 0 at 16 bits


def test_exp_plan_coefficients_on_their_grids():
    """The quartic's coefficients are exactly what the protocol applies (integer multiples
    of ring words at their grids), so the plan's max_error is the protocol's fit."""
    p = attention.exp_plan()
    assert len(p.terms) == len(attention._exp_grids(16)) == 8
    for c, bits in zip(p.terms, attention._exp_grids(16)):
        assert c * 2.0**bits == round(c * 2.0**bits)
    bits = attention.W1_BITS - 16 - attention.R_SHIFT
    assert p.alpha * 2.0**bits == round(p.alpha * 2.0**bits)
    assert attention.EXP_PRODUCTS == 4 and p.shift == 1
    # the monomial form equals the evaluated form
    r = np.linspace(-1.5, 0, 101)
    mono = sum(c * (4 * r) ** k for k, c in enumerate(p.coeffs))
    assert np.abs(attention._exp_features(r, p.alpha) @ np.asarray(p.terms) - mono).max() < 1e-12
