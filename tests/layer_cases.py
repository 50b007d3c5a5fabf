"""The examples of every registered layer type (``mpcgpu.nn.layers.registered()``) as
one-layer models, for the registry-wide tests (tests/test_layer_registry.py and
tests/test_layer_registry_mpi.py): a layer added to the registry is covered by them
without a change here."""

import numpy as np

from mpcgpu.nn import layers as L
from mpcgpu.nn import spec as S


def cases():
    """``(id, LayerType, layer, per-sample input shape)`` of every registered example."""
    out = []
    for t in L.registered():
        for i, (layer, shape) in enumerate(t.examples):
            out.append((f"{t.name}-{i}", t, layer, shape))
    return out


CASES = cases()
IDS = [c[0] for c in CASES]


def one_layer_model(layer, in_shape) -> S.Model:
    """``layer`` alone (then a Flatten if its output is an image): a classifier whose
    logits are the layer's outputs."""
    out = layer.out_shape(in_shape)
    net = (layer,) if len(out) == 1 else (layer, S.Flatten())
    k = int(np.prod(out))
    return S.Model(f"one_{type(layer).__name__}", tuple(in_shape), k, S.Sequential(net))


def random_params(model, rng, grid_bits=None) -> dict:
    """Parameters of every kind drawn at random (running variances in [0.5, 2]); on the
    fixed-point grid of ``grid_bits`` fractional bits when given."""
    params = {}
    for p in S.param_specs(model):
        if p.kind == "running_var":
            v = rng.uniform(0.5, 2.0, p.shape)
        elif p.kind == "weight" and len(p.shape) == 1:  # batch-norm gamma
            v = rng.uniform(0.5, 1.5, p.shape)
        else:
            v = rng.standard_normal(p.shape) * 0.5
        if grid_bits is not None:
            v = np.rint(v * 2.0**grid_bits) / 2.0**grid_bits
        params[p.name] = v
    return params
