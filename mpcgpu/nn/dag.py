"""Dataflow graphs of operators: the model kind for transformers (and any graph that is not
a chain of layers and residual blocks), next to the layer trees of :mod:`mpcgpu.nn.graph`.

A :class:`GraphModel` is a list of :class:`Node` in topological order over named tensors,
the operators and attributes being ONNX's own (``MatMul``, ``Softmax`` with ``axis``,
``LayerNormalization`` with ``epsilon``...), so an ONNX graph imports node for node and
exports back the same way.  Every tensor is one of

* a **graph input** (:class:`TensorInfo` in ``inputs``): ``role="secret"`` (the data
  owner's tokens or image, shared) or ``role="public"`` (an attention mask, position ids:
  known to all three servers);
* a **parameter** (``params``): a secret weight of the model owner, shared like a layer's;
* a **public constant** (``consts``): structure that every party knows (reshape targets,
  scalar factors, a causal mask); its values travel with the model, not in the spec;
* the output of a node.

A node whose inputs are all public computes a public value (its plaintext facet, on the
host, by every party alike: the run-time form of constant folding); a node with a secret
input runs its private facet.  Shapes are static and include the batch dimension (the
exporter's example shapes).

Operators are registered one per record, like the layer types (:func:`register_op`): the
plaintext facet (NumPy, float64/int64/bool; also the reference and the public evaluation),
the private facet, and a test example.  The executors are in :mod:`mpcgpu.nn.dag_run`.

Format ``mpcgpu-graph/1`` (one JSON object, :func:`to_dict` / :func:`from_dict`)::

    {"format": "mpcgpu-graph/1", "name": "...", "description": "...", "task": "...",
     "inputs":  [{"name": "input_ids", "shape": [1, 128], "dtype": "int", "role": "secret"}, ...],
     "outputs": ["logits"],
     "params":  [{"name": "w0", "shape": [768, 768], "dtype": "float", "role": "secret"}, ...],
     "consts":  [{"name": "c0", "shape": [4], "dtype": "int", "role": "public"}, ...],
     "nodes":   [{"op": "MatMul", "name": "n0", "inputs": ["x", "w0"], "outputs": ["y"],
                  "attrs": {}}, ...]}
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..errors import MPCError

FORMAT = "mpcgpu-graph/1"
DTYPES = ("float", "int", "bool")
ROLES = ("secret", "public")
#: what the graph's outputs are, for the output stage: hidden states, class logits, or
#: next-token logits of a language model (greedy generation reads the last position)
TASKS = ("hidden", "logits", "lm")
#: the largest graph accepted (GPT-2 small exports ~1,500 nodes)
MAX_NODES = 200_000


class GraphError(MPCError, ValueError):
    """A graph model is ill-formed (unknown operator, undefined tensor, bad attribute...)."""


@dataclass(frozen=True)
class TensorInfo:
    """A named tensor of static ``shape`` (batch included), ``dtype`` and ``role``."""

    name: str
    shape: tuple
    dtype: str = "float"
    role: str = "secret"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not self.name or not isinstance(self.name, str):
            raise GraphError(f"a tensor needs a non-empty name, got {self.name!r}")
        if any(d < 0 for d in self.shape):
            raise GraphError(f"tensor {self.name}: negative dimension in {self.shape}")
        if self.dtype not in DTYPES:
            raise GraphError(f"tensor {self.name}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.role not in ROLES:
            raise GraphError(f"tensor {self.name}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class Node:
    """One operator application: ``outputs = op(inputs, **attrs)``.  An empty string in
    ``inputs`` is an absent optional input (ONNX's convention)."""

    op: str
    name: str
    inputs: tuple
    outputs: tuple
    attrs: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        object.__setattr__(self, "outputs", tuple(str(o) for o in self.outputs))
        object.__setattr__(self, "attrs", dict(self.attrs))
        if not self.outputs or any(not o for o in self.outputs):
            raise GraphError(f"node {self.name} ({self.op}): every output needs a name")

    def attr(self, key, default=None):
        return self.attrs.get(key, default)

    def fail(self, msg: str):
        """Raise a :class:`GraphError` naming this node."""
        raise GraphError(f"node {self.name} ({self.op}): {msg}")


@dataclass(frozen=True, eq=False)
class GraphModel:
    """A network as a dataflow graph (see the module docstring)."""

    name: str
    inputs: tuple
    outputs: tuple
    nodes: tuple
    params: tuple = ()
    consts: tuple = ()
    description: str = ""
    task: str = "hidden"

    def __post_init__(self):
        for key in ("inputs", "outputs", "nodes", "params", "consts"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.task not in TASKS:
            raise GraphError(f"graph {self.name}: task must be one of {TASKS}, got {self.task!r}")
        validate(self)

    # -- views -----------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple:
        """The shape of the (first) secret input: what a dataset row must have."""
        for t in self.inputs:
            if t.role == "secret":
                return t.shape
        return self.inputs[0].shape

    def param_shapes(self) -> dict:
        return {p.name: p.shape for p in self.params}

    def const_shapes(self) -> dict:
        return {c.name: c.shape for c in self.consts}

    def count_params(self) -> int:
        return sum(p.size for p in self.params)

    def one_hot_width(self, name: str) -> int:
        """The vocabulary of the secret token input ``name``: the rows of the table its
        first Gather reads (token ids are shared as one-hot rows of this width)."""
        shapes = {**self.param_shapes(), **self.const_shapes()}
        ids = {name}  # the input and its reshaped views (the exporter may reshape ids first)
        for n in self.nodes:
            if n.op in ("Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast", "Flatten") and n.inputs[0] in ids:
                ids.update(n.outputs)
            if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1] in ids and n.inputs[0] in shapes:
                return int(shapes[n.inputs[0]][int(n.attr("axis", 0))])
        raise GraphError(f"graph {self.name}: input {name} is not read by a Gather of a table (no vocabulary)")

    def ops(self) -> dict:
        """``{operator: count}`` in first-use order."""
        out: dict = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0) + 1
        return out

    def last_use(self) -> dict:
        """``{tensor: index of the last node reading it}`` (outputs: ``len(nodes)``), for
        executors that free a value as soon as nothing reads it any more."""
        last = {}
        for i, n in enumerate(self.nodes):
            for name in n.inputs:
                if name:
                    last[name] = i
        for name in self.outputs:
            last[name] = len(self.nodes)
        return last


