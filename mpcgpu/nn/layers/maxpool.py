"""``MaxPool2d``: max over windows, padding with -inf, the output size rounded down; ties
go to the first maximum in row-major window order.  ONNX: ``MaxPool``.

The private max-pool is a tree of comparisons (10 rounds per level) that works at any
scale: a product right before it leaves its truncation to it (the executor's deferred
truncation, :meth:`~mpcgpu.nn.private.PrivateModel.truncates_later`), done here on
``1/k^2`` of the elements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ...protocols import compare
from ...sharing.arithmetic import to_scale
from .. import graph as G
from . import OnnxForm, pieces, register
from ._windows import onnx_pool_attrs, pad, pool_geom, read_pool, scatter_windows, unpad, windows


@dataclass(frozen=True)
class Pool2d(G.Layer):
    """The geometry shared by the pooling layers (``stride=None``: the kernel)."""

    kernel: Union[int, tuple] = 2
    stride: Union[int, tuple, None] = None  # None: same as kernel
    padding: Union[int, tuple] = 0

    def __post_init__(self):
        object.__setattr__(self, "kernel", G.spec_pair(self.kernel, "kernel"))
        object.__setattr__(self, "stride", G.spec_pair(self.kernel if self.stride is None else self.stride, "stride"))
        object.__setattr__(self, "padding", G.spec_pair(self.padding, "padding"))
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise G.SpecError(f"bad pooling geometry {self}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise G.SpecError(f"pool padding must be at most half the kernel: {self}")

    def out_shape(self, in_shape):
        c, h, w = G.need_image(self, in_shape)
        return (
            c,
            G.conv_out_size(h, self.kernel[0], self.stride[0], self.padding[0]),
            G.conv_out_size(w, self.kernel[1], self.stride[1], self.padding[1]),
        )


#: the spec's kinds of the pooling fields in the file format
POOL_JSON = dict(kernel="pair", stride="pair?", padding="pair")


@dataclass(frozen=True)
class MaxPool2d(Pool2d):
    pass


def maxpool2d(x, kernel, stride=None, padding=0):
    """Max pooling (padding with -inf); returns (y, argmax within each window, row-major)."""
    kernel, stride, padding, oh, ow = pool_geom(x.shape, kernel, stride, padding)
    win = windows(pad(x, padding, -np.inf), kernel, stride, oh, ow)
    flat = win.reshape(win.shape[:4] + (kernel[0] * kernel[1],))
    am = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, am[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(y), am


def maxpool2d_backward(argmax, x_shape, dy, kernel, stride=None, padding=0):
    kernel, stride, padding, oh, ow = pool_geom(x_shape, kernel, stride, padding)
    n, c, h, w = x_shape
    dxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dy.dtype)
    scatter_windows(dxp, lambda i, j: dy * (argmax == i * kernel[1] + j), kernel, stride, oh, ow)
    return np.ascontiguousarray(unpad(dxp, padding))


def plain_forward(run, layer, path, x):
    y, am = maxpool2d(x, layer.kernel, layer.stride, layer.padding)
    if run.need_grad:
        run.keep(path, (am, x.shape))
    return y


def plain_backward(run, layer, path, dy):
    am, x_shape = run.kept(path)
    return maxpool2d_backward(am, x_shape, dy, layer.kernel, layer.stride, layer.padding)


def maxpool_forward(run, layer, path, x):
    geo = (layer.kernel, layer.stride, layer.padding)
    if not run.training:
        n, c, h, w = x.shape
        out_shape = (n,) + tuple(layer.out_shape((c, h, w)))
        y = pieces(x, lambda piece: piece.max_pool2d(*geo), c, n * h * w, out_shape)
    else:
        y, levels = compare.max_pool2d(x, *geo, return_bits=True)
        run.keep(path, (levels, x.shape))
    return to_scale(y, x.rt.frac_bits) if y.scale > x.rt.frac_bits else y  # a deferred truncation


def maxpool_backward(run, layer, path, dy):
    levels, shape = run.kept(path)
    return compare.max_pool2d_backward_bits(dy, levels, shape, layer.kernel, layer.stride, layer.padding)


def read_onnx(node):
    return MaxPool2d(*read_pool(node)), {}


def write_onnx(em, layer, path, x, in_shape):
    return em.node("MaxPool", [x], path, **onnx_pool_attrs(layer))


register(
    MaxPool2d,
    json=POOL_JSON,
    plain=(plain_forward, plain_backward),
    private=(maxpool_forward, maxpool_backward),
    onnx=OnnxForm(("MaxPool",), read_onnx, write_onnx),
    examples=[(MaxPool2d(2), (2, 4, 6)), (MaxPool2d(3, 2, 1), (2, 5, 5))],
)
