"""Greedy generation of a language model graph (GPT-2) on shares, with a key/value cache.

    gen = generate(config, params, prompt, steps=8, owner=0)        # every party calls it
    gen.tokens        # [B, steps] int64 on party ``owner``, None on the other two
    gen.onehots       # the same tokens as one-hot integer shares [B, vocab], still secret

Each step

1. takes the logits of the **last position** (``logits[:, -1, :]``, a share);
2. chooses the next token by a **private argmax** (:func:`mpcgpu.protocols.compare.argmax`:
   a one-hot integer share; ties go to the lowest id, as ``numpy.argmax``);
3. reveals the token id **to the result owner only**: the id is the one-hot times
   ``0, 1, ..., vocab-1`` summed (local and exact on integer shares), then
   ``reveal(to=owner)`` (1 round, 8 bytes per sequence from one party): the two other
   servers never hold it;
4. feeds the **one-hot share itself** as the next token (the servers never see the token
   they compute with: the embedding Gather of a one-hot is a product with the table).

Two ways to get the next logits (``cache=``):

* **with the cache** (default): the prompt graph (:func:`mpcgpu.nn.transformers.gpt2` with
  ``present=True``: logits and every layer's keys and values ``present.{i}.key`` /
  ``present.{i}.value``, ``[B, heads, T, d]``) runs once; then each new token runs the
  one-token step graph (:func:`mpcgpu.nn.transformers.gpt2_decode` after ``past_len``
  tokens), fed the previous step's ``present.*`` as its ``past_key_values.*`` and returning
  them with this token's keys and values concatenated along the sequence axis (the graph's
  ``Concat``, i.e. :func:`mpcgpu.sharing.replicated.concatenate`: local).  Work per token:
  one token's projections and MLP, and attention over ``past_len + 1`` keys.
* **without it** (full recompute, the reference): every step runs the whole network again
  on the prompt plus the tokens so far (their one-hots concatenated along the sequence
  axis), ``gpt2`` of ``seq_len = T + k``.  Same tokens, quadratic work.

Graphs have static shapes, so each step length has its own graph (built once per length
and kept, with its public consts, in a small cache of this module); every graph of one
configuration reads the same parameters, so one set of shares serves the prompt and every
step.  ``T + steps - 1`` must not exceed the configuration's ``max_positions``.

Measured (gpt2-tiny: 2 layers, hidden 32, vocabulary 100; three ranks on one 2-core
machine, CPU back end; 8 tokens after the prompt's warm run): with a 16-token prompt the
cache sends 10.3 MB (three parties together) against 66.2 MB for the recompute, with a
48-token prompt 29.4 MB against 213.9 MB; the rounds are the same (about 870 per token:
a tiny model is latency-bound, about 1 s per token either way here).

:func:`generate_plain` is the plaintext twin (:func:`mpcgpu.nn.dag_run.run_plain` on the
same graphs, float64): tokens and, per step, the gap between the two largest logits (how
close a step is to a tie, where fixed point may choose the other token).

:func:`greedy_loop` is the engine with the model abstracted: it takes the two callables
(prompt -> logits and state; token one-hot and state -> logits and state), so any graph
pair (an imported prefill / decode pair, for instance) generates the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy

from ..errors import MPCError
from ..protocols.compare import argmax
from ..sharing.arithmetic import ArithmeticShare
from ..sharing.replicated import concatenate


class GenerationError(MPCError, ValueError):
    """Generation cannot run as asked (bad prompt, too many tokens for the positions...)."""


#: the prompt graph's cache outputs and the step graph's cache inputs (tf-zoo's names)
PRESENT = "present."
PAST = "past_key_values."


@dataclass
class Generation:
    """What :func:`generate` returns on each party."""

    #: ``[B, steps]`` int64 token ids on the result owner, None on the other parties
    tokens: numpy.ndarray | None
    #: the generated tokens as one-hot integer shares ``[B, vocab]`` (scale 0), one per step
    onehots: list
    owner: int
    cache: bool
    #: wall seconds per step (step 0 includes the prompt)
    seconds: list = field(default_factory=list)


def last_position(logits) -> ArithmeticShare:
    """``[B, T, V]`` (or ``[B, V]``) logits -> the last position's ``[B, V]``."""
    if logits.ndim == 3:
        return logits[:, -1, :]
    if logits.ndim == 2:
        return logits
    raise GenerationError(f"logits of shape {tuple(logits.shape)}: expected [B, T, vocab] or [B, vocab]")


