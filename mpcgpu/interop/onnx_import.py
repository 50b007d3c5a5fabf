"""Import an ONNX model: its graph becomes an architecture spec, its initializers the weights.

Supported operators (inference graphs, NCHW, opset 7 and later):

=====================  =====================================================================
Conv                   2-D, symmetric pads, dilation 1, any groups; bias optional
Gemm                   ``alpha * A B' + beta * C`` with A the activations, B (and C)
                       constants; ``transB`` 0 or 1 (``transA`` must be 0)
MatMul (+ Add)         activations x constant; a following Add of a constant vector
                       becomes the bias
Relu, Dropout          (Dropout is the identity at inference: kept as ``Dropout``)
MaxPool, AveragePool   symmetric pads; ``ceil_mode`` 0; AveragePool with pads needs
                       ``count_include_pad=1`` (what the executors compute)
GlobalAveragePool      ``AdaptiveAvgPool2d(1)``
BatchNormalization     inference form; its ``epsilon`` is kept in the spec
Flatten, Reshape       only as a flatten to (N, features): Flatten ``axis=1``, Reshape to
                       ``[0|-1|N, F|-1]``, also when that shape is computed by Shape,
                       Gather, Unsqueeze, Squeeze, Concat, Cast, Slice (PyTorch's
                       ``x.view(x.size(0), -1)``): such shape arithmetic is evaluated
                       at import
Add                    of two activations branching from one tensor: a residual block
                       (``Residual``), a Relu right after it folded in
Identity               dropped
Softmax, LogSoftmax    only as the last node, over the class axis: dropped from the
                       private graph and recorded in the spec (``Model.output``) so an
                       output stage can produce probabilities
=====================  =====================================================================

Anything else -- another operator, a graph that is not a chain of layers and residual
blocks, a weight that is computed rather than constant, NaN/Inf weights, an epsilon
that is not positive -- raises :class:`ModelImportError` naming every offending node.
Parameter names in the result are the spec's own (``"3.weight"``, ``"5.downsample.0.bias"``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy

from ..errors import MPCError
from ..nn import layers as nn_layers
from ..nn import spec as S

#: the ONNX operators of the graph's structure; a layer type's own operators come from its
#: registration (:class:`mpcgpu.nn.layers.OnnxForm`)
STRUCTURAL_OPS = ("Add", "Identity", "Softmax", "LogSoftmax")


def supported_ops() -> tuple:
    """Every ONNX operator this importer understands: the registered layer types' own
    (in registration order), then the structural ones."""
    return tuple(op for t in nn_layers.registered() if t.onnx is not None for op in t.onnx.ops) + STRUCTURAL_OPS


#: the ONNX operators this importer understands (when this module was imported)
SUPPORTED_OPS = supported_ops()


class ModelImportError(MPCError, ValueError):
    """A model file cannot be imported (unsupported node, bad structure, bad weights)."""


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise ModelImportError(
            "importing ONNX needs the 'onnx' package: pip install 'mpcgpu[onnx]' (no PyTorch needed)"
        ) from None
    return onnx


class _Op:
    """One converted node: ``layer`` (a leaf spec, or None for an Add/identity) with its arrays."""

    def __init__(self, kind, inputs, output, layer=None, params=None, node=""):
        self.kind, self.inputs, self.output = kind, list(inputs), output
        self.layer, self.params, self.node = layer, dict(params or {}), node


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _sym_pads(pads, where):
    pads = list(pads or [0, 0, 0, 0])
    if len(pads) != 4:
        raise ModelImportError(f"{where}: only 2-D operators are supported (pads {pads})")
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise ModelImportError(f"{where}: asymmetric padding {pads} is not supported")
    return (int(pads[0]), int(pads[1]))


def _auto_pad(a, where):
    ap = a.get("auto_pad", b"NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else str(ap)
    if ap not in ("NOTSET", "VALID"):
        raise ModelImportError(f"{where}: auto_pad={ap} is not supported (export with explicit pads)")
    return ap == "VALID"


def _short(v) -> float:
    """A float32 attribute as the decimal it was written as (1e-3, not 0.0010000000474974513)."""
    return float(str(numpy.float32(v)))


def _finite(name, arr, where):
    if not numpy.isfinite(arr).all():
        raise ModelImportError(
            f"{where}: weight {name!r} has {int(numpy.isnan(arr).sum())} NaN and "
            f"{int(numpy.isinf(arr).sum())} Inf values"
        )
    return arr


class Node:
    """One ONNX node as a layer type's reader sees it (``OnnxForm.read(node)``)."""

    def __init__(self, node, graph, where):
        self.op, self.where, self._graph = node.op_type, where, graph
        self.inputs, self.outputs = list(node.input), list(node.output)
        self.attrs = _attrs(node)

    def fail(self, msg):
        """Refuse the node: a ModelImportError naming it."""
        raise ModelImportError(f"{self.where}: {msg}")

    def const(self, i, what):
        """Input ``i`` as a float64 array; it must be a constant of the graph."""
        return self._graph.const(self.inputs[i], self.where, what)

    def finite(self, name, arr):
        """``arr`` (a weight called ``name``), refused if it holds NaN or Inf."""
        return _finite(name, arr, self.where)

    def valid_pads(self) -> bool:
        """Whether ``auto_pad`` is VALID (no padding); refuses the SAME modes."""
        return _auto_pad(self.attrs, self.where)

    def pads(self) -> tuple:
        """The symmetric 2-D ``pads`` as (ph, pw); refuses anything else."""
        return _sym_pads(self.attrs.get("pads"), self.where)

    @staticmethod
    def short(v) -> float:
        """A float32 attribute as the decimal it was written as."""
        return _short(v)


