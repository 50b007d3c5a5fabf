"""Layer types: one module per type, each holding everything about it, and the registry.

A layer module (``conv2d.py``, ``relu.py``, ...) defines its spec (a frozen dataclass
deriving from :class:`mpcgpu.nn.graph.Layer`) and registers it once with
:func:`register`, giving every facet of the type:

* ``json``: the kind of each spec field in the ``mpcgpu-spec/1`` format
  (:mod:`mpcgpu.nn.spec_io`): ``"pos"``, ``"int"``, ``"pair"``, ``"pair?"``, ``"bool"``,
  ``"num"``;
* ``plain``: ``(forward, backward)`` of the plaintext executor
  (:class:`mpcgpu.nn.plain.PlainModel`);
* ``private``: ``(forward, backward)`` of the private executor
  (:class:`mpcgpu.nn.private.PrivateModel`);
* ``onnx``: an :class:`OnnxForm` (the ONNX operators it is read from, how, and how it is
  written), or None for a layer without an ONNX form;
* ``examples``: ``(layer, per-sample input shape)`` pairs every registry-wide test runs.

Every forward is ``forward(run, layer, path, x) -> y`` and every backward
``backward(run, layer, path, dy) -> dx``: ``run`` is the executor running the pass (its
parameters ``run.params``, ``run.training``, ``run.keep(path, value)`` /
``run.kept(path)`` for what backward needs, ``run.grads``; see each executor).

The package imports every module in it whose name does not start with ``_`` (sorted by
name), so adding a layer is adding one file.  :mod:`mpcgpu.nn.spec` (its spec class),
:mod:`mpcgpu.nn.spec_io`, both executors, :mod:`mpcgpu.interop.onnx_import` and
:mod:`mpcgpu.interop.export` all read this registry.

Costs of the private layers (rounds per call):

=====================  ===================================  ================================
layer                  forward (rounds)                     backward
=====================  ===================================  ================================
Conv2d, Linear         product + truncation, fused (2);     input grad (2, skipped for the
                       bias add (0)                         first layer), weight grad (2)
ReLU                   MSB + bit injection folded with      ``dy * d`` (1)
                       the product (10); in training the
                       derivative ``d`` in the same rounds
MaxPool2d              tree of comparisons (10 per level),  the one-hot from the kept bits
                       its comparison bits kept in training (L-1 ANDs) times ``dy`` (2)
AvgPool2d, Adaptive    local window sums x public 1/k (2)   the same division (2), local
BatchNorm2d            inference: folded (0 per image);     through the batch statistics
                       training: batch mean and variance,   (3 fused products, 2
                       one inverse square root per layer    truncations)
Flatten, Dropout       local (a public mask in training)    local
=====================  ===================================  ================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from ...errors import MPCError
from ...util.plugins import import_all
from ...sharing.compact import held
from .. import graph as G

#: the kinds a spec field may have in the file format (see :mod:`mpcgpu.nn.spec_io`)
JSON_KINDS = ("pos", "int", "pair", "pair?", "bool", "num")


@dataclass(frozen=True)
class OnnxForm:
    """How a layer type maps to ONNX.

    ``ops``: the operators read as this layer; ``read(node) -> (layer, {local name: array})``
    converts one node (``node`` is the importer's view of it, see
    :class:`mpcgpu.interop.onnx_import.Node`: ``op``, ``attrs``, ``inputs``, ``outputs``,
    ``where``, ``const(i, what)``, ``finite(name, arr)``, ``valid_pads()``, ``pads()``,
    ``short(v)``, ``fail(msg)``);
    ``write(em, layer, path, x, in_shape) -> tensor`` emits its nodes (``em`` is the
    exporter's :class:`mpcgpu.interop.export.Emitter`: ``node(...)``, ``param(path, local)``,
    ``init(name, array)``)."""

    ops: tuple
    read: Callable
    write: Callable


@dataclass(frozen=True)
class LayerType:
    """Everything about one layer type (see the module docstring); made by :func:`register`."""

    spec: type
    json: dict
    plain_forward: Callable
    plain_backward: Callable
    private_forward: Callable
    private_backward: Callable
    onnx: OnnxForm | None
    examples: tuple

    @property
    def name(self) -> str:
        """The type's name in specs, files and messages (the spec class name)."""
        return self.spec.__name__


@dataclass(frozen=True)
class LayerImpl:
    """The private forward and backward of a layer type (the older view of the registry)."""

    forward: Callable
    backward: Callable


_TYPES: dict = {}  # spec class -> LayerType, in registration order
_ONNX_OPS: dict = {}  # ONNX operator -> LayerType
#: spec class -> :class:`LayerImpl` (the private facets), kept for existing callers
LAYERS: dict = {}


