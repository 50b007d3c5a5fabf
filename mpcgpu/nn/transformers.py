"""BERT, GPT-2 and ViT as graph models (:mod:`mpcgpu.nn.dag`), built by mpcgpu itself from
a configuration: the networks of ``mpcgpu bench inference --models bert-base,gpt2,vit-b16``
on servers without torch, and the tiny configurations of the tests.

The nodes are the ONNX operators and attributes that ``torch.onnx.export(dynamo=True,
opset_version=18)`` writes for the Hugging Face models, so that a built graph and an
imported one run through the same operators:

* a linear layer is ``MatMul`` by a ``[in, out]`` weight and ``Add`` of the bias (the
  exporter writes the same, or ``Gemm`` after a ``Reshape`` to 2-D);
* heads: ``Reshape`` to ``[B, T, heads, d]`` and ``Transpose``; scores ``MatMul(Q*s, K^T*s)``
  with ``s = 1/sqrt(sqrt(d))`` on both (``Mul`` by a public scalar, as the exporter
  does), ``Add`` of the attention mask, ``Softmax`` on ``axis=-1``, ``MatMul`` by V;
* BERT's padding mask from the public ``attention_mask`` input: ``Cast`` to bool,
  ``Reshape`` to ``[B, 1, 1, T]``, ``Where(mask, 0, -3.4028235e38)`` (public values, folded
  at run time), added to the scores; GPT-2's causal mask: a public const ``[1, 1, T, T]``
  of 0 and ``-inf``; ViT: no mask;
* ``LayerNormalization`` (``axis=-1``, ``epsilon`` as in the HF configs: 1e-12 for BERT
  and ViT, 1e-5 for GPT-2, ``stash_type=1``);
* GELU as the exporter writes it: the erf form (``Div`` by sqrt 2, ``Erf``, ``Add`` 1,
  ``Mul`` 0.5, ``Mul`` x) for BERT and ViT; the tanh form (``Mul`` 0.5, ``Pow`` 3,
  ``Mul`` 0.044715, ``Add``, ``Mul`` sqrt(2/pi), ``Tanh``, ``Add`` 1, ``Mul``) for GPT-2;
* embeddings: ``Gather`` of the table by ``input_ids`` (secret; the private executor takes
  them as a one-hot share), positions (and BERT's token types, all 0) by ``Gather`` with
  public int consts; ViT's patches by ``Conv`` (kernel = stride = patch), the CLS token
  by ``Concat`` (``Expand`` first when the batch is larger than 1), position embeddings
  by ``Add``.

The exporter's ``IsNaN``/``Where`` guard after each ``Softmax`` (a row with every entry
masked) is left out: the private softmax gives such a row all zeros already.

Parameters carry the Hugging Face names (``encoder.layer.0.attention.self.query.weight``,
``transformer.h.0.attn.c_attn.weight``, ``vit.layers.0.attention.q_proj.weight``...: the
names of transformers 5), but **a linear weight is stored ``[in, out]``** (``x @ W``: the
transpose of a ``torch.nn.Linear``'s ``weight``; GPT-2's ``Conv1D`` weights already are).
GPT-2's LM head is tied to the token table: ``MatMul(h, Transpose(wte))``, no separate
parameter.

Parameter counts (``GraphModel.count_params``), as Hugging Face counts them:
``bert-base`` 109,482,240 (``BertModel`` with the pooler), ``gpt2`` 124,439,808
(``GPT2LMHeadModel``, tied head), ``vit-b16`` 86,567,656 (``ViTForImageClassification``
without the pooler, 1000 classes).

GPT-2 generation with a key/value cache: :func:`gpt2` with ``present=True`` also outputs
every layer's keys and values, and :func:`gpt2_decode` is the one-token step graph:

* inputs ``input_ids`` ``[B, 1]`` (secret int) and, per layer ``i``,
  ``past_key_values.{i}.key`` and ``past_key_values.{i}.value``, ``[B, heads, past_len, d]``
  (secret float);
* outputs ``logits`` ``[B, 1, vocab]`` and ``present.{i}.key``, ``present.{i}.value``,
  ``[B, heads, past_len + 1, d]`` (the past with this token's appended: the next step's
  past).

The prompt graph's ``present.{i}.*`` (``[B, heads, T, d]``) are the first step's past.
Every graph of one configuration has the same parameters (names and shapes), so one
model shard set serves the prompt and every step.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, replace

import numpy as np

from .dag import GraphError, GraphModel, Node, TensorInfo

#: the most negative float32, which the exporter writes for a masked score
MASK_MIN = -3.4028234663852886e38
KINDS = ("bert", "gpt2", "vit")


@dataclass(frozen=True)
class TransformerConfig:
    """The size of a transformer.  ``seq_len`` is the (static) number of tokens of the
    built graph (BERT, GPT-2), ``image_size``/``patch``/``channels``/``classes`` are ViT's;
    ``batch`` is the static batch dimension of the inputs."""

    kind: str
    layers: int
    heads: int
    hidden: int
    ffn: int
    vocab: int = 0
    seq_len: int = 0
    max_positions: int = 512
    type_vocab: int = 2
    image_size: int = 224
    patch: int = 16
    channels: int = 3
    classes: int = 1000
    eps: float = 1e-12
    batch: int = 1
    name: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise GraphError(f"transformer kind must be one of {KINDS}, got {self.kind!r}")
        for key in ("layers", "heads", "hidden", "ffn", "batch"):
            if int(getattr(self, key)) < 1:
                raise GraphError(f"transformer config: {key} must be at least 1")
        if self.hidden % self.heads:
            raise GraphError(f"transformer config: hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.kind in ("bert", "gpt2"):
            if self.vocab < 1 or self.seq_len < 1:
                raise GraphError("transformer config: a language model needs vocab and seq_len")
            if self.seq_len > self.max_positions:
                raise GraphError(f"transformer config: seq_len {self.seq_len} > max_positions {self.max_positions}")
        if self.kind == "vit" and (self.image_size % self.patch or self.classes < 1):
            raise GraphError(f"transformer config: image size {self.image_size} is not a multiple of {self.patch}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def tokens(self) -> int:
        """Tokens per sequence inside the network (ViT: patches plus the CLS token)."""
        if self.kind == "vit":
            return (self.image_size // self.patch) ** 2 + 1
        return self.seq_len


#: the named configurations (``get_transformer(name)``)
MODELS = {
    "bert-base": TransformerConfig(
        "bert", 12, 12, 768, 3072, vocab=30522, seq_len=128, max_positions=512, eps=1e-12, name="bert-base"
    ),
    "gpt2": TransformerConfig(
        "gpt2", 12, 12, 768, 3072, vocab=50257, seq_len=32, max_positions=1024, eps=1e-5, name="gpt2"
    ),
    "vit-b16": TransformerConfig(
        "vit", 12, 12, 768, 3072, image_size=224, patch=16, channels=3, classes=1000, eps=1e-12, name="vit-b16"
    ),
    "bert-tiny": TransformerConfig(
        "bert", 2, 2, 32, 64, vocab=100, seq_len=16, max_positions=64, eps=1e-12, name="bert-tiny"
    ),
    "gpt2-tiny": TransformerConfig(
        "gpt2", 2, 2, 32, 128, vocab=100, seq_len=16, max_positions=64, eps=1e-5, name="gpt2-tiny"
    ),
    "vit-tiny": TransformerConfig(
        "vit", 2, 2, 32, 64, image_size=16, patch=4, channels=3, classes=10, eps=1e-12, name="vit-tiny"
    ),
}


def get_config(name: str, **changes) -> TransformerConfig:
    """The named configuration (:data:`MODELS`), with ``changes`` (e.g. ``batch=2``)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in MODELS:
        raise GraphError(f"unknown transformer {name!r}; known: {', '.join(MODELS)}")
    return replace(MODELS[key], **changes) if changes else MODELS[key]


