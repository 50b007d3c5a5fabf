"""Bring your own model (issue 13 A), single process: architecture specs as JSON, weights
files that carry them, the ONNX importer against onnxruntime, state-dict matching with
torchvision's names, export to ONNX / safetensors, and the checks of `mpcgpu share`.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from mpcgpu.cli import main
from mpcgpu.data import split
from mpcgpu.errors import ShardError
from mpcgpu.interop.export import export_onnx, export_safetensors, to_onnx
from mpcgpu.interop.onnx_import import ModelImportError, import_onnx
from mpcgpu.interop.torch_names import StateDictError, import_state_dict, match_state_dict, zoo_model
from mpcgpu.nn import spec as S
from mpcgpu.nn import spec_io
from mpcgpu.nn.models import architecture, get_model, list_models
from mpcgpu.nn.plain import PlainModel, init_params
from mpcgpu.nn.weights import WeightsError, load_weights, read_architecture, save_weights

from onnx_graphs import (
    Builder,
    apply_output,
    chain_net,
    ort_run,
    random_state_dict,
    residual_net,
    torchvision_resnet_names,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _rel(a, b):
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


# ------------------------------------------------------------------ specs as JSON
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_round_trips_through_json(name):
    m = get_model(name)
    text = spec_io.to_json(m)
    back = spec_io.from_json(text)
    assert back == m
    assert spec_io.to_json(back) == text
    assert S.param_shapes(back) == S.param_shapes(m)


def test_spec_keeps_eps_output_and_any_input_size():
    m = zoo_model("resnet50", num_classes=10, input_size=64)
    d = spec_io.to_dict(m)
    d["net"]["layers"][1]["eps"] = 1e-3
    d["output"] = "softmax"
    back = spec_io.from_dict(d)
    assert back.net["bn1"].eps == 1e-3 and back.output == "softmax"
    assert back.input_shape == (3, 64, 64) and back.num_classes == 10
    assert back.net["fc"] == S.Linear(2048, 10)


def _lenet_dict():
    return spec_io.to_dict(get_model("lenet"))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.update(format="mpcgpu-spec/9"), "format"),
        (lambda d: d.pop("net"), "missing"),
        (lambda d: d.update(extra=1), "unexpected"),
        (lambda d: d["net"]["layers"][0]["layers"][0].update(type="Sigmoid"), "unknown layer type 'Sigmoid'"),
        (lambda d: d["net"]["layers"][0]["layers"][0].update(out_ch=True), "positive int"),
        (lambda d: d["net"]["layers"][0]["layers"][0].update(kernel="5"), "kernel"),
        (lambda d: d["net"]["layers"][0]["layers"][0].update(bias=1), "true or false"),
        (lambda d: d["net"]["layers"][0]["layers"][0].update(dilation=2), "unexpected"),
        (lambda d: d["net"]["layers"][0]["layers"][0].update(out_ch=21), "features"),  # shapes checked
        (lambda d: d.update(num_classes=11), "output shape"),
        (lambda d: d.update(output="sigmoid"), "output"),
        (lambda d: d.update(input_shape=[1, 28]), "input_shape"),
    ],
)
def test_spec_reading_is_strict(mutate, match):
    d = _lenet_dict()
    mutate(d)
    with pytest.raises(S.SpecError, match=match):
        spec_io.from_dict(d)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_batch_norm_eps_must_be_positive_and_finite(eps):
    with pytest.raises(S.SpecError, match="eps"):
        S.BatchNorm2d(4, eps)
    d = spec_io.to_dict(get_model("vgg16_bn_cifar10"))
    d["net"]["layers"][0]["layers"][1]["eps"] = eps
    with pytest.raises(S.SpecError, match="eps"):
        spec_io.from_json(json.dumps(d))


def test_spec_text_errors_are_clear():
    with pytest.raises(S.SpecError, match="not valid JSON"):
        spec_io.from_json("{nope")
    with pytest.raises(S.SpecError, match="JSON object"):
        spec_io.from_json("[1, 2]")


# ------------------------------------------------------------------ weights files
def test_weights_v2_carry_the_architecture_and_v1_still_reads(tmp_path):
    m = zoo_model("resnet50", num_classes=10, input_size=64, name="r50_small")
    d = spec_io.to_dict(m)
    d["net"]["layers"][1]["eps"] = 1e-3  # another eps, kept
    m = spec_io.from_dict(d)
    p = init_params(m, rng=0)
    save_weights(tmp_path / "w.h5", m.name, p, spec=m)
    assert read_architecture(tmp_path / "w.h5") == m
    name, q = load_weights(tmp_path / "w.h5", True)
    assert name == "r50_small" and set(q) == set(p)
    with h5py.File(tmp_path / "w.h5") as f:
        assert f.attrs["format"] == "mpcgpu-weights/2"
    # an old /1 file of a registered model: the architecture comes from its name
    lp = init_params(get_model("lenet"), rng=1)
    save_weights(tmp_path / "l.h5", "lenet", lp)
    with h5py.File(tmp_path / "l.h5", "r+") as f:
        f.attrs["format"] = "mpcgpu-weights/1"
        del f.attrs["spec"]
    assert read_architecture(tmp_path / "l.h5") == get_model("lenet")
    # neither a spec nor a registered name
    with h5py.File(tmp_path / "l.h5", "r+") as f:
        f.attrs["model"] = "mystery"
    with pytest.raises(WeightsError, match="mpcgpu import"):
        read_architecture(tmp_path / "l.h5")


def test_bench_takes_a_registered_name_or_a_weights_file(tmp_path):
    from mpcgpu.nn.weights import model_by_name_or_file

    m = zoo_model("vgg16_cifar10", num_classes=7, name="vgg7")
    save_weights(tmp_path / "v.h5", m.name, init_params(m, rng=0), spec=m)
    assert model_by_name_or_file(str(tmp_path / "v.h5")) == m
    assert model_by_name_or_file("lenet") == get_model("lenet")
    with pytest.raises(S.SpecError, match="weights file"):
        model_by_name_or_file(str(tmp_path / "missing.h5"))


def test_architecture_prefers_the_stored_spec():
    m = zoo_model("lenet", num_classes=3, name="lenet")
    assert architecture("lenet", {"spec": spec_io.to_json(m)}).num_classes == 3
    assert architecture("lenet", {}).num_classes == 10
    with pytest.raises(S.SpecError, match="not a registered model"):
        architecture("nothing_like_it", None)


# ------------------------------------------------------------------ ONNX import
@pytest.mark.parametrize(
    "make", [chain_net, residual_net, lambda: residual_net(3, final="Softmax"), lambda: residual_net(4, final=None)]
)
def test_onnx_graphs_import_and_match_onnxruntime(make):
    m = make()
    spec, params = import_onnx(m, name="g")
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal((6,) + spec.input_shape), np.zeros((1,) + spec.input_shape)])
    ref = ort_run(m, x)
    z = PlainModel(spec, params).forward(x, need_grad=False)
    assert _rel(apply_output(z, spec.output), ref) < 1e-5
    assert spec.output in ("softmax", "log_softmax", "logits")


def test_the_eps_is_what_makes_the_difference():
    """The comparisons with onnxruntime can see a lost eps: with the batch norms' eps replaced
    by PyTorch's default the imported residual net misses the reference by far more than the
    private tolerance (tests/test_interop_mpi.py)."""
    import dataclasses

    m = residual_net(9, big_eps=True)
    spec, params = import_onnx(m)
    x = np.random.default_rng(2).standard_normal((4,) + spec.input_shape)
    ref = ort_run(m, x)
    assert _rel(apply_output(PlainModel(spec, params).forward(x, need_grad=False), spec.output), ref) < 1e-5
    d = spec_io.to_dict(spec)
    text = json.dumps(d).replace('"eps": 0.5', '"eps": 1e-05')
    assert text != json.dumps(d)
    lost = spec_io.from_json(text)
    z = apply_output(PlainModel(lost, params).forward(x, need_grad=False), spec.output)
    assert _rel(z, ref) > 10 * 2e-3
    assert dataclasses.replace(lost, net=spec.net) == spec


def test_imported_graph_keeps_every_op_and_eps():
    spec, params = import_onnx(chain_net(), name="c")
    kinds = [type(e.layer).__name__ for e in S.trace(spec)]
    assert kinds == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "AvgPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert spec.net[1].eps == 1e-3 and spec.output == "softmax"
    assert spec.net[4].groups == 2 and spec.net[0].bias is False and spec.net[11].bias is True
    assert spec.net[10].p == 0.25
    rspec, _ = import_onnx(residual_net(), name="r")
    blocks = [layer for layer in rspec.net.layers if isinstance(layer, S.Residual)]
    assert [b.relu for b in blocks] == [True, True, False]
    assert [b.shortcut is None for b in blocks] == [True, False, True]
    assert {layer.eps for _, layer in S.walk(rspec) if isinstance(layer, S.BatchNorm2d)} == {2e-5, 1e-4, 1e-3}
    assert rspec.output == "log_softmax"


def _one_op(kind, x_shape=(2, 6, 6), out_dim=None, **attrs):
    """x -> kind -> Flatten -> Gemm, for single-operator checks."""
    b = Builder(1)
    y = b.op(kind, ["x"], **attrs)
    y = b.op("Flatten", [y], axis=1)
    feats = ort_run(_trunc(b, x_shape, y), np.zeros((1,) + x_shape)).shape[1]
    y = b.op("Gemm", [y, b.w(3, feats)], transB=1)
    return b.model(x_shape, y, 3)


def _trunc(b, x_shape, y):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        b.nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(x_shape))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        b.inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize(
    "kind,attrs",
    [
        ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)),
        ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2])),
        ("MaxPool", dict(kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 1, 1])),
        ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2])),
        ("GlobalAveragePool", {}),
        ("Relu", {}),
        ("Identity", {}),
    ],
)
def test_single_operators_match_onnxruntime(kind, attrs):
    m = _one_op(kind, **attrs)
    spec, params = import_onnx(m)
    x = np.random.default_rng(2).standard_normal((5, 2, 6, 6))
    x[0, 0, :2, :2] = 1.5  # ties in max-pool windows
    assert _rel(PlainModel(spec, params).forward(x, need_grad=False), ort_run(m, x)) < 1e-5


def _bad(kind="Relu", x_shape=(2, 6, 6), **attrs):
    b = Builder(0)
    y = b.op(kind, ["x"], **attrs)
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, int(np.prod(x_shape)))], transB=1)
    return b


def test_unknown_operators_are_named_all_at_once():
    b = Builder(0)
    y = b.op("Sigmoid", ["x"])
    y = b.op("Tanh", [y])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, 72)], transB=1)
    with pytest.raises(ModelImportError) as e:
        import_onnx(b.model((2, 6, 6), y, 3))
    msg = str(e.value)
    assert "unsupported operator Sigmoid" in msg and "unsupported operator Tanh" in msg
    assert "n1_Sigmoid" in msg and "n2_Tanh" in msg
    # the supported operators are listed: every registered layer type's own, then the structural
    from mpcgpu.interop.onnx_import import supported_ops

    listed = msg.split("(supported operators: ")[1].rstrip(")").split(", ")
    assert listed == list(supported_ops()) and {"Conv", "Gemm", "Add", "Softmax"} <= set(listed)


@pytest.mark.parametrize(
    "kind,attrs,match",
    [
        ("MaxPool", dict(kernel_shape=[2, 2], pads=[0, 0, 1, 1]), "asymmetric padding"),
        ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), "ceil_mode"),
        ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "count_include_pad"),
        ("MaxPool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"), "auto_pad"),
    ],
)
def test_unsupported_attributes_are_refused(kind, attrs, match):
    b = Builder(0)
    y = b.op(kind, ["x"], **attrs)
    y = b.op("GlobalAveragePool", [y])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, 2)], transB=1)
    with pytest.raises(ModelImportError, match=match):
        import_onnx(b.model((2, 6, 6), y, 3))


def test_bad_weights_and_structure_are_refused():
    # NaN weight
    b = Builder(0)
    w = np.ones((3, 72), np.float32)
    w[1, 2] = np.nan
    y = b.op("Flatten", ["x"], axis=1)
    y = b.op("Gemm", [y, b.const(w)], transB=1)
    with pytest.raises(ModelImportError, match="NaN"):
        import_onnx(b.model((2, 6, 6), y, 3))
    # eps not positive
    b = Builder(0)
    y = b.bn("x", 2, eps=0.0)
    y = b.op("GlobalAveragePool", [y])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, 2)], transB=1)
    with pytest.raises(ModelImportError, match="epsilon"):
        import_onnx(b.model((2, 6, 6), y, 3))
    # softmax in the middle
    b = Builder(0)
    y = b.op("Flatten", ["x"], axis=1)
    y = b.op("Softmax", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, 72)], transB=1)
    with pytest.raises(ModelImportError, match="last node"):
        import_onnx(b.model((2, 6, 6), y, 3))
    # a weight computed by the graph
    b = Builder(0)
    y = b.op("Flatten", ["x"], axis=1)
    y = b.op("Gemm", [y, y], transB=1)
    with pytest.raises(ModelImportError, match="not a constant"):
        import_onnx(b.model((2, 6, 6), y, 3))
    # a reshape that is not a flatten
    b = Builder(0)
    y = b.op("Reshape", ["x", b.const(np.array([0, 2, 36]), np.int64)])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, 72)], transB=1)
    with pytest.raises(ModelImportError, match="flatten"):
        import_onnx(b.model((2, 6, 6), y, 3))


def test_shape_arithmetic_before_a_reshape_is_folded():
    """PyTorch's x.view(x.size(0), -1): Shape, Gather, Unsqueeze, Concat -> Reshape."""
    b = Builder(2)
    y = b.op("Conv", ["x", b.w(4, 2, 3, 3)], kernel_shape=[3, 3])
    y = b.op("Relu", [y])
    shape = b.op("Shape", [y])
    n = b.op("Gather", [shape, b.const(np.array(0), np.int64)], axis=0)
    n = b.op("Unsqueeze", [n, b.const(np.array([0]), np.int64)])
    target = b.op("Concat", [n, b.const(np.array([-1]), np.int64)], axis=0)
    y = b.op("Reshape", [y, target])
    y = b.op("Gemm", [y, b.w(3, 64)], transB=1)
    m = b.model((2, 6, 6), y, 3)
    spec, params = import_onnx(m)
    assert [type(e.layer).__name__ for e in S.trace(spec)] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6))
    assert _rel(PlainModel(spec, params).forward(x, need_grad=False), ort_run(m, x)) < 1e-5
    # shape arithmetic on activations' values is not shape arithmetic: refused by name
    b = Builder(2)
    y = b.op("Flatten", ["x"], axis=1)
    g = b.op("Gather", [y, b.const(np.array([0, 1]), np.int64)], axis=1)
    y = b.op("Gemm", [g, b.w(3, 2)], transB=1)
    with pytest.raises(ModelImportError, match="unsupported operator Gather"):
        import_onnx(b.model((2, 6, 6), y, 3))