class _Graph:
    def __init__(self, model, input_shape):
        onnx = _onnx()
        from onnx import numpy_helper

        g = model.graph
        self.consts = {}
        for init in g.initializer:
            self.consts[init.name] = numpy.asarray(numpy_helper.to_array(init))
        for node in g.node:  # Constant nodes are constants too
            if node.op_type == "Constant":
                a = _attrs(node)
                if "value" not in a:
                    raise ModelImportError(f"node {node.name or node.output[0]!r}: Constant without a tensor value")
                self.consts[node.output[0]] = numpy.asarray(numpy_helper.to_array(a["value"]))
        inputs = [v for v in g.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise ModelImportError(f"the graph needs exactly one data input, it has {[v.name for v in inputs]}")
        if len(g.output) != 1:
            raise ModelImportError(f"the graph needs exactly one output, it has {[v.name for v in g.output]}")
        self.input = inputs[0].name
        self.output = g.output[0].name
        dims = []
        for d in inputs[0].type.tensor_type.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
        if input_shape is not None:
            shape = tuple(int(v) for v in input_shape)
            if dims and len(dims) != len(shape) + 1:
                raise ModelImportError(f"--input-shape {shape} has not the rank of the graph's input {dims[1:]}")
            if any(d is not None and d != s for d, s in zip(dims[1:], shape)):
                raise ModelImportError(f"--input-shape {shape} contradicts the graph's input shape {dims[1:]}")
        else:
            if len(dims) not in (2, 4) or any(d is None for d in dims[1:]):
                raise ModelImportError(
                    f"the graph's input {self.input!r} has shape {['?' if d is None else d for d in dims]}: "
                    "give the per-sample shape (C,H,W or F) with --input-shape"
                )
            shape = tuple(dims[1:])
        self.input_shape = shape
        self.nodes = [n for n in g.node if n.op_type != "Constant"]
        self.onnx = onnx
        self._fold_shapes(model)

    def _fold_shapes(self, model):
        """Evaluate shape arithmetic (``x.view(x.size(0), -1)`` exports as Shape, Gather,
        Unsqueeze, Concat -> Reshape) to constants.  The batch dimension becomes 0, which
        Reshape reads as "copy this dimension": exactly a flatten's first entry."""
        if not any(n.op_type in _SHAPE_OPS for n in self.nodes):
            return
        try:
            inferred = self.onnx.shape_inference.infer_shapes(model)
        except Exception:
            return  # the nodes stay and are reported as unsupported
        shapes = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            dims = [
                int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in vi.type.tensor_type.shape.dim
            ]
            shapes[vi.name] = dims
        keep = []
        for node in self.nodes:
            value = None
            if node.op_type in _SHAPE_OPS:
                try:
                    value = _fold(node, self.consts, shapes, self.input)
                except (ValueError, IndexError, TypeError, KeyError):
                    value = None
            if value is None:
                keep.append(node)
            else:
                self.consts[node.output[0]] = numpy.asarray(value)
        self.nodes = keep

    def const(self, name, node, what):
        if name not in self.consts:
            raise ModelImportError(
                f"node {node}: its {what} {name!r} is computed by the graph, not a constant: not supported"
            )
        return self.consts[name].astype(numpy.float64)


#: shape arithmetic evaluated at import (never part of the private graph)
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice")


def _fold(node, consts, shapes, graph_input):
    """The constant value of one shape-arithmetic node, or None if it is not constant."""
    a = _attrs(node)
    op = node.op_type
    if op == "Shape":
        x = node.input[0]
        dims = shapes.get(x) if x != graph_input else shapes.get(graph_input)
        if dims is None or any(d is None for d in dims[1:]):
            return None
        vals = [0] + list(dims[1:])  # the batch dimension: Reshape's "copy"
        start, end = int(a.get("start", 0)), a.get("end")
        return numpy.array(vals[start : None if end is None else int(end)], numpy.int64)
    ins = [consts.get(v) if v else None for v in node.input]
    if op in ("Unsqueeze", "Squeeze"):
        if ins[0] is None:
            return None
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in ins[1].reshape(-1)]
        v = ins[0]
        if op == "Squeeze":
            return numpy.squeeze(v, axis=None if axes is None else tuple(axes))
        for ax in sorted(int(x) for x in axes):
            v = numpy.expand_dims(v, ax)
        return v
    if any(ins[i] is None for i in range(len(ins)) if node.input[i]):
        return None  # computed from activations, not from shapes
    if op == "Gather":
        return numpy.take(ins[0], ins[1].astype(numpy.int64), axis=int(a.get("axis", 0)))
    if op == "Concat":
        return numpy.concatenate([numpy.atleast_1d(v) for v in ins], axis=int(a.get("axis", 0)))
    if op == "Cast":
        from onnx import helper

        return ins[0].astype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
    if op == "Slice":
        v = ins[0]
        starts, ends = ins[1].reshape(-1), ins[2].reshape(-1)
        axes = ins[3].reshape(-1) if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4].reshape(-1) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        index = [slice(None)] * v.ndim
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            index[int(ax)] = slice(int(st), int(en), int(sp))
        return v[tuple(index)]
    return None