def token_ids(onehot: ArithmeticShare) -> ArithmeticShare:
    """The integer share ``sum_j j * onehot[..., j]`` (scale 0): local and exact."""
    if onehot.scale != 0:
        raise GenerationError("token_ids needs a one-hot integer share (scale 0)")
    return (onehot * numpy.arange(onehot.shape[-1], dtype=numpy.int64)).sum(axis=-1)


def _check_loop(steps, owner) -> int:
    steps = int(steps)
    if steps < 1:
        raise GenerationError(f"steps must be at least 1, got {steps}")
    if owner not in (0, 1, 2):
        raise GenerationError(f"the result owner must be party 0, 1 or 2, got {owner!r}")
    return steps


def greedy_loop(
    first: Callable,
    step: Callable,
    steps: int,
    *,
    owner: int = 0,
    on_token: Callable | None = None,
) -> Generation:
    """Greedy decoding with the model abstracted.

    ``first() -> (logits share, state)`` runs the prompt; ``step(onehot [B, V] share, state,
    k) -> (logits share, state)`` feeds the ``k``-th generated token (0-based).  ``steps``
    tokens are chosen; the model runs ``steps - 1`` times after the prompt (the last token
    needs no further logits).  ``on_token(k, seconds)``: called on every party once token
    ``k`` is chosen and revealed (``seconds``: the wall time of that step; step 0 includes
    the prompt), e.g. for progress.  Returns a :class:`Generation` (``cache`` left False)."""
    steps = _check_loop(steps, owner)
    onehots, ids, seconds = [], [], []
    t0 = time.perf_counter()
    logits, state = first()
    for k in range(steps):
        oh = argmax(last_position(logits), axis=-1)
        onehots.append(oh)
        ids.append(token_ids(oh).reveal(to=owner))
        if k + 1 < steps:
            logits, state = step(oh, state, k)
        seconds.append(time.perf_counter() - t0)
        if on_token is not None:
            on_token(k, seconds[-1])
        t0 = time.perf_counter()
    tokens = numpy.stack(ids, axis=-1).astype(numpy.int64) if ids[0] is not None else None
    return Generation(tokens, onehots, owner, False, seconds)


# -- GPT-2 graphs ----------------------------------------------------------------------------

_GRAPHS: dict = {}


def _graph(config, kind: str, length: int):
    """``(GraphModel, consts)`` of a GPT-2 configuration: the prompt graph of ``length``
    tokens with (``kind="prompt"``) or without (``"full"``) the cache outputs, or the step
    graph after ``length`` tokens (``"step"``).  Built once per key."""
    from . import transformers as tf

    key = (config, kind, int(length))
    if key not in _GRAPHS:
        if kind == "step":
            g = tf.gpt2_decode(config, int(length))
        else:
            g = tf.gpt2(replace(config, seq_len=int(length)), present=kind == "prompt")
        if len(_GRAPHS) > 64:
            _GRAPHS.clear()
        _GRAPHS[key] = (g, tf.graph_consts(g))
    return _GRAPHS[key]


def _config(config):
    from . import transformers as tf

    c = tf.get_config(config) if isinstance(config, str) else config
    if getattr(c, "kind", None) != "gpt2":
        raise GenerationError(f"generation needs a GPT-2 configuration, got {getattr(c, 'kind', c)!r}")
    return c


def _check_length(c, prompt_len: int, steps: int):
    if prompt_len < 1:
        raise GenerationError("the prompt needs at least one token")
    if prompt_len + steps - 1 > c.max_positions:
        raise GenerationError(
            f"a prompt of {prompt_len} tokens and {steps} generated ones need {prompt_len + steps - 1} "
            f"positions; the model has {c.max_positions}"
        )


def _check_shares(params: dict):
    bad = [k for k, v in params.items() if isinstance(v, numpy.ndarray)]
    if bad:
        raise GenerationError(f"params must be shares (secret weights), got plaintext arrays for {bad[:3]}")


