"""Private forward passes against the plaintext twins, on three ranks (issue 6)."""

import numpy as np
import pytest

from mpcgpu.errors import MPCError
from mpcgpu.jobs.bench import bench_params
from mpcgpu.nn import spec as S
from mpcgpu.nn.models import get_model
from mpcgpu.nn.plain import PlainModel, init_params
from mpcgpu.nn.private import PrivateModel, Profile, share_params
from mpcgpu.sharing.arithmetic import share

pytestmark = pytest.mark.mpi(min_size=3)


def private_vs_plain(rt, model, batch=2, seed=0, profile=None):
    params = bench_params(model, seed) if rt.rank == 0 else None
    x = np.random.default_rng(seed).standard_normal((batch,) + tuple(model.input_shape))
    pm = PrivateModel(model, share_params(model, params, src=0))
    out = pm.forward(share(x if rt.rank == 0 else None, src=0), profile=profile, exact=True).reveal()
    ref = None
    if rt.rank == 0:
        ref = PlainModel(model, params).forward(x, need_grad=False)
    ref = rt.comm.bcast_object(ref, root=0)
    return out, ref


def at_size(name, hw):
    """A registered model at another input size (same layers)."""
    m = get_model(name)
    return S.Model(m.name, (m.input_shape[0], hw, hw), m.num_classes, m.net)


@pytest.mark.parametrize("name", ["lenet", "alexnet_cifar10", "vgg16_cifar10", "alexnet_tinyimagenet"])
def test_models_match_plaintext(rt, name):
    model = get_model(name)
    out, ref = private_vs_plain(rt, model, batch=2)
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(out - ref).max() <= 2e-3 * scale, (np.abs(out - ref).max(), scale)
    assert (out.argmax(axis=1) == ref.argmax(axis=1)).all()


@pytest.mark.parametrize("name,hw", [("resnet50", 64), ("alexnet_imagenet", 224), ("vgg16_tinyimagenet", 64)])
def test_large_models_match_plaintext(rt, name, hw):
    model = at_size(name, hw) if hw != get_model(name).input_shape[1] else get_model(name)
    out, ref = private_vs_plain(rt, model, batch=1)
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(out - ref).max() <= 5e-3 * scale, (np.abs(out - ref).max(), scale)


