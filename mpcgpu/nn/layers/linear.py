"""``Linear``: ``y = x W^T + b``, weight ``(out_f, in_f)``, bias ``(out_f,)``.

ONNX: ``Gemm`` (``alpha * A B' + beta * C``, ``transA`` 0) and ``MatMul`` (an Add of a
constant vector after it becomes the bias: see :mod:`mpcgpu.interop.onnx_import`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...sharing.compact import CompactShare, matmul_transposed
from .. import graph as G
from . import OnnxForm, param, register
from .conv2d import finish, untruncated


@dataclass(frozen=True)
class Linear(G.Layer):
    in_f: int
    out_f: int
    bias: bool = True

    def local_params(self):
        p = [("weight", (self.out_f, self.in_f), "weight", True)]
        if self.bias:
            p.append(("bias", (self.out_f,), "bias", True))
        return p

    def out_shape(self, in_shape):
        if tuple(in_shape) != (self.in_f,):
            raise G.SpecError(
                f"Linear expects input ({self.in_f},), got {tuple(in_shape)}"
                + (" (missing Flatten?)" if len(in_shape) > 1 else "")
            )
        return (self.out_f,)


# -- plaintext ----------------------------------------------------------------------------------


def linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def linear_grads(x, w, dy):
    """(dx, dw, db) of ``linear`` for the output gradient ``dy``."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def plain_forward(run, layer, path, x):
    if run.need_grad:
        run.keep(path, x)
    b = run.params[G.join_path(path, "bias")] if layer.bias else None
    return linear(x, run.params[G.join_path(path, "weight")], b)


def plain_backward(run, layer, path, dy):
    dx, dw, db = linear_grads(run.kept(path), run.params[G.join_path(path, "weight")], dy)
    run.grads[G.join_path(path, "weight")] = dw
    if layer.bias:
        run.grads[G.join_path(path, "bias")] = db
    return dx


# -- private ------------------------------------------------------------------------------------


def linear_forward(run, layer, path, x):
    w = run.params[G.join_path(path, "weight")]
    trunc = False if untruncated(run, path) else None
    if isinstance(w, CompactShare):  # drawn in blocks of rows: never whole
        y = matmul_transposed(x, w, trunc=trunc)
    else:
        y = x.matmul(w.transpose(), trunc=trunc)
    if run.training:
        run.keep(path, x)
    return finish(run, path, y, param(run, path, "bias") if layer.bias else None, (1, -1))


def linear_backward(run, layer, path, dy):
    x = run.kept(path)
    w = param(run, path, "weight")
    run.grads[G.join_path(path, "weight")] = dy.transpose() @ x
    if layer.bias:
        run.grads[G.join_path(path, "bias")] = dy.sum(axis=0)
    if not run.needs_input_grad(path):
        return None
    return dy @ w


# -- ONNX ---------------------------------------------------------------------------------------


def read_onnx(node):
    a = node.attrs
    if node.op == "Gemm" and int(a.get("transA", 0)):
        node.fail("transA=1 is not supported")
    b = node.finite("B", node.const(1, "weight"))
    if b.ndim != 2:
        node.fail(f"the weight must be a matrix, got shape {b.shape}")
    w = b.T if (node.op == "MatMul" or not int(a.get("transB", 0))) else b
    w = w * float(a.get("alpha", 1.0))
    params = {"weight": np.ascontiguousarray(w)}
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2]:
        c = node.finite("C", node.const(2, "bias")) * float(a.get("beta", 1.0))
        if c.size not in (1, w.shape[0]):
            node.fail(f"bias C of shape {c.shape} for {w.shape[0]} outputs")
        params["bias"] = np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
    return Linear(int(w.shape[1]), int(w.shape[0]), "bias" in params), params


def write_onnx(em, layer, path, x, in_shape):
    ins = [x, em.param(path, "weight")] + ([em.param(path, "bias")] if layer.bias else [])
    return em.node("Gemm", ins, path, transB=1)


register(
    Linear,
    json=dict(in_f="pos", out_f="pos", bias="bool"),
    plain=(plain_forward, plain_backward),
    private=(linear_forward, linear_backward),
    onnx=OnnxForm(("Gemm", "MatMul"), read_onnx, write_onnx),
    examples=[(Linear(6, 4), (6,)), (Linear(5, 3, bias=False), (5,))],
)
