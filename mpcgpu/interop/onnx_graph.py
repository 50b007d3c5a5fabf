"""ONNX graphs as graph models (:mod:`mpcgpu.nn.dag`), and graph models back to ONNX: the
import of the transformers that ``torch.onnx.export(..., dynamo=True, opset_version=18)``
writes for Hugging Face models (BERT, GPT-2, ViT), and of any graph that is not a chain of
layers.  Needs the ``onnx`` package only (no PyTorch, no onnxruntime).

:func:`import_graph` turns a ``ModelProto`` into ``(GraphModel, params, consts, notes)``:

* **Opset 18.** The nodes mean what opset 18 says (later operators such as opset 20's
  ``Gelu`` are kept); a file of an older opset is converted first
  (``onnx.version_converter``: ReduceMean's and Squeeze's axes, Split's sizes become inputs).
* **Static shapes.** Every graph input gets a static shape, batch included: the file's own
  dimensions, or ``input_shapes={name: shape}`` where the file leaves one symbolic (a clear
  error names every symbolic input otherwise, or a given shape that contradicts the file).
* **Initializers** (and ``Constant`` nodes) are classified by their values:

  ========================================================  ===============================
  int or bool tensor; float of size <= 1 (scale factors)    public const
  float tensor of size > 1, finite, every ``|v| <`` 1e4     secret param (model owner's)
  float tensor whose entries are all 0 or ``<= -1e4`` /     public const (an additive
  ``-inf`` (attention masks: -3.4e38 or -inf)               mask)
  anything holding NaN, ``+inf``, or weights ``>= 1e4``     error naming the initializer
  ========================================================  ===============================

  A param stays a param: a transposed weight or an embedding the exporter folded itself
  (BERT's ``embedding_2``, GPT-2's transposed ``lm_head``) is just another param.  The
  exporter shares one initializer between equal tensors (every zero bias): that is kept.
* **Constant folding.** Every node whose inputs are all public consts is evaluated at
  import (NumPy, or ``onnx.reference``) and becomes a const; ``Shape`` and ``Size`` of any
  tensor fold too (shapes are static and public).  A node that reads a param is never
  folded.  Nodes whose outputs nothing reads are dropped, ``Identity`` nodes are dropped.
* **Graph inputs**: ``input_ids``, ``pixel_values`` and any other input are secret (the data
  owner's); ``attention_mask``, ``token_type_ids`` and ``position_ids`` public
  (:data:`PUBLIC_INPUTS`); ``public_inputs`` / ``secret_inputs`` override.
* **Operators**: what remains must be registered (:func:`mpcgpu.nn.dag.registered_ops`) or
  in :data:`SUPPORTED_GRAPH_OPS`; otherwise one :class:`GraphImportError` names every
  offending node.
* **Attributes** become JSON values (float32 ones as the decimal they were written as:
  ``1e-12``, not ``9.99999996e-13``); a tensor attribute (``ConstantOfShape``'s ``value``)
  becomes a public const and the attribute holds its name.
* **Task**: ``lm`` when an output is (batch, tokens, vocab) with vocab the rows of an
  embedding table, ``logits`` when the first output is (batch, classes) with classes not the
  hidden width, ``hidden`` otherwise; ``task=`` overrides.
* **Names** are the file's (ONNX initializer names such as ``encoder.layer.0.output.dense.bias``),
  characters other than letters, digits and ``_.:-`` replaced by ``_`` (``view_8/shape``
  -> ``view_8_shape``).

:func:`export_graph` writes a graph model with its params and consts back as an ONNX model
(opset 18, or 20 when it has ``Gelu``), which onnxruntime runs; the graph's JSON travels in the metadata
(``mpcgpu-graph``) so that importing it again keeps its roles and task.
"""

from __future__ import annotations

import math
import re

import numpy

from ..nn import dag
from ..nn.dag import GraphError, GraphModel, Node, TensorInfo

#: the ONNX operators a graph model may hold (issue 21), next to the registered ones:
#: compute, layout, and the public plumbing the exporters emit around masks and positions
SUPPORTED_GRAPH_OPS = (
    # arithmetic and layers
    "MatMul",
    "Gemm",
    "Conv",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "ReduceMean",
    "Erf",
    "Tanh",
    "Softmax",
    "LayerNormalization",
    "Gelu",
    # layout
    "Transpose",
    "Reshape",
    "Split",
    "Concat",
    "Slice",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    # public plumbing (folded when constant, else run publicly)
    "Shape",
    "Constant",
    "ConstantOfShape",
    "Expand",
    "Equal",
    "Cast",
    "And",
    "Where",
    "GatherElements",
    "GatherND",
    "IsNaN",
)

