"""Export plaintext weights (e.g. those ``mpcgpu train --reveal-to`` revealed to their owner)
to safetensors and ONNX, loadable by PyTorch and onnxruntime.

* safetensors: one float32 tensor per parameter under the spec's names (torchvision's for
  the torchvision-shaped zoo models, so ``model.load_state_dict(load_file(path))`` works
  there); the architecture is kept in the file's metadata (``mpcgpu-spec``).
* ONNX (opset 17): the spec as a graph -- each layer as its type writes it (its
  registration's ``OnnxForm.write``, :mod:`mpcgpu.nn.layers`: Conv, Gemm (transB=1), Relu,
  MaxPool, AveragePool (count_include_pad=1), GlobalAveragePool, BatchNormalization (with
  its eps), Flatten, Dropout (the identity at inference, kept so that a re-import gives the
  same layer names)), Add (+ Relu) for residual blocks; a recorded Softmax/LogSoftmax is
  appended.
  Initializers carry the spec's names.  The batch dimension is symbolic (``N``).

Both are written to a temporary file and renamed into place.  The command line,
`mpcgpu export`, lives in :mod:`mpcgpu.jobs.export`.
"""

from __future__ import annotations

import os

import numpy

from ..errors import MPCError
from ..nn import layers as nn_layers
from ..nn import spec as S

OPSET = 17


class ExportError(MPCError, ValueError):
    """Weights cannot be exported (missing packages, mismatch with the architecture)."""


def _atomic(path, write):
    from mpcgpu.util.atomic import create_private

    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        create_private(tmp)  # the owner's plaintext weights: mode 0600; writing truncates it
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _checked(model, params):
    try:
        S.check_params(model, params, what="weights")
    except S.ParamMismatchError as e:
        raise ExportError(str(e)) from None
    out = {}
    for name in S.param_shapes(model):
        a = numpy.asarray(params[name], numpy.float64)
        if not numpy.isfinite(a).all():
            raise ExportError(f"parameter {name} has non-finite values")
        out[name] = a
    return out


def export_safetensors(path, model: S.Model, params) -> str:
    """Write ``params`` as float32 safetensors with the architecture in the metadata."""
    try:
        from safetensors.numpy import save_file
    except ImportError:  # pragma: no cover
        raise ExportError("exporting safetensors needs: pip install 'mpcgpu[onnx]'") from None
    from ..nn.spec_io import to_json

    tensors = {k: numpy.ascontiguousarray(v, numpy.float32) for k, v in _checked(model, params).items()}
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"mpcgpu-spec": to_json(model)}))


class Emitter:
    """Builds the graph: a layer type's writer (``OnnxForm.write(em, layer, path, x,
    in_shape) -> tensor``) adds its nodes with :meth:`node` and its weights with
    :meth:`param` / :meth:`init`."""

    def __init__(self, params):
        self.params, self.nodes, self.inits, self.n = params, [], [], 0

    def init(self, name, arr):
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(numpy.asarray(arr, numpy.float32), name))
        return name

    def param(self, path, local):
        """The initializer of the parameter ``local`` of the layer at ``path`` (its spec name)."""
        name = S.join_path(path, local)
        return self.init(name, self.params[name])

    def node(self, kind, inputs, name, **attrs):
        from onnx import helper

        self.n += 1
        out = f"{name or kind}:{self.n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=f"{name or kind}:{self.n}", **attrs))
        return out

    def emit(self, layer, path, x, shape):
        """Nodes of ``layer`` on tensor ``x`` of per-sample ``shape``: (tensor, shape)."""
        if isinstance(layer, S.Sequential):
            for name, child in layer.children():
                x, shape = self.emit(child, S.join_path(path, name), x, shape)
            return x, shape
        if isinstance(layer, S.Residual):
            body, out = self.emit(layer.body, S.join_path(path, layer.body_name), x, shape)
            short = x
            if layer.shortcut is not None:
                short, _ = self.emit(layer.shortcut, S.join_path(path, layer.shortcut_name), x, shape)
            y = self.node("Add", [body, short], S.join_path(path, "add"))
            if layer.relu:
                y = self.node("Relu", [y], S.join_path(path, "relu"))
            return y, out
        out = layer.out_shape(shape)
        kind = nn_layers.lookup(layer)
        if kind.onnx is None:
            raise ExportError(f"{path}: no ONNX form for {type(layer).__name__}")
        y = kind.onnx.write(self, layer, path, x, shape)
        return y, out


