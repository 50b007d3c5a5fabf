"""Helpers of the transformer-zoo tests: a graph model written as ONNX (onnx.helper; run by
onnxruntime), straightforward NumPy float64 transformers (BERT, GPT-2, ViT) written from the
formulas, independent of the graphs, and stand-in operator records for a checkout whose
operator modules are not there yet."""

from __future__ import annotations

import contextlib
import math

import numpy as np

#: every operator the built graphs use
GRAPH_OPS = (
    "Add",
    "Cast",
    "Concat",
    "Conv",
    "Div",
    "Erf",
    "Expand",
    "Gather",
    "LayerNormalization",
    "MatMul",
    "Mul",
    "Pow",
    "Reshape",
    "Softmax",
    "Split",
    "Tanh",
    "Transpose",
    "Where",
)


@contextlib.contextmanager
def ops_available():
    """Register a stand-in record for each operator of :data:`GRAPH_OPS` that no operator
    module registers (before graph-core's operators are merged: graphs must validate), and
    remove exactly those again afterwards."""
    from mpcgpu.nn import dag
    from mpcgpu.nn import ops as _ops  # noqa: F401  (the real records first)

    added = []

    def _none(*a, **k):
        raise NotImplementedError("a stand-in operator record of the tests")

    for name in GRAPH_OPS:
        if name not in dag._OPS:
            ex = dag.Node(name, "example", ["x"], ["y"])
            dag.register_op(name, plain=_none, private=_none, examples=[(ex, [dag.TensorInfo("x", (1,))])])
            added.append(name)
    try:
        yield added
    finally:
        for name in added:
            dag._OPS.pop(name, None)


# -- ONNX ---------------------------------------------------------------------------------------


def to_onnx(g, params, consts):
    """The graph as an ONNX model (opset 18; params as float32 initializers, consts as
    float32 / int64 / bool initializers)."""
    from onnx import TensorProto, helper, numpy_helper

    elem = {"float": TensorProto.FLOAT, "int": TensorProto.INT64, "bool": TensorProto.BOOL}
    np_t = {"float": np.float32, "int": np.int64, "bool": np.bool_}
    inits = [numpy_helper.from_array(np.asarray(params[p.name], np.float32), p.name) for p in g.params]
    inits += [numpy_helper.from_array(np.asarray(consts[c.name], np_t[c.dtype]), c.name) for c in g.consts]
    inputs = [helper.make_tensor_value_info(t.name, elem[t.dtype], list(t.shape)) for t in g.inputs]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in g.outputs]
    nodes = [helper.make_node(n.op, list(n.inputs), list(n.outputs), name=n.name, **n.attrs) for n in g.nodes]
    graph = helper.make_graph(nodes, g.name, inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def run_onnx(g, params, consts, feeds):
    import onnxruntime as ort

    model = to_onnx(g, params, consts)
    np_t = {"float": np.float32, "int": np.int64, "bool": np.bool_}
    feeds = {t.name: np.asarray(feeds[t.name], np_t[t.dtype]) for t in g.inputs}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(g.outputs, sess.run(list(g.outputs), feeds)))


# -- NumPy references (float64) -----------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _lin(P, x, name):
    return x @ P[f"{name}.weight"] + P[f"{name}.bias"]


def _heads(x, h):
    B, T, H = x.shape
    return x.reshape(B, T, h, H // h).transpose(0, 2, 1, 3)


def _merge(x):
    B, h, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, h * d)


def _attend(q, k, v, bias):
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    return softmax(s) @ v


def bert_ref(P, cfg, ids, mask):
    T = ids.shape[1]
    x = P["embeddings.word_embeddings.weight"][ids]
    x = x + P["embeddings.token_type_embeddings.weight"][0] + P["embeddings.position_embeddings.weight"][:T]
    x = layer_norm(x, P["embeddings.LayerNorm.weight"], P["embeddings.LayerNorm.bias"], cfg.eps)
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}"
        q, k, v = (_heads(_lin(P, x, f"{p}.attention.self.{t}"), cfg.heads) for t in ("query", "key", "value"))
        a = _lin(P, _merge(_attend(q, k, v, bias)), f"{p}.attention.output.dense")
        ln = f"{p}.attention.output.LayerNorm"
        x = layer_norm(a + x, P[f"{ln}.weight"], P[f"{ln}.bias"], cfg.eps)
        f = _lin(P, gelu_erf(_lin(P, x, f"{p}.intermediate.dense")), f"{p}.output.dense")
        x = layer_norm(f + x, P[f"{p}.output.LayerNorm.weight"], P[f"{p}.output.LayerNorm.bias"], cfg.eps)
    return {"last_hidden_state": x, "pooler_output": np.tanh(_lin(P, x[:, 0], "pooler.dense"))}