#: graph inputs that are public unless told otherwise (every other input is secret)
PUBLIC_INPUTS = ("attention_mask", "token_type_ids", "position_ids")
#: a float initializer is a param when every |value| is below this (fixed point's domain);
#: entries at or below minus this are mask entries
FIXED_POINT_LIMIT = 1e4
#: the largest constant folding may produce (elements)
MAX_FOLDED = 1 << 26
#: metadata key of the graph's JSON in an exported ONNX model
GRAPH_METADATA = "mpcgpu-graph"
OPSET = 18
#: operators newer than opset 18, and the opset an exported graph then has
_SINCE = {"Gelu": 20}
#: operators never evaluated at import (no inputs but not constant)
_NEVER_FOLD = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")

_NAME_OK = re.compile(r"[^A-Za-z0-9_.:\-]")


class GraphImportError(GraphError):
    """An ONNX graph cannot be imported as a graph model."""


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise GraphImportError(
            "importing ONNX needs the 'onnx' package: pip install 'mpcgpu[onnx]' (no PyTorch needed)"
        ) from None
    return onnx


def supported_ops() -> tuple:
    """Every operator a graph model may hold: the registered ones, then
    :data:`SUPPORTED_GRAPH_OPS` (``Identity`` is dropped at import)."""
    from ..nn import ops as _ops  # noqa: F401  (registers the operators)

    reg = [t.name for t in dag.registered_ops()]
    return tuple(reg) + tuple(op for op in SUPPORTED_GRAPH_OPS if op not in reg)


def _short(v) -> float:
    """A float32 attribute as the decimal it was written as."""
    return float(str(numpy.float32(v)))


def _kind(arr) -> str:
    k = numpy.asarray(arr).dtype.kind
    if k == "b":
        return "bool"
    if k in "iu":
        return "int"
    if k == "f":
        return "float"
    raise GraphImportError(f"tensors of dtype {numpy.asarray(arr).dtype} are not supported")


def _host(arr):
    """float64 / int64 / bool: the executors' dtypes."""
    arr = numpy.asarray(arr)
    kind = _kind(arr)
    return arr.astype({"float": numpy.float64, "int": numpy.int64, "bool": numpy.bool_}[kind])


def classify_initializer(name, arr) -> str:
    """``"param"`` or ``"const"`` for a tensor of the file (see the module docstring); a
    :class:`GraphImportError` naming it for NaN, ``+inf`` or out-of-range weights."""
    arr = numpy.asarray(arr)
    kind = _kind(arr)
    if kind != "float":
        return "const"
    a = arr.astype(numpy.float64)
    nan = int(numpy.isnan(a).sum())
    if nan:
        raise GraphImportError(f"initializer {name!r} has {nan} NaN values (a corrupt weight?)")
    if a.size <= 1:
        return "const"
    if numpy.isfinite(a).all() and float(numpy.abs(a).max(initial=0.0)) < FIXED_POINT_LIMIT:
        return "param"
    if bool(((a == 0) | (a <= -FIXED_POINT_LIMIT)).all()):
        return "const"  # an additive mask: 0 or minus "infinity"
    big = float(numpy.abs(a[numpy.isfinite(a)]).max(initial=0.0))
    raise GraphImportError(
        f"initializer {name!r} holds values out of fixed point's range (|v| up to "
        f"{'inf' if not numpy.isfinite(a).all() else f'{big:.3g}'}, limit {FIXED_POINT_LIMIT:g}) and is not a "
        "mask (only 0 and <= -1e4 entries): a corrupt weight?"
    )


# -- the ONNX side ----------------------------------------------------------------------------


_ELEM = {"float": 1, "int": 7, "bool": 9}  # TensorProto.FLOAT, INT64, BOOL


def _elem_kind(elem_type, where) -> str:
    onnx = _onnx()
    T = onnx.TensorProto
    if elem_type in (T.FLOAT, T.DOUBLE, T.FLOAT16, T.BFLOAT16):
        return "float"
    if elem_type in (T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.UINT64):
        return "int"
    if elem_type == T.BOOL:
        return "bool"
    raise GraphImportError(f"{where}: element type {T.DataType.Name(elem_type)} is not supported")


