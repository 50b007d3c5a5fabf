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

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

from .. import geometry
from ..errors import MPCError

Shape = tuple  # per-sample shape: (C, H, W) or (F,)


class SpecError(MPCError, ValueError):
    """An architecture is ill-formed, or an input shape does not fit it."""


class ParamMismatchError(MPCError, ValueError):
    """A parameter dictionary does not match an architecture."""


def _pair(v, what: str) -> tuple[int, int]:
    return geometry.pair(v, what, SpecError)


def join_path(prefix: str, name: str) -> str:
    """Dotted path of a child (an empty part is transparent): ("layer1.0", "bn1") -> "layer1.0.bn1"."""
    if prefix and name:
        return f"{prefix}.{name}"
    return prefix or name


_join = join_path


def conv_out_size(n: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return geometry.out_size(n, k, s, p, SpecError)


def adaptive_pool_window(in_hw, out_hw) -> tuple[int, int]:
    """Kernel (= stride) per axis of an adaptive average pool; errors unless in % out == 0."""
    (h, w), (oh, ow) = _pair(in_hw, "input size"), _pair(out_hw, "output size")
    if oh < 1 or ow < 1 or h % oh or w % ow:
        raise SpecError(
            f"AdaptiveAvgPool2d to {oh}x{ow} needs input sides that are multiples of the "
            f"output sides (exact windows); got input {h}x{w}"
        )
    return h // oh, w // ow


@dataclass(frozen=True)
class ParamSpec:
    """One named array of a model: ``kind`` is weight, bias, running_mean or running_var."""

    name: str
    shape: tuple
    kind: str
    trainable: bool

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Layer:
    """Base of all specs.  Leaves override ``local_params`` and ``out_shape``."""

    def local_params(self) -> list[tuple[str, tuple, str, bool]]:
        """(local name, shape, kind, trainable) of this layer's own arrays."""
        return []

    def children(self) -> list[tuple[str, "Layer"]]:
        return []

    def out_shape(self, in_shape: Shape) -> Shape:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def is_leaf(self) -> bool:
        return not self.children()


def _need_image(layer, in_shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise SpecError(f"{type(layer).__name__} needs a (C, H, W) input, got {tuple(in_shape)}")
    return tuple(int(d) for d in in_shape)


@dataclass(frozen=True)
class Conv2d(Layer):
    in_ch: int
    out_ch: int
    kernel: Union[int, tuple] = 3
    stride: Union[int, tuple] = 1
    padding: Union[int, tuple] = 0
    groups: int = 1
    bias: bool = True

    def __post_init__(self):
        for f in ("kernel", "stride", "padding"):
            object.__setattr__(self, f, _pair(getattr(self, f), f))
        if self.groups < 1 or self.in_ch % self.groups or self.out_ch % self.groups:
            raise SpecError(f"Conv2d groups={self.groups} must divide in_ch={self.in_ch} and out_ch={self.out_ch}")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise SpecError(f"bad Conv2d geometry {self}")

    def local_params(self):
        kh, kw = self.kernel
        p = [("weight", (self.out_ch, self.in_ch // self.groups, kh, kw), "weight", True)]
        if self.bias:
            p.append(("bias", (self.out_ch,), "bias", True))
        return p

    def out_shape(self, in_shape):
        c, h, w = _need_image(self, in_shape)
        if c != self.in_ch:
            raise SpecError(f"Conv2d expects {self.in_ch} input channels, got {c}")
        return (
            self.out_ch,
            conv_out_size(h, self.kernel[0], self.stride[0], self.padding[0]),
            conv_out_size(w, self.kernel[1], self.stride[1], self.padding[1]),
        )


@dataclass(frozen=True)
class Linear(Layer):
    in_f: int
    out_f: int
    bias: bool = True

    def local_params(self):
        p = [("weight", (self.out_f, self.in_f), "weight", True)]
        if self.bias:
            p.append(("bias", (self.out_f,), "bias", True))
        return p

    def out_shape(self, in_shape):
        if tuple(in_shape) != (self.in_f,):
            raise SpecError(
                f"Linear expects input ({self.in_f},), got {tuple(in_shape)}"
                + (" (missing Flatten?)" if len(in_shape) > 1 else "")
            )
        return (self.out_f,)


@dataclass(frozen=True)
class ReLU(Layer):
    def out_shape(self, in_shape):
        return tuple(in_shape)


@dataclass(frozen=True)
class _Pool(Layer):
    kernel: Union[int, tuple] = 2
    stride: Union[int, tuple, None] = None  # None: same as kernel
    padding: Union[int, tuple] = 0

    def __post_init__(self):
        object.__setattr__(self, "kernel", _pair(self.kernel, "kernel"))
        object.__setattr__(self, "stride", _pair(self.kernel if self.stride is None else self.stride, "stride"))
        object.__setattr__(self, "padding", _pair(self.padding, "padding"))
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise SpecError(f"bad pooling geometry {self}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise SpecError(f"pool padding must be at most half the kernel: {self}")

    def out_shape(self, in_shape):
        c, h, w = _need_image(self, in_shape)
        return (
            c,
            conv_out_size(h, self.kernel[0], self.stride[0], self.padding[0]),
            conv_out_size(w, self.kernel[1], self.stride[1], self.padding[1]),
        )


@dataclass(frozen=True)
class MaxPool2d(_Pool):
    pass


@dataclass(frozen=True)
class AvgPool2d(_Pool):
    pass


@dataclass(frozen=True)
class AdaptiveAvgPool2d(Layer):
    out_hw: Union[int, tuple] = 1

    def __post_init__(self):
        object.__setattr__(self, "out_hw", _pair(self.out_hw, "out_hw"))

    def window(self, in_shape) -> tuple[int, int]:
        """Kernel = stride of the equivalent AvgPool2d for this input shape."""
        _, h, w = _need_image(self, in_shape)
        return adaptive_pool_window((h, w), self.out_hw)

    def out_shape(self, in_shape):
        c = _need_image(self, in_shape)[0]
        self.window(in_shape)
        return (c,) + self.out_hw


@dataclass(frozen=True)
class BatchNorm2d(Layer):
    channels: int
    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self):
        eps = float(self.eps)
        if not (eps > 0.0 and eps < float("inf")):
            raise SpecError(f"BatchNorm2d eps must be finite and positive, got {self.eps!r}")
        if not 0.0 <= float(self.momentum) <= 1.0:
            raise SpecError(f"BatchNorm2d momentum must be in [0, 1], got {self.momentum!r}")

    def local_params(self):
        c = (self.channels,)
        return [
            ("weight", c, "weight", True),
            ("bias", c, "bias", True),
            ("running_mean", c, "running_mean", False),
            ("running_var", c, "running_var", False),
        ]

    def out_shape(self, in_shape):
        c = _need_image(self, in_shape)[0]
        if c != self.channels:
            raise SpecError(f"BatchNorm2d expects {self.channels} channels, got {c}")
        return tuple(in_shape)


@dataclass(frozen=True)
class Flatten(Layer):
    def out_shape(self, in_shape):
        n = 1
        for d in in_shape:
            n *= int(d)
        return (n,)


@dataclass(frozen=True)
class Dropout(Layer):
    p: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.p < 1.0:
            raise SpecError(f"Dropout p must be in [0, 1), got {self.p}")

    def out_shape(self, in_shape):
        return tuple(in_shape)


@dataclass(frozen=True)
class Sequential(Layer):
    layers: tuple = ()
    names: Union[tuple, None] = None  # None: "0", "1", ...

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        names = (
            tuple(str(i) for i in range(len(self.layers))) if self.names is None else tuple(str(n) for n in self.names)
        )
        if len(names) != len(self.layers):
            raise SpecError("Sequential: one name per layer")
        if len(set(names)) != len(names) or any("." in n or "/" in n or not n for n in names):
            raise SpecError(f"Sequential names must be unique, non-empty, without '.' or '/': {names}")
        for child in self.layers:
            if not isinstance(child, Layer):
                raise SpecError(f"Sequential child is not a layer spec: {child!r}")
        object.__setattr__(self, "names", names)

    @classmethod
    def named(cls, *pairs) -> "Sequential":
        """``Sequential.named(("conv1", Conv2d(...)), ("relu", ReLU()), ...)``."""
        return cls(tuple(layer for _, layer in pairs), tuple(n for n, _ in pairs))

    def children(self):
        return list(zip(self.names, self.layers))

    def out_shape(self, in_shape):
        s = tuple(in_shape)
        for name, layer in self.children():
            try:
                s = layer.out_shape(s)
            except SpecError as e:
                raise SpecError(f"{name}: {e}") from None
        return s

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.layers[self.names.index(key)]
        return self.layers[key]


@dataclass(frozen=True)
class Residual(Layer):
    """``body(x) + shortcut(x)``, then ReLU if ``relu``; ``shortcut=None`` is the identity."""

    body: Sequential = field(default_factory=Sequential)
    shortcut: Union[Sequential, None] = None
    relu: bool = False
    body_name: str = ""
    shortcut_name: str = "downsample"

    def __post_init__(self):
        for part in (self.body,) + (() if self.shortcut is None else (self.shortcut,)):
            if not isinstance(part, Sequential):
                raise SpecError("Residual body and shortcut must be Sequential specs")
        if self.body_name == self.shortcut_name:
            raise SpecError("Residual body_name and shortcut_name must differ")

    def children(self):
        c = [(self.body_name, self.body)]
        if self.shortcut is not None:
            c.append((self.shortcut_name, self.shortcut))
        return c

    def out_shape(self, in_shape):
        a = self.body.out_shape(in_shape)
        b = tuple(in_shape) if self.shortcut is None else self.shortcut.out_shape(in_shape)
        if a != b:
            raise SpecError(f"Residual branches disagree: body gives {a}, shortcut gives {b}")
        return a


#: what the network's original output stage applied after the logits (``Model.output``):
#: the private graph always ends at the logits; the output stage may apply this
OUTPUTS = ("logits", "softmax", "log_softmax")


@dataclass(frozen=True)
class Model:
    """A named network with its per-sample input shape and number of classes.

    ``output`` records what the original network applied after its last layer
    (``"logits"``: nothing; ``"softmax"`` / ``"log_softmax"``, e.g. from an ONNX graph
    that ends with one): the private graph stops at the logits either way, and an output
    stage that reveals probabilities may apply it."""

    name: str
    input_shape: tuple
    num_classes: int
    net: Sequential
    description: str = ""
    output: str = "logits"

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.output not in OUTPUTS:
            raise SpecError(f"model {self.name}: output must be one of {OUTPUTS}, got {self.output!r}")
        out = self.net.out_shape(self.input_shape)
        if out != (self.num_classes,):
            raise SpecError(f"model {self.name}: output shape {out} != ({self.num_classes},)")

    @property
    def output_shape(self) -> tuple:
        return (self.num_classes,)


SpecLike = Union[Model, Layer]


def _root(m: SpecLike) -> Layer:
    return m.net if isinstance(m, Model) else m


def param_specs(m: SpecLike, prefix: str = "") -> list[ParamSpec]:
    """All arrays of a model or layer in execution order, with full dotted names."""
    out: list[ParamSpec] = []

    def rec(layer: Layer, pre: str):
        for local, shape, kind, trainable in layer.local_params():
            out.append(ParamSpec(_join(pre, local), tuple(shape), kind, trainable))
        for name, child in layer.children():
            rec(child, _join(pre, name))

    rec(_root(m), prefix)
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise SpecError(f"duplicate parameter names in spec: {names}")
    return out


def param_shapes(m: SpecLike, trainable_only: bool = False) -> dict[str, tuple]:
    """``{name: shape}`` in execution order."""
    return {p.name: p.shape for p in param_specs(m) if p.trainable or not trainable_only}


def count_params(m: SpecLike, trainable_only: bool = True) -> int:
    """Number of scalars (trainable only by default, as usually quoted)."""
    return sum(p.size for p in param_specs(m) if p.trainable or not trainable_only)


def output_shape(m: SpecLike, in_shape: Shape | None = None) -> Shape:
    """Per-sample output shape; for a ``Model`` the input shape defaults to its own."""
    if in_shape is None:
        if not isinstance(m, Model):
            raise SpecError("output_shape of a bare layer needs in_shape")
        in_shape = m.input_shape
    return _root(m).out_shape(tuple(in_shape))


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


def walk(m: SpecLike) -> Iterator[tuple[str, Layer]]:
    """Every node (containers included), pre-order, as (path, layer)."""

    def rec(layer, path):
        yield path, layer
        for name, child in layer.children():
            yield from rec(child, _join(path, name))

    yield from rec(_root(m), "")


def check_params(m: SpecLike, params: Mapping, *, allow_extra: bool = False, what: str = "parameters") -> None:
    """Raise ``ParamMismatchError`` naming every missing, unexpected or mis-shaped array."""
    expected = param_shapes(m)
    missing = [n for n in expected if n not in params]
    extra = [n for n in params if n not in expected]
    wrong = [
        f"{n}: expected {expected[n]}, got {tuple(params[n].shape)}"
        for n in expected
        if n in params and tuple(params[n].shape) != expected[n]
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra and not allow_extra:
        problems.append(f"unexpected {extra}")
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong))
    if problems:
        name = m.name if isinstance(m, Model) else type(m).__name__
        raise ParamMismatchError(f"{what} do not match model {name}: " + ". ".join(problems))


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