def gpt2_ref(P, cfg, ids):
    """``(logits, [(key, value) per layer])`` of GPT-2 over all of ``ids``."""
    T = ids.shape[1]
    x = P["transformer.wte.weight"][ids] + P["transformer.wpe.weight"][:T]
    causal = np.where(np.tril(np.ones((T, T), bool)), 0.0, -np.inf)
    cache = []
    for i in range(cfg.layers):
        p = f"transformer.h.{i}"
        a = layer_norm(x, P[f"{p}.ln_1.weight"], P[f"{p}.ln_1.bias"], cfg.eps)
        q, k, v = np.split(_lin(P, a, f"{p}.attn.c_attn"), 3, axis=-1)
        q, k, v = (_heads(t, cfg.heads) for t in (q, k, v))
        cache.append((k, v))
        x = x + _lin(P, _merge(_attend(q, k, v, causal)), f"{p}.attn.c_proj")
        m = layer_norm(x, P[f"{p}.ln_2.weight"], P[f"{p}.ln_2.bias"], cfg.eps)
        x = x + _lin(P, gelu_tanh(_lin(P, m, f"{p}.mlp.c_fc")), f"{p}.mlp.c_proj")
    x = layer_norm(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], cfg.eps)
    return x @ P["transformer.wte.weight"].T, cache


def vit_ref(P, cfg, pixels):
    B, C, S, _ = pixels.shape
    p, n = cfg.patch, S // cfg.patch
    patches = pixels.reshape(B, C, n, p, n, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, n * n, C * p * p)
    w = P["vit.embeddings.patch_embeddings.projection.weight"].reshape(cfg.hidden, -1)
    x = patches @ w.T + P["vit.embeddings.patch_embeddings.projection.bias"]
    cls = np.broadcast_to(P["vit.embeddings.cls_token"], (B, 1, cfg.hidden))
    x = np.concatenate([cls, x], axis=1) + P["vit.embeddings.position_embeddings"]
    for i in range(cfg.layers):
        pre = f"vit.layers.{i}"
        a = layer_norm(x, P[f"{pre}.layernorm_before.weight"], P[f"{pre}.layernorm_before.bias"], cfg.eps)
        q, k, v = (_heads(_lin(P, a, f"{pre}.attention.{t}_proj"), cfg.heads) for t in "qkv")
        x = x + _lin(P, _merge(_attend(q, k, v, None)), f"{pre}.attention.o_proj")
        m = layer_norm(x, P[f"{pre}.layernorm_after.weight"], P[f"{pre}.layernorm_after.bias"], cfg.eps)
        x = x + _lin(P, gelu_erf(_lin(P, m, f"{pre}.mlp.fc1")), f"{pre}.mlp.fc2")
    x = layer_norm(x, P["vit.layernorm.weight"], P["vit.layernorm.bias"], cfg.eps)
    return {"logits": _lin(P, x[:, 0], "classifier")}


def model_shards(rt, folder, g, seed):
    """Random weights of ``g`` saved by party 0 and split into model shards under
    ``folder/models`` (every party calls it): ``(shard stem, params, consts)``."""
    import os

    from mpcgpu.data import split
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.weights import save_weights

    params, consts = TF.random_weights(g, seed, ln_noise=0.1)
    if rt.rank == 0:
        src = os.path.join(folder, f"{g.name}.h5")
        save_weights(src, g.name, params, spec=g, consts=consts, dtype=np.float64)
        split.split_file(src, os.path.join(folder, "models"))
    rt.comm.barrier()
    return os.path.join(folder, "models", g.name), params, consts


def temp_folder(rt, prefix):
    """A temporary folder every party sees (party 0 makes it), removed after the block."""
    import contextlib
    import shutil
    import tempfile

    @contextlib.contextmanager
    def made():
        d = tempfile.mkdtemp(prefix=prefix) if rt.rank == 0 else None
        d = rt.comm.bcast_object(d)
        try:
            yield d
        finally:
            rt.comm.barrier()
            if rt.rank == 0:
                shutil.rmtree(d, ignore_errors=True)

    return made()
