"""The one walk of a spec tree that both executors run, forward and backward.

The containers are structural: a ``Sequential`` runs its children in order (or in the
order ``order(seq)`` gives: the private executor runs a ReLU after the max-pool that
follows it), a ``Residual`` runs its body, then its shortcut (the identity when None),
adds the two and, with ``relu``, applies a ReLU at the path ``<block>.out_relu``
(:data:`RESIDUAL_RELU`; the block's body may hold a ``relu`` of its own).  Every leaf,
and that closing ReLU (:data:`RESIDUAL_RELU_LAYER`), goes to the executor's ``leaf(layer,
path, value)``.  Backward visits the leaves in reverse and adds the gradients of the two
branches of a residual block; a leaf's gradient None (the private executor skips the
input gradient of the first layer) stays None through the walk."""

from __future__ import annotations

from typing import Callable, Iterator

from . import graph as G
from .layers.relu import ReLU

#: the path suffix of a residual block's closing ReLU (its body may hold a "relu" too)
RESIDUAL_RELU = "out_relu"
#: the layer a residual block's closing ReLU runs as (this very object)
RESIDUAL_RELU_LAYER = ReLU()


def in_order(seq: G.Sequential):
    """A Sequential's children as they are written."""
    return seq.children()


def trace_path(layer, path: str) -> str:
    """The path :func:`mpcgpu.nn.spec.trace` gives a leaf: ``<block>.relu`` for a residual
    block's closing ReLU, the leaf's own path otherwise."""
    if layer is RESIDUAL_RELU_LAYER:
        return G.join_path(path[: -len(RESIDUAL_RELU)].rstrip("."), "relu")
    return path


def leaves(root: G.Layer, order: Callable = in_order, path: str = "") -> Iterator[tuple[str, G.Layer]]:
    """Every leaf (a residual block's closing ReLU included) as (path, layer), in the order
    :func:`forward` runs them."""
    if isinstance(root, G.Sequential):
        for name, child in order(root):
            yield from leaves(child, order, G.join_path(path, name))
    elif isinstance(root, G.Residual):
        yield from leaves(root.body, order, G.join_path(path, root.body_name))
        if root.shortcut is not None:
            yield from leaves(root.shortcut, order, G.join_path(path, root.shortcut_name))
        if root.relu:
            yield G.join_path(path, RESIDUAL_RELU), RESIDUAL_RELU_LAYER
    else:
        yield path, root


def forward(root: G.Layer, x, leaf: Callable, order: Callable = in_order, path: str = ""):
    """``root`` applied to ``x``: ``leaf(layer, path, x) -> y`` runs each leaf."""
    if isinstance(root, G.Sequential):
        for name, child in order(root):
            x = forward(child, x, leaf, order, G.join_path(path, name))
        return x
    if isinstance(root, G.Residual):
        body = forward(root.body, x, leaf, order, G.join_path(path, root.body_name))
        short = (
            x
            if root.shortcut is None
            else forward(root.shortcut, x, leaf, order, G.join_path(path, root.shortcut_name))
        )
        out = body + short
        if root.relu:
            out = leaf(RESIDUAL_RELU_LAYER, G.join_path(path, RESIDUAL_RELU), out)
        return out
    return leaf(root, path, x)


def backward(root: G.Layer, dy, leaf: Callable, order: Callable = in_order, path: str = ""):
    """The gradient through ``root`` of ``dy``: ``leaf(layer, path, dy) -> dx`` runs each
    leaf backward (never called with None: a None gradient passes through)."""
    if isinstance(root, G.Sequential):
        for name, child in reversed(order(root)):
            dy = backward(child, dy, leaf, order, G.join_path(path, name))
        return dy
    if isinstance(root, G.Residual):
        if root.relu:
            dy = leaf(RESIDUAL_RELU_LAYER, G.join_path(path, RESIDUAL_RELU), dy)
        d_body = backward(root.body, dy, leaf, order, G.join_path(path, root.body_name))
        d_short = (
            dy
            if root.shortcut is None
            else backward(root.shortcut, dy, leaf, order, G.join_path(path, root.shortcut_name))
        )
        if d_body is None or d_short is None:
            return d_body if d_short is None else d_short
        return d_body + d_short
    if dy is None:
        return None
    return leaf(root, path, dy)


__all__ = ["RESIDUAL_RELU", "RESIDUAL_RELU_LAYER", "in_order", "trace_path", "leaves", "forward", "backward"]
