"""Plaintext reference: layer kernels against direct loops, gradients by finite
differences (float64), model shapes and parameter counts, weight files, trainer."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpcgpu.nn import plain as P
from mpcgpu.nn import spec as S
from mpcgpu.nn.models import get_model, list_models, resnet_bottleneck
from mpcgpu.nn.weights import FORMAT, WeightsError, load_weights, read_meta, save_weights

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------ direct references


def conv_loops(x, w, b, s, p, g):
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    oh, ow = (h + 2 * p[0] - kh) // s[0] + 1, (wd + 2 * p[1] - kw) // s[1] + 1
    y = np.zeros((n, oc, oh, ow))
    ocg = oc // g
    for o in range(oc):
        gi = o // ocg
        for i in range(oh):
            for j in range(ow):
                win = xp[:, gi * cg : (gi + 1) * cg, i * s[0] : i * s[0] + kh, j * s[1] : j * s[1] + kw]
                y[:, o, i, j] = (win * w[o]).sum(axis=(1, 2, 3)) + (b[o] if b is not None else 0)
    return y


def pool_loops(x, k, s, p, op):
    n, c, h, w = x.shape
    fill = -np.inf if op == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * s : i * s + k, j * s : j * s + k]
            y[:, :, i, j] = win.max(axis=(2, 3)) if op == "max" else win.sum(axis=(2, 3)) / (k * k)
    return y


def num_grad(f, a, eps=1e-6, idx=None):
    """Central differences of scalar f() w.r.t. array a (entries idx, or all)."""
    g = np.zeros_like(a)
    flat, gf = a.reshape(-1), g.reshape(-1)
    for i in range(a.size) if idx is None else idx:
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize(
    "s,p,g", [((1, 1), (0, 0), 1), ((2, 1), (1, 2), 1), ((2, 2), (1, 1), 2), ((3, 3), (2, 2), 4), ((1, 1), (1, 1), 4)]
)
def test_conv_forward_matches_loops(s, p, g):
    x = RNG.standard_normal((2, 4, 7, 8))
    w = RNG.standard_normal((8, 4 // g, 3, 2))
    b = RNG.standard_normal(8)
    close(P.conv2d(x, w, b, s, p, g), conv_loops(x, w, b, s, p, g), 1e-12)
    close(P.conv2d(x, w, None, s, p, g), conv_loops(x, w, None, s, p, g), 1e-12)


@pytest.mark.parametrize("s,p,g", [(1, 0, 1), (2, 1, 1), (2, 1, 2), (3, 2, 4)])
def test_conv_backward_finite_differences(s, p, g):
    x = RNG.standard_normal((2, 4, 6, 5))
    w = RNG.standard_normal((4, 4 // g, 3, 3))
    b = RNG.standard_normal(4)
    dy = RNG.standard_normal(P.conv2d(x, w, b, s, p, g).shape)
    f = lambda: float((P.conv2d(x, w, b, s, p, g) * dy).sum())
    dx, dw, db = P.conv2d_backward(x, w, dy, s, p, g)
    close(dx, num_grad(f, x))
    close(dw, num_grad(f, w))
    close(db, num_grad(f, b))


def test_linear_forward_backward():
    x, w, b = RNG.standard_normal((3, 5)), RNG.standard_normal((4, 5)), RNG.standard_normal(4)
    y = P.linear(x, w, b)
    close(y, np.array([[sum(x[n, i] * w[o, i] for i in range(5)) + b[o] for o in range(4)] for n in range(3)]), 1e-12)
    dy = RNG.standard_normal(y.shape)
    f = lambda: float((P.linear(x, w, b) * dy).sum())
    dx, dw, db = P.linear_backward(x, w, dy)
    close(dx, num_grad(f, x))
    close(dw, num_grad(f, w))
    close(db, num_grad(f, b))


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 2, 0), (2, 1, 1), (3, 3, 1)])
def test_pools_forward_match_loops(k, s, p):
    x = RNG.standard_normal((2, 3, 7, 7))
    y, am = P.maxpool2d(x, k, s, p)
    close(y, pool_loops(x, k, s, p, "max"), 0)
    assert am.shape == y.shape and am.max() < k * k
    close(P.avgpool2d(x, k, s, p), pool_loops(x, k, s, p, "avg"), 1e-12)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 1, 1)])
def test_pools_backward_finite_differences(k, s, p):
    # Distinct, well-separated values so that no window changes its argmax by eps.
    x = RNG.permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6).astype(np.float64) * 0.01
    ym, am = P.maxpool2d(x, k, s, p)
    dy = RNG.standard_normal(ym.shape)
    fm = lambda: float((P.maxpool2d(x, k, s, p)[0] * dy).sum())
    close(P.maxpool2d_backward(am, x.shape, dy, k, s, p), num_grad(fm, x, 1e-4))
    fa = lambda: float((P.avgpool2d(x, k, s, p) * dy).sum())
    close(P.avgpool2d_backward(x.shape, dy, k, s, p), num_grad(fa, x, 1e-4))


def test_maxpool_ties_go_to_first_and_is_real_max():
    x = np.zeros((1, 1, 2, 2))
    y, am = P.maxpool2d(x, 2)
    assert y[0, 0, 0, 0] == 0 and am[0, 0, 0, 0] == 0
    x = np.array([[[[1.0, 5.0], [3.0, -2.0]]]])
    y, am = P.maxpool2d(x, 2)
    assert y.item() == 5.0 and am.item() == 1  # not the average (1.75)


def test_adaptive_avgpool_exact_and_errors():
    x = RNG.standard_normal((2, 3, 12, 8))
    y = P.adaptive_avgpool2d(x, (3, 2))
    close(y, x.reshape(2, 3, 3, 4, 2, 4).mean(axis=(3, 5)), 1e-12)
    close(P.adaptive_avgpool2d(x, 1)[..., 0, 0], x.mean(axis=(2, 3)), 1e-12)
    close(P.adaptive_avgpool2d(x, (12, 8)), x, 0)
    with pytest.raises(S.SpecError, match="multiples"):
        P.adaptive_avgpool2d(x, (5, 2))
    with pytest.raises(S.SpecError, match="multiples"):
        S.AdaptiveAvgPool2d(6).out_shape((256, 1, 1))
    dy = RNG.standard_normal(y.shape)
    f = lambda: float((P.adaptive_avgpool2d(x, (3, 2)) * dy).sum())
    close(P.adaptive_avgpool2d_backward(x.shape, dy, (3, 2)), num_grad(f, x))


def test_relu_and_gradient_convention():
    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0])
    close(P.relu(x), [0, 0, 0, 0.5, 3.0], 0)
    close(P.relu_backward(x, np.ones(5)), [0, 0, 0, 1, 1], 0)


def test_batchnorm_train_and_eval():
    x = RNG.standard_normal((4, 3, 5, 5)) * 2 + 1
    g, b = RNG.standard_normal(3), RNG.standard_normal(3)
    y, cache = P.batchnorm2d_train(x, g, b, 1e-5)
    for c in range(3):
        v = x[:, c]
        close(y[:, c], (v - v.mean()) / np.sqrt(v.var() + 1e-5) * g[c] + b[c], 1e-12)
        close(cache[4][c], v.var(ddof=1), 1e-12)
    dy = RNG.standard_normal(y.shape)
    f = lambda: float((P.batchnorm2d_train(x, g, b)[0] * dy).sum())
    dx, dg, db = P.batchnorm2d_train_backward(cache, dy)
    close(dx, num_grad(f, x))
    close(dg, num_grad(f, g))
    close(db, num_grad(f, b))
    m, v = RNG.standard_normal(3), RNG.random(3) + 0.5
    ye = P.batchnorm2d_eval(x, g, b, m, v, 1e-5)
    for c in range(3):
        close(ye[:, c], (x[:, c] - m[c]) / np.sqrt(v[c] + 1e-5) * g[c] + b[c], 1e-12)
    scale, shift = P.fold_batchnorm(g, b, m, v, 1e-5)
    close(ye, x * scale[None, :, None, None] + shift[None, :, None, None], 1e-12)


def test_softmax_cross_entropy():
    z = RNG.standard_normal((5, 7)) * 3
    lab = RNG.integers(0, 7, 5)
    loss, d = P.softmax_cross_entropy(z, lab)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    close(loss, -np.log(p[np.arange(5), lab]).mean(), 1e-12)
    close(d, num_grad(lambda: P.softmax_cross_entropy(z, lab)[0], z))
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert np.isfinite(P.softmax_cross_entropy(big, [1, 0])[0])
    with pytest.raises(ValueError):
        P.softmax_cross_entropy(z, [7, 0, 0, 0, 0])


# ------------------------------------------------------------------ whole networks


def tiny_model():
    body = S.Sequential(
        (S.Conv2d(4, 4, 3, padding=1, bias=False), S.BatchNorm2d(4), S.ReLU(), S.Conv2d(4, 6, 3, stride=2, padding=1))
    )
    short = S.Sequential((S.Conv2d(4, 6, 1, stride=2),))
    net = S.Sequential.named(
        ("stem", S.Sequential((S.Conv2d(2, 4, 3, padding=1, groups=2), S.ReLU(), S.MaxPool2d(3, 1, 1)))),
        ("block", S.Residual(body, short, relu=True)),
        ("block2", S.Residual(S.Sequential((S.Conv2d(6, 6, 1), S.ReLU())))),
        ("pool", S.AvgPool2d(2, 1)),
        ("gap", S.AdaptiveAvgPool2d(1)),
        ("flatten", S.Flatten()),
        ("drop", S.Dropout(0.5)),
        ("fc", S.Linear(6, 3)),
    )
    return S.Model("tiny", (2, 6, 6), 3, net)


@pytest.mark.parametrize("train", [False, True])
def test_model_gradients_finite_differences(train):
    spec = tiny_model()
    m = P.PlainModel(spec, seed=3)
    for k in m.params:
        if k.endswith("bias") or k.endswith("running_mean"):
            m.params[k][...] = RNG.standard_normal(m.params[k].shape) * 0.1
        if k.endswith("running_var"):
            m.params[k][...] = RNG.random(m.params[k].shape) + 0.5
    x = RNG.standard_normal((3, 2, 6, 6))
    y = np.array([0, 2, 1])
    if train:  # dropout would make the loss random: use BN batch statistics, no dropout
        spec = S.Model(
            "tiny",
            spec.input_shape,
            3,
            S.Sequential(
                tuple(layer for layer in spec.net.layers if not isinstance(layer, S.Dropout)),
                tuple(n for n, layer in spec.net.children() if not isinstance(layer, S.Dropout)),
            ),
        )
        m = P.PlainModel(spec, m.params, seed=3)
    saved = {k: v.copy() for k, v in m.params.items()}

    def loss():
        out = m.forward(x, train=train, need_grad=False)
        for k in m.params:  # undo running-stat updates of train-mode forwards
            if "running" in k:
                m.params[k][...] = saved[k]
        return P.softmax_cross_entropy(out, y)[0]

    logits = m.forward(x, train=train)
    for k in m.params:
        if "running" in k:
            m.params[k][...] = saved[k]
    _, d = P.softmax_cross_entropy(logits, y)
    dx = m.backward(d)
    trainable = {p.name for p in S.param_specs(spec) if p.trainable}
    assert set(m.grads) == trainable
    for name in sorted(trainable):
        a = m.params[name]
        idx = RNG.choice(a.size, size=min(a.size, 6), replace=False)
        g = num_grad(loss, a, 1e-6, idx)
        np.testing.assert_allclose(
            m.grads[name].reshape(-1)[idx], g.reshape(-1)[idx], rtol=1e-5, atol=1e-7, err_msg=name
        )
    idx = RNG.choice(x.size, size=12, replace=False)
    np.testing.assert_allclose(dx.reshape(-1)[idx], num_grad(loss, x, 1e-6, idx).reshape(-1)[idx], rtol=1e-5, atol=1e-7)


def test_record_and_residual_semantics():
    spec = tiny_model()
    m = P.PlainModel(spec, seed=0)
    x = RNG.standard_normal((2, 2, 6, 6))
    rec = {}
    out = m.forward(x, record=rec, need_grad=False)
    assert [e.path for e in S.trace(spec)] == list(rec)
    # block2 = relu-free identity residual: x + relu(conv(x))
    conv = P.conv2d(rec["block.relu"], m.params["block2.0.weight"], m.params["block2.0.bias"])
    close(rec["block2.1"], P.relu(conv), 1e-12)
    close(out, rec["fc"], 0)
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(out))


def test_bn_running_stats_and_dropout():
    spec = S.Model(
        "bn",
        (2, 3, 3),
        2,
        S.Sequential((S.BatchNorm2d(2, momentum=0.25), S.Dropout(0.5), S.Flatten(), S.Linear(18, 2))),
    )
    m = P.PlainModel(spec, seed=0)
    x = RNG.standard_normal((5, 2, 3, 3)) + 3
    m.forward(x, train=True)
    close(m.params["0.running_mean"], 0.25 * x.mean(axis=(0, 2, 3)), 1e-12)
    close(m.params["0.running_var"], 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1), 1e-12)
    rec = {}
    m.forward(x, train=True, record=rec)
    kept = rec["1"] != 0
    assert 0.2 < kept.mean() < 0.8
    close(rec["1"][kept], 2 * rec["0"][kept], 1e-12)
    rec2 = {}
    m.forward(x, record=rec2)
    close(rec2["1"], rec2["0"], 0)


def test_sgd_matches_pytorch_semantics():
    p = {"w": np.array([1.0, -2.0])}
    opt = P.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)
    g1, g2 = np.array([0.5, 0.5]), np.array([-1.0, 2.0])
    w0 = np.array([1.0, -2.0])
    v1 = g1 + 0.01 * w0
    w1 = w0 - 0.1 * v1
    v2 = 0.9 * v1 + g2 + 0.01 * w1
    w2 = w1 - 0.1 * v2
    opt.step({"w": g1})
    opt.step({"w": g2})
    close(p["w"], w2, 1e-15)
    q = {"w": np.array([1.0])}
    P.SGD(q, lr=0.5, momentum=0.9, nesterov=True).step({"w": np.array([2.0])})
    close(q["w"], [1.0 - 0.5 * (2.0 + 0.9 * 2.0)], 1e-15)


# ------------------------------------------------------------------ registered models

TORCHVISION_COUNTS = {
    "alexnet_imagenet": 61_100_840,
    "vgg16_imagenet": 138_357_544,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def test_all_models_shapes_and_counts():
    expected = {
        "lenet",
        "alexnet_cifar10",
        "alexnet_tinyimagenet",
        "alexnet_imagenet",
        "vgg16_cifar10",
        "vgg16_tinyimagenet",
        "vgg16_imagenet",
        "resnet50",
        "resnet101",
        "resnet152",
    }
    assert expected <= set(list_models())
    inputs = {"lenet": (1, 28, 28)}
    for name in list_models():
        m = get_model(name)
        assert m.name == name
        assert S.output_shape(m) == (m.num_classes,)
        shape = inputs.get(name, {10: (3, 32, 32), 200: (3, 64, 64), 1000: (3, 224, 224)}[m.num_classes])
        assert m.input_shape == shape
        tr = S.trace(m)
        assert tr[-1].out_shape == (m.num_classes,)
        assert len(set(e.path for e in tr)) == len(tr)
        assert count_ok(m)
    assert S.count_params(get_model("lenet")) == 431_080
    assert S.count_params(get_model("alexnet_cifar10")) == 2_472_266
    for name, n in TORCHVISION_COUNTS.items():
        assert S.count_params(get_model(name)) == n, name


def count_ok(m):
    return S.count_params(m, False) == sum(int(np.prod(s)) for s in S.param_shapes(m).values())


def test_model_layer_details():
    lenet = get_model("LeNet")
    assert list(S.param_shapes(lenet).items()) == [
        ("features.0.weight", (20, 1, 5, 5)),
        ("features.0.bias", (20,)),
        ("features.3.weight", (50, 20, 5, 5)),
        ("features.3.bias", (50,)),
        ("classifier.0.weight", (500, 800)),
        ("classifier.0.bias", (500,)),
        ("classifier.2.weight", (10, 500)),
        ("classifier.2.bias", (10,)),
    ]
    shapes = [e.out_shape for e in S.trace(get_model("alexnet_cifar10"))]
    assert shapes[0] == (64, 8, 8) and (256, 1, 1) in shapes and shapes[-1] == (10,)
    assert [e.out_shape for e in S.trace(get_model("alexnet_tinyimagenet")) if e.path == "flatten"] == [(1024,)]
    r = get_model("resnet50")
    names = S.param_shapes(r)
    assert names["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert names["layer4.2.bn3.running_var"] == (2048,)
    assert names["fc.weight"] == (1000, 2048)
    assert "layer1.1.downsample.0.weight" not in names
    stem = S.trace(r)[:4]
    assert [e.out_shape for e in stem] == [(64, 112, 112)] * 3 + [(64, 56, 56)]
    assert isinstance(stem[3].layer, S.MaxPool2d) and stem[3].layer.padding == (1, 1)
    assert sum(isinstance(e.layer, S.MaxPool2d) for e in S.trace(get_model("vgg16_cifar10"))) == 5
    assert sum(isinstance(e.layer, S.Conv2d) for e in S.trace(get_model("vgg16_imagenet"))) == 13
    with pytest.raises(S.SpecError, match="unknown model"):
        get_model("nope")
    assert "features.0" in S.summary(lenet)


def test_spec_errors():
    with pytest.raises(S.SpecError, match="Flatten"):
        S.Sequential((S.Linear(4, 2),)).out_shape((1, 2, 2))
    with pytest.raises(S.SpecError, match="groups"):
        S.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(S.SpecError, match="does not fit"):
        S.Conv2d(1, 1, 5).out_shape((1, 3, 3))
    with pytest.raises(S.SpecError):
        S.Sequential((S.ReLU(),), names=("a.b",))
    with pytest.raises(S.SpecError, match="disagree"):
        S.Residual(S.Sequential((S.Conv2d(2, 3, 1),))).out_shape((2, 4, 4))
    with pytest.raises(S.SpecError, match="output shape"):
        S.Model("bad", (1, 4, 4), 3, S.Sequential((S.Flatten(), S.Linear(16, 2))))
    with pytest.raises(S.ParamMismatchError, match="missing"):
        P.PlainModel(get_model("lenet"), {"features.0.weight": np.zeros((20, 1, 5, 5))})
    m = P.PlainModel("lenet")
    with pytest.raises(S.SpecError, match="does not fit"):
        m.forward(np.zeros((2, 1, 32, 32)))


def test_real_models_forward_backward_small():
    m = P.PlainModel("alexnet_cifar10", seed=1)
    x = RNG.standard_normal((2, 3, 32, 32))
    loss, logits = m.loss_and_grads(x, [1, 2])
    assert logits.shape == (2, 10) and np.isfinite(loss)
    assert set(m.grads) == set(S.param_shapes(m.spec))
    # ResNet-50's blocks (downsample, BN training) on a 32x32 input.
    spec = resnet_bottleneck("resnet50_32", (3, 4, 6, 3), 10, (3, 32, 32))
    r = P.PlainModel(spec, seed=2)
    loss, logits = r.loss_and_grads(RNG.standard_normal((2, 3, 32, 32)), [3, 4])
    assert logits.shape == (2, 10) and np.isfinite(loss)
    assert set(r.grads) == {p.name for p in S.param_specs(spec) if p.trainable}
    assert np.all(r.params["bn1.running_var"] != 1.0)  # BN statistics were updated


def test_init_params():
    ps = P.init_params(get_model("resnet50"), 0, np.float32)
    assert ps["layer1.0.bn1.weight"].dtype == np.float32
    assert np.all(ps["bn1.running_var"] == 1) and np.all(ps["bn1.running_mean"] == 0)
    w = ps["layer4.0.conv2.weight"]
    assert abs(w.std() - np.sqrt(2 / (512 * 9))) < 0.05 * np.sqrt(2 / (512 * 9))


# ------------------------------------------------------------------ weights files


def test_weights_roundtrip_and_errors(tmp_path):
    spec = get_model("lenet")
    params = P.init_params(spec, 5)
    p32 = tmp_path / "w32.h5"
    save_weights(p32, "lenet", params, meta={"test_accuracy": 0.5, "note": "x"})
    name, back = load_weights(p32, spec="lenet")
    assert name == "lenet" and list(back) == list(S.param_shapes(spec))
    for k in params:
        assert back[k].dtype == np.float64
        close(back[k], params[k].astype(np.float32), 0)
    meta = read_meta(p32)
    assert meta["format"] == FORMAT and meta["test_accuracy"] == 0.5 and meta["dtype"] == "float32"
    p64 = tmp_path / "w64.h5"
    save_weights(p64, "lenet", params, dtype=np.float64)
    _, back = load_weights(p64, spec=True)
    for k in params:
        close(back[k], params[k], 0)

    bad = dict(params)
    bad["features.0.weight"] = np.zeros((20, 1, 3, 3))
    with pytest.raises(WeightsError, match="wrong shape"):
        save_weights(tmp_path / "bad.h5", "lenet", bad)
    assert not os.path.exists(tmp_path / "bad.h5")
    with pytest.raises(WeightsError, match="missing"):
        save_weights(tmp_path / "bad.h5", "lenet", {"features.0.weight": params["features.0.weight"]})
    # A file written for another model, loaded against lenet.
    save_weights(tmp_path / "other.h5", "custom", {"a": np.zeros(3)})
    with pytest.raises(WeightsError, match="unexpected"):
        load_weights(tmp_path / "other.h5", spec="lenet")
    assert load_weights(tmp_path / "other.h5")[0] == "custom"
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="HDF5"):
        load_weights(tmp_path / "junk.h5")
    import h5py

    with h5py.File(tmp_path / "fmt.h5", "w") as f:
        f.attrs["format"] = "something/2"
    with pytest.raises(WeightsError, match="format"):
        load_weights(tmp_path / "fmt.h5")


def test_embedded_lenet_weights():
    from mpcgpu.assets import lenet_weights_path, mnist_test_idx_paths
    from mpcgpu.assets.dataset_h5 import normalise
    from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist

    name, params = load_weights(lenet_weights_path(), spec=True)
    assert name == "lenet"
    meta = read_meta(lenet_weights_path())
    assert meta["dtype"] == "float32" and meta["test_accuracy"] > 0.985
    images, labels = load_mnist(*mnist_test_idx_paths())
    m = P.PlainModel(name, params)
    acc = m.evaluate(normalise(images[:1000], MNIST_MEAN, MNIST_STD), labels[:1000], 500)
    assert acc > 0.97


# ------------------------------------------------------------------ trainer


def test_trainer_learns_a_separable_problem():
    from mpcgpu.nn.schedule import lr_at
    from mpcgpu.nn.train_plain import train

    rng = np.random.default_rng(0)
    n = 512
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, size=(n, 1, 8, 8)).astype(np.uint8)
    images[labels == 1, :, :4, :] += 150  # class 1: bright top half
    spec = S.Model(
        "toy",
        (1, 8, 8),
        2,
        S.Sequential((S.Conv2d(1, 4, 3, padding=1), S.ReLU(), S.MaxPool2d(2), S.Flatten(), S.Linear(64, 2))),
    )
    logs = []
    res = train(
        spec,
        (images, labels, (0.3,), (0.3,)),
        (images[:128], labels[:128], 0.3, 0.3),
        epochs=3,
        batch_size=32,
        lr=0.05,
        warmup=5,
        log=logs.append,
        log_every=10,
        dtype=np.float64,
    )
    assert res.test_accuracy > 0.95
    assert res.history[-1][3] < res.history[0][3]
    assert any("test accuracy" in line for line in logs)
    assert lr_at(0, 100, 1.0, "cosine", 10) == pytest.approx(0.1)
    assert lr_at(10, 110, 1.0, "cosine", 10) == pytest.approx(1.0)
    assert lr_at(110, 110, 1.0, "linear", 10) == pytest.approx(0.0)


def test_learning_rate_schedules_and_batch_order():
    from mpcgpu.nn.schedule import epoch_batches, lr_at

    assert lr_at(50, 100, 0.1, "constant") == 0.1
    assert lr_at(25, 100, 0.1, "step", steps_per_epoch=10, step_epochs=2, gamma=0.5) == pytest.approx(0.05)
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0)
    assert lr_at(4, 100, 0.1, "cosine", warmup=10) == pytest.approx(0.05)
    b = epoch_batches(103, 10, seed=3, epoch=2)
    assert len(b) == 10 and all(len(x) == 10 and (np.diff(x) > 0).all() for x in b)
    assert len(np.unique(np.concatenate(b))) == 100
    assert all(np.array_equal(p, q) for p, q in zip(b, epoch_batches(103, 10, seed=3, epoch=2)))
    assert not np.array_equal(b[0], epoch_batches(103, 10, seed=3, epoch=3)[0])
