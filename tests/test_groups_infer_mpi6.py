"""`mpcgpu infer` on two groups of three, in process (six ranks; tests/run.sh runs the
``*_mpi6.py`` files under ``mpiexec -n 6``): each group classifies its slice of the samples
and group 0's result owner alone writes them, in dataset order, with the groups' counts
summed.  A graph model (a ViT whose batch of 2 pads a group's short last batch with its own
rows) and a layer model (LeNet, probabilities to party 1).  The same predictions file as
three ranks: tests/test_groups_cli.py."""

import json
import os

import numpy as np
import pytest

from reference import infer_args

pytestmark = pytest.mark.mpi(min_size=6)


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture(scope="module")
def folder(rt6):
    import shutil
    import tempfile

    w = _world()
    d = w.bcast(tempfile.mkdtemp(prefix="mpcgpu-groups-infer-") if w.Get_rank() == 0 else None)
    yield d
    w.Barrier()
    if w.Get_rank() == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def writers(monkeypatch):
    """The world ranks that wrote output files (``check()`` after the job: on every rank)."""
    from mpcgpu.jobs import infer

    calls = []
    original = infer.write_outputs
    monkeypatch.setattr(infer, "write_outputs", lambda *a, **k: calls.append(1) or original(*a, **k))
    return lambda: [r for r, n in enumerate(_world().allgather(len(calls))) if n]


def test_a_graph_model_on_two_groups_in_dataset_order(rt6, folder, writers):
    from mpcgpu.data import split
    from mpcgpu.jobs import infer
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.dag_run import run_plain
    from mpcgpu.nn.weights import save_weights

    rt, w = rt6, _world()
    g = TF.get_transformer("vit-tiny", batch=2)
    params, consts = TF.random_weights(g, 3, ln_noise=0.1)
    x_in = g.inputs[0]
    n = 3  # group 0: samples 0, 1 (one batch); group 1: sample 2, padded to a batch of 2
    images = np.random.default_rng(7).standard_normal((n,) + x_in.shape[1:])
    if w.Get_rank() == 0:
        save_weights(os.path.join(folder, "vit.h5"), g.name, params, spec=g, consts=consts, dtype=np.float64)
        split.split_file(os.path.join(folder, "vit.h5"), os.path.join(folder, "models"))
        split.split_arrays(folder, "imgs", {"images": images}, kind="dataset", name="imgs")
    w.Barrier()
    out = os.path.join(folder, "vit.npy")
    summary = os.path.join(folder, "vit.summary.json")
    args = infer_args(os.path.join(folder, "models", "vit"), os.path.join(folder, "imgs"), out=out, json=summary)
    args.output = infer.Output("logits")
    assert infer.run(args) == 0
    assert writers() == [0]  # party 0 of group 0 alone
    if w.Get_rank() == 0:
        got = np.load(out)
        want = np.concatenate([run_plain(g, params, consts, {x_in.name: images[i : i + 2]})["logits"] for i in (0, 1)])
        want = want[[0, 1, 3]]  # samples 0, 1 and 2 (the second run: samples 1, 2)
        assert got.shape == (n, want.shape[1])
        err = np.abs(got - want)
        assert err.max() < 1e-2, err
        # each row is its own sample's (the rows differ by far more than the error)
        assert [int(np.abs(want - row).sum(axis=1).argmin()) for row in got] == [0, 1, 2]
        s = json.load(open(summary))
        assert s["samples"] == n and s["groups"] == 2
        assert [p["images"] for p in s["per_group"]] == [2, 1]
        assert json.load(open(os.path.join(folder, "vit.json")))["count"] == n
    assert rt.groups == 2


def test_a_layer_model_to_party_1_with_the_counts_summed(rt6, folder, writers, monkeypatch):
    from mpcgpu.jobs import infer
    from mpcgpu.sharing.arithmetic import ArithmeticShare
    from reference import mnist_shards

    rt, w = rt6, _world()
    counts = []  # the scalar reveals (the count) this rank takes part in
    original = ArithmeticShare.reveal_raw

    def logged(self, to=None):
        if self.shape == ():
            counts.append(to)
        return original(self, to)

    monkeypatch.setattr(ArithmeticShare, "reveal_raw", logged)
    n = 5  # group 0: images 0-2, group 1: images 3-4
    if w.Get_rank() == 0:
        mnist_shards(folder, {"test": slice(0, n)}, out="mnist")
    w.Barrier()
    out = os.path.join(folder, "probs.npy")
    summary = os.path.join(folder, "probs.summary.json")
    stem = os.path.join(folder, "mnist")
    args = infer_args(os.path.join(stem, "lenet_mnist"), os.path.join(stem, "test"), out=out, json=summary)
    args.output, args.reveal_to, args.batch_size = infer.Output("probs"), 1, 2
    assert infer.run(args) == 0
    owner = rt.place.layout.rank(0, 1)
    assert writers() == [owner]  # party 1 of group 0 alone
    # the groups' count shares are summed over each party's role and revealed once, in group 0:
    # the owner learns the total, never a group's count
    assert counts == ([1] if rt.group == 0 else [])
    if w.Get_rank() == owner:
        from mpcgpu.assets import mnist_test_idx_paths
        from mpcgpu.assets.mnist_idx import load_mnist

        labels = load_mnist(*mnist_test_idx_paths(), verify=False)[1][:n]
        probs = np.load(out)
        assert probs.shape == (n, 10) and np.allclose(probs.sum(axis=1), 1.0)
        assert list(probs.argmax(axis=1)) == list(labels)  # 7 2 1 0 4: in dataset order
        s = json.load(open(summary))
        assert s["correct"] == n and s["images"] == n  # 3 + 2, counted in each group
        assert [p["images"] for p in s["per_group"]] == [3, 2]
