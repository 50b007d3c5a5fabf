"""Declarative network architectures, shared by the plaintext and the private executor.

A network is a tree of frozen dataclasses.  Leaves are layers (``Conv2d``,
``Linear``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
``BatchNorm2d``, ``Flatten``, ``Dropout``); inner nodes are ``Sequential``
(children run in order) and ``Residual`` (``body(x) + shortcut(x)``, the
shortcut being the identity when ``None``, optionally followed by a ReLU).  A ``Model`` adds a name, the
input shape ``(C, H, W)`` of one sample and the number of classes.

Shapes are per sample (no batch axis): ``(C, H, W)`` for images, ``(F,)`` for
vectors.  Executors use NCHW / NF batches.

Parameter names are deterministic dotted paths built from the child names
(``"features.0.weight"``, ``"layer1.0.bn1.running_var"``), chosen to match
torchvision's ``state_dict`` names for the torchvision-shaped models.  Every
``Sequential`` child is named by its index unless ``names`` are given.  A
``Residual`` adds ``body_name`` (default ``""``: transparent) before its
body's names and ``shortcut_name`` (default ``"downsample"``) before its
shortcut's names.

This module is the public face of the specs: the structure (:mod:`mpcgpu.nn.graph`) and
every registered layer type (one module each in :mod:`mpcgpu.nn.layers`, where each
layer's semantics are stated once more) are importable from here.

Semantics fixed here (both executors must follow them):

* ``Conv2d`` weight ``(out_ch, in_ch // groups, kh, kw)``, bias ``(out_ch,)``;
  cross-correlation, zero padding, output size ``(H + 2p - k) // s + 1``.
* ``Linear`` weight ``(out_f, in_f)``, bias ``(out_f,)``: ``y = x W^T + b``.
* ``MaxPool2d`` pads with -inf, ``AvgPool2d`` with zeros and always divides by
  ``kh * kw`` (count_include_pad); both round the output size down.  Max-pool
  ties go to the first maximum in row-major window order.
* ``AdaptiveAvgPool2d(out)`` is only defined when every input side is a
  multiple of the output side; it is then ``AvgPool2d(k=in//out, s=in//out)``
  (see :func:`adaptive_pool_window`).
* ``BatchNorm2d``: parameters ``weight`` (gamma), ``bias`` (beta) and buffers
  ``running_mean``, ``running_var``.  Training normalises with the biased batch
  variance and updates ``running = (1 - momentum) * running + momentum * batch``
  with the *unbiased* batch variance; inference uses the running statistics.
* ``Flatten`` keeps C-order: ``(C, H, W) -> (C * H * W,)``.
* ``Dropout(p)``: inverted dropout in training, identity in inference.
* ``ReLU`` gradient at exactly 0 is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layers as _layers
from .graph import (
    OUTPUTS,
    Layer,
    Model,
    ParamMismatchError,
    ParamSpec,
    Residual,
    Sequential,
    Shape,
    SpecError,
    SpecLike,
    _join,
    _root,
    adaptive_pool_window,
    check_params,
    conv_out_size,
    count_params,
    join_path,
    output_shape,
    param_shapes,
    param_specs,
    walk,
)
from .layers.adaptive_avgpool import AdaptiveAvgPool2d
from .layers.avgpool import AvgPool2d
from .layers.batchnorm import BatchNorm2d
from .layers.conv2d import Conv2d
from .layers.dropout import Dropout
from .layers.flatten import Flatten
from .layers.linear import Linear
from .layers.maxpool import MaxPool2d, Pool2d
from .layers.relu import ReLU

_Pool = Pool2d


@dataclass(frozen=True)
class TraceEntry:
    """One leaf layer in execution order, with its path and per-sample shapes."""

    path: str
    layer: Layer
    in_shape: tuple
    out_shape: tuple


def trace(m: SpecLike, in_shape: Shape | None = None) -> list[TraceEntry]:
    """Leaves in execution order (a residual's body, then its shortcut) with shapes."""
    if in_shape is None:
        in_shape = m.input_shape if isinstance(m, Model) else None
    if in_shape is None:
        raise SpecError("trace of a bare layer needs in_shape")
    out: list[TraceEntry] = []

    def rec(layer: Layer, path: str, s):
        if isinstance(layer, Sequential):
            for name, child in layer.children():
                s = rec(child, _join(path, name), s)
            return s
        if isinstance(layer, Residual):
            a = rec(layer.body, _join(path, layer.body_name), s)
            if layer.shortcut is not None:
                rec(layer.shortcut, _join(path, layer.shortcut_name), s)
            if layer.relu:
                out.append(TraceEntry(_join(path, "relu"), ReLU(), a, a))
            return a
        o = layer.out_shape(s)
        out.append(TraceEntry(path, layer, tuple(s), tuple(o)))
        return o

    rec(_root(m), "", tuple(in_shape))
    return out


def summary(m: SpecLike, in_shape: Shape | None = None) -> str:
    """A human-readable table: leaf path, layer, output shape, parameter count."""
    rows = []
    for e in trace(m, in_shape):
        n = sum(int(_prod(s)) for _, s, _, _ in e.layer.local_params())
        rows.append((e.path, repr(e.layer), "x".join(map(str, e.out_shape)), n))
    w0 = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'layer':<{w0}}  {'output':>14}  {'params':>11}  spec"]
    for p, r, o, n in rows:
        lines.append(f"{p:<{w0}}  {o:>14}  {n:>11,}  {r}")
    total = count_params(m, trainable_only=False)
    lines.append(f"total parameters (incl. BN buffers): {total:,}; trainable: {count_params(m):,}")
    return "\n".join(lines)


def _prod(s) -> int:
    n = 1
    for d in s:
        n *= int(d)
    return n


def __getattr__(name):
    """A registered layer type by its name (a type added after this list was written)."""
    t = _layers.by_name(name)
    if t is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return t.spec


__all__ = [
    "Shape",
    "SpecError",
    "ParamMismatchError",
    "ParamSpec",
    "Layer",
    "Conv2d",
    "Linear",
    "ReLU",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm2d",
    "Flatten",
    "Dropout",
    "Sequential",
    "Residual",
    "Model",
    "OUTPUTS",
    "SpecLike",
    "join_path",
    "conv_out_size",
    "adaptive_pool_window",
    "param_specs",
    "param_shapes",
    "count_params",
    "output_shape",
    "TraceEntry",
    "trace",
    "walk",
    "check_params",
    "summary",
]