def test_symbolic_input_needs_a_shape():
    from onnx import TensorProto, helper

    b = Builder(0)
    y = b.op("GlobalAveragePool", ["x"])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(3, 2)], transB=1)
    g = helper.make_graph(
        b.nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 3])],
        b.inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelImportError, match="--input-shape"):
        import_onnx(m)
    spec, _ = import_onnx(m, input_shape=(2, 10, 10))
    assert spec.input_shape == (2, 10, 10)
    with pytest.raises(ModelImportError, match="contradicts"):
        import_onnx(m, input_shape=(3, 10, 10))


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("name", ["lenet", "alexnet_cifar10", "vgg16_bn_cifar10"])
def test_export_to_onnx_runs_in_onnxruntime_and_reimports(tmp_path, name):
    m = get_model(name)
    p = init_params(m, rng=3)
    path = export_onnx(tmp_path / "m.onnx", m, p)
    proto = onnx.load(path)
    x = np.random.default_rng(1).standard_normal((3,) + m.input_shape)
    assert _rel(ort_run(proto, x), PlainModel(m, p).forward(x, need_grad=False)) < 1e-5
    back, q = import_onnx(proto, name=name)
    assert back.net == m.net
    assert all(np.array_equal(q[k], np.float32(p[k])) for k in p)


