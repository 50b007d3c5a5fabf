"""Graph-model operators, single process: every registered operator's examples, plaintext
facet against onnxruntime on a one-node ONNX model; the JSON round trip; GraphErrors."""

import numpy as np
import pytest

from mpcgpu.nn import dag
from mpcgpu.nn.dag import GraphError, GraphModel, Node, TensorInfo
from mpcgpu.nn.dag_run import one_hot, run_plain
from mpcgpu.nn.ops._common import example_value

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

#: the opset each operator's one-node model declares (ONNX's own version of the op)
OPSET = {"Gelu": 20}
_TYPES = {"float": TensorProto.DOUBLE, "int": TensorProto.INT64, "bool": TensorProto.BOOL}
#: onnxruntime's own error where it approximates in float64 (its Gelu's erf: ~4e-7 relative)
ORT_TOL = {"Gelu": 1e-6}
#: attributes of ours, not ONNX's
_OURS = {"dtype", "domain", "signed", "pow2"}


def _examples():
    out = []
    for t in dag.registered_ops():
        for node, infos in t.examples:
            out.append(pytest.param(t, node, infos, id=node.name))
    return out


def _onnx_attrs(node):
    attrs = {}
    for k, v in node.attrs.items():
        if k in _OURS:
            continue
        if node.op == "Constant" and k == "value":
            v = numpy_helper.from_array(np.asarray(v, dtype=node.attr("dtype") or None))
        elif node.op == "ConstantOfShape" and k == "value":
            v = numpy_helper.from_array(np.asarray(v).reshape(1))
        attrs[k] = v
    return attrs


def _ort_run(node, infos, feeds, float_type):
    types = dict(_TYPES, float=float_type)
    inputs = [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in infos]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.outputs]
    onode = helper.make_node(node.op, list(node.inputs), list(node.outputs), name=node.name, **_onnx_attrs(node))
    graph = helper.make_graph([onode], "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET.get(node.op, 18))])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    cast = {
        t.name: (
            feeds[t.name].astype(np.float32)
            if float_type == TensorProto.FLOAT and t.dtype == "float"
            else feeds[t.name]
        )
        for t in infos
    }
    return sess.run(None, cast)


def _reference(node, infos, feeds):
    try:
        return _ort_run(node, infos, feeds, TensorProto.DOUBLE), ORT_TOL.get(node.op, 1e-12)
    except Exception:  # an op onnxruntime implements in float32 only
        return _ort_run(node, infos, feeds, TensorProto.FLOAT), 2e-6


@pytest.mark.parametrize("op,node,infos", _examples())
def test_plain_facet_matches_onnxruntime(op, node, infos):
    rng = np.random.default_rng(7)
    feeds = {t.name: example_value(node, t, rng) for t in infos}
    for t in infos:
        assert feeds[t.name].shape == t.shape, (t.name, feeds[t.name].shape)
    args = [feeds[n] if n else None for n in node.inputs]
    ours = op.plain(node, args)
    assert len(ours) == len(node.outputs)
    if "pow2" in node.attrs:  # ours (nn.dag_fuse): the product times 2^pow2
        ref, tol = [np.matmul(*args) * 2.0 ** node.attrs["pow2"]], 1e-12
    else:
        ref, tol = _reference(node, infos, feeds)
    for mine, theirs in zip(ours, ref):
        mine = np.asarray(mine)
        assert mine.shape == theirs.shape
        kind = lambda k: "f" if k == "f" else ("b" if k == "b" else "i")  # noqa: E731
        assert kind(mine.dtype.kind) == kind(theirs.dtype.kind), (mine.dtype, theirs.dtype)
        if mine.dtype.kind == "f":
            np.testing.assert_allclose(mine, theirs.astype(np.float64), rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(mine, theirs)


def test_every_op_documents_its_cost_and_has_examples():
    names = {t.name for t in dag.registered_ops()}
    needed = {
        "Reshape", "Transpose", "Split", "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze", "Expand", "Flatten",
        "Identity", "Shape", "Constant", "ConstantOfShape", "Cast", "Range", "Equal", "And", "Or", "Not", "Less",
        "Greater", "IsNaN", "Where", "GatherElements", "GatherND", "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Sqrt",
        "Reciprocal", "ReduceMean", "ReduceSum", "MatMul", "Gemm", "Conv",
    }  # fmt: skip
    assert needed <= names, needed - names
    for t in dag.registered_ops():
        assert t.doc and t.examples


def _attention_graph():
    """x (1, 4, 8) -> q, k, v -> softmax-free attention scores + a causal mask."""
    ins = [TensorInfo("x", (1, 4, 8)), TensorInfo("mask", (1, 1, 4, 4), "float", "public")]
    params = [TensorInfo("wq", (8, 8)), TensorInfo("wk", (8, 8))]
    consts = [TensorInfo("heads", (4,), "int", "public"), TensorInfo("scale", (), "float", "public")]
    nodes = [
        Node("MatMul", "q", ["x", "wq"], ["q"]),
        Node("MatMul", "k", ["x", "wk"], ["k"]),
        Node("Reshape", "qh", ["q", "heads"], ["qh"], {"allowzero": 0}),
        Node("Reshape", "kh", ["k", "heads"], ["kh"]),
        Node("Transpose", "qt", ["qh"], ["qt"], {"perm": [0, 2, 1, 3]}),
        Node("Transpose", "kt", ["kh"], ["kt"], {"perm": [0, 2, 3, 1]}),
        Node("MatMul", "s", ["qt", "kt"], ["s"]),
        Node("Mul", "ss", ["s", "scale"], ["ss"]),
        Node("Add", "m", ["ss", "mask"], ["scores"]),
    ]
    return GraphModel("att", ins, ["scores"], nodes, params, consts, description="test", task="hidden")


def test_json_round_trip_and_run_plain():
    g = _attention_graph()
    text = dag.to_json(g)
    assert dag.is_graph_json(text)
    back = dag.from_json(text)
    assert dag.to_dict(back) == dag.to_dict(g)
    rng = np.random.default_rng(1)
    params = {"wq": rng.normal(size=(8, 8)), "wk": rng.normal(size=(8, 8))}
    consts = {"heads": np.array([0, 0, 2, 4]), "scale": np.array(0.5)}
    mask = np.triu(np.full((4, 4), -np.inf), 1)[None, None]
    x = rng.normal(size=(1, 4, 8))
    out = run_plain(back, params, consts, {"x": x, "mask": mask})["scores"]
    q = (x @ params["wq"]).reshape(1, 4, 2, 4).transpose(0, 2, 1, 3)
    k = (x @ params["wk"]).reshape(1, 4, 2, 4).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, 0.5 * (q @ k) + mask, rtol=1e-12)
    assert np.isneginf(out[0, 0, 0, 1]) and np.isfinite(out[0, 0, 1, 0])