def register(spec, *, json, plain, private, onnx, examples) -> LayerType:
    """Register the layer type ``spec`` with all its facets (every keyword is required:
    ``onnx=None`` states that the type has no ONNX form).  Returns its :class:`LayerType`."""
    if not (isinstance(spec, type) and issubclass(spec, G.Layer) and dataclasses.is_dataclass(spec)):
        raise TypeError(f"register: {spec!r} is not a layer spec dataclass")
    if not spec.__dataclass_params__.frozen:
        raise TypeError(f"register: {spec.__name__} must be a frozen dataclass")
    if spec in _TYPES or any(t.name == spec.__name__ for t in _TYPES.values()):
        raise ValueError(f"register: a layer type named {spec.__name__} is registered already")
    fields = [f.name for f in dataclasses.fields(spec)]
    json = dict(json)
    if sorted(json) != sorted(fields) or any(k not in JSON_KINDS for k in json.values()):
        raise ValueError(f"register {spec.__name__}: json must give each field {fields} one of {JSON_KINDS}: {json}")
    facets = list(plain) + list(private)
    if len(facets) != 4 or not all(callable(f) for f in facets):
        raise TypeError(f"register {spec.__name__}: plain and private are (forward, backward) pairs of functions")
    if onnx is not None:
        if not isinstance(onnx, OnnxForm) or not onnx.ops or not callable(onnx.read) or not callable(onnx.write):
            raise TypeError(f"register {spec.__name__}: onnx must be an OnnxForm (ops, read, write) or None")
        taken = [op for op in onnx.ops if op in _ONNX_OPS]
        if taken:
            raise ValueError(f"register {spec.__name__}: ONNX operators {taken} are read by another layer")
    examples = tuple((layer, tuple(shape)) for layer, shape in examples)
    if not examples or not all(type(layer) is spec for layer, _ in examples):
        raise ValueError(f"register {spec.__name__}: give at least one example ({spec.__name__}(...), in_shape)")
    t = LayerType(spec, json, plain[0], plain[1], private[0], private[1], onnx, examples)
    _TYPES[spec] = t
    for op in onnx.ops if onnx is not None else ():
        _ONNX_OPS[op] = t
    LAYERS[spec] = LayerImpl(t.private_forward, t.private_backward)
    return t


def registered() -> tuple:
    """Every registered :class:`LayerType`, in registration order."""
    return tuple(_TYPES.values())


def lookup(layer) -> LayerType:
    """The :class:`LayerType` of a leaf layer (or of its class); a SpecError if unregistered."""
    cls = layer if isinstance(layer, type) else type(layer)
    try:
        return _TYPES[cls]
    except KeyError:
        raise G.SpecError(f"{cls.__name__} is not a registered layer type") from None


def by_name(name: str) -> LayerType | None:
    """The registered type called ``name`` (``"Conv2d"``), or None."""
    for t in _TYPES.values():
        if t.name == name:
            return t
    return None


def by_onnx_op(op: str) -> LayerType | None:
    """The registered type that reads the ONNX operator ``op``, or None."""
    return _ONNX_OPS.get(op)


def impl(layer) -> LayerImpl:
    """The private forward and backward of ``layer``'s type."""
    try:
        return LAYERS[type(layer)]
    except KeyError:
        raise MPCError(f"no private implementation for layer {type(layer).__name__}") from None


# -- what every executor gives the layers ---------------------------------------------------


class KeepsForBackward:
    """``run.keep(path, value)`` / ``run.kept(path)`` of an executor: what a forward pass
    keeps for the backward pass, each value taken back once.  The executor holds the values
    in ``self._kept`` (a dict) and names the error of a backward without its forward pass
    in ``_not_kept(path) -> Exception``."""

    def keep(self, path, value):
        self._kept[path] = value

    def kept(self, path):
        try:
            return self._kept.pop(path)
        except KeyError:
            raise self._not_kept(path) from None


# -- helpers of the private facets ---------------------------------------------------------


def param(run, path, name):
    """A parameter as an ordinary share (one kept compactly is drawn for this use only)."""
    return held(run.params[G.join_path(path, name)])


#: elements per call of a non-linear layer at inference (ReLU; max-pool by whole channels):
#: bounds the memory of the comparison protocols (~200 bytes per element at once); a larger
#: layer (VGG-16 at 224 x 224: 3.2M elements) takes several calls of the same rounds each
PIECE = 1 << 20


def pieces(x, fn, axis_len, per_index, out_shape):
    """``fn`` applied to slices of ``x`` along axis 1 (``axis_len`` long, ``per_index``
    elements of ``x`` per index) of about :data:`PIECE` elements, written into one result
    of ``out_shape``; ``fn(x)`` itself when ``x`` is small."""
    step = max(1, PIECE // max(1, per_index))
    if step >= axis_len:
        return fn(x)
    xp = x.xp
    first = xp.empty(out_shape, dtype=xp.uint64)
    second = xp.empty(out_shape, dtype=xp.uint64)
    scale = None
    for lo in range(0, axis_len, step):
        y = fn(x[:, lo : lo + step])
        first[:, lo : lo + step], second[:, lo : lo + step] = y.first, y.second
        scale = y.scale
    return y._new(first, second, scale)


_pieces = pieces
_param = param


# -- the layer modules ------------------------------------------------------------------------


_MODULES = import_all(__name__, __path__)


def __getattr__(name):
    """The names of the layer modules' own functions and constants (``relu_forward``,
    ``TRAIN_BN_DOMAIN``), as this module had them before it became a package."""
    for mod in _MODULES:
        if not name.startswith("__") and hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "JSON_KINDS",
    "OnnxForm",
    "LayerType",
    "LayerImpl",
    "LAYERS",
    "register",
    "registered",
    "lookup",
    "by_name",
    "by_onnx_op",
    "impl",
    "KeepsForBackward",
    "param",
    "PIECE",
    "pieces",
]