# -- building ----------------------------------------------------------------------------------


class _Builder:
    """Accumulates nodes, params and public consts (with their values)."""

    def __init__(self, cfg: TransformerConfig):
        self.cfg = cfg
        self.nodes: list = []
        self.params: list = []
        self.consts: list = []
        self.values: dict = {}
        self.inputs: list = []
        self._n = 0
        self._scalars: dict = {}
        self.present = False

    def input(self, name, shape, dtype="float", role="secret"):
        self.inputs.append(TensorInfo(name, shape, dtype, role))
        return name

    def param(self, name, shape):
        self.params.append(TensorInfo(name, shape, "float", "secret"))
        return name

    def const(self, name, value, dtype=None):
        value = np.asarray(value)
        if dtype is None:
            dtype = "bool" if value.dtype == bool else "int" if value.dtype.kind in "iu" else "float"
        value = value.astype({"float": np.float64, "int": np.int64, "bool": np.bool_}[dtype])
        self.consts.append(TensorInfo(name, value.shape, dtype, "public"))
        self.values[name] = value
        return name

    def scalar(self, value: float):
        """A public float scalar const (one per distinct value)."""
        key = float(value)
        if key not in self._scalars:
            self._scalars[key] = self.const(f"const.scalar_{len(self._scalars)}", np.float64(key))
        return self._scalars[key]

    def shape(self, dims):
        return self.const(f"const.shape_{len(self.consts)}", np.asarray(dims, dtype=np.int64))

    def op(self, op, inputs, n_out=1, out=None, **attrs):
        self._n += 1
        base = f"{op.lower()}_{self._n}"
        if out is None:
            outs = [base] if n_out == 1 else [f"{base}.{i}" for i in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
        self.nodes.append(Node(op, f"n{self._n}_{op}", inputs, outs, attrs))
        return outs[0] if len(outs) == 1 else outs

    # -- blocks ------------------------------------------------------------------------------

    def linear(self, x, prefix, n_in, n_out, out=None):
        w = self.param(f"{prefix}.weight", (n_in, n_out))
        b = self.param(f"{prefix}.bias", (n_out,))
        return self.op("Add", [self.op("MatMul", [x, w]), b], out=out)

    def layer_norm(self, x, prefix, out=None):
        h = self.cfg.hidden
        w = self.param(f"{prefix}.weight", (h,))
        b = self.param(f"{prefix}.bias", (h,))
        return self.op("LayerNormalization", [x, w, b], out=out, axis=-1, epsilon=float(self.cfg.eps), stash_type=1)

    def gelu_erf(self, x):
        t = self.op("Div", [x, self.scalar(math.sqrt(2.0))])
        t = self.op("Add", [self.op("Erf", [t]), self.scalar(1.0)])
        return self.op("Mul", [x, self.op("Mul", [self.scalar(0.5), t])])

    def gelu_tanh(self, x):
        half = self.op("Mul", [x, self.scalar(0.5)])
        cube = self.op("Mul", [self.op("Pow", [x, self.scalar(3.0)]), self.scalar(0.044715)])
        t = self.op("Mul", [self.op("Add", [x, cube]), self.scalar(math.sqrt(2.0 / math.pi))])
        t = self.op("Add", [self.op("Tanh", [t]), self.scalar(1.0)])
        return self.op("Mul", [half, t])

    def split_heads(self, x, tokens, out=None):
        c = self.cfg
        v = self.op("Reshape", [x, self.shape([c.batch, tokens, c.heads, c.head_dim])])
        return self.op("Transpose", [v], out=out, perm=[0, 2, 1, 3])

    def attention(self, q, k, v, mask, q_tokens, kv_tokens=None):
        """Q, K, V: ``[B, heads, T, d]`` head tensors; returns ``[B, Tq, hidden]``."""
        c = self.cfg
        s = self.scalar(1.0 / math.sqrt(math.sqrt(c.head_dim)))
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("MatMul", [self.op("Mul", [q, s]), self.op("Mul", [kt, s])])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        p = self.op("Softmax", [scores], axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
        return self.op("Reshape", [ctx, self.shape([c.batch, q_tokens, c.hidden])])

    def graph(self, outputs, task, description):
        return GraphModel(
            name=self.cfg.name or self.cfg.kind,
            inputs=self.inputs,
            outputs=outputs,
            nodes=self.nodes,
            params=self.params,
            consts=self.consts,
            description=description,
            task=task,
        )


# the const values of the graphs built here (consts are structure: reshape targets, masks,
# positions), looked up by random_weights / graph_consts
_CONSTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _finish(b: _Builder, outputs, task, description) -> GraphModel:
    g = b.graph(outputs, task, description)
    _CONSTS[g] = dict(b.values)
    return g


def _describe(c: TransformerConfig, what: str) -> str:
    return (
        f"{what}: {c.layers} layers, {c.heads} heads, hidden {c.hidden}, ffn {c.ffn}"
        + (f", vocab {c.vocab}, {c.seq_len} tokens" if c.kind != "vit" else "")
        + (
            f", {c.image_size}x{c.image_size}x{c.channels}, patch {c.patch}, {c.classes} classes"
            if c.kind == "vit"
            else ""
        )
        + f", batch {c.batch} (built by mpcgpu.nn.transformers)"
    )


def _config(config, kind) -> TransformerConfig:
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, TransformerConfig):
        raise GraphError(f"give a TransformerConfig or a name of {list(MODELS)}, got {type(config).__name__}")
    if config.kind != kind:
        raise GraphError(f"configuration {config.name or config.kind} is a {config.kind}, not a {kind}")
    return config


def bert(config="bert-base") -> GraphModel:
    """BERT (``BertModel``): inputs ``input_ids`` ``[B, T]`` (secret int) and
    ``attention_mask`` ``[B, T]`` (public int, 1 = a token, 0 = padding); outputs
    ``last_hidden_state`` ``[B, T, hidden]`` and ``pooler_output`` ``[B, hidden]``."""
    c = _config(config, "bert")
    b = _Builder(c)
    B, T, H = c.batch, c.seq_len, c.hidden
    ids = b.input("input_ids", (B, T), "int", "secret")
    am = b.input("attention_mask", (B, T), "int", "public")
    word = b.param("embeddings.word_embeddings.weight", (c.vocab, H))
    pos = b.param("embeddings.position_embeddings.weight", (c.max_positions, H))
    tt = b.param("embeddings.token_type_embeddings.weight", (c.type_vocab, H))
    pos_ids = b.const("const.position_ids", np.arange(T, dtype=np.int64)[None, :])
    tt_ids = b.const("const.token_type_ids", np.zeros((1, T), dtype=np.int64))
    x = b.op("Add", [b.op("Gather", [word, ids], axis=0), b.op("Gather", [tt, tt_ids], axis=0)])
    x = b.op("Add", [x, b.op("Gather", [pos, pos_ids], axis=0)])
    x = b.layer_norm(x, "embeddings.LayerNorm")
    # the padding mask: public, folded at run time
    keep = b.op("Reshape", [b.op("Cast", [am], to=9), b.shape([B, 1, 1, T])])
    mask = b.op("Where", [keep, b.scalar(0.0), b.scalar(MASK_MIN)])
    for i in range(c.layers):
        p = f"encoder.layer.{i}"
        q = b.split_heads(b.linear(x, f"{p}.attention.self.query", H, H), T)
        k = b.split_heads(b.linear(x, f"{p}.attention.self.key", H, H), T)
        v = b.split_heads(b.linear(x, f"{p}.attention.self.value", H, H), T)
        a = b.linear(b.attention(q, k, v, mask, T), f"{p}.attention.output.dense", H, H)
        x = b.layer_norm(b.op("Add", [a, x]), f"{p}.attention.output.LayerNorm")
        f = b.gelu_erf(b.linear(x, f"{p}.intermediate.dense", H, c.ffn))
        f = b.linear(f, f"{p}.output.dense", c.ffn, H)
        last = "last_hidden_state" if i == c.layers - 1 else None
        x = b.layer_norm(b.op("Add", [f, x]), f"{p}.output.LayerNorm", out=last)
    first = b.op("Gather", [x, b.const("const.first_token", np.int64(0))], axis=1)
    b.op("Tanh", [b.linear(first, "pooler.dense", H, H)], out="pooler_output")
    return _finish(b, ["last_hidden_state", "pooler_output"], "hidden", _describe(c, "BERT"))


def _gpt2_block(b: _Builder, x, i, tokens, mask, past_len=None):
    """One GPT-2 block; returns ``(x, present key, present value)``."""
    c = b.cfg
    H = c.hidden
    p = f"transformer.h.{i}"
    a = b.layer_norm(x, f"{p}.ln_1")
    qkv = b.linear(a, f"{p}.attn.c_attn", H, 3 * H)
    q, k, v = b.op("Split", [qkv], n_out=3, axis=2, num_outputs=3)
    named = past_len is None and b.present
    q = b.split_heads(q, tokens)
    k = b.split_heads(k, tokens, out=f"present.{i}.key" if named else None)
    v = b.split_heads(v, tokens, out=f"present.{i}.value" if named else None)
    if past_len is not None:
        k = b.op("Concat", [f"past_key_values.{i}.key", k], out=f"present.{i}.key", axis=2)
        v = b.op("Concat", [f"past_key_values.{i}.value", v], out=f"present.{i}.value", axis=2)
    a = b.linear(b.attention(q, k, v, mask, tokens), f"{p}.attn.c_proj", H, H)
    x = b.op("Add", [x, a])
    m = b.gelu_tanh(b.linear(b.layer_norm(x, f"{p}.ln_2"), f"{p}.mlp.c_fc", H, c.ffn))
    m = b.linear(m, f"{p}.mlp.c_proj", c.ffn, H)
    return b.op("Add", [x, m]), k, v


def _gpt2_embed(b: _Builder, tokens, first_position):
    c = b.cfg
    ids = b.input("input_ids", (c.batch, tokens), "int", "secret")
    wte = b.param("transformer.wte.weight", (c.vocab, c.hidden))
    wpe = b.param("transformer.wpe.weight", (c.max_positions, c.hidden))
    pos_ids = b.const("const.position_ids", np.arange(first_position, first_position + tokens, dtype=np.int64)[None])
    x = b.op("Add", [b.op("Gather", [wte, ids], axis=0), b.op("Gather", [wpe, pos_ids], axis=0)])
    return x, wte


def _gpt2_head(b: _Builder, x, wte):
    x = b.layer_norm(x, "transformer.ln_f")
    return b.op("MatMul", [x, b.op("Transpose", [wte], perm=[1, 0])], out="logits")


def gpt2(config="gpt2", *, present: bool = False, last_only: bool = False) -> GraphModel:
    """GPT-2 (``GPT2LMHeadModel``, tied head): input ``input_ids`` ``[B, T]`` (secret int),
    output ``logits`` ``[B, T, vocab]`` (task ``lm``); with ``present`` also
    ``present.{i}.key`` / ``present.{i}.value`` ``[B, heads, T, d]`` per layer (the cache
    for :func:`gpt2_decode`).  ``last_only``: the final LayerNorm and the LM head on the
    last position only (``Gather`` of it first; ``logits`` ``[B, 1, vocab]``), all that
    generating the next token needs (the head is the largest product: T times less)."""
    c = _config(config, "gpt2")
    b = _Builder(c)
    b.present = present
    T = c.seq_len
    x, wte = _gpt2_embed(b, T, 0)
    causal = np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf)[None, None]
    mask = b.const("const.causal_mask", causal)
    outs = []
    for i in range(c.layers):
        x, k, v = _gpt2_block(b, x, i, T, mask)
        outs += [k, v]
    if last_only:
        x = b.op("Gather", [x, b.const("const.last_position", np.array([T - 1], np.int64))], axis=1)
    _gpt2_head(b, x, wte)
    return _finish(b, ["logits"] + (outs if present else []), "lm", _describe(c, "GPT-2"))