def _convert(gr: _Graph) -> tuple[list, str]:
    """Every node -> _Op (or an error list); returns (ops, output mode)."""
    ops, problems, output = [], [], "logits"
    producer = {}
    supported = supported_ops()
    tail, by_out = {gr.output}, {n.output[0]: n for n in gr.nodes if n.output}
    t = gr.output
    while t in by_out and by_out[t].op_type == "Identity":  # trailing Identity nodes
        t = by_out[t].input[0]
        tail.add(t)
    for node in gr.nodes:
        op = node.op_type
        where = f"node {node.name or node.output[0]!r} ({op})"
        a = _attrs(node)
        try:
            if op not in supported:
                problems.append(f"{where}: unsupported operator {op}")
                continue
            x = node.input[0] if node.input else ""
            out = node.output[0]
            kind = nn_layers.by_onnx_op(op)
            if kind is not None and kind.onnx is not None:
                layer, params = kind.onnx.read(Node(node, gr, where))
                ops.append(_Op("layer", [x], out, layer, params, where))
            elif op == "Identity":
                ops.append(_Op("identity", [x], out, node=where))
            elif op in ("Softmax", "LogSoftmax"):
                if out not in tail:
                    raise ModelImportError(f"{where}: {op} is supported only as the last node of the graph")
                if int(a.get("axis", -1)) not in (-1, 1):
                    raise ModelImportError(f"{where}: {op} must be over the class axis")
                output = "softmax" if op == "Softmax" else "log_softmax"
                ops.append(_Op("identity", [x], out, node=where))
            elif op == "Add":
                consts = [v for v in node.input if v in gr.consts]
                if not consts:
                    ops.append(_Op("add", list(node.input), out, node=where))
                else:  # a bias: folded into the Linear/Conv without bias that produced the input
                    other = [v for v in node.input if v not in gr.consts]
                    prev = producer.get(other[0]) if len(other) == 1 else None
                    c = _finite("bias", gr.const(consts[0], where, "bias"), where)
                    if prev is None or prev.kind != "layer" or "bias" in prev.params:
                        raise ModelImportError(f"{where}: Add of a constant is supported only as the bias of a MatMul")
                    L = prev.layer
                    nout = L.out_f if isinstance(L, S.Linear) else getattr(L, "out_ch", None)
                    if nout is None or c.size != nout:
                        raise ModelImportError(f"{where}: Add of a constant is supported only as the bias of a MatMul")
                    prev.params["bias"] = c.reshape(-1).copy()
                    prev.layer = (
                        S.Linear(L.in_f, L.out_f, True)
                        if isinstance(L, S.Linear)
                        else S.Conv2d(L.in_ch, L.out_ch, L.kernel, L.stride, L.padding, L.groups, True)
                    )
                    ops.append(_Op("identity", other, out, node=where))
            producer[out] = ops[-1]
        except (S.SpecError, KeyError, IndexError) as e:
            problems.append(f"{where}: {e}")
        except ModelImportError as e:
            problems.append(str(e))
    if problems:
        raise ModelImportError(
            "cannot import this ONNX model:\n  "
            + "\n  ".join(problems)
            + f"\n(supported operators: {', '.join(supported)})"
        )
    return ops, output