def test_export_imported_residual_graph_and_safetensors(tmp_path):
    spec, params = import_onnx(residual_net(), name="r")
    proto = to_onnx(spec, params)
    x = np.random.default_rng(8).standard_normal((4,) + spec.input_shape)
    assert _rel(ort_run(proto, x), ort_run(residual_net(), x)) < 1e-5
    path = export_safetensors(tmp_path / "r.safetensors", spec, params)
    loaded = safetensors_numpy.load_file(path)
    assert set(loaded) == set(params) and all(loaded[k].dtype == np.float32 for k in loaded)
    back, q, renamed, dropped = import_state_dict(path, None)  # the file carries its architecture
    assert back == spec and renamed == [] and dropped == []
    assert all(np.array_equal(q[k], np.float32(params[k])) for k in q)


# ------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("size,classes", [(64, 10), (224, 1000), (224, 10), (64, 1000)])
def test_torchvision_resnet50_state_dict_imports(tmp_path, size, classes):
    sd = random_state_dict(torchvision_resnet_names((3, 4, 6, 3), classes))
    path = tmp_path / "r50.safetensors"
    safetensors_numpy.save_file(sd, str(path))
    model, params, renamed, dropped = import_state_dict(path, "resnet50", num_classes=classes, input_size=size)
    assert renamed == [] and len(dropped) == 53
    assert model.input_shape == (3, size, size) and model.num_classes == classes
    assert all(np.array_equal(params[k], sd[k]) for k in params)
    w = tmp_path / "r50.h5"
    save_weights(w, "r50", params, spec=model)
    assert read_architecture(w) == model
    if size == 64 and classes == 10:  # the share step takes its architecture along (1 GB of shards at 224)
        result = split.split_file(w, tmp_path / "shards", progress=False)
        assert spec_io.from_json(result.public["spec"]) == model