def _dims(value_info) -> list:
    """The dimensions of a ValueInfo: ints, or the symbolic name (str) / None."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def _array(tensor):
    from onnx import numpy_helper

    a = numpy.asarray(numpy_helper.to_array(tensor))
    if a.dtype.kind not in "biuf":  # bfloat16 and friends
        a = a.astype(numpy.float32)
    return a


def _attr_value(a, onnx):
    """``(json value, tensor or None)`` of one attribute."""
    A = onnx.AttributeProto
    if a.type == A.INT:
        return int(a.i), None
    if a.type == A.FLOAT:
        return _short(a.f), None
    if a.type == A.STRING:
        return a.s.decode("utf-8", "replace"), None
    if a.type == A.INTS:
        return [int(v) for v in a.ints], None
    if a.type == A.FLOATS:
        return [_short(v) for v in a.floats], None
    if a.type == A.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings], None
    if a.type == A.TENSOR:
        return None, _array(a.t)
    raise GraphImportError(f"attribute {a.name!r} of type {A.AttributeType.Name(a.type)} is not supported")


class _Names:
    """ONNX names -> clean, unique graph-model names."""

    def __init__(self):
        self.map, self.used = {}, set()

    def __call__(self, name):
        if not name:
            return ""
        if name not in self.map:
            clean = _NAME_OK.sub("_", name)
            base, i = clean, 1
            while clean in self.used:
                clean, i = f"{base}_{i}", i + 1
            self.map[name] = clean
            self.used.add(clean)
        return self.map[name]


# -- constant folding ---------------------------------------------------------------------


def _np_gather_elements(data, indices, axis=0):
    axis = axis % data.ndim
    idx = numpy.where(indices < 0, indices + data.shape[axis], indices)
    return numpy.take_along_axis(data, idx.astype(numpy.int64), axis=axis)


def _fold_numpy(op, ins, attrs):
    """NumPy for the folds onnx.reference gets wrong or slow; None: use onnx.reference."""
    if op == "GatherElements":
        return [_np_gather_elements(ins[0], ins[1], int(attrs.get("axis", 0)))]
    if op == "Gather":
        idx = ins[1].astype(numpy.int64)
        axis = int(attrs.get("axis", 0)) % ins[0].ndim
        idx = numpy.where(idx < 0, idx + ins[0].shape[axis], idx)
        return [numpy.take(ins[0], idx, axis=axis)]
    return None


def _fold_node(node, ins, opset, onnx):
    """The outputs of one ONNX node on constant inputs."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    got = _fold_numpy(node.op_type, ins, attrs)
    if got is not None:
        return got
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if v else "" for i, v in enumerate(node.input)]
    outs = [f"out{i}" for i in range(len(node.output))]
    n = helper.make_node(node.op_type, names, outs, domain=node.domain or "")
    n.attribute.extend(node.attribute)
    feeds = {nm: v for nm, v in zip(names, ins) if nm}
    graph = helper.make_graph(
        [n],
        "fold",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=opset)
    return [numpy.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


# -- import -----------------------------------------------------------------------------------


def _stored_graph(proto):
    """The graph model an ``export_graph`` file carries in its metadata (or None)."""
    for prop in proto.metadata_props:
        if prop.key == GRAPH_METADATA:
            try:
                return dag.from_json(prop.value)
            except GraphError:
                return None
    return None


def _default_opset(proto) -> int:
    return max((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _at_least_opset(proto, notes, onnx):
    """The model at opset :data:`OPSET` or later: older ones are converted (the graph's
    nodes mean what opset 18 says: axes of ReduceMean/Squeeze/Unsqueeze and Split's sizes
    are inputs, not attributes)."""
    version = _default_opset(proto)
    if version >= OPSET:
        return proto
    if version < 7:
        raise GraphImportError(f"opset {version} is too old: export with opset_version=18")
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, OPSET)
    except Exception as e:
        raise GraphImportError(
            f"the graph is at opset {version}; converting it to opset {OPSET} fails "
            f"({str(e).splitlines()[0][:200]}): export with opset_version=18"
        ) from None
    notes.append(f"converted from opset {version} to {OPSET}")
    return converted


def _guess_task(out_shapes, tables, hidden) -> str:
    first = out_shapes[0] if out_shapes else None
    for shape in out_shapes:
        if shape and len(shape) >= 3 and shape[-1] in tables and shape[-1] != hidden:
            return "lm"
    if first and len(first) == 2 and first[-1] != hidden:
        return "logits"
    return "hidden"


def import_graph(
    proto,
    name=None,
    input_shapes=None,
    public_inputs=None,
    secret_inputs=None,
    task=None,
    tie_weights=True,
):
    """``(GraphModel, params, consts, notes)`` of an ONNX ``ModelProto`` (see the module
    docstring).  ``params``: ``{name: float64 array}`` (secret weights); ``consts``:
    ``{name: float64 / int64 / bool array}`` (public); ``notes``: lines for the user.

    ``input_shapes``: ``{input name: full shape (batch included)}`` for symbolic dimensions;
    ``public_inputs`` / ``secret_inputs``: input names whose role to force; ``task``:
    ``hidden`` / ``logits`` / ``lm`` instead of the guess; ``tie_weights``: a param that is
    exactly an earlier one transposed becomes a ``Transpose`` node of it (one secret copy of
    GPT-2's tied token table instead of two)."""
    onnx = _onnx()
    from onnx import helper

    from .safety import check_no_external_data

    check_no_external_data(proto)  # read from its file by load_onnx, or has none
    proto = _at_least_opset(proto, notes := [], onnx)
    g = proto.graph
    name = name or g.name or "onnx_graph"
    stored = _stored_graph(proto)
    input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    public_inputs, secret_inputs = set(public_inputs or ()), set(secret_inputs or ())
    both = public_inputs & secret_inputs
    if both:
        raise GraphImportError(f"inputs {sorted(both)} are named both public and secret")
    opset = [o for o in proto.opset_import if o.domain in ("", "ai.onnx")] or [helper.make_opsetid("", OPSET)]
    if any(o.domain not in ("", "ai.onnx") for o in proto.opset_import) and proto.functions:
        raise GraphImportError("graphs with local functions (custom domains) are not supported")

    # -- constants of the file: initializers and Constant nodes --------------------------------
    values = {}  # ONNX name -> array in the file's dtype (consts and params alike)
    for init in g.initializer:
        values[init.name] = _array(init)
    for sp in g.sparse_initializer:
        raise GraphImportError(f"sparse initializer {sp.values.name!r} is not supported")
    problems = []
    nodes = []
    for node in g.node:
        if node.op_type == "Constant" and not node.domain:
            a = {x.name: x for x in node.attribute}
            try:
                if "value" in a:
                    values[node.output[0]] = _array(a["value"].t)
                elif "value_float" in a or "value_int" in a:
                    v = helper.get_attribute_value(next(iter(a.values())))
                    values[node.output[0]] = numpy.asarray(v, numpy.float32 if "value_float" in a else numpy.int64)
                elif "value_floats" in a or "value_ints" in a:
                    v = helper.get_attribute_value(next(iter(a.values())))
                    values[node.output[0]] = numpy.asarray(v, numpy.float32 if "value_floats" in a else numpy.int64)
                else:
                    raise GraphImportError(f"a Constant with {sorted(a)} is not supported")
            except GraphImportError as e:
                problems.append(f"node {node.name or node.output[0]!r} (Constant): {e}")
            continue
        nodes.append(node)
    roles = {}  # ONNX name -> "param" | "const"
    for k, v in values.items():
        try:
            roles[k] = classify_initializer(k, v)
        except GraphImportError as e:
            problems.append(str(e))
    if problems:
        raise GraphImportError("cannot import this ONNX graph:\n  " + "\n  ".join(problems))

    # -- graph inputs: static shapes and roles --------------------------------------------------
    data_inputs = [v for v in g.input if v.name not in values]
    if not data_inputs:
        raise GraphImportError("the graph has no inputs")
    known = {v.name for v in data_inputs}
    unknown = sorted(set(input_shapes) - known)
    unknown += sorted((public_inputs | secret_inputs) - known)
    if unknown:
        raise GraphImportError(f"no graph inputs called {unknown} (the inputs: {sorted(known)})")
    stored_roles = {t.name: t.role for t in stored.inputs} if stored is not None else {}
    inputs, symbolic = [], []
    for v in data_inputs:
        dims = _dims(v)
        kind = _elem_kind(v.type.tensor_type.elem_type, f"input {v.name!r}")
        given = input_shapes.get(v.name)
        if given is not None:
            if dims is not None and (
                len(dims) != len(given) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, given))
            ):
                raise GraphImportError(
                    f"the shape {list(given)} given for input {v.name!r} contradicts the graph's "
                    f"{['?' if not isinstance(d, int) or d <= 0 else d for d in dims]}"
                )
            shape = given
        elif dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
            symbolic.append(f"{v.name} {['?' if d is None else d for d in (dims or ['?'])]}")
            continue
        else:
            shape = tuple(dims)
        if v.name in public_inputs:
            role = "public"
        elif v.name in secret_inputs:
            role = "secret"
        elif v.name in stored_roles:
            role = stored_roles[v.name]
        else:
            role = "public" if v.name in PUBLIC_INPUTS else "secret"
        inputs.append((v.name, shape, kind, role))
    if symbolic:
        raise GraphImportError(
            "the graph leaves the shapes of its inputs symbolic: "
            + "; ".join(symbolic)
            + " -- give each a full static shape, batch included (input_shapes={name: shape}, "
            "mpcgpu import --input-shape NAME=1,128)"
        )

    # -- Identity nodes dropped (their readers read the source) ---------------------------------
    alias = {}  # Identity output -> its input

    def real(t):
        while t in alias:
            t = alias[t]
        return t

    pending = []  # (ONNX node, its inputs after the aliases)
    for node in nodes:
        ins = [real(i) if i else "" for i in node.input]
        if node.op_type == "Identity" and not node.domain and len(ins) == 1:
            alias[node.output[0]] = ins[0]
            continue
        pending.append((node, ins))
    if alias:
        notes.append(f"dropped {len(alias)} Identity nodes")

    # -- folding, with static shapes: fold, infer shapes again, until nothing more folds -------------
    consts = {k for k, r in roles.items() if r == "const"}
    params = {k for k, r in roles.items() if r == "param"}
    elem = {v.name: v.type.tensor_type.elem_type for v in data_inputs}
    data_shapes = {n: (s, elem[n]) for n, s, _, _ in inputs}
    folded, shapes = 0, {}
    for _ in range(16):
        shapes = _infer_shapes(pending, data_shapes, values, consts, opset, onnx, notes)
        kept, before = [], folded
        for node, ins in pending:
            value = _try_fold(node, ins, shapes, values, consts, opset, onnx, notes, helper)
            if value is None:
                kept.append((node, ins))
                continue
            for o, v in zip(node.output, value):
                values[o] = numpy.asarray(v)
                consts.add(o)
            folded += 1
        pending = kept
        if folded == before:
            break
    if folded:
        notes.append(f"folded {folded} nodes on constants and shapes at import")

    # -- outputs, dead nodes -------------------------------------------------------------------------
    kept = pending
    out_names = [o.name for o in g.output]
    outputs = [real(o) for o in out_names]
    # an Identity (or nothing) between a computed tensor and a graph output: the output
    # keeps its ONNX name by renaming the computing node's output
    rename = {}
    produced = {o for node, _ in kept for o in node.output}
    for orig, src in zip(out_names, outputs):
        if orig != src and src in produced and src not in rename and src not in out_names:
            rename[src] = orig
    outputs = [rename.get(o, o) for o in outputs]
    needed = set(outputs)
    live = []
    for node, ins in reversed(kept):
        if any(o in needed or rename.get(o) in needed for o in node.output):
            live.append((node, ins))
            needed.update(i for i in ins if i)
    live.reverse()
    if len(live) < len(kept):
        notes.append(f"dropped {len(kept) - len(live)} nodes whose outputs nothing reads")
    bad_out = [o for o in outputs if o in values or o in {n for n, _, _, _ in inputs}]
    if bad_out:
        raise GraphImportError(f"outputs {bad_out} are constants or inputs, not computed by the graph")

    # -- operator check: every unsupported node in one error -------------------------------------------
    ok = set(supported_ops())
    problems = []
    for node, _ in live:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ok:
            dom = f"{node.domain}." if node.domain else ""
            problems.append(f"node {node.name or node.output[0]!r}: unsupported operator {dom}{node.op_type}")
    if problems:
        raise GraphImportError(
            f"cannot import this ONNX graph ({len(problems)} unsupported nodes):\n  "
            + "\n  ".join(problems)
            + f"\n(supported operators: {', '.join(sorted(ok))})"
        )

    # -- the graph model --------------------------------------------------------------------------
    clean = _Names()
    for n, _, _, _ in inputs:
        clean(n)
    used = {i for _, ins in live for i in ins if i}
    out_params, out_consts = {}, {}
    attr_consts = {}
    gnodes, node_names = [], set()
    for k, (node, ins) in enumerate(live):
        nname = _NAME_OK.sub("_", node.name or f"{node.op_type}_{k}")
        while nname in node_names:
            nname = f"{nname}_{k}"
        node_names.add(nname)
        attrs = {}
        for a in node.attribute:
            try:
                v, tensor = _attr_value(a, onnx)
            except GraphImportError as e:
                problems.append(f"node {nname!r} ({node.op_type}): {e}")
                continue
            if tensor is not None:
                cname = clean(f"{nname}.{a.name}")
                attr_consts[cname] = _host(tensor)
                v = cname
            elif isinstance(v, float) and not math.isfinite(v):
                problems.append(f"node {nname!r} ({node.op_type}): attribute {a.name} = {v} is not finite")
                continue
            attrs[a.name] = v
        gnodes.append(
            Node(
                node.op_type,
                nname,
                [clean(rename.get(i, i)) if i else "" for i in ins],
                [clean(rename.get(o, o)) for o in node.output],
                attrs,
            )
        )
    if problems:
        raise GraphImportError("cannot import this ONNX graph:\n  " + "\n  ".join(problems))
    for t in values:  # the file's order
        if t not in used:
            continue
        if t in params:
            out_params[clean(t)] = values[t].astype(numpy.float64)
        else:
            out_consts[clean(t)] = _host(values[t])
    out_consts.update(attr_consts)
    tied = _tie_transposed(out_params, gnodes, node_names) if tie_weights else []
    if tied:
        notes.append("tied weights: " + ", ".join(f"{b} = {a} transposed" for b, a in tied) + " (one secret copy each)")

    ginputs = [TensorInfo(clean(n), s, k, r) for n, s, k, r in inputs]
    gparams = [TensorInfo(k, v.shape, "float", "secret") for k, v in out_params.items()]
    gconsts = [TensorInfo(k, v.shape, _kind(v), "public") for k, v in out_consts.items()]
    out_shapes = [shapes.get(real(o)) for o in out_names]
    tables = {int(values[ins[0]].shape[0]) for n, ins in live if n.op_type == "Gather" and ins[0] in params}
    widths = [int(shapes[ins[0]][-1]) for n, ins in live if n.op_type == "LayerNormalization" and shapes.get(ins[0])]
    hidden = widths[0] if widths else None
    guessed = _guess_task(out_shapes, tables, hidden)
    if task is None:
        task = stored.task if stored is not None else guessed
    elif task not in dag.TASKS:
        raise GraphImportError(f"task must be one of {dag.TASKS}, got {task!r}")
    model = GraphModel(
        name=name,
        inputs=ginputs,
        outputs=[clean(o) for o in outputs],
        nodes=gnodes,
        params=gparams,
        consts=gconsts,
        description=f"imported from ONNX ({len(g.node)} nodes, {len(gnodes)} kept)",
        task=task,
    )
    roles_txt = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))} {t.dtype} {t.role}" for t in ginputs)
    notes.insert(0, f"inputs: {roles_txt}")
    notes.insert(
        1,
        f"{len(gnodes)} nodes ({', '.join(sorted(model.ops()))}); {len(gparams)} params "
        f"({model.count_params():,} values, secret), {len(gconsts)} public consts; task {task}"
        + (" (guessed)" if task == guessed and stored is None else ""),
    )
    masks = [k for k, v in out_consts.items() if v.dtype.kind == "f" and v.size > 1]
    if masks:
        notes.append(f"public masks (0 and <= -1e4): {', '.join(masks)}")
    return model, out_params, out_consts, notes


