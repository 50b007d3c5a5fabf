"""Every registered layer type (issue 19), single process: each has every facet, its
plaintext backward agrees with finite differences (float64), its spec survives the JSON
file format, and where it has an ONNX form, export and import (onnxruntime) agree with the
plaintext executor.  The layers come from the registry: a new one is tested here as soon
as it registers (its ``examples``)."""

import dataclasses
import json

import numpy as np
import pytest

from layer_cases import CASES, IDS, one_layer_model, random_params
from mpcgpu.nn import layers as L
from mpcgpu.nn import spec as S
from mpcgpu.nn import spec_io, walker
from mpcgpu.nn.plain import PlainModel


# ------------------------------------------------------------------ the registry itself
def test_every_layer_type_has_every_facet():
    types = L.registered()
    # the layer types spec.py exports (its public list, the classes from mpcgpu.nn.layers)
    built_in = {n for n in S.__all__ if getattr(getattr(S, n), "__module__", "").startswith(L.__name__ + ".")}
    assert len(built_in) >= 9, sorted(built_in)  # Conv2d ... Dropout
    assert {t.name for t in types} >= built_in
    for t in types:
        assert dataclasses.is_dataclass(t.spec) and issubclass(t.spec, S.Layer), t.name
        assert sorted(t.json) == sorted(f.name for f in dataclasses.fields(t.spec)), t.name
        for facet in (t.plain_forward, t.plain_backward, t.private_forward, t.private_backward):
            assert callable(facet), t.name
        if t.onnx is not None:
            assert t.onnx.ops and callable(t.onnx.read) and callable(t.onnx.write), t.name
            assert all(L.by_onnx_op(op) is t for op in t.onnx.ops)
        assert t.examples, t.name
        # every public face finds it
        assert L.lookup(t.spec) is t and L.by_name(t.name) is t
        assert getattr(S, t.name) is t.spec
        impl = L.impl(t.examples[0][0])  # the older view of the private facets
        assert impl.forward is t.private_forward and impl.backward is t.private_backward


def test_register_refuses_a_layer_with_a_missing_or_bad_facet():
    @dataclasses.dataclass(frozen=True)
    class Twice(S.Layer):
        k: int = 2

        def out_shape(self, in_shape):
            return tuple(in_shape)

    def f(run, layer, path, x):
        return x

    good = dict(json={"k": "pos"}, plain=(f, f), private=(f, f), onnx=None, examples=[(Twice(), (3,))])
    for missing in good:
        with pytest.raises(TypeError):
            L.register(Twice, **{k: v for k, v in good.items() if k != missing})
    for bad in (
        dict(json={}),  # a field without its file-format kind
        dict(json={"k": "text"}),  # a kind the format does not know
        dict(examples=[]),  # nothing for the registry-wide tests to run
        dict(examples=[(S.ReLU(), (3,))]),  # an example of another type
        dict(onnx=L.OnnxForm(("Relu",), f, f)),  # an operator another type reads
        dict(plain=(f,)),  # no backward
        dict(private=(f, None)),
    ):
        with pytest.raises((TypeError, ValueError)):
            L.register(Twice, **{**good, **bad})
    with pytest.raises(ValueError):  # a second ReLU
        L.register(S.ReLU, json={}, plain=(f, f), private=(f, f), onnx=None, examples=[(S.ReLU(), (3,))])
    assert L.by_name("Twice") is None  # nothing was registered
    with pytest.raises(S.SpecError):
        L.lookup(Twice())
    with pytest.raises(S.SpecError, match="no plaintext implementation for Twice"):
        PlainModel(S.Model("t", (3,), 3, S.Sequential((Twice(),))))


def test_the_walker_visits_leaves_as_trace_does():
    from mpcgpu.nn.models import get_model

    m = get_model("resnet50")
    got = [walker.trace_path(layer, path) for path, layer in walker.leaves(m.net)]
    assert got == [e.path for e in S.trace(m)]
    assert [layer for _, layer in walker.leaves(m.net)] == [e.layer for e in S.trace(m)]
    paths = [path for path, _ in walker.leaves(m.net)]
    assert "layer1.0.out_relu" in paths and len(set(paths)) == len(paths)  # one path per leaf


