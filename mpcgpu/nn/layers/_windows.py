"""Window helpers of the plaintext pooling and convolution kernels (NumPy, NCHW)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpcgpu.ring.geometry import pair, window_index, window_offsets
from .. import graph as G


def pair_of(v):
    return pair(v, "size", G.SpecError)


out_size = G.conv_out_size


def windows(xp, kernel, stride, oh, ow):
    """View (N, C, OH, OW, kh, kw) of the windows of a padded NCHW array."""
    v = sliding_window_view(xp, kernel, axis=(2, 3))
    return v[:, :, :: stride[0], :: stride[1]][:, :, :oh, :ow]


def pad(x, padding, value=0.0):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def scatter_windows(dxp, contrib, kernel, stride, oh, ow):
    """dxp[:, :, i + s*a, j + s*b] += contrib(i, j)[:, :, a, b] for every kernel offset."""
    for _, i, j in window_offsets(*kernel):
        dxp[window_index(i, j, *stride, oh, ow)] += contrib(i, j)


def unpad(xp, padding):
    ph, pw = padding
    return xp[:, :, ph : xp.shape[2] - ph, pw : xp.shape[3] - pw]


def pool_geom(x_shape, kernel, stride, padding):
    """(kernel, stride, padding, OH, OW) of a pooling window over an NCHW shape."""
    kernel = pair_of(kernel)
    stride = kernel if stride is None else pair_of(stride)
    padding = pair_of(padding)
    h, w = x_shape[2:]
    return (
        kernel,
        stride,
        padding,
        out_size(h, kernel[0], stride[0], padding[0]),
        out_size(w, kernel[1], stride[1], padding[1]),
    )


def onnx_pool_attrs(layer) -> dict:
    """kernel_shape, strides and pads of an ONNX pooling node for a pooling spec."""
    ph, pw = layer.padding
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=[ph, pw, ph, pw])


def read_pool(node) -> tuple:
    """(kernel, stride, pad) of an ONNX MaxPool / AveragePool node, checked."""
    a = node.attrs
    if int(a.get("ceil_mode", 0)):
        node.fail("ceil_mode=1 is not supported (export with ceil_mode=False)")
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        node.fail("dilated pooling is not supported")
    if len(node.outputs) > 1 and node.outputs[1]:
        node.fail("the indices output of MaxPool is not supported")
    valid = node.valid_pads()
    k = tuple(int(v) for v in a["kernel_shape"])
    if len(k) != 2:
        node.fail("only 2-D pooling is supported")
    pads = (0, 0) if valid else node.pads()
    stride = tuple(int(s) for s in a.get("strides", [1, 1]))
    return k, stride, pads