def _tie_transposed(params, nodes, node_names) -> list:
    """Params that are exactly another param transposed (GPT-2's tied ``lm_head`` next to
    the token table: the exporter writes both) become ``Transpose`` nodes of it, so the
    owner shares one copy.  Changes ``params`` and ``nodes`` in place; returns the
    ``(tied, source)`` pairs."""
    by_shape = {}
    tied = []
    for k in list(params):  # the file's order: a param is tied to an earlier one
        v = params[k]
        if v.ndim != 2:
            continue
        for src in by_shape.get(v.shape[::-1], ()) if v.shape[0] != v.shape[1] else ():
            if src in params and src not in dict(tied) and numpy.array_equal(params[src].T, v):
                tied.append((k, src))
                break
        else:
            by_shape.setdefault(v.shape, []).append(k)
    for k, src in tied:
        del params[k]
        name = f"tie_{k}"
        while name in node_names:
            name += "_"
        node_names.add(name)
        nodes.insert(0, Node("Transpose", _NAME_OK.sub("_", name), [src], [k], {"perm": [1, 0]}))
    return tied


def _shape_slice(dims, start, end):
    r = len(dims)
    start = int(start)
    start = max(0, min(r, start + r if start < 0 else start))
    if end is None:
        end = r
    end = int(end)
    end = max(0, min(r, end + r if end < 0 else end))
    return list(dims[start:end])


