"""The shipped MNIST ViT (mpcgpu/assets/vit_mnist.onnx) as a graph model, and the MNIST test
images in its input convention: shared by tests/test_vit_mnist.py and test_vit_mnist_mpi.py."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from mpcgpu.assets import mnist_test_idx_paths, vit_mnist_paths
from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist


def record() -> dict:
    with open(vit_mnist_paths()[1]) as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def mnist_test_set():
    """The 10,000 MNIST test images, normalised like the training ones (float64), and labels."""
    images, labels = load_mnist(*mnist_test_idx_paths())
    x = (images.astype(np.float64) / 255.0 - MNIST_MEAN[0]) / MNIST_STD[0]
    return x, labels.astype(np.int64)


def import_pieces():
    """Skip until the ONNX graph import and the graph executors are there (issue 21 branches
    onnx-graph and graph-core)."""
    onnx_graph = pytest.importorskip("mpcgpu.interop.onnx_graph")
    dag_run = pytest.importorskip("mpcgpu.nn.dag_run")
    if not hasattr(onnx_graph, "import_graph"):
        pytest.skip("mpcgpu.interop.onnx_graph has no import_graph yet")
    return onnx_graph, dag_run


@functools.lru_cache(maxsize=4)
def vit_graph(batch: int):
    """``(GraphModel, params, consts)`` of the asset with its symbolic batch bound to ``batch``."""
    onnx_graph, _ = import_pieces()
    from mpcgpu.interop.onnx_import import load_onnx

    proto = load_onnx(vit_mnist_paths()[0])
    g, params, consts, _notes = onnx_graph.import_graph(proto, input_shapes={"image": (batch, 1, 28, 28)})
    return g, params, consts


def plain_logits(images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Float64 logits of the imported graph (``run_plain``), ``batch`` images per run."""
    _, dag_run = import_pieces()
    g, params, consts = vit_graph(batch)
    (inp,) = g.inputs
    out = []
    for i in range(0, len(images), batch):
        xb = images[i : i + batch]
        pad = batch - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:])])
        out.append(dag_run.run_plain(g, params, consts, {inp.name: xb})[g.outputs[0]][: batch - pad])
    return np.concatenate(out)
