"""``AvgPool2d``: window sums over ``kh * kw`` (zero padding counted: count_include_pad),
the output size rounded down.  ONNX: ``AveragePool`` (padded only with
``count_include_pad=1``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...protocols import pooling
from . import OnnxForm, register
from ._windows import onnx_pool_attrs, pad, pool_geom, read_pool, scatter_windows, unpad, windows
from .maxpool import POOL_JSON, Pool2d


@dataclass(frozen=True)
class AvgPool2d(Pool2d):
    pass


def avgpool2d(x, kernel, stride=None, padding=0):
    """Average pooling; zero padding counted in the divisor kh*kw."""
    kernel, stride, padding, oh, ow = pool_geom(x.shape, kernel, stride, padding)
    win = windows(pad(x, padding), kernel, stride, oh, ow)
    return win.sum(axis=(4, 5)) / (kernel[0] * kernel[1])


def avgpool2d_backward(x_shape, dy, kernel, stride=None, padding=0):
    kernel, stride, padding, oh, ow = pool_geom(x_shape, kernel, stride, padding)
    n, c, h, w = x_shape
    g = dy / (kernel[0] * kernel[1])
    dxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dy.dtype)
    scatter_windows(dxp, lambda i, j: g, kernel, stride, oh, ow)
    return np.ascontiguousarray(unpad(dxp, padding))


def plain_forward(run, layer, path, x):
    if run.need_grad:
        run.keep(path, x.shape)
    return avgpool2d(x, layer.kernel, layer.stride, layer.padding)


def plain_backward(run, layer, path, dy):
    return avgpool2d_backward(run.kept(path), dy, layer.kernel, layer.stride, layer.padding)


def avgpool_forward(run, layer, path, x):
    if run.training:
        run.keep(path, x.shape)
    return pooling.avg_pool2d(x, layer.kernel, stride=layer.stride, padding=layer.padding)


def avgpool_backward(run, layer, path, dy):
    return pooling.avg_pool2d_backward(dy, run.kept(path), layer.kernel, layer.stride, layer.padding)


def read_onnx(node):
    k, stride, pads = read_pool(node)
    if any(pads) and not int(node.attrs.get("count_include_pad", 0)):
        node.fail("padded average pooling must count the padding (count_include_pad=1)")
    return AvgPool2d(k, stride, pads), {}


def write_onnx(em, layer, path, x, in_shape):
    return em.node("AveragePool", [x], path, count_include_pad=1, **onnx_pool_attrs(layer))


register(
    AvgPool2d,
    json=POOL_JSON,
    plain=(plain_forward, plain_backward),
    private=(avgpool_forward, avgpool_backward),
    onnx=OnnxForm(("AveragePool",), read_onnx, write_onnx),
    examples=[(AvgPool2d(2), (2, 4, 4)), (AvgPool2d(3, 2, 1), (1, 5, 6))],
)
