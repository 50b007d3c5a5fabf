"""The transformers built by mpcgpu (mpcgpu.nn.transformers): sizes and parameter counts of
the full configurations as Hugging Face counts them, the tiny configurations run by
onnxruntime against NumPy float64 references written from the formulas (and, where torch and
transformers are installed, against the Hugging Face models themselves), GPT-2's one-token
step with a key/value cache, and the plaintext executor where it is there."""

from __future__ import annotations

import numpy as np
import pytest

from mpcgpu.nn import dag
from mpcgpu.nn import transformers as TF
from tf_zoo_helpers import bert_ref, gpt2_ref, ops_available, run_onnx, vit_ref


@pytest.fixture(autouse=True, scope="module")
def _ops():
    with ops_available():
        yield


def _close(got, want, tol=2e-5):
    """float32 onnxruntime against float64: within ``tol`` of the output's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol * scale, f"max error {err} (scale {scale})"


# -- full-size graphs: structure only --------------------------------------------------------


@pytest.mark.parametrize(
    "name,count",
    [("bert-base", 109_482_240), ("gpt2", 124_439_808), ("vit-b16", 86_567_656)],
)
def test_full_size_parameter_counts(name, count):
    g = TF.get_transformer(name)
    assert g.count_params() == count
    # round trip through the mpcgpu-graph/1 JSON
    back = dag.from_json(dag.to_json(g))
    assert dag.to_dict(back) == dag.to_dict(g)


def test_full_size_shapes():
    b = TF.get_transformer("bert-base")
    assert [(t.name, t.shape, t.dtype, t.role) for t in b.inputs] == [
        ("input_ids", (1, 128), "int", "secret"),
        ("attention_mask", (1, 128), "int", "public"),
    ]
    assert b.outputs == ("last_hidden_state", "pooler_output") and b.task == "hidden"
    assert b.param_shapes()["embeddings.word_embeddings.weight"] == (30522, 768)
    assert b.ops()["Softmax"] == 12 and b.ops()["LayerNormalization"] == 25 and b.ops()["Erf"] == 12
    g = TF.get_transformer("gpt2")
    assert [(t.name, t.shape) for t in g.inputs] == [("input_ids", (1, 32))]
    assert g.outputs == ("logits",) and g.task == "lm"
    assert g.param_shapes()["transformer.wte.weight"] == (50257, 768)
    assert g.ops()["Tanh"] == 12 and g.ops()["Pow"] == 12 and "Erf" not in g.ops()
    v = TF.get_transformer("vit-b16")
    assert [(t.name, t.shape) for t in v.inputs] == [("pixel_values", (1, 3, 224, 224))]
    assert v.outputs == ("logits",) and v.task == "logits"
    assert v.param_shapes()["vit.embeddings.position_embeddings"] == (1, 197, 768)
    # every LayerNormalization carries the HF epsilon
    eps = {n.attr("epsilon") for n in b.nodes + v.nodes if n.op == "LayerNormalization"}
    assert eps == {1e-12}
    assert {n.attr("epsilon") for n in g.nodes if n.op == "LayerNormalization"} == {1e-5}
    # the attention scale: 1/sqrt(sqrt(64)) on Q and on K^T
    consts = TF.graph_consts(g)
    scales = {float(consts[n.inputs[1]]) for n in g.nodes if n.op == "Mul" and n.inputs[1] in consts}
    assert 1 / np.sqrt(8.0) in scales


def test_consts_are_public_and_stored_as_int_float_bool():
    g = TF.get_transformer("gpt2-tiny")
    consts = TF.graph_consts(g)
    assert set(consts) == {c.name for c in g.consts}
    for c in g.consts:
        assert consts[c.name].shape == c.shape
        assert consts[c.name].dtype == {"float": np.float64, "int": np.int64, "bool": np.bool_}[c.dtype]
    mask = consts["const.causal_mask"][0, 0]
    assert mask[0, 1] == -np.inf and mask[1, 0] == 0.0 and np.all(np.diag(mask) == 0)


def test_config_errors():
    with pytest.raises(dag.GraphError, match="unknown transformer"):
        TF.get_transformer("bert-huge")
    with pytest.raises(dag.GraphError, match="multiple of heads"):
        TF.TransformerConfig("bert", 2, 3, 32, 64, vocab=10, seq_len=4)
    with pytest.raises(dag.GraphError, match="not a bert"):
        TF.bert("gpt2-tiny")
    with pytest.raises(dag.GraphError, match="past_len"):
        TF.gpt2_decode("gpt2-tiny", 64)


def test_random_weights():
    g = TF.get_transformer("bert-tiny")
    p1, _ = TF.random_weights(g, 3)
    p2, _ = TF.random_weights(g, 3)
    p3, _ = TF.random_weights(g, 4)
    assert list(p1) == [p.name for p in g.params]
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert not np.array_equal(p1["pooler.dense.weight"], p3["pooler.dense.weight"])
    assert np.all(p1["embeddings.LayerNorm.weight"] == 1.0) and np.all(p1["embeddings.LayerNorm.bias"] == 0.0)
    w = p1["encoder.layer.0.intermediate.dense.weight"]
    assert w.shape == (32, 64) and 0.015 < w.std() < 0.025
    assert np.abs(p1["encoder.layer.0.intermediate.dense.bias"]).max() > 0  # biases are seen
    noisy, _ = TF.random_weights(g, 3, ln_noise=0.1)
    assert not np.all(noisy["embeddings.LayerNorm.weight"] == 1.0)


# -- tiny graphs against the NumPy references, through onnxruntime ------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_bert_tiny_against_numpy(batch):
    cfg = TF.get_config("bert-tiny", batch=batch)
    g = TF.bert(cfg)
    params, consts = TF.random_weights(g, 7, ln_noise=0.1)
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, cfg.vocab, (batch, cfg.seq_len))
    ids[0, :2] = [0, cfg.vocab - 1]  # the first and last rows of the table
    mask = np.ones((batch, cfg.seq_len), np.int64)
    mask[-1, 11:] = 0  # padding in the last sequence
    got = run_onnx(g, params, consts, {"input_ids": ids, "attention_mask": mask})
    want = bert_ref(params, cfg, ids, mask)
    for k in g.outputs:
        _close(got[k], want[k])
    # the mask matters: without it the padded sequence's states differ
    if batch == 2:
        unmasked = bert_ref(params, cfg, ids, np.ones_like(mask))
        assert np.abs(unmasked["last_hidden_state"][1] - got["last_hidden_state"][1]).max() > 1e-3


@pytest.mark.parametrize("batch", [1, 2])
def test_gpt2_tiny_against_numpy(batch):
    cfg = TF.get_config("gpt2-tiny", batch=batch)
    g = TF.gpt2(cfg)
    params, consts = TF.random_weights(g, 8, ln_noise=0.1)
    ids = np.random.default_rng(batch).integers(0, cfg.vocab, (batch, cfg.seq_len))
    got = run_onnx(g, params, consts, {"input_ids": ids})
    logits, _ = gpt2_ref(params, cfg, ids)
    _close(got["logits"], logits)
    assert "lm_head.weight" not in g.param_shapes()  # tied to the token table


def test_gpt2_tiny_decode_step_with_cache():
    """The prompt graph's present K/V fed to the one-token step gives the logits (and the
    cache) of the whole sequence run at once, for two steps."""
    cfg = TF.get_config("gpt2-tiny", batch=2, seq_len=6)
    prompt = TF.gpt2(cfg, present=True)
    params, consts = TF.random_weights(prompt, 9, ln_noise=0.1)
    ids = np.random.default_rng(0).integers(0, cfg.vocab, (2, 8))
    out = run_onnx(prompt, params, consts, {"input_ids": ids[:, :6]})
    assert prompt.outputs == ("logits",) + tuple(
        f"present.{i}.{kv}" for i in range(cfg.layers) for kv in ("key", "value")
    )
    for past in (6, 7):
        step = TF.gpt2_decode(cfg, past)
        assert step.param_shapes() == prompt.param_shapes()
        assert [t.name for t in step.inputs][:3] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
        feeds = {"input_ids": ids[:, past : past + 1]}
        for i in range(cfg.layers):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = out[f"present.{i}.{kv}"]
        out = run_onnx(step, params, TF.graph_consts(step), feeds)
        logits, cache = gpt2_ref(params, cfg, ids[:, : past + 1])
        _close(out["logits"], logits[:, past:])
        for i, (k, v) in enumerate(cache):
            assert out[f"present.{i}.key"].shape == (2, cfg.heads, past + 1, cfg.head_dim)
            _close(out[f"present.{i}.key"], k)
            _close(out[f"present.{i}.value"], v)


@pytest.mark.parametrize("batch", [1, 2])
def test_vit_tiny_against_numpy(batch):
    cfg = TF.get_config("vit-tiny", batch=batch)
    g = TF.vit(cfg)
    params, consts = TF.random_weights(g, 10, ln_noise=0.1)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16))
    got = run_onnx(g, params, consts, {"pixel_values": x})
    _close(got["logits"], vit_ref(params, cfg, x)["logits"])
    assert ("Expand" in g.ops()) == (batch > 1)


# -- against the Hugging Face models themselves (where torch and transformers are installed) ---


def _hf_params(state, g, linear_is_out_in=True):
    """The HF state dict as this graph's params: ``torch.nn.Linear`` weights (``[out, in]``)
    transposed to ``[in, out]`` (GPT-2's ``Conv1D`` weights are ``[in, out]`` already)."""
    matmul_weights = {n.inputs[1] for n in g.nodes if n.op == "MatMul"}
    out = {}
    for p in g.params:
        a = state[p.name].detach().double().numpy()
        if linear_is_out_in and p.name in matmul_weights:
            a = a.T
        assert a.shape == p.shape, p.name
        out[p.name] = a
    return out


def test_tiny_graphs_equal_hugging_face():
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # BERT
    cfg = TF.get_config("bert-tiny", batch=2)
    g = TF.bert(cfg)
    m = tr.BertModel(
        tr.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).eval()
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        want = m(input_ids=ids, attention_mask=mask)
    got = run_onnx(
        g, _hf_params(m.state_dict(), g), TF.graph_consts(g), {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )
    _close(got["last_hidden_state"][0], want.last_hidden_state[0].numpy(), 1e-4)
    _close(
        got["last_hidden_state"][1, :9], want.last_hidden_state[1, :9].numpy(), 1e-4
    )  # padded rows: HF keeps them too
    _close(got["pooler_output"], want.pooler_output.numpy(), 1e-4)
    # GPT-2
    cfg = TF.get_config("gpt2-tiny")
    g = TF.gpt2(cfg)
    m = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    state = dict(m.state_dict())
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        want = m(input_ids=ids).logits.numpy()
    got = run_onnx(g, _hf_params(state, g, linear_is_out_in=False), TF.graph_consts(g), {"input_ids": ids.numpy()})
    _close(got["logits"], want, 1e-4)
    # ViT
    cfg = TF.get_config("vit-tiny")
    g = TF.vit(cfg)
    m = tr.ViTForImageClassification(
        tr.ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = m(pixel_values=x).logits.numpy()
    got = run_onnx(g, _hf_params(m.state_dict(), g), TF.graph_consts(g), {"pixel_values": x.numpy()})
    _close(got["logits"], want, 1e-4)


# -- the plaintext executor of graph-core, once it is merged --------------------------------------


def test_run_plain_against_numpy():
    dag_run = pytest.importorskip("mpcgpu.nn.dag_run")
    cfg = TF.get_config("bert-tiny", batch=2)
    g = TF.bert(cfg)
    params, consts = TF.random_weights(g, 11, ln_noise=0.1)
    ids = np.random.default_rng(1).integers(0, cfg.vocab, (2, cfg.seq_len))
    mask = np.ones((2, cfg.seq_len), np.int64)
    mask[1, 5:] = 0
    got = dag_run.run_plain(g, params, consts, {"input_ids": ids, "attention_mask": mask})
    want = bert_ref(params, cfg, ids, mask)
    for k in g.outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-9)
    cfg = TF.get_config("gpt2-tiny")
    g = TF.gpt2(cfg)
    params, consts = TF.random_weights(g, 12, ln_noise=0.1)
    ids = np.random.default_rng(2).integers(0, cfg.vocab, (1, cfg.seq_len))
    np.testing.assert_allclose(
        dag_run.run_plain(g, params, consts, {"input_ids": ids})["logits"], gpt2_ref(params, cfg, ids)[0], atol=1e-9
    )
    cfg = TF.get_config("vit-tiny", batch=2)
    g = TF.vit(cfg)
    params, consts = TF.random_weights(g, 13, ln_noise=0.1)
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16))
    np.testing.assert_allclose(
        dag_run.run_plain(g, params, consts, {"pixel_values": x})["logits"],
        vit_ref(params, cfg, x)["logits"],
        atol=1e-9,
    )