# ------------------------------------------------------------------ (b) plaintext gradients
def _inputs(rng, shape, n=2):
    """Values away from the kinks of ReLU and max-pool (|x| >= 0.1, distinct)."""
    x = rng.standard_normal((n,) + tuple(shape))
    return np.sign(x) * (0.1 + np.abs(x))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_plaintext_backward_matches_finite_differences(case, train):
    _, t, layer, shape = case
    model = one_layer_model(layer, shape)
    rng = np.random.default_rng(7)
    params = random_params(model, rng)
    x = _inputs(rng, shape)
    r = rng.standard_normal((x.shape[0], model.num_classes))

    def loss(x_, params_):
        m = PlainModel(model, params_, seed=3)  # the same dropout mask every time
        return float((m.forward(x_, train=train, need_grad=False) * r).sum())

    m = PlainModel(model, params, seed=3)
    m.forward(x, train=train)
    dx = m.backward(r)
    trainable = [p.name for p in S.param_specs(model) if p.trainable]
    assert sorted(m.grads) == sorted(trainable)
    h = 1e-6

    def numeric(arr, set_):
        g = np.zeros(arr.size)
        for i in range(arr.size):
            d = np.zeros(arr.size)
            d[i] = h
            g[i] = (set_(arr + d.reshape(arr.shape)) - set_(arr - d.reshape(arr.shape))) / (2 * h)
        return g.reshape(arr.shape)

    np.testing.assert_allclose(dx, numeric(x, lambda v: loss(v, params)), rtol=1e-5, atol=1e-7, err_msg="dx")
    for name in trainable:
        g = numeric(params[name], lambda v, name=name: loss(x, {**params, name: v}))
        np.testing.assert_allclose(m.grads[name], g, rtol=1e-5, atol=1e-7, err_msg=name)


# ------------------------------------------------------------------ (c) the file format
def _wrong(kind):
    """A JSON value of the wrong kind for a field of ``kind``."""
    return {"pos": 0, "int": -1, "pair": [1, 2, 3], "pair?": "2", "bool": 1, "num": "0.5"}[kind]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_spec_json_round_trip(case):
    _, t, layer, shape = case
    d = spec_io.layer_to_dict(layer)
    assert d["type"] == t.name and set(d) == {"type"} | set(t.json)
    back = spec_io.layer_from_dict(json.loads(json.dumps(d)))
    assert type(back) is t.spec and back == layer
    model = one_layer_model(layer, shape)
    text = spec_io.to_json(model)
    assert spec_io.from_json(text) == model and spec_io.to_json(spec_io.from_json(text)) == text
    for name, kind in t.json.items():  # every field is read as its registered kind
        with pytest.raises(S.SpecError, match=name):
            spec_io.layer_from_dict({**d, name: _wrong(kind)}, "x")
    with pytest.raises(S.SpecError, match="unexpected"):
        spec_io.layer_from_dict({**d, "extra": 1})


# ------------------------------------------------------------------ (d) ONNX
ONNX_CASES = [c for c in CASES if c[1].onnx is not None]


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_export_and_import(case):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mpcgpu.interop.export import to_onnx
    from mpcgpu.interop.onnx_import import import_onnx

    _, t, layer, shape = case
    model = one_layer_model(layer, shape)
    rng = np.random.default_rng(11)
    params = random_params(model, rng)
    proto = to_onnx(model, params)
    ops = [n.op_type for n in proto.graph.node]
    own = [op for op in ops if op != "Flatten" or t.name == "Flatten"]
    assert own and set(own) <= set(t.onnx.ops) | {"AveragePool"}, ops  # what this layer wrote
    x = rng.standard_normal((3,) + tuple(shape))
    ref = PlainModel(model, params).forward(x, need_grad=False)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # written as this type's own operators, the layer is read back as itself (else, an
    # adaptive pool written as an AveragePool, as an equivalent layer)
    readable = set(own) <= set(t.onnx.ops)
    back, back_params = import_onnx(proto)  # mpcgpu's own file: its architecture kept
    assert sorted(back_params) == sorted(params) and (back.net == model.net or not readable)
    for k in params:
        np.testing.assert_allclose(back_params[k], params[k], rtol=1e-6, atol=1e-7)
    del proto.metadata_props[:]  # the graph alone: this type's reader makes the layer again
    bare, bare_params = import_onnx(proto)
    assert S.trace(bare)[0].layer == layer or not readable
    for model_, params_ in ((back, back_params), (bare, bare_params)):
        again = PlainModel(model_, params_).forward(x, need_grad=False)
        np.testing.assert_allclose(again, ref, rtol=1e-5, atol=1e-6)