def validate(g: GraphModel) -> None:
    """Raise a :class:`GraphError` naming every problem: duplicate or undefined tensors,
    unknown operators, outputs never computed, more than :data:`MAX_NODES` nodes."""
    from . import ops as _ops  # noqa: F401  (registers the operators; same floor)

    problems = []
    if len(g.nodes) > MAX_NODES:
        raise GraphError(f"graph {g.name}: {len(g.nodes)} nodes, more than the {MAX_NODES} accepted")
    defined: dict = {}
    for kind, infos in (("input", g.inputs), ("param", g.params), ("const", g.consts)):
        for t in infos:
            if not isinstance(t, TensorInfo):
                raise GraphError(f"graph {g.name}: {kind} {t!r} is not a TensorInfo")
            if t.name in defined:
                problems.append(f"{t.name} is defined twice ({defined[t.name]} and {kind})")
            defined[t.name] = kind
    for t in g.params:
        if t.role != "secret" or t.dtype != "float":
            problems.append(f"param {t.name} must be a secret float tensor")
    for t in g.consts:
        if t.role != "public":
            problems.append(f"const {t.name} must be public")
    unknown = sorted({n.op for n in g.nodes if n.op not in _OPS})
    if unknown:
        problems.append(f"unknown operators {unknown}")
    for n in g.nodes:
        if not isinstance(n, Node):
            raise GraphError(f"graph {g.name}: {n!r} is not a Node")
        missing = [i for i in n.inputs if i and i not in defined]
        if missing:
            problems.append(f"node {n.name} ({n.op}) reads {missing} before they are defined")
        for o in n.outputs:
            if o in defined:
                problems.append(f"node {n.name} ({n.op}) writes {o}, defined already ({defined[o]})")
            defined[o] = f"node {n.name}"
    never = [o for o in g.outputs if o not in defined]
    if never:
        problems.append(f"outputs {never} are never computed")
    if not g.outputs:
        problems.append("no outputs")
    if problems:
        raise GraphError(f"graph {g.name}: " + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))


# -- the operator registry --------------------------------------------------------------------


@dataclass(frozen=True)
class OpType:
    """Everything about one operator (see :func:`register_op`)."""

    name: str
    plain: Callable
    private: Callable
    examples: tuple
    doc: str = ""


_OPS: dict = {}


def register_op(name: str, *, plain, private, examples, doc: str = "") -> OpType:
    """Register the operator ``name`` (ONNX's name) with its facets:

    * ``plain(node, args) -> list of arrays``: NumPy on float64 / int64 / bool arrays
      (``None`` for an absent optional input); the plaintext executor, the reference of the
      tests, and the public evaluation of the private executor (all inputs public);
    * ``private(ctx, node, args) -> list of values``: called when at least one input is
      secret; a value is an ``ArithmeticShare``, a public host ``numpy`` array, or another
      secret kind the operators agree on (a masked share, :mod:`mpcgpu.nn.ops.values`);
      ``ctx`` is the private executor's context (``ctx.rt``, ``ctx.public(arr)``...);
    * ``examples``: ``(node, [TensorInfo of each input])`` pairs every registry-wide test
      runs (plaintext against onnxruntime, private against plaintext);
    * ``doc``: rounds and bytes of the private facet, one line.
    """
    if name in _OPS:
        raise ValueError(f"register_op: {name} is registered already")
    if not (callable(plain) and callable(private)):
        raise TypeError(f"register_op {name}: plain and private must be functions")
    examples = tuple((n, tuple(ins)) for n, ins in examples)
    if not examples or any(n.op != name for n, _ in examples):
        raise ValueError(f"register_op {name}: give at least one example node of this operator")
    t = OpType(name, plain, private, examples, doc)
    _OPS[name] = t
    return t