def test_run_plain_decode_step():
    dag_run = pytest.importorskip("mpcgpu.nn.dag_run")
    cfg = TF.get_config("gpt2-tiny", seq_len=5)
    prompt = TF.gpt2(cfg, present=True)
    params, consts = TF.random_weights(prompt, 14, ln_noise=0.1)
    ids = np.random.default_rng(6).integers(0, cfg.vocab, (1, 6))
    out = dag_run.run_plain(prompt, params, consts, {"input_ids": ids[:, :5]})
    step = TF.gpt2_decode(cfg, 5)
    feeds = {"input_ids": ids[:, 5:]}
    feeds.update({k.replace("present", "past_key_values"): v for k, v in out.items() if k.startswith("present.")})
    got = dag_run.run_plain(step, params, TF.graph_consts(step), feeds)
    logits, cache = gpt2_ref(params, cfg, ids)
    np.testing.assert_allclose(got["logits"], logits[:, 5:], atol=1e-9)
    np.testing.assert_allclose(got["present.1.value"], cache[1][1], atol=1e-9)
    assert step.one_hot_width("input_ids") == cfg.vocab


def test_gpt2_last_only():
    cfg = TF.get_config("gpt2-tiny", batch=2)
    g = TF.gpt2(cfg, last_only=True)
    assert g.param_shapes() == TF.gpt2(cfg).param_shapes()
    params, consts = TF.random_weights(g, 15, ln_noise=0.1)
    ids = np.random.default_rng(7).integers(0, cfg.vocab, (2, cfg.seq_len))
    got = run_onnx(g, params, consts, {"input_ids": ids})
    assert got["logits"].shape == (2, 1, cfg.vocab)
    _close(got["logits"], gpt2_ref(params, cfg, ids)[0][:, -1:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert-base", "gpt2", "vit-b16"])
def test_full_size_equals_hugging_face(name):
    """The full configurations against the Hugging Face models of their default configs
    (the plaintext executor in float64 against torch in float32), minutes."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    dag_run = pytest.importorskip("mpcgpu.nn.dag_run")
    torch.manual_seed(0)
    g = TF.get_transformer(name)
    rng = np.random.default_rng(0)
    if name == "bert-base":
        m = tr.BertModel(tr.BertConfig()).eval()
        ids = rng.integers(0, 30522, (1, 128))
        mask = np.ones((1, 128), np.int64)
        with torch.no_grad():
            want = m(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
        feeds, out, transpose = {"input_ids": ids, "attention_mask": mask}, "last_hidden_state", True
    elif name == "gpt2":
        m = tr.GPT2LMHeadModel(tr.GPT2Config()).eval()
        ids = rng.integers(0, 50257, (1, 32))
        with torch.no_grad():
            want = m(input_ids=torch.tensor(ids)).logits.numpy()
        feeds, out, transpose = {"input_ids": ids}, "logits", False
    else:
        m = tr.ViTForImageClassification(tr.ViTConfig(num_labels=1000)).eval()
        x = rng.standard_normal((1, 3, 224, 224))
        with torch.no_grad():
            want = m(pixel_values=torch.tensor(x, dtype=torch.float32)).logits.numpy()
        feeds, out, transpose = {"pixel_values": x}, "logits", True
    params = _hf_params(m.state_dict(), g, linear_is_out_in=transpose)
    got = dag_run.run_plain(g, params, TF.graph_consts(g), feeds)[out]
    _close(got, want, 1e-4)
