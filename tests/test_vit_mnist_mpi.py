"""Private inference of the shipped MNIST ViT (issue 21's accuracy figure), three ranks.

The asset (mpcgpu/assets/vit_mnist.onnx, trained by datasets/train_vit_mnist.py) is imported
as a graph model (mpcgpu.interop.onnx_graph.import_graph, batch bound at import), its
weights shared by party 0 (the model owner), the test images by party 1 (the data owner),
and run by mpcgpu.nn.dag_run.PrivateGraph.  The private predictions (argmax of the revealed
logits) must equal the plaintext ones (run_plain, float64, same graph) on at least 99.5 % of
the images, and the private accuracy must be within 0.3 points of the plaintext accuracy:
on the first 200 test images in CI, on all 10,000 under the ``slow`` marker.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpcgpu.sharing.arithmetic import share
from vit_mnist_case import import_pieces, mnist_test_set, plain_logits, vit_graph

pytestmark = pytest.mark.mpi(min_size=3)

MODEL_OWNER, DATA_OWNER = 0, 1
AGREEMENT = 0.995
ACCURACY_POINTS = 0.3


def private_logits(rt, images: np.ndarray, batch: int, plain=None) -> np.ndarray:
    """Logits of the private run, revealed to every party, ``batch`` images per run (with
    ``plain``, rank 0 prints the running agreement after each batch)."""
    _, dag_run = import_pieces()
    g, params, consts = vit_graph(batch)
    (inp,) = g.inputs
    shares = {k: share(v if rt.rank == MODEL_OWNER else None, src=MODEL_OWNER, rt=rt) for k, v in params.items()}
    model = dag_run.PrivateGraph(g, shares, consts, rt)
    out = []
    for i in range(0, len(images), batch):
        xb = images[i : i + batch]
        pad = batch - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:])])
        x = share(xb if rt.rank == DATA_OWNER else None, src=DATA_OWNER, rt=rt)
        logits = model.run({inp.name: x})[g.outputs[0]]
        out.append(logits.reveal()[: batch - pad])
        if plain is not None and rt.rank == 0 and len(images) > batch:
            done = np.concatenate(out)
            agree = (done.argmax(-1) == plain[: len(done)].argmax(-1)).mean()
            print(f"  {len(done)} images: agreement {agree:.4f}", flush=True)
    return np.concatenate(out)


def check(rt, n: int, batch: int):
    x, y = mnist_test_set()
    x, y = x[:n], y[:n]
    plain = plain_logits(x, batch)
    private = private_logits(rt, x, batch, plain)
    p_plain, p_private = plain.argmax(-1), private.argmax(-1)
    agree = float((p_plain == p_private).mean())
    acc_plain, acc_private = float((p_plain == y).mean()), float((p_private == y).mean())
    err = np.abs(private - plain)
    if rt.rank == 0:
        print(
            f"\nViT MNIST, {n} images: agreement {agree:.4f}, plaintext accuracy {acc_plain:.4f}, "
            f"private {acc_private:.4f}; logit error max {err.max():.4g}, mean {err.mean():.4g}"
        )
    assert agree >= AGREEMENT, (agree, np.flatnonzero(p_plain != p_private)[:20])
    assert abs(acc_private - acc_plain) * 100 <= ACCURACY_POINTS
    return agree, acc_plain, acc_private


def test_vit_mnist_private_200(rt):
    agree, acc_plain, _ = check(rt, 200, 200)
    assert acc_plain >= 0.95  # the asset is the trained one, not noise


@pytest.mark.slow
def test_vit_mnist_private_10000(rt):
    _, acc_plain, _ = check(rt, 10_000, 500)
    assert acc_plain >= 0.97
