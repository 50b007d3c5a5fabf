"""``ReLU``: ``max(x, 0)``, gradient 0 at exactly 0.  ONNX: ``Relu``.

The private ReLU at inference takes inputs of more than :data:`~mpcgpu.nn.layers.PIECE`
elements in pieces (the same rounds per piece); in training it also makes the derivative
(in the same rounds) for the backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import graph as G
from . import OnnxForm, pieces, register


@dataclass(frozen=True)
class ReLU(G.Layer):
    def out_shape(self, in_shape):
        return tuple(in_shape)


def relu(x):
    return np.maximum(x, 0)


def relu_grad(x, dy):
    """ReLU'(x) = [x > 0] (0 at exactly 0)."""
    return dy * (x > 0)


def plain_forward(run, layer, path, x):
    if run.need_grad:
        run.keep(path, x)
    return relu(x)


def plain_backward(run, layer, path, dy):
    return relu_grad(run.kept(path), dy)


def relu_forward(run, layer, path, x):
    if not run.training:
        if x.size <= _piece():
            return x.relu()
        flat = x.reshape(x.shape[0], -1)
        n = flat.shape[1]
        return pieces(flat, lambda piece: piece.relu(), n, flat.shape[0], flat.shape).reshape(*x.shape)
    y, d = x.relu(grad=True)
    run.keep(path, d)
    return y


def _piece():
    from . import PIECE  # read when called: tests and benchmarks change it

    return PIECE


def relu_backward(run, layer, path, dy):
    return dy * run.kept(path)  # d has scale 0: no truncation, 1 round


def read_onnx(node):
    return ReLU(), {}


def write_onnx(em, layer, path, x, in_shape):
    return em.node("Relu", [x], path)


register(
    ReLU,
    json={},
    plain=(plain_forward, plain_backward),
    private=(relu_forward, relu_backward),
    onnx=OnnxForm(("Relu",), read_onnx, write_onnx),
    examples=[(ReLU(), (2, 3, 4)), (ReLU(), (7,))],
)