def test_state_dict_names_are_matched_or_refused():
    lenet = get_model("lenet")
    p = init_params(lenet, rng=0)
    # the user's own names, in registration order: matched layer by layer
    own = dict(zip(["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"], [p[k] for k in list(p)[:4]]))
    own.update({"fc1.weight": p["classifier.0.weight"], "fc1.bias": p["classifier.0.bias"]})
    own.update({"fc2.weight": p["classifier.2.weight"], "fc2.bias": p["classifier.2.bias"]})
    got, renamed, _ = match_state_dict(lenet, own, ordered=True)
    assert ("conv1.weight", "features.0.weight") in renamed and ("fc2.bias", "classifier.2.bias") in renamed
    assert all(np.array_equal(got[k], p[k]) for k in p)
    # a DataParallel prefix and a bare classifier Linear (-> classifier.0)
    alex = get_model("alexnet_cifar10")
    q = init_params(alex, rng=1)
    sd = {"module." + k.replace("classifier.0.", "classifier."): v for k, v in q.items()}
    got, renamed, _ = match_state_dict(alex, sd, ordered=False)
    assert renamed == [("classifier.weight", "classifier.0.weight"), ("classifier.bias", "classifier.0.bias")]
    # wrong shape, missing, NaN: every problem is listed
    bad = dict(q)
    bad["features.0.weight"] = np.zeros((64, 3, 5, 5))
    del bad["classifier.0.bias"]
    bad["features.3.bias"] = np.full(192, np.nan)
    with pytest.raises(StateDictError) as e:
        match_state_dict(alex, bad)
    assert "classifier.0.bias" in str(e.value) and "features.0.weight" in str(e.value)
    bad = dict(q)
    bad["features.3.bias"] = np.full(192, np.inf)
    with pytest.raises(StateDictError, match="Inf"):
        match_state_dict(alex, bad)


