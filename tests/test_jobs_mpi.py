"""What the jobs reveal, on three ranks (issue 10): `infer` reveals the predicted labels and
the number of correct predictions to the result owner and nothing else (the true labels
used to stay in clear); a batch-norm model gets its inverse-square-root domain from its
shards, so small running variances stay accurate.
"""

import os
import shutil
import tempfile

import h5py
import numpy as np
import reference
import pytest

from mpcgpu.jobs import infer
from mpcgpu.nn import spec as S
from mpcgpu.nn.plain import PlainModel, init_params
from mpcgpu.nn.weights import save_weights
from mpcgpu.sharing.arithmetic import ArithmeticShare

pytestmark = pytest.mark.mpi(min_size=3)
N, OWNER = 40, 2


@pytest.fixture(scope="module")
def work(rt):
    d = tempfile.mkdtemp(prefix="mpcgpu-jobs-") if rt.rank == 0 else None
    d = rt.comm.bcast_object(d)
    if rt.rank == 0:
        reference.mnist_shards(d, {"test": slice(0, N)}, name=lambda part: "t")
    rt.comm.barrier()
    yield d
    rt.comm.barrier()
    if rt.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def infer_args(d, **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("reveal_to", OWNER)
    return reference.infer_args(os.path.join(d, "shards", "lenet_mnist"), os.path.join(d, "shards", "test"), **kw)


@pytest.mark.parametrize("warm_up", [False, True])
def test_infer_reveals_only_predictions_and_the_count_to_the_owner(rt, work, monkeypatch, warm_up):
    """Also with --warm-up: its untimed pass reveals nothing.  The summary carries every
    party's peak memory."""
    reveals = []
    original = ArithmeticShare.reveal_raw

    def logged(self, to=None):
        reveals.append((tuple(self.shape), to))
        return original(self, to)

    monkeypatch.setattr(ArithmeticShare, "reveal_raw", logged)
    out = os.path.join(work, f"pred{rt.rank}.npy")
    assert infer.run(infer_args(work, out=out, json=os.path.join(work, "summary.json"), warm_up=warm_up)) == 0
    # one reveal of predicted labels per batch (16, 16, 8) and one of the count, all to the owner
    assert reveals == [((16,), OWNER), ((16,), OWNER), ((8,), OWNER), ((), OWNER)]
    if rt.rank == OWNER:
        import json

        summary = json.load(open(os.path.join(work, "summary.json")))
        with h5py.File(os.path.join(work, "test.h5")) as f:
            labels = np.asarray(f["labels"])
        pred = np.load(out)
        assert summary["correct"] == int((pred == labels).sum()) and summary["accuracy"] == summary["correct"] / N
        peaks = summary["peak_bytes_per_party"]
        assert len(peaks) == 3 and all(50e6 < p < 4e9 for p in peaks)
    else:
        assert not os.path.exists(out)


def _bn_model():
    net = S.Sequential(
        (S.Conv2d(1, 4, 3, bias=False), S.BatchNorm2d(4), S.ReLU(), S.AdaptiveAvgPool2d(1), S.Flatten(), S.Linear(4, 3))
    )
    return S.Model("bn-small", (1, 6, 6), 3, net)


def test_batch_norm_domain_comes_from_the_shards(rt, work, monkeypatch):
    """Running variances near 2e-3 (outside the default domain [1e-2, 1e3]): the share step
    records a domain that covers them, and inference is accurate with it."""
    from mpcgpu.data.split import split_file
    from mpcgpu.nn import models

    model = _bn_model()
    monkeypatch.setitem(models._REGISTRY, "bn_small", lambda: model)
    params = init_params(model, rng=3)
    params["1.running_var"] = np.array([2e-3, 3e-3, 5e-3, 8e-3])
    params["1.running_mean"] = np.array([0.01, -0.02, 0.0, 0.03])
    path = os.path.join(work, "bn.h5")
    if rt.rank == 0:
        save_weights(path, "bn-small", params, dtype=np.float64)
        result = split_file(path, os.path.join(work, "bnshards"), progress=False)
        assert result.public["bn_var_domain"] == [2.0**-9, 2.0**-6]
    rt.comm.barrier()
    pm = infer.load_model(rt, os.path.join(work, "bnshards", "bn"))
    assert pm.bn_domain == (2.0**-9, 2.0**-6)
    x = np.random.default_rng(4).standard_normal((5, 1, 6, 6)) * 0.05
    from mpcgpu.sharing.arithmetic import share

    got = pm.forward(share(x if rt.rank == 0 else None, src=0), exact=True).reveal()
    ref = PlainModel(model, params).forward(x, need_grad=False)
    assert np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())
    # a variance the precision cannot represent is refused before anything is shared
    if rt.rank == 0:
        from mpcgpu.errors import ShardError

        params["1.running_var"][0] = 1e-6
        save_weights(path, "bn-small", params, dtype=np.float64)
        with pytest.raises(ShardError, match="--precision"):
            split_file(path, os.path.join(work, "bnshards2"), progress=False)


def test_large_model_keeps_one_component_in_the_shard_file(rt, work, monkeypatch):
    """A model over COMPACT_MODEL_MIN parameters (here: LeNet, the thresholds lowered)
    holds one component of each large weight and reads the other from its shard where it
    is used: the same logits bit for bit as with both held, from the same randomness."""
    from mpcgpu.data.shards import StoredComponent
    from mpcgpu.nn import private
    from mpcgpu.sharing.arithmetic import share
    from mpcgpu.sharing.compact import CompactShare

    stem = os.path.join(work, "shards", "lenet_mnist")
    x = np.random.default_rng(6).standard_normal((3, 1, 28, 28))
    state = rt.state()
    plain = infer.load_model(rt, stem)
    want = plain.forward(share(x if rt.rank == 0 else None, src=0), exact=True).reveal_raw()
    monkeypatch.setattr(private, "COMPACT_MODEL_MIN", 0)
    monkeypatch.setattr(private, "COMPACT_MIN", 100)
    rt.restore(state)
    pm = infer.load_model(rt, stem)
    big = [v for v in pm.params.values() if isinstance(v, CompactShare)]
    assert big and all(isinstance(v.second, StoredComponent) for v in big)
    assert all(v.held_bytes == 8 * v.size for v in big)
    got = pm.forward(share(x if rt.rank == 0 else None, src=0), exact=True).reveal_raw()
    assert np.array_equal(got, want)