def _tree(ops, gr: _Graph):
    """The ops as a Sequential of layers and Residual blocks, walking back from the output."""
    producer = {op.output: op for op in ops}
    order = {op.output: i for i, op in enumerate(ops)}
    order[gr.input] = -1
    used = []

    def ancestors(t):
        seen, stack = set(), [t]
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if u in producer:
                stack.extend(producer[u].inputs)
        return seen

    def chain(end, start) -> list:
        """Layers (with their ops) from tensor ``start`` to ``end``, in execution order."""
        out = []
        t = end
        while t != start:
            op = producer.get(t)
            if op is None:
                raise ModelImportError(
                    f"the graph is not a chain of layers and residual blocks (tensor {t!r} "
                    f"does not come from {start!r})"
                )
            used.append(op)
            if op.kind == "identity":
                t = op.inputs[0]
                continue
            if op.kind == "layer" and isinstance(op.layer, S.ReLU) and producer.get(op.inputs[0]) is not None:
                add = producer[op.inputs[0]]
                if add.kind == "add":
                    used.append(add)
                    block, t = residual(add, relu=True)
                    out.append(block)
                    continue
            if op.kind == "add":
                block, t = residual(op, relu=False)
                out.append(block)
                continue
            out.append((op.layer, op))
            t = op.inputs[0]
        out.reverse()
        return out

    def residual(add, relu):
        if len(add.inputs) != 2:
            raise ModelImportError(f"{add.node}: Add needs two inputs")
        a, b = add.inputs
        common = ancestors(a) & ancestors(b)
        if not common:
            raise ModelImportError(f"{add.node}: the two inputs of the Add do not branch from one tensor")
        p = max(common, key=lambda t: order.get(t, -2))
        ca, cb = chain(a, p), chain(b, p)
        if len(cb) > len(ca):
            ca, cb = cb, ca
        body = _seq(ca)
        shortcut = _seq(cb) if cb else None
        return (S.Residual(body, shortcut, relu), None), p

    items = chain(gr.output, gr.input)
    layer_ops = [op for op in ops if op.kind in ("layer", "add")]
    counted = [op for op in used if op.kind in ("layer", "add")]
    if len(counted) != len(layer_ops) or len({id(o) for o in counted}) != len(counted):
        raise ModelImportError(
            "the graph is not a chain of layers and residual blocks (a tensor feeds more than "
            "one place outside a residual Add, or nodes do not lead to the output)"
        )
    return _seq(items)


def _seq(items) -> S.Sequential:
    seq = S.Sequential(tuple(layer for layer, _ in items))
    object.__setattr__(seq, "_ops", [op for _, op in items])  # kept only during the import
    return seq


def _collect(net: S.Sequential) -> dict:
    """{parameter name: array} of the converted ops, by the spec's own names."""
    params = {}

    def rec(seq, path):
        for (name, child), op in zip(seq.children(), seq._ops):
            p = S.join_path(path, name)
            if isinstance(child, S.Residual):
                rec(child.body, S.join_path(p, child.body_name))
                if child.shortcut is not None:
                    rec(child.shortcut, S.join_path(p, child.shortcut_name))
            elif op is not None:
                for local, arr in op.params.items():
                    if local != "check":
                        params[S.join_path(p, local)] = arr

    rec(net, "")
    return params