def _try_fold(node, ins, shapes, values, consts, opset, onnx, notes, helper):
    """The outputs of a node whose value is known at import (its inputs all public consts,
    or a Shape/Size of a tensor of static shape), or None."""
    op = node.op_type
    where = f"node {node.name or node.output[0]!r} ({op})"
    if node.domain:
        return None
    if op in ("Shape", "Size") and ins[0] in shapes:
        dims = shapes[ins[0]]
        if op == "Size":
            return [numpy.asarray(math.prod(dims), numpy.int64)]
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        return [numpy.asarray(_shape_slice(dims, a.get("start", 0), a.get("end")), numpy.int64)]
    if op in _NEVER_FOLD or not all(i in consts for i in ins if i):
        return None
    if any(math.prod(shapes.get(o, ())) > MAX_FOLDED for o in node.output):
        raise GraphImportError(f"{where}: folding it would give more than {MAX_FOLDED:,} elements")
    try:
        value = _fold_node(node, [values[i] if i else None for i in ins], opset, onnx)
    except Exception as e:  # an op onnx.reference cannot evaluate: it stays a node
        notes.append(f"{where}: not folded ({type(e).__name__}: {str(e)[:200]})")
        return None
    for v in value:
        if numpy.asarray(v).size > MAX_FOLDED:
            raise GraphImportError(f"{where}: folding it gives more than {MAX_FOLDED:,} elements")
    return value