def to_onnx(model: S.Model, params):
    """The ``onnx.ModelProto`` of ``model`` with ``params``."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:  # pragma: no cover
        raise ExportError("exporting ONNX needs: pip install 'mpcgpu[onnx]'") from None
    em = Emitter(_checked(model, params))
    y, _ = em.emit(model.net, "", "input", tuple(model.input_shape))
    if model.output != "logits":
        y = em.node("Softmax" if model.output == "softmax" else "LogSoftmax", [y], model.output, axis=1)
    graph = helper.make_graph(
        em.nodes,
        model.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N"] + list(model.input_shape))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", model.num_classes])],
        em.inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpcgpu", doc_string=model.description
    )
    proto.ir_version = 8
    from ..nn.spec_io import to_json

    helper.set_model_props(proto, {"mpcgpu-spec": to_json(model)})  # mpcgpu import keeps the layer names
    onnx.checker.check_model(proto)
    return proto


def export_onnx(path, model: S.Model, params) -> str:
    """Write ``model`` with ``params`` as an ONNX file (float32, batch dimension ``N``)."""
    proto = to_onnx(model, params)
    return _atomic(path, lambda tmp: open(tmp, "wb").write(proto.SerializeToString()))


def export_checked_onnx(path, model: S.Model, params, *, check: bool = True) -> str:
    """Write ``model`` with ``params`` as ONNX at ``path`` (atomically), having run it in
    onnxruntime on random inputs against the plaintext executor first when ``check`` (and
    onnxruntime is installed): a disagreement beyond 1e-3 (relative) writes nothing.
    Returns a note on the check for the user (empty without ``check``)."""
    proto = to_onnx(model, params)

    def compare():
        from .importer import check_against_onnxruntime

        return check_against_onnxruntime(proto, model, params)

    return _write_checked(path, proto, compare if check else None)


def _write_checked(path, proto, compare) -> str:
    """Write ``proto`` at ``path`` (atomically) unless ``compare()`` -- onnxruntime against
    the plaintext executor, a relative difference; None: no check -- exceeds 1e-3.  Returns
    the note on the check for the user."""
    note = ""
    if compare is not None:
        try:
            diff = compare()
        except ImportError:
            note = " (onnxruntime not installed: not checked)"
        else:
            if diff > 1e-3:
                raise ExportError(f"onnxruntime disagrees with the weights file by {diff:.2e}: not written")
            note = f" (onnxruntime agrees to {diff:.1e} relative)"
    _atomic(path, lambda tmp: open(tmp, "wb").write(proto.SerializeToString()))
    return note


# -- graph models (transformers) -----------------------------------------------------------


def export_graph_checked_onnx(path, g, params, consts, *, check: bool = True) -> str:
    """Write a graph model (:mod:`mpcgpu.nn.dag`) with its params and public consts as ONNX
    at ``path`` (:func:`.onnx_graph.export_graph`: opset 18, float32, static shapes),
    having compared onnxruntime with the plaintext executor on random inputs first when
    ``check``.  Returns a note on the check (empty without ``check``)."""
    from ..nn.dag import GraphError
    from .onnx_graph import export_graph

    try:
        proto = export_graph(g, params, consts)
    except GraphError as e:
        raise ExportError(str(e)) from None
    if proto.ByteSize() >= 2**31 - 1:
        raise ExportError(f"graph model {g.name}: over 2 GB, more than one ONNX file holds without external data")

    def compare():
        from .importer import check_graph_against_onnxruntime

        return check_graph_against_onnxruntime(proto, g, params, consts)

    return _write_checked(path, proto, compare if check else None)


def export_graph_safetensors(path, g, params) -> str:
    """A graph model's params as float32 safetensors under their names (the ONNX
    initializer names they were imported with), the graph's JSON in the metadata."""
    try:
        from safetensors.numpy import save_file
    except ImportError:  # pragma: no cover
        raise ExportError("exporting safetensors needs: pip install 'mpcgpu[onnx]'") from None
    from ..nn import dag

    tensors = {}
    for t in g.params:
        a = numpy.asarray(params[t.name], numpy.float64)
        if a.shape != t.shape or not numpy.isfinite(a).all():
            raise ExportError(f"parameter {t.name}: shape {a.shape} (the graph says {t.shape}) or non-finite values")
        tensors[t.name] = numpy.ascontiguousarray(a, numpy.float32)
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"mpcgpu-graph": dag.to_json(g)}))


__all__ = [
    "ExportError",
    "export_safetensors",
    "to_onnx",
    "export_onnx",
    "export_checked_onnx",
    "export_graph_checked_onnx",
    "export_graph_safetensors",
    "OPSET",
]