# ------------------------------------------------------------------ the share step checks
def _weights_file(path, model, params, *, spec=True, extra=None):
    save_weights(path, model.name, params, spec=model if spec else None)
    if extra:
        with h5py.File(path, "r+") as f:
            for k, v in extra.items():
                f["params"].create_dataset(k, data=v)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f: f["params"].create_dataset("bn1.num_batches_tracked", data=np.int64(3)), "num_batches_tracked"),
        (lambda f: f["params"].__delitem__("fc.bias"), "missing"),
        (
            lambda f: (
                f["params"].__delitem__("fc.weight"),
                f["params"].create_dataset("fc.weight", data=np.ones((3, 5))),
            ),
            "wrong shape",
        ),
        (
            lambda f: (
                f["params"].__delitem__("fc.bias"),
                f["params"].create_dataset("fc.bias", data=np.ones(4, np.int32)),
            ),
            "not floating point",
        ),
        (lambda f: f["params"]["conv1.weight"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
        (lambda f: f["params"]["fc.weight"].__setitem__((1, 1), -np.inf), "Inf"),
    ],
)
def test_share_refuses_a_mismatch_before_writing_anything(tmp_path, change, match):
    model = S.Model(
        "tiny_bn",
        (3, 6, 6),
        4,
        S.Sequential.named(
            ("conv1", S.Conv2d(3, 5, 3, bias=False)),
            ("bn1", S.BatchNorm2d(5, eps=1e-3)),
            ("relu", S.ReLU()),
            ("pool", S.AdaptiveAvgPool2d(1)),
            ("flatten", S.Flatten()),
            ("fc", S.Linear(5, 4)),
        ),
    )
    path = tmp_path / "w.h5"
    _weights_file(path, model, init_params(model, rng=0))
    with h5py.File(path, "r+") as f:
        change(f)
    out = tmp_path / "out"
    with pytest.raises(ShardError, match=match):
        split.split_file(path, out, progress=False)
    assert not out.exists() or not os.listdir(out)
    # and on the command line: exit 1 with the message, no traceback
    assert main(["share", str(path), "--out", str(out)]) == 1