def generate(
    config,
    params: dict,
    prompt: ArithmeticShare,
    steps: int,
    *,
    owner: int = 0,
    cache: bool = True,
    rt=None,
    profile=None,
    on_token: Callable | None = None,
) -> Generation:
    """Greedy generation of ``steps`` tokens by GPT-2 ``config`` (a name of
    :data:`mpcgpu.nn.transformers.MODELS` or a ``TransformerConfig``) on shares.

    ``params``: ``{name: share}`` of the model (the graphs' parameters); ``prompt``: the
    prompt as a one-hot integer share ``[B, T, vocab]`` (scale 0; e.g.
    :func:`mpcgpu.nn.dag_run.share_inputs` of the prompt graph) or as an integer share of
    the ids themselves ``[B, T]`` (scale 0, each below the vocabulary: a token dataset's
    shares), expanded to one-hot rows privately (:func:`mpcgpu.protocols.onehot.one_hot`,
    24 rounds at GPT-2's vocabulary); ``owner``: the party that learns the tokens;
    ``cache``: key/value cache (True) or full recompute (False); ``profile``: a
    :class:`mpcgpu.nn.private.Profile` to accumulate every graph run in; ``on_token``: see
    :func:`greedy_loop`."""
    _check_loop(steps, owner)  # before the prompt's expansion
    first, step = _model(config, params, prompt, steps, cache, rt, profile)
    gen = greedy_loop(first, step, steps, owner=owner, on_token=on_token)
    gen.cache = bool(cache)
    return gen


def _model(config, params: dict, prompt, steps: int, cache: bool, rt, profile):
    """``(first, step)`` of :func:`greedy_loop` for GPT-2 ``config`` (see :func:`generate`)."""
    from .dag_run import PrivateGraph

    c = _config(config)
    _check_shares(params)
    if not isinstance(prompt, ArithmeticShare) and isinstance(getattr(prompt, "share", None), ArithmeticShare):
        prompt = prompt.share  # a OneHotShare of mpcgpu.nn.ops.values (share_inputs)
    ids = None  # the prompt's id shares, expanded inside the first run (its domain guard)
    if isinstance(prompt, ArithmeticShare) and prompt.scale == 0 and prompt.ndim == 2:
        from ..protocols.onehot import one_hot

        if prompt.shape[0] != c.batch:
            raise GenerationError(f"prompt ids of shape {tuple(prompt.shape)}: the model takes batch {c.batch}")
        _check_length(c, prompt.shape[1], steps)  # before the expansion's rounds
        if cache:
            ids = prompt
            prompt = _IdsShape(prompt, c.vocab)
        else:  # the one-hot rows are fed again at every step: expanded (and checked) once here
            prompt = one_hot(prompt, c.vocab)
    if not isinstance(prompt, (ArithmeticShare, _IdsShape)) or prompt.scale != 0 or prompt.ndim != 3:
        raise GenerationError(
            "the prompt must be a one-hot integer share [B, T, vocab] or an integer share of ids [B, T] (scale 0)"
        )
    rt = rt or prompt.rt
    B, T, V = prompt.shape
    if B != c.batch or V != c.vocab:
        raise GenerationError(
            f"prompt of shape {tuple(prompt.shape)}: the model takes batch {c.batch}, vocab {c.vocab}"
        )
    _check_length(c, T, steps)

    def run(kind, length, feeds):
        g, consts = _graph(c, kind, length)
        p = {t.name: params[t.name] for t in g.params}
        return PrivateGraph(g, p, consts, rt).run(feeds, profile=profile)

    if cache:

        def first():
            out = run("prompt", T, {"input_ids": prompt if ids is None else ids})
            return out["logits"], _present(out)

        def step(oh, past, k):
            feeds = {"input_ids": oh.reshape(B, 1, V)}
            feeds.update({PAST + name: kv for name, kv in past.items()})
            out = run("step", T + k, feeds)
            return out["logits"], _present(out)

    else:

        def first():
            return run("full", T, {"input_ids": prompt})["logits"], prompt

        def step(oh, seq, k):
            seq = concatenate([seq, oh.reshape(B, 1, V)], axis=1)
            return run("full", T + k + 1, {"input_ids": seq})["logits"], seq

    return first, step


class _IdsShape:
    """Stands for the one-hot rows of prompt ids not yet expanded (shape and scale only): the
    prompt graph expands them inside its run, so that their domain check shares the run's
    one revealed bit (:mod:`mpcgpu.protocols.domain`)."""

    def __init__(self, ids, vocab):
        self.shape = (*ids.shape, int(vocab))
        self.ndim, self.scale, self.rt = 3, 0, ids.rt


