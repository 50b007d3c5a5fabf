"""The shipped MNIST ViT asset (datasets/train_vit_mnist.py): its record, its file, and its
plaintext accuracy when imported as a graph model (one process)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpcgpu.assets import vit_mnist_paths
from vit_mnist_case import import_pieces, plain_logits, record, mnist_test_set, vit_graph


def test_record_and_file():
    path, _ = vit_mnist_paths()
    r = record()
    assert os.path.getsize(path) == r["onnx_bytes"] < 1 << 20
    assert r["test_images"] == 10_000
    assert r["test_accuracy"] == r["test_correct"] / 10_000 >= 0.97
    assert abs(r["test_accuracy_float64"] - r["test_accuracy"]) <= 0.001
    a = r["architecture"]
    assert (a["patch"], a["tokens"], a["layers"]) == (7, 16, 2)
    assert r["max_abs_weight"] < 1e3  # well inside fixed point


def test_onnx_operators():
    """The file holds the operators of issue 21's list and a symbolic batch only."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(vit_mnist_paths()[0])
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= {
        "Reshape",
        "Transpose",
        "MatMul",
        "Add",
        "LayerNormalization",
        "Split",
        "Mul",
        "Softmax",
        "Div",
        "Erf",
        "ReduceMean",
        "Gemm",
    }, ops
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and dims == ["batch", 1, 28, 28]


def test_imported_graph_plain_accuracy():
    """The imported graph, evaluated by run_plain in float64 on all 10,000 test images, has
    the accuracy the record states (float64 torch), within 2 images."""
    import_pieces()
    x, y = mnist_test_set()
    logits = plain_logits(x)
    correct = int((logits.argmax(-1) == y).sum())
    assert abs(correct - round(record()["test_accuracy_float64"] * 10_000)) <= 2


def test_imported_graph_shapes():
    import_pieces()
    g, params, _ = vit_graph(3)
    assert [t.shape for t in g.inputs] == [(3, 1, 28, 28)]
    assert sum(int(np.prod(v.shape)) for v in params.values()) == record()["parameters"]