#: consts up to this size go into shape inference with their values (shape arithmetic)
_INFER_VALUES = 1 << 16


def _infer_shapes(pending, data_shapes, values, consts, opset, onnx, notes):
    """``{tensor: static shape}`` of the graph still to compute, by ONNX shape inference
    with the data inputs' shapes fixed and small consts given by value (params and large
    consts by shape only)."""
    from onnx import helper, numpy_helper

    used = {i for _, ins in pending for i in ins if i}
    inputs, inits = [], []
    for name, (shape, elem_type) in data_shapes.items():
        inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
    for name in used:
        if name not in values:
            continue
        v = values[name]
        if name in consts and v.size <= _INFER_VALUES:
            inits.append(numpy_helper.from_array(numpy.asarray(v), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)))
    nodes = []
    for node, ins in pending:
        n = helper.make_node(node.op_type, ins, list(node.output), name=node.name, domain=node.domain or "")
        n.attribute.extend(node.attribute)
        nodes.append(n)
    outs = [helper.make_empty_tensor_value_info(o) for node, _ in pending[-1:] for o in node.output]
    m = helper.make_model(helper.make_graph(nodes, "shapes", inputs, outs, initializer=inits), opset_imports=opset)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:  # an unknown operator, say: it is named later
        line = f"ONNX shape inference fails on this graph ({str(e).splitlines()[0][:200]})"
        if line not in notes:
            notes.append(line)
        inferred = m
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = _dims(v)
        if dims is not None and all(isinstance(d, int) and d >= 0 for d in dims):
            out[v.name] = tuple(dims)
    for name, v in values.items():
        out[name] = tuple(v.shape)
    return out