def test_share_of_a_registered_name_without_spec_is_checked_too(tmp_path):
    lenet = get_model("lenet")
    p = init_params(lenet, rng=0)
    path = tmp_path / "l.h5"
    save_weights(path, "lenet", p)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "mpcgpu-weights/1"
        del f.attrs["spec"]
        f["params"].create_dataset("features.0.num_batches_tracked", data=np.int64(1))
    with pytest.raises(ShardError, match="num_batches_tracked"):
        split.split_file(path, tmp_path / "o", progress=False)


def test_share_uses_the_stored_eps_for_the_batch_norm_domain(tmp_path):
    """running_var near 0 with eps 0.5 is fine for 16 bits; with PyTorch's 1e-5 it is not."""
    net = S.Sequential((S.Conv2d(1, 2, 3, bias=False), S.BatchNorm2d(2, eps=0.5), S.AdaptiveAvgPool2d(1)))
    net = S.Sequential(net.layers + (S.Flatten(), S.Linear(2, 2)))
    model = S.Model("eps_half", (1, 5, 5), 2, net)
    p = init_params(model, rng=0)
    p["1.running_var"] = np.array([1e-7, 2e-7])
    path = tmp_path / "e.h5"
    save_weights(path, model.name, p, spec=model)
    r = split.split_file(path, tmp_path / "o", progress=False)
    assert r.public["bn_var_domain"] == [0.5, 1.0]  # 0.5 + 1e-7 .. 0.5 + 2e-7, in powers of two
    model2 = S.Model("eps_tiny", (1, 5, 5), 2, S.Sequential(net.layers[:1] + (S.BatchNorm2d(2),) + net.layers[2:]))
    save_weights(path, model2.name, p, spec=model2)
    with pytest.raises(ShardError, match="--precision"):
        split.split_file(path, tmp_path / "o2", progress=False)