def warm_up(config, params: dict, prompt, *, cache: bool = True, rt=None) -> None:
    """What :func:`generate` runs first, once, revealing nothing: the prompt graph, the
    private argmax and (if the context leaves room) one step, so that the CPU kernels are
    compiled or loaded from their disk cache (many seconds on a fresh or busy machine)
    before anything is timed.  Every party calls it alike."""
    steps = 2 if (prompt.shape[1] + 1 <= _config(config).max_positions) else 1
    first, step = _model(config, params, prompt, steps, cache, rt, None)
    logits, state = first()
    if steps == 2:
        step(argmax(last_position(logits), axis=-1), state, 0)


def _present(out: dict) -> dict:
    """``{"{i}.key": share, ...}`` from a graph's ``present.*`` outputs."""
    kv = {k[len(PRESENT) :]: v for k, v in out.items() if k.startswith(PRESENT)}
    if not kv:
        raise GenerationError("the graph has no present.* outputs (build the prompt graph with present=True)")
    return kv


@dataclass
class PlainGeneration:
    tokens: numpy.ndarray  # [B, steps] int64
    #: per step, per sequence: largest logit minus the second largest (float64)
    margins: numpy.ndarray
    logits: list  # the last-position logits of each step, [B, V] float64


def generate_plain(config, params: dict, prompt_ids, steps: int, *, cache: bool = True) -> PlainGeneration:
    """The plaintext twin of :func:`generate` (float64, :func:`run_plain`): ``prompt_ids``
    ``[B, T]`` int; ``params`` ``{name: array}``."""
    from .dag_run import run_plain

    c = _config(config)
    ids = numpy.asarray(prompt_ids, dtype=numpy.int64)
    if ids.ndim != 2 or ids.shape[0] != c.batch:
        raise GenerationError(f"prompt ids of shape {ids.shape}: expected [{c.batch}, T]")
    B, T = ids.shape
    steps = int(steps)
    if steps < 1:
        raise GenerationError(f"steps must be at least 1, got {steps}")
    _check_length(c, T, steps)

    def run(kind, length, feeds):
        g, consts = _graph(c, kind, length)
        return run_plain(g, {t.name: params[t.name] for t in g.params}, consts, feeds)

    tokens, margins, all_logits = [], [], []
    if cache:
        out = run("prompt", T, {"input_ids": ids})
    else:
        out = run("full", T, {"input_ids": ids})
    seq = ids
    for k in range(steps):
        last = numpy.asarray(out["logits"], dtype=numpy.float64)[:, -1, :]
        tok = last.argmax(axis=-1)
        top2 = numpy.sort(last, axis=-1)[:, -2:]
        tokens.append(tok)
        margins.append(top2[:, 1] - top2[:, 0])
        all_logits.append(last)
        if k + 1 == steps:
            break
        if cache:
            feeds = {"input_ids": tok[:, None]}
            feeds.update({PAST + name: v for name, v in _present(out).items()})
            out = run("step", T + k, feeds)
        else:
            seq = numpy.concatenate([seq, tok[:, None]], axis=1)
            out = run("full", T + k + 1, {"input_ids": seq})
    return PlainGeneration(numpy.stack(tokens, axis=-1), numpy.stack(margins, axis=-1), all_logits)


# -- a stored graph model as a GPT-2 configuration -------------------------------------------

#: what generation runs on, said in the errors
_SUPPORTED = (
    "generation runs the GPT-2 graphs of mpcgpu.nn.transformers (gpt2 / gpt2_decode: a prompt "
    "graph with the key/value cache outputs and one-token step graphs), so the model must be "
    "such a GPT-2 graph (mpcgpu.nn.generate.save_gpt2(path, config, state_dict) writes one from "
    "Hugging Face GPT-2 weights; then mpcgpu share)"
)


def _not_gpt2(g, why: str):
    return GenerationError(
        f"model {g.name} is not a causal language model with key/value cache support: {why}; {_SUPPORTED}"
    )


