"""What the operator modules share: example construction (with the values of structural
inputs the registry-wide tests need), axis handling, and the one-line dispatch helpers."""

from __future__ import annotations

import numpy

from ..dag import Node, TensorInfo

#: example node name -> {input name: array or rng -> array}: the values a registry-wide test
#: feeds instead of random ones (shapes, indices, axes, positive domains...)
EXAMPLE_VALUES: dict = {}
#: example node name -> max abs error accepted of the private facet against the plain one
EXAMPLE_TOL: dict = {}

_count = [0]


def ex(op: str, inputs, outputs=1, attrs=None, values=None, tol: float = 1e-3, name=None):
    """One example ``(Node, [TensorInfo])`` for :func:`~mpcgpu.nn.dag.register_op`.

    ``inputs``: TensorInfo, or ``None`` / ``""`` for an absent optional input; ``outputs``: a
    count or names; ``values``: ``{input name: array | callable(rng) -> array}`` fed by the
    tests instead of random data; ``tol``: the private facet's accepted max abs error."""
    _count[0] += 1
    name = name or f"{op.lower()}_ex{_count[0]}"
    outs = [f"{name}_y{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
    ins = [t.name if t else "" for t in inputs]
    node = Node(op, name, ins, outs, attrs or {})
    EXAMPLE_VALUES[name] = dict(values or {})
    EXAMPLE_TOL[name] = tol
    return node, [t for t in inputs if t]


def S(name, shape, dtype="float"):
    """A secret example input."""
    return TensorInfo(name, tuple(shape), dtype, "secret")


def P(name, shape, dtype="float"):
    """A public example input."""
    return TensorInfo(name, tuple(shape), dtype, "public")


def example_value(node: Node, info: TensorInfo, rng) -> numpy.ndarray:
    """The plaintext value an example feeds for ``info`` (see :data:`EXAMPLE_VALUES`):
    given, or random (floats uniform in [-2, 2) on the 2^-16 grid, ints in [0, 4), bools)."""
    given = EXAMPLE_VALUES.get(node.name, {}).get(info.name)
    if given is not None:
        v = given(rng) if callable(given) else given
        return numpy.asarray(v)
    if info.dtype == "float":
        return numpy.rint(rng.uniform(-2, 2, info.shape) * 2.0**16) / 2.0**16
    if info.dtype == "int":
        return rng.integers(0, 4, info.shape).astype(numpy.int64)
    return rng.random(info.shape) < 0.5


def norm_axis(axis: int, ndim: int, node=None) -> int:
    a = int(axis)
    if not -ndim <= a < max(ndim, 1):
        if node is not None:
            node.fail(f"axis {a} is out of range for rank {ndim}")
        raise ValueError(f"axis {a} out of range for rank {ndim}")
    return a % max(ndim, 1)


def int_list(v) -> list:
    return [int(x) for x in numpy.asarray(v).reshape(-1)]


def axes_arg(node: Node, args, index: int, ndim: int, key="axes"):
    """The ``axes`` of an operator: its input ``index`` (opset >= 13/18) or the attribute;
    None when neither is given.  Normalised to non-negative and sorted."""
    v = args[index] if len(args) > index else None
    if v is None:
        v = node.attr(key)
    if v is None:
        return None
    if not isinstance(v, numpy.ndarray) and not isinstance(v, (list, tuple, int)):
        node.fail(f"{key} must be public")
    return sorted(norm_axis(a, ndim, node) for a in int_list(v))
