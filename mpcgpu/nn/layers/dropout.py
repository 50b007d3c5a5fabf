"""``Dropout(p)``: inverted dropout in training, the identity at inference.  The private
mask is PUBLIC (data-independent randomness: the parties agree on
``run.dropout_rng``'s seed; with several groups, ``run.batch_part`` says which rows of the
global batch this group holds, and every group draws the global batch's mask).  ONNX:
``Dropout`` (the identity at inference; written so that a re-import keeps the layer
indices)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import graph as G
from . import OnnxForm, register


@dataclass(frozen=True)
class Dropout(G.Layer):
    p: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.p < 1.0:
            raise G.SpecError(f"Dropout p must be in [0, 1), got {self.p}")

    def out_shape(self, in_shape):
        return tuple(in_shape)


def plain_forward(run, layer, path, x):
    p = layer.p
    mask = None
    if run.training and p != 0.0:
        keep = run.rng.random(x.shape) >= p
        mask = keep.astype(x.dtype) / (1.0 - p)
    if run.need_grad:
        run.keep(path, mask)
    return x if mask is None else x * mask


def plain_backward(run, layer, path, dy):
    mask = run.kept(path)
    return dy if mask is None else dy * mask


def dropout_forward(run, layer, path, x):
    """Inverted dropout with a public mask; identity outside training."""
    if not run.training or layer.p == 0.0:
        return x
    part = getattr(run, "batch_part", None)  # (global batch, first row): one group's slice
    if part is None:
        keep = run.dropout_rng.random(x.shape) >= layer.p
    else:  # the global batch's masks, drawn alike by every group: the same as one group's
        total, lo = part
        keep = (run.dropout_rng.random((total,) + tuple(x.shape[1:])) >= layer.p)[lo : lo + x.shape[0]]
    mask = keep / (1.0 - layer.p)  # public reals (2 for p = 0.5: exact)
    run.keep(path, mask)
    return x * mask


def dropout_backward(run, layer, path, dy):
    if not run.training or layer.p == 0.0:
        return dy
    return dy * run.kept(path)


def read_onnx(node):
    p = float(node.attrs.get("ratio", 0.5))
    if len(node.inputs) > 1 and node.inputs[1]:
        p = float(node.const(1, "ratio").reshape(-1)[0])
    return Dropout(p), {}


def write_onnx(em, layer, path, x, in_shape):
    return em.node("Dropout", [x, em.init(G.join_path(path, "ratio"), np.array(layer.p))], path)


register(
    Dropout,
    json=dict(p="num"),
    plain=(plain_forward, plain_backward),
    private=(dropout_forward, dropout_backward),
    onnx=OnnxForm(("Dropout",), read_onnx, write_onnx),
    examples=[(Dropout(0.5), (2, 3, 3)), (Dropout(0.25), (8,)), (Dropout(0.0), (4,))],
)
