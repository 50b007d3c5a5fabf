"""ONNX graphs as graph models (mpcgpu.interop.onnx_graph): the tiny BERT / GPT-2 / ViT
exports of tests/fixtures/transformers import (static shapes, params and consts by value,
constant folding, every unsupported node named), export back to ONNX and run in onnxruntime
exactly as the original; CNN files still import as layer trees (single process)."""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mpcgpu.errors import MPCError  # noqa: E402
from mpcgpu.interop import onnx_graph as og  # noqa: E402
from mpcgpu.interop.importer import import_model, parse_input_shapes  # noqa: E402
from mpcgpu.interop.onnx_import import ModelImportError  # noqa: E402
from mpcgpu.nn import dag  # noqa: E402
from mpcgpu.nn import spec as S  # noqa: E402

from onnx_graphs import chain_net, ort_run, residual_net  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "transformers")
NAMES = ("bert", "gpt2", "vit")


def _proto(which):
    return onnx.load(os.path.join(FIXTURES, f"{which}.onnx"))


def _feeds(proto, seed):
    """Random inputs of an ONNX model: token ids < 100, a 0/1 mask with the first token
    kept, normal pixels."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in proto.graph.input:
        if v.name in {i.name for i in proto.graph.initializer}:
            continue
        shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if v.name == "input_ids":
            out[v.name] = rng.integers(0, 100, shape).astype(np.int64)
        elif v.name == "attention_mask":
            m = (rng.random(shape) < 0.7).astype(np.int64)
            m[..., 0] = 1
            out[v.name] = m
        else:
            out[v.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _run(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# ------------------------------------------------------------------ the fixtures
def test_fixtures_are_small_and_self_contained():
    for which in NAMES:
        path = os.path.join(FIXTURES, f"{which}.onnx")
        assert os.path.getsize(path) < 1 << 20
        p = onnx.load(path, load_external_data=False)
        assert not any(t.data_location == TensorProto.EXTERNAL for t in p.graph.initializer)
        assert [o.version for o in p.opset_import if o.domain in ("", "ai.onnx")] == [18]


@pytest.mark.parametrize("which", NAMES)
def test_each_fixture_imports(which):
    g, params, consts, notes = og.import_graph(_proto(which), which)
    assert g.name == which
    assert "Identity" not in g.ops() and "Constant" not in g.ops()
    assert set(g.ops()) <= set(og.supported_ops())
    assert set(params) == {t.name for t in g.params} and set(consts) == {t.name for t in g.consts}
    for t in g.params:
        assert params[t.name].shape == t.shape and params[t.name].dtype == np.float64 and params[t.name].size > 1
        assert np.abs(params[t.name]).max() < og.FIXED_POINT_LIMIT
    for t in g.consts:
        assert consts[t.name].shape == t.shape and consts[t.name].dtype in (np.float64, np.int64, np.bool_)
    # the JSON format keeps everything
    assert dag.to_dict(dag.from_json(dag.to_json(g))) == dag.to_dict(g)
    inputs = {t.name: (t.shape, t.dtype, t.role) for t in g.inputs}
    if which == "bert":
        assert inputs == {"input_ids": ((1, 16), "int", "secret"), "attention_mask": ((1, 16), "int", "public")}
        assert g.task == "hidden" and g.outputs == ("layer_norm_4", "tanh")
        assert "embeddings.word_embeddings.weight" in params and params["embeddings.word_embeddings.weight"].shape == (
            100,
            32,
        )
        assert "embedding_2" in params  # the position embeddings the exporter folded: still secret
        # token_type_ids (zeros) computed from constants by GatherElements: folded to a const
        assert "GatherElements" not in g.ops() and np.array_equal(consts["gather"], np.zeros((1, 16)))
        assert consts["val_99"] < -1e38  # the mask's "minus infinity", public
    elif which == "gpt2":
        assert inputs == {"input_ids": ((1, 16), "int", "secret")}
        assert g.task == "lm" and g.outputs == ("linear",)
        # the exporter writes lm_head's transpose as another initializer: tied to lm_head
        assert "val_308" not in params and "lm_head.weight" in params
        tie = [n for n in g.nodes if n.outputs == ("val_308",)]
        assert len(tie) == 1 and tie[0].op == "Transpose" and tie[0].inputs == ("lm_head.weight",)
        assert any("tied weights: val_308 = lm_head.weight transposed" in n for n in notes)
        untied, p2, *_ = og.import_graph(_proto(which), which, tie_weights=False)
        assert "Transpose" not in {n.op for n in untied.nodes if n.outputs == ("val_308",)}
        assert np.array_equal(p2["val_308"], params["lm_head.weight"].T)
        mask = consts["val_156"]  # the causal mask
        assert mask.shape == (1, 1, 16, 16) and np.array_equal(mask[0, 0] < -1e38, np.triu(np.ones((16, 16)), 1) > 0)
        assert "view_8_shape" in consts  # "view_8/shape" sanitised
    else:
        assert inputs == {"pixel_values": ((1, 1, 28, 28), "float", "secret")}
        assert g.task == "logits"
        assert "vit.embeddings.patch_embeddings.projection.weight" in params
        assert "Conv" in g.ops()
    assert any("inputs:" in n for n in notes)


@pytest.mark.parametrize("which", NAMES)
def test_import_export_round_trip_equals_onnxruntime(which):
    proto = _proto(which)
    g, params, consts, _ = og.import_graph(proto, which)
    back = og.export_graph(dag.from_json(dag.to_json(g)), params, consts)
    onnx.checker.check_model(back)
    assert [o.name for o in back.graph.output] == [o.name for o in proto.graph.output]
    for seed in range(3):
        feeds = _feeds(proto, seed)
        ref, got = _run(proto, feeds), _run(back, feeds)
        assert len(ref) == len(got)
        for a, b in zip(ref, got):
            assert a.shape == b.shape
            assert np.abs(a).max() > 1e-3  # not a vacuous comparison
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # the masks matter: another attention mask gives other hidden states
    if which == "bert":
        f0 = _feeds(proto, 0)
        f1 = dict(f0, attention_mask=np.ones_like(f0["attention_mask"]))
        assert np.abs(_run(back, f0)[0] - _run(back, f1)[0]).max() > 1e-3


def test_an_exported_graph_imports_back_with_its_roles_and_task():
    g, params, consts, _ = og.import_graph(_proto("bert"), "bert", public_inputs=["input_ids"], task="logits")
    assert g.task == "logits" and {t.name: t.role for t in g.inputs}["input_ids"] == "public"
    back = og.export_graph(g, params, consts)
    g2, params2, consts2, _ = og.import_graph(back, "bert")
    assert g2.task == "logits" and {t.name: t.role for t in g2.inputs} == {t.name: t.role for t in g.inputs}
    assert g2.nodes and [n.op for n in g2.nodes] == [n.op for n in g.nodes]
    assert params2.keys() == params.keys()
    for k in params:
        np.testing.assert_allclose(params2[k], params[k], rtol=1e-7)  # float32 in the file
    # explicit arguments override what the file carries
    g3, *_ = og.import_graph(back, "bert", secret_inputs=["input_ids", "attention_mask"], task="hidden")
    assert g3.task == "hidden" and {t.role for t in g3.inputs} == {"secret"}


def test_input_roles_and_overrides():
    g, *_ = og.import_graph(_proto("bert"), "b", secret_inputs=["attention_mask"])
    assert {t.role for t in g.inputs} == {"secret"}
    with pytest.raises(og.GraphImportError, match="both public and secret"):
        og.import_graph(_proto("bert"), "b", public_inputs=["input_ids"], secret_inputs=["input_ids"])
    with pytest.raises(og.GraphImportError, match=r"no graph inputs called \['token_ids'\]"):
        og.import_graph(_proto("bert"), "b", public_inputs=["token_ids"])
    with pytest.raises(og.GraphImportError, match="task must be one of"):
        og.import_graph(_proto("vit"), "v", task="classes")


# ------------------------------------------------------------------ refusals
def test_every_unsupported_node_is_named_in_one_error():
    proto = _proto("bert")
    erf = [n for n in proto.graph.node if n.op_type == "Erf"]
    assert len(erf) == 2
    for n in erf:
        n.op_type = "Sinh"
    tanh = next(n for n in proto.graph.node if n.op_type == "Tanh")
    tanh.domain = "com.example"
    with pytest.raises(og.GraphImportError) as e:
        og.import_graph(proto, "b")
    msg = str(e.value)
    assert "3 unsupported nodes" in msg
    for n in erf:
        assert f"node {n.name!r}: unsupported operator Sinh" in msg
    assert f"node {tanh.name!r}: unsupported operator com.example.Tanh" in msg


def _symbolic(proto, names=("input_ids", "attention_mask")):
    for v in proto.graph.input:
        if v.name in names:
            v.type.tensor_type.shape.dim[0].dim_param = "batch"
            v.type.tensor_type.shape.dim[1].dim_param = "sequence"
    return proto


def test_symbolic_dims_need_shapes():
    with pytest.raises(og.GraphImportError) as e:
        og.import_graph(_symbolic(_proto("bert")), "b")
    msg = str(e.value)
    assert "input_ids ['batch', 'sequence']" in msg and "attention_mask ['batch', 'sequence']" in msg
    assert "--input-shape NAME=1,128" in msg
    with pytest.raises(og.GraphImportError, match="attention_mask"):  # one given, one missing
        og.import_graph(_symbolic(_proto("bert")), "b", input_shapes={"input_ids": (1, 16)})
    g, *_ = og.import_graph(
        _symbolic(_proto("bert")), "b", input_shapes={"input_ids": (1, 16), "attention_mask": (1, 16)}
    )
    assert [t.shape for t in g.inputs] == [(1, 16), (1, 16)]
    with pytest.raises(og.GraphImportError, match="contradicts"):
        og.import_graph(_proto("gpt2"), "g", input_shapes={"input_ids": (1, 32)})
    with pytest.raises(og.GraphImportError, match="contradicts"):
        og.import_graph(_proto("gpt2"), "g", input_shapes={"input_ids": (16,)})


@pytest.mark.parametrize("shape", [(1, 16), (2, 24)])
def test_a_symbolic_export_folds_its_shape_arithmetic_once_shapes_are_given(shape):
    proto = _proto("bert_dynamic")
    dims = [[d.dim_param for d in v.type.tensor_type.shape.dim] for v in proto.graph.input]
    assert dims == [["batch", "seq"], ["batch", "seq"]]
    with pytest.raises(og.GraphImportError, match=r"input_ids \['batch', 'seq'\]"):
        og.import_graph(proto, "b")
    g, params, consts, notes = og.import_graph(proto, "b", input_shapes={"input_ids": shape, "attention_mask": shape})
    assert [t.shape for t in g.inputs] == [shape, shape]
    # every Shape, Range, Expand... of the export is gone: what is left is the static export's
    plumbing = {"Shape", "Range", "Expand", "Slice", "Concat", "Squeeze", "Unsqueeze", "Max", "GreaterOrEqual"}
    assert not plumbing & set(g.ops())
    assert set(g.ops()) <= set(og.import_graph(_proto("bert"), "s")[0].ops()) | {"Gather"}
    assert any("folded" in n for n in notes)
    back = og.export_graph(g, params, consts)
    rng = np.random.default_rng(1)
    for _ in range(2):
        mask = (rng.random(shape) < 0.7).astype(np.int64)
        mask[..., 0] = 1
        feeds = {"input_ids": rng.integers(0, 100, shape), "attention_mask": mask}
        for a, b in zip(_run(proto, feeds), _run(back, feeds)):
            assert a.shape == b.shape and a.shape[0] == shape[0]
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _set_init(proto, name, fn):
    init = next(i for i in proto.graph.initializer if i.name == name)
    arr = fn(numpy_helper.to_array(init).copy())
    init.CopyFrom(numpy_helper.from_array(arr, name))
    return proto


@pytest.mark.parametrize(
    "value, match",
    [(np.nan, "NaN"), (np.inf, "inf"), (3e5, "out of fixed point's range")],
)
def test_a_corrupt_weight_is_named(value, match):
    name = "encoder.layer.1.intermediate.dense.bias"

    def spoil(a):
        a[3] = value
        return a

    with pytest.raises(og.GraphImportError, match=match) as e:
        og.import_graph(_set_init(_proto("bert"), name, spoil), "b")
    assert repr(name) in str(e.value)


def test_classification_by_value():
    c = og.classify_initializer
    assert c("w", np.ones((2, 2), np.float32)) == "param"
    assert c("w", np.full(3, 9999.0)) == "param"
    assert c("s", np.float32(0.5)) == "const" and c("s", np.ones(1)) == "const"  # scalars public
    assert c("i", np.arange(4)) == "const" and c("b", np.ones(3, bool)) == "const"
    assert c("m", np.array([0.0, -np.inf, -3.4e38, -1e4])) == "const"  # a mask
    assert c("m", np.array(-np.inf)) == "const"
    for bad in ([0.0, 1e4], [1.0, -np.inf], [0.0, np.inf], [np.nan, 0.0]):
        with pytest.raises(og.GraphImportError, match="'x'"):
            c("x", np.array(bad))


def _tiny(nodes, inits, inputs, outputs):
    g = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_folding_never_touches_a_param_and_folds_shapes():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0], name="tw"),  # a param: kept
        helper.make_node("Shape", ["x"], ["sx"], name="shape"),  # static: folded
        helper.make_node("Gather", ["sx", "zero"], ["b"], axis=0, name="g0"),
        helper.make_node("Unsqueeze", ["b", "zero1"], ["b1"], name="u"),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0, name="cat"),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
        helper.make_node("Identity", ["y"], ["y2"], name="id"),
        helper.make_node("Reshape", ["y2", "target"], ["z"], name="rs"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),  # nothing reads it
        helper.make_node("Identity", ["z"], ["out"], name="id_out"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    p = _tiny(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    g, params, consts, notes = og.import_graph(p, "t")
    assert [n.op for n in g.nodes] == ["Transpose", "MatMul", "Reshape"]
    assert list(params) == ["w"] and np.array_equal(params["w"], w)
    assert g.outputs == ("out",) and g.nodes[-1].outputs == ("out",)
    target = g.nodes[-1].inputs[1]
    assert np.array_equal(consts[target], [2, -1])
    assert g.task == "logits" and g.nodes[0].attrs == {"perm": [1, 0]}  # (batch, features)
    assert any("folded 4" in n for n in notes) and any("dropped 1 nodes" in n for n in notes)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(og.export_graph(g, params, consts), {"x": x})[0], _run(p, {"x": x})[0], rtol=1e-6)


def test_attributes_become_json_and_tensor_attributes_consts():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Equal", ["ids", "pad"], ["eq"], name="eq"),
        helper.make_node(
            "ConstantOfShape",
            ["s"],
            ["ones"],
            name="cos",
            value=numpy_helper.from_array(np.array([1.5], np.float32), "v"),
        ),
        helper.make_node("Where", ["eq", "zero", "ones"], ["m"], name="where"),
        helper.make_node("Mul", ["x", "m"], ["y"], name="mul"),
        helper.make_node("LayerNormalization", ["y", "gamma"], ["out"], name="ln", epsilon=1e-12, axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "pad"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.linspace(0.5, 1.5, 4).astype(np.float32), "gamma"),
    ]
    p = _tiny(
        nodes,
        inits,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])],
    )
    g, params, consts, _ = og.import_graph(p, "t", public_inputs=["ids"])
    assert [n.op for n in g.nodes] == ["Equal", "Where", "Mul", "LayerNormalization"]
    assert g.nodes[-1].attrs == {"epsilon": 1e-12, "axis": -1}  # the decimal written, not 9.99e-13
    assert np.array_equal(consts[g.nodes[1].inputs[2]], np.full((2, 4), 1.5))  # ConstantOfShape folded
    assert list(params) == ["gamma"]
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "ids": np.array([[0, 1, 2, 0], [3, 0, 0, 1]])}
    np.testing.assert_allclose(_run(og.export_graph(g, params, consts), feeds)[0], _run(p, feeds)[0], rtol=1e-6)


def test_a_tensor_attribute_left_in_the_graph_is_a_const_and_exports():
    # ConstantOfShape of a public input's shape... of a public value: not foldable
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["n"], ["c"], name="cos", value=numpy_helper.from_array(np.array([2.0], np.float32), "v")
        ),
        helper.make_node("Add", ["x", "c"], ["out"], name="add"),
    ]
    p = _tiny(
        nodes,
        [],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])],
    )
    g, params, consts, _ = og.import_graph(p, "t", public_inputs=["n"])
    cos = g.nodes[0]
    assert cos.op == "ConstantOfShape" and np.array_equal(consts[cos.attrs["value"]], [2.0])
    back = og.export_graph(g, params, consts)
    feeds = {"x": np.ones(3, np.float32), "n": np.array([3])}
    np.testing.assert_array_equal(_run(back, feeds)[0], [3.0, 3.0, 3.0])


# ------------------------------------------------------------------ importer dispatch
def test_cnn_files_still_import_as_layer_trees(tmp_path):
    for make in (chain_net, residual_net):
        path = tmp_path / f"{make.__name__}.onnx"
        onnx.save(make(), str(path))
        result = import_model(path)
        assert len(result) == 3
        model, params, notes = result
        assert isinstance(model, S.Model) and any("onnxruntime" in n for n in notes)
        x = np.random.default_rng(0).standard_normal((2,) + tuple(model.input_shape))
        assert ort_run(make(), x).shape[0] == 2


def test_transformer_files_import_as_graph_models(tmp_path):
    path = os.path.join(FIXTURES, "gpt2.onnx")
    g, params, consts, notes = import_model(path)  # compared with onnxruntime by run_plain
    assert isinstance(g, dag.GraphModel) and g.name == "gpt2" and g.task == "lm"
    assert any("checked against onnxruntime" in n for n in notes)
    g2, *_ = import_model(path, graph=True, check=False)
    assert dag.to_json(g2) == dag.to_json(g)
    with pytest.raises(ModelImportError, match="exactly one data input"):
        import_model(os.path.join(FIXTURES, "bert.onnx"), graph=False, check=False)
    # graph-only options choose the graph importer
    g3, *_ = import_model(path, secret_inputs=["input_ids"], check=False)
    assert g3.inputs[0].role == "secret"
    with pytest.raises(MPCError, match="NAME=1,128"):
        import_model(path, graph=True, input_shape=(16,), check=False)


def test_a_one_input_graph_the_layer_importer_refuses_imports_as_a_graph(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Softmax", ["h"], ["p"], axis=-1, name="sm"),  # not the last node
        helper.make_node("MatMul", ["p", "w2"], ["y"], name="mm2"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w2"),
    ]
    p = _tiny(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    path = tmp_path / "sm.onnx"
    onnx.save(p, str(path))
    with pytest.raises(ModelImportError, match="last node"):
        import_model(path, graph=False)
    g, params, consts, notes = import_model(path)
    assert [n.op for n in g.nodes] == ["MatMul", "Softmax", "MatMul"] and set(params) == {"w1", "w2"}
    assert any("imported as a graph model (not a chain of layers" in n and "last node" in n for n in notes)
    assert any("checked against onnxruntime" in n for n in notes)


def test_refused_both_ways_gives_both_reasons(tmp_path):
    # a one-input network with an operator neither importer knows
    nodes = [helper.make_node("Sinh", ["x"], ["y"], name="odd")]
    p = _tiny(
        nodes,
        [],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(p, str(path))
    with pytest.raises(ModelImportError) as e:
        import_model(path)
    assert "unsupported operator Sinh" in str(e.value) and "nor as a graph model" in str(e.value)


def test_input_shape_arguments():
    assert parse_input_shapes(["input_ids=1,128", "attention_mask=1x128"]) == {
        "input_ids": (1, 128),
        "attention_mask": (1, 128),
    }
    for bad in (["1,128"], ["=1,2"], ["a=0,2"], ["a=1", "a=2"]):
        with pytest.raises(MPCError):
            parse_input_shapes(bad)


def test_cli_graph_arguments(tmp_path, capsys):
    import inspect

    from mpcgpu.cli import main
    from mpcgpu.nn.weights import save_weights

    path = os.path.join(FIXTURES, "bert.onnx")
    out = str(tmp_path / "b.h5")
    assert main(["import", path, "--out", out, "--public-input", "token_ids", "--no-check"]) == 1
    assert "token_ids" in capsys.readouterr().err
    assert main(["import", path, "--out", out, "--input-shape", "3,4", "--input-shape", "a=1,2"]) == 1
    assert "NAME=SHAPE" in capsys.readouterr().err
    assert not os.path.exists(out)
    dyn = os.path.join(FIXTURES, "bert_dynamic.onnx")
    assert main(["import", dyn, "--out", out]) == 1
    assert "--input-shape NAME=1,128" in capsys.readouterr().err
    shapes = ["--input-shape", "input_ids=1,16", "--input-shape", "attention_mask=1,16"]
    code = main(["import", dyn, "--out", out, *shapes])
    outerr = capsys.readouterr()
    if "consts" not in inspect.signature(save_weights).parameters:  # graph weights files: tf-zoo
        assert code == 1 and "cannot write graph models" in outerr.err
        return
    assert code == 0, outerr.err
    assert "graph model bert_dynamic" in outerr.out and "attention_mask 1x16 (public)" in outerr.out
    assert "checked against onnxruntime" in outerr.out
    assert os.path.exists(out)


# ------------------------------------------------------------------ the plaintext executor
@pytest.mark.parametrize("which", NAMES)
def test_plaintext_executor_equals_onnxruntime(which):
    from mpcgpu.nn import dag_run

    proto = _proto(which)
    g, params, consts, _ = og.import_graph(proto, which)
    for seed in range(2):
        feeds = _feeds(proto, seed)
        ref = _run(proto, feeds)
        got = dag_run.run_plain(g, params, consts, {k: np.asarray(v) for k, v in feeds.items()})
        for name, r in zip(g.outputs, ref):
            z = np.asarray(got[name], np.float64)
            assert z.shape == r.shape
            np.testing.assert_allclose(z, r, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(r).max()))


def test_older_opsets_are_converted_and_gelu_exports_at_opset_20():
    # opset 11: axes and split sizes are attributes there, inputs at opset 18
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1, name="mean"),
        helper.make_node("Sub", ["x", "m"], ["d"], name="sub"),
        helper.make_node("Split", ["d"], ["a", "b"], axis=-1, split=[1, 3], name="split"),
        helper.make_node("Unsqueeze", ["a"], ["a1"], axes=[0], name="unsq"),
        helper.make_node("Squeeze", ["a1"], ["a2"], axes=[0], name="sq"),
        helper.make_node("Concat", ["b", "a2"], ["y"], axis=-1, name="cat"),
    ]
    g11 = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    p = helper.make_model(g11, opset_imports=[helper.make_opsetid("", 11)])
    p.ir_version = 7
    g, params, consts, notes = og.import_graph(p, "old")
    assert any("converted from opset 11 to 18" in n for n in notes)
    mean = next(n for n in g.nodes if n.op == "ReduceMean")
    assert "axes" not in mean.attrs and len(mean.inputs) == 2 and np.array_equal(consts[mean.inputs[1]], [-1])
    x = np.arange(8, dtype=np.float32).reshape(2, 4) ** 2
    np.testing.assert_allclose(_run(og.export_graph(g, params, consts), {"x": x})[0], _run(p, {"x": x})[0])

    gelu = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], approximate="tanh", name="gelu")],
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    p20 = helper.make_model(gelu, opset_imports=[helper.make_opsetid("", 20)])
    g, params, consts, _ = og.import_graph(p20, "gelu")
    assert [(n.op, n.attrs) for n in g.nodes] == [("Gelu", {"approximate": "tanh"})]
    back = og.export_graph(g, params, consts)
    assert [o.version for o in back.opset_import] == [20]
    x = np.linspace(-4, 4, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(_run(back, {"x": x})[0], _run(p20, {"x": x})[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "vit-tiny"])
def test_built_transformers_export_to_onnx_and_back(name):
    """The graphs mpcgpu builds itself (tf-zoo's mpcgpu.nn.transformers) export to ONNX that
    onnxruntime runs as the plaintext executor does, and import back to the same graph."""
    T = pytest.importorskip("mpcgpu.nn.transformers")
    from mpcgpu.nn import dag_run

    g = T.get_transformer(name)
    params, consts = T.random_weights(g, 0)
    back = og.export_graph(g, params, consts)
    rng = np.random.default_rng(0)
    feeds = {}
    for t in g.inputs:
        if t.dtype == "int":
            feeds[t.name] = rng.integers(0, 2, t.shape)
            if t.name == "attention_mask":
                feeds[t.name][..., 0] = 1
        else:
            feeds[t.name] = rng.standard_normal(t.shape)
    ref = _run(back, {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feeds.items()})
    got = dag_run.run_plain(g, params, consts, feeds)
    for o, r in zip(g.outputs, ref):
        np.testing.assert_allclose(np.asarray(got[o]), r, rtol=1e-4, atol=1e-5)
    g2, params2, consts2, _ = og.import_graph(back, g.name)
    assert dag.to_dict(g2)["nodes"] == dag.to_dict(g)["nodes"]
    assert g2.task == g.task and [(t.name, t.role) for t in g2.inputs] == [(t.name, t.role) for t in g.inputs]
    assert params2.keys() == params.keys()


def test_cli_import_then_export_of_a_transformer(tmp_path, capsys):
    """mpcgpu import bert.onnx, then mpcgpu export of that weights file: the ONNX written
    runs in onnxruntime as the original (needs graph weights files: nn.weights.load_graph)."""
    from mpcgpu.cli import main
    from mpcgpu.nn import weights as W

    if not hasattr(W, "load_graph"):
        pytest.skip("graph models' weights files (nn.weights.load_graph) are not in this build")
    w = str(tmp_path / "bert.h5")
    assert main(["import", os.path.join(FIXTURES, "bert.onnx"), "--out", w, "--float64"]) == 0
    capsys.readouterr()
    out_onnx, out_st = str(tmp_path / "b.onnx"), str(tmp_path / "b.safetensors")
    assert main(["export", w, "--onnx", out_onnx, "--safetensors", out_st]) == 0
    assert "onnxruntime agrees" in capsys.readouterr().out
    proto, back = _proto("bert"), onnx.load(out_onnx)
    feeds = _feeds(proto, 3)
    for a, b in zip(_run(proto, feeds), _run(back, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    from safetensors.numpy import load_file

    st = load_file(out_st)
    assert "embeddings.word_embeddings.weight" in st and st["embeddings.word_embeddings.weight"].shape == (100, 32)
