"""The structure of network specs: the layer base class, the containers (``Sequential``,
``Residual``), ``Model`` and what is computed over a spec tree (parameter names and shapes,
output shapes).  The leaf layer types live one per module in :mod:`mpcgpu.nn.layers` and
are all re-exported, with everything here, by :mod:`mpcgpu.nn.spec` (the public name).

This module knows no leaf type, so that a layer module can build on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

from mpcgpu.ring import geometry
from ..errors import MPCError

Shape = tuple  # per-sample shape: (C, H, W) or (F,)


class SpecError(MPCError, ValueError):
    """An architecture is ill-formed, or an input shape does not fit it."""


class ParamMismatchError(MPCError, ValueError):
    """A parameter dictionary does not match an architecture."""


def spec_pair(v, what: str) -> tuple[int, int]:
    """``v`` (an int or two) as a pair of ints; a :class:`SpecError` otherwise."""
    return geometry.pair(v, what, SpecError)


_pair = spec_pair


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


def need_image(layer, in_shape) -> tuple[int, int, int]:
    """``in_shape`` as (C, H, W); a :class:`SpecError` naming ``layer`` otherwise."""
    if len(in_shape) != 3:
        raise SpecError(f"{type(layer).__name__} needs a (C, H, W) input, got {tuple(in_shape)}")
    return tuple(int(d) for d in in_shape)


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


_need_image = need_image
