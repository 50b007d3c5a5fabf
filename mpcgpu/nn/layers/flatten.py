"""``Flatten``: ``(C, H, W) -> (C * H * W,)`` in C order.  ONNX: ``Flatten`` (``axis=1``)
and ``Reshape`` to ``[0|-1|N, F|-1]`` (also when that shape is computed from ``Shape``:
see :mod:`mpcgpu.interop.onnx_import`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import graph as G
from . import OnnxForm, register


@dataclass(frozen=True)
class Flatten(G.Layer):
    def out_shape(self, in_shape):
        n = 1
        for d in in_shape:
            n *= int(d)
        return (n,)


def plain_forward(run, layer, path, x):
    if run.need_grad:
        run.keep(path, x.shape)
    return x.reshape(x.shape[0], -1)


def plain_backward(run, layer, path, dy):
    return dy.reshape(run.kept(path))


def flatten_forward(run, layer, path, x):
    if run.training:
        run.keep(path, x.shape)
    return x.reshape(x.shape[0], -1)


def flatten_backward(run, layer, path, dy):
    return dy.reshape(*run.kept(path))


def read_onnx(node):
    if node.op == "Flatten":
        if int(node.attrs.get("axis", 1)) != 1:
            node.fail("only Flatten with axis=1 is supported")
        return Flatten(), {}
    shape = [int(v) for v in node.const(1, "shape").reshape(-1)]
    if len(shape) != 2 or shape[0] not in (0, -1) and shape[0] < 1:
        node.fail(f"Reshape to {shape} is supported only as a flatten to (N, F)")
    return Flatten(), {"check": np.array(shape)}  # the importer checks F once shapes are known


def write_onnx(em, layer, path, x, in_shape):
    return em.node("Flatten", [x], path, axis=1)


register(
    Flatten,
    json={},
    plain=(plain_forward, plain_backward),
    private=(flatten_forward, flatten_backward),
    onnx=OnnxForm(("Flatten", "Reshape"), read_onnx, write_onnx),
    examples=[(Flatten(), (2, 3, 4))],
)