def gpt2_config_of(g, consts: dict):
    """The GPT-2 configuration (:class:`mpcgpu.nn.transformers.TransformerConfig`) of a
    stored graph model ``g`` with public constants ``consts``, or a
    :class:`GenerationError` saying why it is not one.

    The sizes are read from the parameters (``transformer.wte.weight`` ``[vocab, hidden]``,
    ``transformer.wpe.weight`` ``[max_positions, hidden]``, the blocks
    ``transformer.h.{i}.*``, the MLP width), the heads from the attention's reshape target,
    the LayerNorm epsilon from its nodes, the batch and length from ``input_ids``; then
    the graph **must equal**, node for node and constant for constant (the causal mask
    included), ``gpt2(config)`` with or without the cache outputs (``present=True``) or
    ``last_only=True``.  That equality is what lets generation run the same parameters
    through the prompt and step graphs built here: a graph that differs anywhere (another
    architecture, an imported ONNX graph, a changed mask) is refused, never run as if it
    were GPT-2.  An imported Hugging Face GPT-2 (``mpcgpu import gpt2.onnx``) is refused
    too: the exporter folds the position table into the exported length and names the
    tied head ``lm_head.weight``, so its graph is not this one."""
    from . import dag
    from . import transformers as tf

    shapes = g.param_shapes()
    if not any(t.name == "input_ids" and t.role == "secret" and t.dtype == "int" for t in g.inputs):
        raise _not_gpt2(g, "it has no secret input_ids input")
    need = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight")
    missing = [n for n in need if n not in shapes]
    if missing:
        hint = (
            " (a graph imported from ONNX: the exporter folds the position table into the exported length "
            "and names the tied head lm_head.weight)"
            if "lm_head.weight" in shapes
            else ""
        )
        raise _not_gpt2(g, f"it has no parameter {missing[0]}{hint}")
    vocab, hidden = shapes["transformer.wte.weight"]
    max_positions = shapes["transformer.wpe.weight"][0]
    layers = 0
    while f"transformer.h.{layers}.ln_1.weight" in shapes:
        layers += 1
    fc = shapes.get("transformer.h.0.mlp.c_fc.weight")
    ids = next(t for t in g.inputs if t.name == "input_ids")
    if layers < 1 or fc is None or len(ids.shape) != 2:
        raise _not_gpt2(g, "its parameters are not GPT-2's blocks (transformer.h.{i}.*)")
    heads = None
    for node in g.nodes:  # the first head split: Reshape to [B, T, heads, head_dim]
        target = consts.get(node.inputs[1]) if node.op == "Reshape" and len(node.inputs) > 1 else None
        if target is not None and numpy.ndim(target) == 1 and len(target) == 4:
            heads = int(target[2])
            break
    eps = next((n.attrs.get("epsilon") for n in g.nodes if n.op == "LayerNormalization"), None)
    if not heads or eps is None:
        raise _not_gpt2(g, "no attention heads or LayerNorm found")
    try:
        c = tf.TransformerConfig(
            "gpt2",
            layers,
            heads,
            int(hidden),
            int(fc[1]),
            vocab=int(vocab),
            seq_len=int(ids.shape[1]),
            max_positions=int(max_positions),
            eps=float(eps),
            batch=int(ids.shape[0]),
            name=g.name,
        )
    except Exception as exc:  # a GraphError of the configuration's own checks
        raise _not_gpt2(g, str(exc)) from None

    def bare(graph):
        d = dag.to_dict(graph)
        d.pop("description", None)
        return d

    want = bare(g)
    for variant in (dict(present=True), dict(), dict(last_only=True), dict(present=True, last_only=True)):
        built = tf.gpt2(c, **variant)
        if bare(built) != want:
            continue
        ref = tf.graph_consts(built)
        if set(ref) == set(consts) and all(
            numpy.shape(consts[k]) == numpy.shape(v) and numpy.array_equal(numpy.asarray(consts[k]), v)
            for k, v in ref.items()
        ):
            return c
        raise _not_gpt2(g, "its public constants (reshape targets, positions, causal mask) differ from GPT-2's")
    raise _not_gpt2(g, f"its nodes differ from GPT-2's ({layers} layers, {heads} heads, hidden {hidden})")