# -- export -----------------------------------------------------------------------------------


def _attr_for_onnx(op, key, value, consts, helper, onnx, opset=OPSET):
    """An AttributeProto of the right ONNX type (from the operator's schema)."""
    A = onnx.AttributeProto
    want = None
    try:
        schema = onnx.defs.get_schema(op, opset)
        if key in schema.attributes:
            want = schema.attributes[key].type
    except Exception:
        pass
    if want == A.TENSOR or (want is None and isinstance(value, str) and value in consts):
        from onnx import numpy_helper

        if not isinstance(value, str) or value not in consts:
            raise GraphError(f"node {op}: tensor attribute {key} must name a const")
        arr = consts[value]
        if arr.dtype.kind == "f":
            arr = arr.astype(numpy.float32)
        return helper.make_attribute(key, numpy_helper.from_array(numpy.asarray(arr), name=value))
    if want == A.FLOAT:
        value = float(value)
    elif want == A.INT:
        value = int(value)
    elif want == A.FLOATS:
        value = [float(v) for v in value]
    elif want == A.INTS:
        value = [int(v) for v in value]
    if isinstance(value, (list, tuple)) and not value:
        return helper.make_attribute(key, [], attr_type=want if want is not None else A.INTS)
    return helper.make_attribute(key, value)