def gpt2_decode(config="gpt2", past_len: int = 1) -> GraphModel:
    """One generation step of GPT-2 with a key/value cache of ``past_len`` tokens (see the
    module docstring for the tensor names): the new token at position ``past_len``."""
    c = _config(config, "gpt2")
    past_len = int(past_len)
    if not 1 <= past_len < c.max_positions:
        raise GraphError(f"gpt2_decode: past_len must be in [1, {c.max_positions - 1}], got {past_len}")
    b = _Builder(replace(c, seq_len=1))
    b.present = True
    x, wte = _gpt2_embed(b, 1, past_len)
    for i in range(c.layers):
        shape = (c.batch, c.heads, past_len, c.head_dim)
        b.input(f"past_key_values.{i}.key", shape, "float", "secret")
        b.input(f"past_key_values.{i}.value", shape, "float", "secret")
    outs = []
    for i in range(c.layers):
        x, k, v = _gpt2_block(b, x, i, 1, None, past_len=past_len)
        outs += [k, v]
    _gpt2_head(b, x, wte)
    g = b.graph(["logits"] + outs, "lm", _describe(c, f"GPT-2 decode step after {past_len} tokens"))
    _CONSTS[g] = dict(b.values)
    return g


def vit(config="vit-b16") -> GraphModel:
    """ViT (``ViTForImageClassification``): input ``pixel_values`` ``[B, C, S, S]`` (secret
    float), output ``logits`` ``[B, classes]`` (task ``logits``)."""
    c = _config(config, "vit")
    b = _Builder(c)
    B, H, N = c.batch, c.hidden, c.tokens
    x = b.input("pixel_values", (B, c.channels, c.image_size, c.image_size), "float", "secret")
    w = b.param("vit.embeddings.patch_embeddings.projection.weight", (H, c.channels, c.patch, c.patch))
    bias = b.param("vit.embeddings.patch_embeddings.projection.bias", (H,))
    x = b.op(
        "Conv",
        [x, w, bias],
        dilations=[1, 1],
        group=1,
        kernel_shape=[c.patch, c.patch],
        pads=[0, 0, 0, 0],
        strides=[c.patch, c.patch],
    )
    x = b.op("Transpose", [b.op("Reshape", [x, b.shape([B, H, N - 1])])], perm=[0, 2, 1])
    cls = b.param("vit.embeddings.cls_token", (1, 1, H))
    if B > 1:
        cls = b.op("Expand", [cls, b.shape([B, 1, H])])
    x = b.op("Concat", [cls, x], axis=1)
    x = b.op("Add", [x, b.param("vit.embeddings.position_embeddings", (1, N, H))])
    for i in range(c.layers):
        p = f"vit.layers.{i}"
        a = b.layer_norm(x, f"{p}.layernorm_before")
        q, k, v = (b.split_heads(b.linear(a, f"{p}.attention.{t}_proj", H, H), N) for t in "qkv")
        a = b.linear(b.attention(q, k, v, None, N), f"{p}.attention.o_proj", H, H)
        x = b.op("Add", [a, x])
        f = b.gelu_erf(b.linear(b.layer_norm(x, f"{p}.layernorm_after"), f"{p}.mlp.fc1", H, c.ffn))
        x = b.op("Add", [b.linear(f, f"{p}.mlp.fc2", c.ffn, H), x])
    x = b.layer_norm(x, "vit.layernorm")
    first = b.op("Gather", [x, b.const("const.first_token", np.int64(0))], axis=1)
    b.linear(first, "classifier", H, c.classes, out="logits")
    return _finish(b, ["logits"], "logits", _describe(c, "ViT"))