def prompt_spans(masks) -> list:
    """``[(start, length), ...]`` per row of public attention ``masks`` (``N x L`` of 0/1):
    the one contiguous run of 1s of each row (padding on the right, the left or both);
    a row with no token or with a gap inside is a :class:`GenerationError`.  The prompt of
    row ``i`` is its ids ``[start, start + length)``, at positions ``0 .. length - 1`` (as
    Hugging Face's ``generate`` places a left-padded prompt)."""
    m = numpy.asarray(masks)
    if m.ndim != 2:
        raise GenerationError(f"attention masks of shape {m.shape}: expected N x L")
    spans = []
    for i, row in enumerate(m):
        on = numpy.flatnonzero(row)
        if on.size == 0:
            raise GenerationError(f"prompt {i} has no token (its attention mask is all 0)")
        start, stop = int(on[0]), int(on[-1]) + 1
        if on.size != stop - start:
            raise GenerationError(
                f"prompt {i}: its attention mask has padding between tokens (positions {start}..{stop - 1}); "
                "a prompt must be one run of tokens, padded before or after"
            )
        spans.append((start, stop - start))
    return spans


def check_prompts(config, spans: list, steps: int) -> None:
    """Every prompt of ``spans`` (:func:`prompt_spans`) and ``steps`` generated tokens fit
    the context of GPT-2 ``config`` (``length + steps - 1 <= max_positions``), else one
    :class:`GenerationError` naming the longest prompt and the most tokens that fit."""
    c = _config(config)
    steps = int(steps)
    if steps < 1:
        raise GenerationError(f"the number of tokens to generate must be at least 1, got {steps}")
    if not spans:
        raise GenerationError("no prompt to generate from")
    i = max(range(len(spans)), key=lambda j: spans[j][1])
    longest = spans[i][1]
    if longest > c.max_positions:
        raise GenerationError(
            f"prompt {i} has {longest} tokens, longer than the model's context of {c.max_positions} positions"
        )
    if longest + steps - 1 > c.max_positions:
        raise GenerationError(
            f"{steps} tokens after prompt {i} of {longest} tokens need {longest + steps - 1} positions; the model's "
            f"context is {c.max_positions}: at most {c.max_positions - longest + 1} tokens for this prompt set"
        )


def save_gpt2(path, config, state: dict, *, dtype=numpy.float32, meta: dict | None = None):
    """Write a GPT-2 of ``config`` (a :class:`~mpcgpu.nn.transformers.TransformerConfig` or a
    name of :data:`~mpcgpu.nn.transformers.MODELS`) with the weights ``state`` as a weights
    file that ``mpcgpu share`` and ``mpcgpu generate`` take: the prompt graph
    ``gpt2(config, present=True)`` with its constants.  ``state``: ``{name: array}`` by
    Hugging Face's names (``GPT2LMHeadModel.state_dict()``, each tensor turned into an
    array: ``{k: v.detach().double().numpy() for k, v in model.state_dict().items()}``);
    GPT-2's ``Conv1D`` weights are already ``[in, out]`` as the graph's.  Keys the graph
    does not read are ignored (the causal-mask buffers ``attn.bias``); ``lm_head.weight``,
    if given, must equal the token table (GPT-2's head is tied to it).  A missing or
    mis-shaped parameter is a :class:`GenerationError` naming every one.  Returns the graph."""
    from . import transformers as tf
    from . import weights as W

    c = _config(config)
    g = tf.gpt2(c, present=True)
    shapes = g.param_shapes()
    problems = [f"missing {k}" for k in shapes if k not in state]
    problems += [
        f"{k}: shape {tuple(numpy.shape(state[k]))}, expected {shape}"
        for k, shape in shapes.items()
        if k in state and tuple(numpy.shape(state[k])) != tuple(shape)
    ]
    head = state.get("lm_head.weight")
    wte = state.get("transformer.wte.weight")
    if head is not None and wte is not None and not numpy.array_equal(numpy.asarray(head), numpy.asarray(wte)):
        problems.append("lm_head.weight differs from transformer.wte.weight (GPT-2's head is the tied token table)")
    if problems:
        raise GenerationError(f"weights for GPT-2 {c.name or ''}: " + "; ".join(problems[:8]))
    params = {k: numpy.asarray(state[k], dtype=numpy.float64) for k in shapes}
    W.save_weights(path, g.name, params, spec=g, consts=tf.graph_consts(g), dtype=dtype, meta=meta)
    return g


__all__ = [
    "Generation",
    "GenerationError",
    "PlainGeneration",
    "check_prompts",
    "generate",
    "generate_plain",
    "gpt2_config_of",
    "greedy_loop",
    "last_position",
    "prompt_spans",
    "save_gpt2",
    "token_ids",
    "warm_up",
]