def export_graph(g: GraphModel, params, consts, *, store_spec: bool = True):
    """An ONNX ``ModelProto`` (opset 18) of a graph model: params and consts as
    initializers (float32 / int64 / bool), inputs typed from the graph, output types by
    ONNX shape inference; with ``store_spec`` the graph's JSON in the metadata
    (``mpcgpu-graph``), so that :func:`import_graph` keeps its roles and task."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    missing = [t.name for t in g.params if t.name not in params] + [t.name for t in g.consts if t.name not in consts]
    if missing:
        raise GraphError(f"graph {g.name}: no values for {missing}")
    # opset 18, or the first that has every operator (Gelu: 20)
    opset = max([OPSET] + [_SINCE.get(n.op, OPSET) for n in g.nodes])
    inits = []
    for t in g.params:
        a = numpy.asarray(params[t.name], numpy.float64)
        if a.shape != t.shape:
            raise GraphError(f"param {t.name}: shape {a.shape}, the graph says {t.shape}")
        inits.append(numpy_helper.from_array(a.astype(numpy.float32), name=t.name))
    tensor_attr_consts = {
        v for n in g.nodes for k, v in n.attrs.items() if isinstance(v, str) and v in {c.name for c in g.consts}
    }
    for t in g.consts:
        a = numpy.asarray(consts[t.name])
        if a.shape != t.shape:
            raise GraphError(f"const {t.name}: shape {a.shape}, the graph says {t.shape}")
        if t.name in tensor_attr_consts and not any(t.name in n.inputs for n in g.nodes):
            continue  # only an attribute's value
        dt = {"float": numpy.float32, "int": numpy.int64, "bool": numpy.bool_}[t.dtype]
        inits.append(numpy_helper.from_array(a.astype(dt), name=t.name))
    nodes = []
    for n in g.nodes:
        node = helper.make_node(n.op, list(n.inputs), list(n.outputs), name=n.name)
        for k, v in sorted(n.attrs.items()):
            node.attribute.append(_attr_for_onnx(n.op, k, v, consts, helper, onnx, opset))
        nodes.append(node)
    ins = [helper.make_tensor_value_info(t.name, _ELEM[t.dtype], list(t.shape)) for t in g.inputs]
    outs = [helper.make_empty_tensor_value_info(o) for o in g.outputs]
    graph = helper.make_graph(nodes, g.name, ins, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mpcgpu")
    model.ir_version = min(model.ir_version, 10)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        typed = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for o in model.graph.output:
            if o.name in typed and typed[o.name].type.HasField("tensor_type"):
                o.type.CopyFrom(typed[o.name].type)
    except Exception:  # the outputs stay untyped; onnxruntime infers them
        pass
    if store_spec:
        prop = model.metadata_props.add()
        prop.key, prop.value = GRAPH_METADATA, dag.to_json(g)
    return model


__all__ = [
    "SUPPORTED_GRAPH_OPS",
    "PUBLIC_INPUTS",
    "FIXED_POINT_LIMIT",
    "GraphImportError",
    "supported_ops",
    "classify_initializer",
    "import_graph",
    "export_graph",
]