# ------------------------------------------------------------------ command line
def test_cli_import_share_export(tmp_path, capsys):
    onnx.save(residual_net(), str(tmp_path / "r.onnx"))
    w = str(tmp_path / "r.h5")
    assert main(["import", str(tmp_path / "r.onnx"), "--out", w]) == 0
    out = capsys.readouterr().out
    assert "checked against onnxruntime" in out and "log_softmax" in out and "eps" in out
    assert main(["import", str(tmp_path / "r.onnx"), "--out", w]) == 1  # exists
    assert "--force" in capsys.readouterr().err
    assert main(["share", w, "--out", str(tmp_path / "sh"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "public/spec" in out and "meta.imported_from" in out.split("kept private")[1]
    for p in range(3):  # the architecture is public; the owner's file name is not
        raw = open(tmp_path / "sh" / f"r.party{p}.h5", "rb").read()
        assert b"mpcgpu-spec/1" in raw and b"r.onnx" not in raw
    assert main(["export", w, "--onnx", str(tmp_path / "e.onnx"), "--safetensors", str(tmp_path / "e.st")]) == 0
    assert "onnxruntime agrees" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    assert _rel(ort_run(onnx.load(str(tmp_path / "e.onnx")), x), ort_run(residual_net(), x)) < 1e-5
    # errors: one line on stderr, exit 1
    bad = Builder(0)
    y = bad.op("Erf", ["x"])
    y = bad.op("Flatten", [y], axis=1)
    y = bad.op("Gemm", [y, bad.w(3, 72)], transB=1)
    onnx.save(bad.model((2, 6, 6), y, 3), str(tmp_path / "bad.onnx"))
    assert main(["import", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "b.h5")]) == 1
    err = capsys.readouterr().err
    assert "unsupported operator Erf" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "b.h5")
    np.save(tmp_path / "junk.npy", np.zeros(3))
    assert main(["import", str(tmp_path / "junk.npy"), "--out", str(tmp_path / "j.h5")]) == 1
    assert main(["import", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "j.h5")]) == 1
    assert main(["export", w]) == 1
    assert "nothing to do" in capsys.readouterr().err


# ------------------------------------------------------------------ with PyTorch (optional test extra)
@pytest.mark.parametrize("kind", ["lenet", "resblocks"])
def test_pytorch_models_exported_to_onnx_import_exactly(kind):
    pytest.importorskip("torch")
    from onnx_graphs import torch_models, torch_run

    model, proto, shape = torch_models(kind)
    spec, params = import_onnx(proto, name=kind)
    x = np.random.default_rng(0).standard_normal((4,) + shape)
    z = apply_output(PlainModel(spec, params).forward(x, need_grad=False), spec.output)
    assert _rel(z, torch_run(model, x)) < 1e-5
    if kind == "resblocks":
        assert spec.output == "log_softmax"
        assert any(isinstance(layer, S.Residual) for _, layer in S.walk(spec))


def test_pytorch_pt_state_dict_matches_by_order(tmp_path):
    torch = pytest.importorskip("torch")
    from onnx_graphs import torch_models, torch_run

    from mpcgpu.interop.importer import import_model

    model, _, shape = torch_models("lenet")
    torch.save(model.state_dict(), tmp_path / "lenet.pt")
    spec = S.Model(
        "lenet_small",
        shape,
        10,
        S.Sequential.named(
            (
                "features",
                S.Sequential(
                    (S.Conv2d(1, 6, 5), S.ReLU(), S.MaxPool2d(2), S.Conv2d(6, 16, 5), S.ReLU(), S.MaxPool2d(2))
                ),
            ),
            ("flatten", S.Flatten()),
            ("classifier", S.Sequential((S.Linear(256, 32), S.ReLU(), S.Linear(32, 10)))),
        ),
    )
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params, renamed, _ = match_state_dict(spec, state, ordered=True)
    assert ("conv1.weight", "features.0.weight") in renamed and ("fc2.bias", "classifier.2.bias") in renamed
    x = np.random.default_rng(1).standard_normal((3,) + shape)
    assert _rel(PlainModel(spec, params).forward(x, need_grad=False), torch_run(model, x)) < 1e-6
    with pytest.raises(StateDictError, match="does not match"):  # the zoo LeNet has other shapes
        import_model(tmp_path / "lenet.pt", arch="lenet")