BUILDERS = {"bert": bert, "gpt2": gpt2, "vit": vit}


def build(config) -> GraphModel:
    """The graph of a configuration (or a name of :data:`MODELS`)."""
    if isinstance(config, str):
        config = get_config(config)
    return BUILDERS[config.kind](config)


def get_transformer(name: str, **changes) -> GraphModel:
    """The graph of a named configuration (:data:`MODELS`), e.g. ``get_transformer("gpt2")``
    or ``get_transformer("bert-base", batch=2)``."""
    return build(get_config(name, **changes))


def list_transformers() -> list:
    return list(MODELS)


def config_dict(config: TransformerConfig) -> dict:
    return asdict(config)


# -- weights ---------------------------------------------------------------------------------


def graph_consts(g: GraphModel) -> dict:
    """The public const values of a graph built here or read from a weights file
    (:func:`mpcgpu.nn.weights.read_architecture`, :func:`~mpcgpu.nn.weights.load_graph`):
    ``{name: array}``."""
    if g in _CONSTS:
        return {k: v.copy() for k, v in _CONSTS[g].items()}
    raise GraphError(
        f"graph {g.name}: its const values are unknown here (built elsewhere); "
        "read the graph from its weights file (mpcgpu.nn.weights.load_graph)"
    )


def remember_consts(g: GraphModel, consts: dict) -> None:
    """Record the const values of ``g`` (a graph read from a file) for :func:`graph_consts`
    and :func:`random_weights` (e.g. random weights for an imported architecture)."""
    missing = [c.name for c in g.consts if c.name not in consts]
    if missing:
        raise GraphError(f"graph {g.name}: const values missing for {missing[:5]}")
    _CONSTS[g] = {c.name: np.asarray(consts[c.name]) for c in g.consts}


