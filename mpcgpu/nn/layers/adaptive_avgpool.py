"""``AdaptiveAvgPool2d(out)``: only defined when every input side is a multiple of the
output side; it is then ``AvgPool2d(k=in//out, s=in//out)``
(:func:`~mpcgpu.nn.graph.adaptive_pool_window`).  ONNX: ``GlobalAveragePool`` is read as
``AdaptiveAvgPool2d(1)``; written as that, as an ``AveragePool`` or as nothing (an
identity when the input is at the output size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ...protocols import pooling
from .. import graph as G
from . import OnnxForm, register
from .avgpool import avgpool2d, avgpool2d_backward


@dataclass(frozen=True)
class AdaptiveAvgPool2d(G.Layer):
    out_hw: Union[int, tuple] = 1

    def __post_init__(self):
        object.__setattr__(self, "out_hw", G.spec_pair(self.out_hw, "out_hw"))

    def window(self, in_shape) -> tuple[int, int]:
        """Kernel = stride of the equivalent AvgPool2d for this input shape."""
        _, h, w = G.need_image(self, in_shape)
        return G.adaptive_pool_window((h, w), self.out_hw)

    def out_shape(self, in_shape):
        c = G.need_image(self, in_shape)[0]
        self.window(in_shape)
        return (c,) + self.out_hw


def adaptive_avgpool2d(x, out_hw):
    """Adaptive average pool; exact windows only (input sides multiples of output sides)."""
    k = G.adaptive_pool_window(x.shape[2:], out_hw)
    return avgpool2d(x, k, k, 0)


def adaptive_avgpool2d_backward(x_shape, dy, out_hw):
    k = G.adaptive_pool_window(x_shape[2:], out_hw)
    return avgpool2d_backward(x_shape, dy, k, k, 0)


def plain_forward(run, layer, path, x):
    if run.need_grad:
        run.keep(path, x.shape)
    return adaptive_avgpool2d(x, layer.out_hw)


def plain_backward(run, layer, path, dy):
    return adaptive_avgpool2d_backward(run.kept(path), dy, layer.out_hw)


def adaptive_forward(run, layer, path, x):
    if run.training:
        run.keep(path, x.shape)
    return pooling.adaptive_avg_pool2d(x, layer.out_hw)


def adaptive_backward(run, layer, path, dy):
    return pooling.adaptive_avg_pool2d_backward(dy, run.kept(path))


def read_onnx(node):
    return AdaptiveAvgPool2d(1), {}


def write_onnx(em, layer, path, x, in_shape):
    kh, kw = layer.window(in_shape)
    if layer.out_hw == (1, 1):
        return em.node("GlobalAveragePool", [x], path)
    if (kh, kw) == (1, 1):
        return x  # already at the output size
    return em.node("AveragePool", [x], path, kernel_shape=[kh, kw], strides=[kh, kw])


register(
    AdaptiveAvgPool2d,
    json=dict(out_hw="pair"),
    plain=(plain_forward, plain_backward),
    private=(adaptive_forward, adaptive_backward),
    onnx=OnnxForm(("GlobalAveragePool",), read_onnx, write_onnx),
    examples=[(AdaptiveAvgPool2d(1), (3, 4, 4)), (AdaptiveAvgPool2d((2, 1)), (2, 4, 6))],
)