def load_onnx(path):
    """The ``ModelProto`` of an ONNX file, with a clear error for a missing or bad file.
    External data is read only from inside the model's folder, once every reference to
    it is checked (:mod:`.safety`), and only with an onnx release without known holes."""
    from .safety import UnsafeModelError, check_onnx_version, load_onnx_checked

    onnx = _onnx()
    check_onnx_version(onnx)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelImportError(f"{path}: no such file")
    try:
        return load_onnx_checked(onnx, path)
    except UnsafeModelError as e:
        raise UnsafeModelError(f"{path}: {e}") from None
    except Exception as e:
        raise ModelImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def import_onnx(model_or_path, *, name: str | None = None, input_shape=None) -> tuple:
    """``(Model spec, {name: float64 array})`` of an ONNX model (a path or ``ModelProto``).

    ``input_shape``: per-sample shape ``(C, H, W)`` or ``(F,)`` when the graph leaves it
    symbolic.  ``name`` defaults to the file name without extension."""
    given = name
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        proto = load_onnx(path)
        name = name or os.path.splitext(os.path.basename(path))[0]
    else:
        from .safety import check_no_external_data

        proto = model_or_path
        check_no_external_data(proto)  # loaded from its file by load_onnx, or no external data
        name = name or (proto.graph.name or "onnx_model")
    gr = _Graph(proto, input_shape)
    ops, output = _convert(gr)
    net = _tree(ops, gr)
    params = _collect(net)
    try:
        shape = net.out_shape(gr.input_shape)
    except S.SpecError as e:
        raise ModelImportError(f"the graph does not fit its input shape {gr.input_shape}: {e}") from None
    if len(shape) != 1:
        raise ModelImportError(
            f"the network's output has shape {shape} per sample; a classifier must end in (classes,)"
        )
    model = S.Model(name, gr.input_shape, int(shape[0]), net, f"imported from ONNX ({len(ops)} nodes)", output)
    _check_flatten_targets(model, ops)
    S.check_params(model, params)
    model = _clean(model)
    stored = _stored_spec(proto)
    if stored is not None and _same_network(stored, model):
        # a graph written by `mpcgpu export`: keep its architecture's layer names
        names = [p.name for p in S.param_specs(stored)]
        params = dict(zip(names, (params[p.name] for p in S.param_specs(model))))
        model = stored if given is None else dataclasses.replace(stored, name=given)
    return model, params


#: key of the architecture in the metadata of an ONNX file written by mpcgpu export
SPEC_METADATA = "mpcgpu-spec"


def _stored_spec(proto):
    from ..nn.spec_io import from_json

    for prop in proto.metadata_props:
        if prop.key == SPEC_METADATA:
            try:
                return from_json(prop.value)
            except S.SpecError:
                return None  # not ours to trust: the graph itself is the architecture
    return None


def _same_network(a: S.Model, b: S.Model) -> bool:
    """The same computation: leaves, shapes and parameter shapes in the same order."""
    ta, tb = S.trace(a), S.trace(b)
    return (
        a.input_shape == b.input_shape
        and a.output == b.output
        and len(ta) == len(tb)
        and all(x.layer == y.layer and x.in_shape == y.in_shape for x, y in zip(ta, tb))
        and [p.shape for p in S.param_specs(a)] == [p.shape for p in S.param_specs(b)]
    )


def _check_flatten_targets(model, ops):
    """A Reshape to [x, F] with F given must produce exactly F features."""
    feats = {id(e.layer): e.out_shape[0] for e in S.trace(model) if isinstance(e.layer, S.Flatten)}
    for op in ops:
        if op.kind == "layer" and "check" in op.params:
            f = int(op.params["check"][1])
            got = feats.get(id(op.layer))
            if f != -1 and got is not None and f != got:
                raise ModelImportError(f"{op.node}: Reshape to [{op.params['check'][0]}, {f}] but the input has {got}")


def _clean(model: S.Model) -> S.Model:
    """The same model without the importer's bookkeeping (plain, comparable specs)."""
    from ..nn.spec_io import from_dict, to_dict

    return from_dict(to_dict(model))


__all__ = ["SUPPORTED_OPS", "STRUCTURAL_OPS", "supported_ops", "Node", "ModelImportError", "load_onnx", "import_onnx"]