def test_profile_and_prediction(rt):
    model = get_model("lenet")
    prof = Profile()
    out, ref = private_vs_plain(rt, model, batch=3, profile=prof)
    kinds = [r.kind for r in prof.rows()]
    # a ReLU followed by a max-pool runs after it (exactly equal, 4x fewer ReLUs here)
    assert kinds == [
        "Conv2d",
        "MaxPool2d",
        "ReLU",
        "Conv2d",
        "MaxPool2d",
        "ReLU",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    relu1 = prof.layers["features.1"]
    relu_bytes = sum(rt.comm.allgather_object(relu1.bytes_sent))
    assert relu_bytes == pytest.approx(119.25 * 3 * 20 * 12 * 12, rel=0.02)  # on the pooled 20x12x12
    assert all(r.rounds > 0 for r in prof.rows() if r.kind not in ("Flatten",))
    assert [r.rounds for r in prof.rows() if r.kind == "Flatten"] == [0]


def test_predict_reveals_only_labels_to_owner(rt):
    model = get_model("lenet")
    params = bench_params(model, 1) if rt.rank == 0 else None
    x = np.random.default_rng(3).standard_normal((5, 1, 28, 28))
    pm = PrivateModel(model, share_params(model, params, src=0))
    labels = pm.predict_shared(share(x if rt.rank == 0 else None, src=0)).reveal(to=2)
    if rt.rank == 2:
        assert labels.dtype == np.int64 and labels.shape == (5,)
    else:
        assert labels is None
    ref = PlainModel(model, bench_params(model, 1)).forward(x, need_grad=False).argmax(axis=1)
    got = rt.comm.bcast_object(labels, root=2)
    assert np.array_equal(got, ref)


def _random_bn_stats(model, params, rng):
    for p in S.param_specs(model):
        if p.kind == "running_var":
            params[p.name] = rng.uniform(0.05, 4.0, p.shape)
        elif p.kind == "running_mean":
            params[p.name] = rng.uniform(-1, 1, p.shape)
        elif p.name.endswith(".weight") and len(p.shape) == 1:
            params[p.name] = rng.uniform(0.5, 1.5, p.shape)
        elif p.name.endswith(".bias") and len(p.shape) == 1:
            params[p.name] = rng.uniform(-0.5, 0.5, p.shape)
    return params


def test_batchnorm_folded_and_standalone(rt, monkeypatch):
    """BN after a conv is folded into it privately; a BN elsewhere is an affine map.  The
    folding products are batched (up to FOLD_CHUNK weights, 2 rounds each)."""
    from mpcgpu.nn import private

    net = S.Sequential(
        (
            S.BatchNorm2d(3),
            S.Conv2d(3, 8, 3, padding=1, bias=True),
            S.BatchNorm2d(8),
            S.ReLU(),
            S.Conv2d(8, 8, 3, stride=2, bias=False),
            S.BatchNorm2d(8),
            S.ReLU(),
            S.AdaptiveAvgPool2d(1),
            S.Flatten(),
            S.Linear(8, 4),
        )
    )
    model = S.Model("bn-test", (3, 12, 12), 4, net)
    rng = np.random.default_rng(7)
    params = _random_bn_stats(model, init_params(model, rng=1), rng)
    x = rng.standard_normal((2, 3, 12, 12))
    ref = PlainModel(model, params).forward(x, need_grad=False)
    sx = share(x if rt.rank == 0 else None, src=0)
    prep_rounds = []
    folded = 8 * 3 * 9 + 8 + 8 * 8 * 9  # conv weights and bias: 800 elements in one stream
    for chunk, inference_only in ((private.FOLD_CHUNK, False), (300, True), (97, False), (800, True)):
        monkeypatch.setattr(private, "FOLD_CHUNK", chunk)  # one product, or weights cut across
        pm = PrivateModel(
            model, share_params(model, params if rt.rank == 0 else None, src=0), inference_only=inference_only
        )
        with rt.comm.measure() as prep:
            pm.prepare()
        prep_rounds.append(prep.rounds - 2 * -(-folded // min(chunk, folded)))
        assert sorted(pm._skip) == ["2", "5"] and sorted(pm._affine) == ["0"]
        # inference_only: the folded convolutions' weights and their batch norms leave params
        gone = {"1.weight", "1.bias", "4.weight", "2.weight", "2.bias", "2.running_mean", "2.running_var"}
        assert gone.isdisjoint(pm.params) == inference_only and ("0.weight" in pm.params)
        with rt.comm.measure() as fwd:
            y = pm.forward(sx)
        out = y.reveal()
        assert np.abs(out - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())
        # one forward after preparation: bn0 (2) + conv+bn (2) + relu (10) + conv+bn (2) + relu (10)
        # + avgpool (2) + linear (2) rounds: the folded batch norms cost nothing
        assert fwd.rounds == 2 + 2 + 10 + 2 + 10 + 2 + 2
    assert len(set(prep_rounds)) == 1  # the rest of the preparation does not depend on the pieces
    with pytest.raises(MPCError, match="inference_only"):
        pm.forward(sx, train=True)


def test_vgg16_bn_matches_plaintext(rt):
    model = get_model("vgg16_bn_cifar10")
    rng = np.random.default_rng(5)
    params = _random_bn_stats(model, init_params(model, rng=2), rng)
    x = rng.standard_normal((1, 3, 32, 32))
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None, src=0))
    out = pm.forward(share(x if rt.rank == 0 else None, src=0)).reveal()
    ref = PlainModel(model, params).forward(x, need_grad=False)
    assert np.abs(out - ref).max() <= 5e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("piece", [1 << 20, 700, 64])
def test_relu_and_maxpool_in_pieces_are_exact(rt, monkeypatch, piece):
    """At inference ReLU and max-pool take inputs of more than PIECE elements in pieces
    (the same rounds per piece): the results are the exact ReLU / max of the inputs'
    ring values, whatever the piece size, and own their memory."""
    from mpcgpu.nn import layers

    monkeypatch.setattr(layers, "PIECE", piece)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((2, 5, 12, 10)) * 8
    x[0, 0, 0, :4] = [0.0, 2.0**-16, -(2.0**-16), 0.0]
    pm = PrivateModel(S.Model("pieces", (5, 12, 10), 5 * 12 * 10, S.Sequential((S.Flatten(),))), {})
    sx = share(x if rt.rank == 0 else None, src=0)
    raw = sx.reveal_raw().view(np.int64)
    calls = -(-x.size // piece) if x.size > piece else 1
    with rt.comm.measure() as m:
        y = layers.relu_forward(pm, S.ReLU(), "r", sx)
    assert y.shape == x.shape and y.scale == sx.scale
    assert np.array_equal(y.reveal_raw().view(np.int64), np.maximum(raw, 0))
    relu_rounds = m.rounds
    for pool in (S.MaxPool2d(2), S.MaxPool2d(3, 2, 1)):
        with rt.comm.measure() as m:
            z = layers.maxpool_forward(pm, pool, "p", sx)
        k, s, p = pool.kernel, pool.stride, pool.padding
        padded = np.pad(raw, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=-(2**62))
        ho, wo = z.shape[2], z.shape[3]
        ref = np.full(z.shape, -(2**63), dtype=np.int64)
        for i in range(k[0]):
            for j in range(k[1]):
                ref = np.maximum(ref, padded[:, :, i : i + s[0] * ho : s[0], j : j + s[1] * wo : s[1]])
        assert np.array_equal(z.reveal_raw().view(np.int64), ref)
        per_channel = 2 * 12 * 10
        pieces = 1 if x.size <= piece else -(-5 // max(1, piece // per_channel))
        assert m.rounds % pieces == 0 and m.rounds // pieces >= 10
    if piece < x.size:
        assert relu_rounds == calls * 10