def random_weights(g: GraphModel, seed: int = 0, *, std: float = 0.02, ln_noise: float = 0.0, dtype=np.float64):
    """``(params, consts)`` for a graph built here: every parameter drawn as Hugging Face
    initialises these models (normal with standard deviation ``std`` for matrices,
    embeddings and the CLS/position tensors), LayerNorm scales 1 and shifts 0 (plus
    ``ln_noise`` times a standard normal, so that tests see them), biases of linear layers
    normal with ``std`` (HF sets them to 0; small random values let tests see them)."""
    rng = np.random.default_rng(seed)
    ln_scale, ln_shift = set(), set()
    for n in g.nodes:
        if n.op == "LayerNormalization":
            ln_scale.add(n.inputs[1])
            if len(n.inputs) > 2 and n.inputs[2]:
                ln_shift.add(n.inputs[2])
    params = {}
    for p in g.params:
        if p.name in ln_scale or p.name in ln_shift:
            base = 1.0 if p.name in ln_scale else 0.0
            a = base + (ln_noise * rng.standard_normal(p.shape) if ln_noise else np.zeros(p.shape))
        else:
            a = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(std)
        params[p.name] = np.asarray(a, dtype=dtype)
    return params, graph_consts(g)


__all__ = [
    "MASK_MIN",
    "TransformerConfig",
    "MODELS",
    "get_config",
    "bert",
    "gpt2",
    "gpt2_decode",
    "vit",
    "build",
    "get_transformer",
    "list_transformers",
    "config_dict",
    "graph_consts",
    "remember_consts",
    "random_weights",
]