def op_type(name: str) -> OpType:
    try:
        return _OPS[name]
    except KeyError:
        raise GraphError(f"operator {name} is not supported") from None


def registered_ops() -> tuple:
    """Every registered :class:`OpType`, in registration order."""
    return tuple(_OPS.values())


# -- JSON ---------------------------------------------------------------------------------------


def _info_dict(t: TensorInfo) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "role": t.role}


def _json_value(v, where):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise GraphError(f"{where}: attribute value {v} is not finite (store it as a const)")
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x, where) for x in v]
    if hasattr(v, "tolist"):  # a NumPy scalar or small array
        return _json_value(v.tolist(), where)
    raise GraphError(f"{where}: attribute of type {type(v).__name__} cannot be stored")


def to_dict(g: GraphModel) -> dict:
    return {
        "format": FORMAT,
        "name": g.name,
        "description": g.description,
        "task": g.task,
        "inputs": [_info_dict(t) for t in g.inputs],
        "outputs": list(g.outputs),
        "params": [_info_dict(t) for t in g.params],
        "consts": [_info_dict(t) for t in g.consts],
        "nodes": [
            {
                "op": n.op,
                "name": n.name,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "attrs": {k: _json_value(v, f"node {n.name}") for k, v in sorted(n.attrs.items())},
            }
            for n in g.nodes
        ],
    }


def to_json(g: GraphModel) -> str:
    return json.dumps(to_dict(g), separators=(",", ":"))


def _need(d, key, kind, where):
    if not isinstance(d, dict) or key not in d:
        raise GraphError(f"{where}: missing {key!r}")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise GraphError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, got {type(v).__name__}")
    return v


def _info_from(d, where) -> TensorInfo:
    name = _need(d, "name", str, where)
    shape = _need(d, "shape", list, f"{where} {name}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise GraphError(f"{where} {name}: shape must be a list of ints")
    extra = set(d) - {"name", "shape", "dtype", "role"}
    if extra:
        raise GraphError(f"{where} {name}: unexpected keys {sorted(extra)}")
    return TensorInfo(name, tuple(shape), _need(d, "dtype", str, where), _need(d, "role", str, where))


def from_dict(d) -> GraphModel:
    """The graph of a ``mpcgpu-graph/1`` object, validated (a :class:`GraphError` names
    what is wrong)."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise GraphError(f"not a {FORMAT} graph (format {got!r})")
    extra = set(d) - {"format", "name", "description", "task", "inputs", "outputs", "params", "consts", "nodes"}
    if extra:
        raise GraphError(f"graph: unexpected keys {sorted(extra)}")
    nodes = []
    for i, nd in enumerate(_need(d, "nodes", list, "graph")):
        where = f"node #{i}"
        attrs = nd.get("attrs", {}) if isinstance(nd, dict) else None
        if not isinstance(attrs, dict):
            raise GraphError(f"{where}: attrs must be an object")
        ins, outs = _need(nd, "inputs", list, where), _need(nd, "outputs", list, where)
        if not all(isinstance(s, str) for s in ins + outs):
            raise GraphError(f"{where}: inputs and outputs are lists of names")
        nodes.append(Node(_need(nd, "op", str, where), _need(nd, "name", str, where), ins, outs, attrs))
    return GraphModel(
        name=_need(d, "name", str, "graph"),
        inputs=[_info_from(t, "input") for t in _need(d, "inputs", list, "graph")],
        outputs=[str(o) for o in _need(d, "outputs", list, "graph")],
        nodes=nodes,
        params=[_info_from(t, "param") for t in d.get("params", [])],
        consts=[_info_from(t, "const") for t in d.get("consts", [])],
        description=str(d.get("description", "")),
        task=str(d.get("task", "hidden")),
    )


def from_json(text) -> GraphModel:
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise GraphError(f"graph spec is not valid JSON: {exc}") from None
    return from_dict(d)


def is_graph_json(text) -> bool:
    """Whether a stored architecture text is a graph (not an ``mpcgpu-spec/1`` tree)."""
    return isinstance(text, str) and f'"format":"{FORMAT}"' in text.replace(" ", "")[:200]


def replace(g: GraphModel, **changes) -> GraphModel:
    return dataclasses.replace(g, **changes)


__all__ = [
    "FORMAT",
    "TASKS",
    "GraphError",
    "TensorInfo",
    "Node",
    "GraphModel",
    "validate",
    "OpType",
    "register_op",
    "op_type",
    "registered_ops",
    "to_dict",
    "to_json",
    "from_dict",
    "from_json",
    "is_graph_json",
    "replace",
]