def test_run_plain_refuses_wrong_feeds_and_names_the_node():
    g = _attention_graph()
    params = {"wq": np.zeros((8, 8)), "wk": np.zeros((8, 8))}
    consts = {"heads": np.array([0, 0, 2, 4]), "scale": np.array(0.5)}
    with pytest.raises(GraphError, match="missing \\['mask'\\]"):
        run_plain(g, params, consts, {"x": np.zeros((1, 4, 8))})
    with pytest.raises(GraphError, match="input x has shape"):
        run_plain(g, params, consts, {"x": np.zeros((1, 4, 7)), "mask": np.zeros((1, 1, 4, 4))})
    with pytest.raises(GraphError, match="node qh \\(Reshape\\): cannot reshape"):
        run_plain(
            g,
            params,
            {**consts, "heads": np.array([0, 0, 3, 4])},
            {"x": np.zeros((1, 4, 8)), "mask": np.zeros((1, 1, 4, 4))},
        )
    with pytest.raises(GraphError, match="unknown operators \\['Frobnicate'\\]"):
        GraphModel("bad", [TensorInfo("x", (2,))], ["y"], [Node("Frobnicate", "f", ["x"], ["y"])])


def test_structural_errors_name_the_node():
    n = Node("Pow", "p", ["x", "e"], ["y"])
    from mpcgpu.nn.ops import arith  # noqa: F401
    from mpcgpu.nn.ops.shape import gather_plain, split_plain

    with pytest.raises(GraphError, match="node g \\(Gather\\): indices outside"):
        gather_plain(Node("Gather", "g", ["t", "i"], ["y"]), [np.zeros((3, 2)), np.array([3])])
    with pytest.raises(GraphError, match="node s \\(Split\\)"):
        split_plain(Node("Split", "s", ["x"], ["a", "b"], {"num_outputs": 3}), [np.zeros((6,))])
    assert n.name == "p"


def test_one_hot_helpers():
    g = GraphModel(
        "emb",
        [TensorInfo("ids", (1, 3), "int", "secret")],
        ["e"],
        [Node("Reshape", "r", ["ids", "s"], ["v"]), Node("Gather", "g", ["table", "v"], ["e"])],
        params=[TensorInfo("table", (10, 4))],
        consts=[TensorInfo("s", (2,), "int", "public")],
    )
    assert g.one_hot_width("ids") == 10
    oh = one_hot(np.array([[1, -1, 0]]), 10)
    assert oh.shape == (1, 3, 10) and oh.sum() == 3 and oh[0, 1, 9] == 1 and oh[0, 0, 1] == 1
    with pytest.raises(GraphError, match="token ids must lie in"):
        one_hot(np.array([10]), 10)
    table = np.arange(40.0).reshape(10, 4)
    out = run_plain(g, {"table": table}, {"s": np.array([1, 3])}, {"ids": np.array([[1, 2, 9]])})["e"]
    np.testing.assert_array_equal(out, table[[[1, 2, 9]]])


def test_a_facet_error_names_its_node():
    g = GraphModel(
        "mm",
        [TensorInfo("x", (2, 3))],
        ["y"],
        [Node("MatMul", "proj", ["x", "w"], ["y"])],
        consts=[TensorInfo("w", (4, 2), "float", "public")],
    )
    with pytest.raises(ValueError, match="^node proj \\(MatMul\\): .*") as info:
        run_plain(g, {}, {"w": np.ones((4, 2))}, {"x": np.ones((2, 3))})
    assert not isinstance(info.value, GraphError)  # numpy's ValueError, named


