"""Every registered layer type (issue 19), three ranks: the private forward and backward
against the plaintext ones, within fixed-point tolerance, on inputs and weights of the
fixed-point grid with edge values (zeros, +-one unit, ties).  The layers come from the
registry: a new one is tested here as soon as it registers (its ``examples``)."""

import numpy as np
import pytest

from layer_cases import CASES, IDS, one_layer_model, random_params
from mpcgpu.nn import spec as S
from mpcgpu.nn.plain import PlainModel
from mpcgpu.nn.private import PrivateModel, share_params
from mpcgpu.sharing.arithmetic import share

pytestmark = pytest.mark.mpi(min_size=3)


def _grid(v, f):
    return np.rint(v * 2.0**f) / 2.0**f


def _input(rng, shape, f, n=2):
    """Grid values with edges: exact zeros, +-2^-f, and a tie of maxima in every image."""
    x = _grid(rng.standard_normal((n,) + tuple(shape)) * 2, f)
    flat = x.reshape(n, -1)
    flat[:, :4] = [0.0, 2.0**-f, -(2.0**-f), 0.0]
    if len(shape) == 3 and shape[1] >= 2 and shape[2] >= 2:
        x[:, :, 0, 0] = x[:, :, 0, 1] = 3.0  # two equal maxima of one window
    return x


def _close(got, want, what, tol):
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= tol * max(1.0, np.abs(want).max()), f"{what}: error {err}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_private_layer_matches_plaintext_forward_and_backward(rt, case):
    _, t, layer, shape = case
    f = rt.frac_bits
    model = one_layer_model(layer, shape)
    rng = np.random.default_rng(5)  # the same on every rank
    params = random_params(model, rng, grid_bits=f)
    x = _input(rng, shape, f)
    dy = _grid(rng.standard_normal((x.shape[0], model.num_classes)), f)
    # batch statistics go through an approximate inverse square root
    tol = 1e-2 if isinstance(layer, S.BatchNorm2d) else 2e-3

    def private(params_=params):
        return PrivateModel(model, share_params(model, params_ if rt.rank == 0 else None, src=0), dropout_seed=9)

    sx = share(x if rt.rank == 0 else None, src=0)
    # inference
    want = PlainModel(model, params).forward(x, need_grad=False)
    _close(private().forward(sx).reveal(), want, "inference", tol)
    _close(private().forward(sx, exact=True).reveal(), want, "inference (exact output)", tol)
    # training: forward with batch statistics (and the same dropout mask), backward
    plain = PlainModel(model, params, seed=9)
    want = plain.forward(x, train=True)
    want_dx = plain.backward(dy)
    pm = private()
    _close(pm.forward(sx, train=True).reveal(), want, "training forward", tol)
    dx = pm.backward(share(dy if rt.rank == 0 else None, src=0), input_grad=True)
    _close(dx.reveal(), want_dx, "input gradient", tol)
    assert sorted(pm.grads) == sorted(plain.grads)
    for name in plain.grads:
        _close(pm.grads[name].reveal(), plain.grads[name], name, tol)
    for p in S.param_specs(model):  # running statistics move alike
        if not p.trainable:
            _close(pm.params[p.name].reveal(), plain.params[p.name], p.name, tol)