def _gelu_graphs():
    """The exporter's GELU patterns and scaled attention scores (names as torch.onnx writes)."""
    f32 = lambda v: np.array(np.float32(v), dtype=np.float64)  # noqa: E731  (constants come from float32)
    consts = {
        "sqrt2": f32(np.sqrt(2)), "one": f32(1.0), "half": f32(0.5), "three": f32(3.0),
        "c": f32(0.044715), "k": f32(np.sqrt(2 / np.pi)), "s": f32(64**-0.25),
    }  # fmt: skip
    nodes = [
        # BERT: Div, Erf, Add, Mul(0.5, .), Mul(x, .)
        Node("Div", "d", ["x", "sqrt2"], ["x_d"]),
        Node("Erf", "e", ["x_d"], ["x_e"]),
        Node("Add", "a", ["x_e", "one"], ["x_a"]),
        Node("Mul", "m", ["half", "x_a"], ["x_m"]),
        Node("Mul", "gelu_erf", ["x", "x_m"], ["y1"]),
        # GPT-2: Mul(x, 0.5), Pow, Mul(c), Add, Mul(k), Tanh, Add(1), Mul
        Node("Mul", "h", ["x", "half"], ["t_h"]),
        Node("Pow", "p", ["x", "three"], ["t_p"]),
        Node("Mul", "pc", ["t_p", "c"], ["t_pc"]),
        Node("Add", "s1", ["x", "t_pc"], ["t_s"]),
        Node("Mul", "sk", ["t_s", "k"], ["t_k"]),
        Node("Tanh", "t", ["t_k"], ["t_t"]),
        Node("Add", "a1", ["t_t", "one"], ["t_a"]),
        Node("Mul", "gelu_tanh", ["t_h", "t_a"], ["y2"]),
        # scores: MatMul(Mul(q, s), Mul(k, s)), s^2 = 1/8
        Node("Mul", "qs", ["q", "s"], ["q_s"]),
        Node("Mul", "ks", ["kt", "s"], ["k_s"]),
        Node("MatMul", "scores", ["q_s", "k_s"], ["y3"]),
    ]
    infos = [TensorInfo(n, (1, 2, 3, 3)) for n in ("x", "q", "kt")]
    cinfo = [TensorInfo(n, (), "float", "public") for n in consts]
    return GraphModel("pat", infos, ["y1", "y2", "y3"], nodes, consts=cinfo), consts


def test_fuse_rewrites_the_exporters_patterns_exactly():
    from mpcgpu.nn.dag_fuse import fuse

    g, consts = _gelu_graphs()
    fused, counts = fuse(g, consts)
    assert counts == {"gelu": 2, "scaled_matmul": 1}
    assert [(n.op, n.name, n.attrs) for n in fused.nodes] == [
        ("Gelu", "gelu_erf", {"approximate": "none"}),
        ("Gelu", "gelu_tanh", {"approximate": "tanh"}),
        ("MatMul", "scores", {"pow2": -3}),
    ]
    rng = np.random.default_rng(0)
    feeds = {n: rng.normal(0, 2, (1, 2, 3, 3)) for n in ("x", "q", "kt")}
    want, got = run_plain(g, {}, consts, feeds), run_plain(fused, {}, consts, feeds)
    for o in g.outputs:
        np.testing.assert_allclose(got[o], want[o], rtol=1e-6, atol=1e-6)
    assert dag.to_dict(dag.from_json(dag.to_json(fused))) == dag.to_dict(fused)
    # left composed, the GELUs' nodes are found for the profile (5 of the erf form, 8 of the tanh form)
    from mpcgpu.nn.dag_fuse import gelu_nodes

    found = gelu_nodes(g, consts)
    assert sorted(n.name for n in g.nodes if id(n) in found) == sorted(
        ["d", "e", "a", "m", "gelu_erf", "h", "p", "pc", "s1", "sk", "t", "a1", "gelu_tanh"]
    )


def test_fuse_leaves_what_does_not_match():
    from mpcgpu.nn.dag_fuse import fuse

    g, consts = _gelu_graphs()
    # another reader of an intermediate value, a different constant, a scale that is no power of two
    extra = Node("Neg", "peek", ["x_e"], ["peek"])
    g2 = dag.replace(g, nodes=g.nodes + (extra,), outputs=g.outputs + ("peek",))
    other = {**consts, "c": np.array(0.044), "s": np.array(0.3)}
    fused, counts = fuse(g2, other)
    assert counts == {"scaled_matmul": 0, "gelu": 0} and fused is g2
    # the choice of rewrites
    fused, counts = fuse(g, consts, ("scaled_matmul",))
    assert counts == {"scaled_matmul": 1} and [n.op for n in fused.nodes].count("Gelu") == 0
    assert fuse(g, consts, False) == (g, {})
    with pytest.raises(ValueError, match="unknown graph rewrites \\['gelus'\\]"):
        fuse(g, consts, ["gelus"])
