"""``Conv2d``: 2-D cross-correlation with zero padding, groups and an optional bias.

Weight ``(out_ch, in_ch // groups, kh, kw)``, bias ``(out_ch,)``; output size
``(H + 2p - k) // s + 1``.  ONNX: ``Conv`` (2-D, symmetric pads, dilation 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ...protocols.rounding import round_exact
from ...sharing.arithmetic import conv2d_grad_input, conv2d_grad_weight, to_scale
from .. import graph as G
from . import OnnxForm, param, register
from ._windows import out_size, pad, pair_of, scatter_windows, unpad, windows


@dataclass(frozen=True)
class Conv2d(G.Layer):
    in_ch: int
    out_ch: int
    kernel: Union[int, tuple] = 3
    stride: Union[int, tuple] = 1
    padding: Union[int, tuple] = 0
    groups: int = 1
    bias: bool = True

    def __post_init__(self):
        for f in ("kernel", "stride", "padding"):
            object.__setattr__(self, f, G.spec_pair(getattr(self, f), f))
        if self.groups < 1 or self.in_ch % self.groups or self.out_ch % self.groups:
            raise G.SpecError(f"Conv2d groups={self.groups} must divide in_ch={self.in_ch} and out_ch={self.out_ch}")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise G.SpecError(f"bad Conv2d geometry {self}")

    def local_params(self):
        kh, kw = self.kernel
        p = [("weight", (self.out_ch, self.in_ch // self.groups, kh, kw), "weight", True)]
        if self.bias:
            p.append(("bias", (self.out_ch,), "bias", True))
        return p

    def out_shape(self, in_shape):
        c, h, w = G.need_image(self, in_shape)
        if c != self.in_ch:
            raise G.SpecError(f"Conv2d expects {self.in_ch} input channels, got {c}")
        return (
            self.out_ch,
            G.conv_out_size(h, self.kernel[0], self.stride[0], self.padding[0]),
            G.conv_out_size(w, self.kernel[1], self.stride[1], self.padding[1]),
        )


# -- plaintext kernels ----------------------------------------------------------------------


def _im2col(x, kernel, stride, padding, groups):
    """Columns (G, N*OH*OW, C/G*kh*kw) of x, and (OH, OW)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    oh, ow = out_size(h, kh, stride[0], padding[0]), out_size(w, kw, stride[1], padding[1])
    win = windows(pad(x, padding), kernel, stride, oh, ow)  # N C OH OW kh kw
    cg = c // groups
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return np.ascontiguousarray(cols).reshape(groups, n * oh * ow, cg * kh * kw), (oh, ow)


def conv_fwd(x, w, b, stride, padding, groups):
    """(y, columns of x) of a convolution."""
    stride, padding = pair_of(stride), pair_of(padding)
    n, c = x.shape[:2]
    oc, cg, kh, kw = w.shape
    if c != cg * groups or oc % groups:
        raise G.SpecError(f"conv2d: input has {c} channels, weight {w.shape} with groups={groups}")
    cols, (oh, ow) = _im2col(x, (kh, kw), stride, padding, groups)
    wg = w.reshape(groups, oc // groups, cg * kh * kw)
    y = np.matmul(cols, wg.transpose(0, 2, 1))  # G, N*OH*OW, OC/G
    y = y.reshape(groups, n, oh, ow, oc // groups).transpose(1, 0, 4, 2, 3).reshape(n, oc, oh, ow)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y), cols


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """2-D cross-correlation, NCHW input, weight (OC, C/groups, kh, kw), zero padding."""
    return conv_fwd(x, w, b, stride, padding, groups)[0]


def conv_bwd(cols, x_shape, w, dy, stride, padding, groups, need_dx=True):
    """(dx, dw, db) from the columns of x."""
    stride, padding = pair_of(stride), pair_of(padding)
    n, c, h, wd = x_shape
    oc, cg, kh, kw = w.shape
    oh, ow = dy.shape[2:]
    dyg = dy.reshape(n, groups, oc // groups, oh, ow).transpose(1, 0, 3, 4, 2)
    dyg = np.ascontiguousarray(dyg).reshape(groups, n * oh * ow, oc // groups)
    dw = np.matmul(dyg.transpose(0, 2, 1), cols).reshape(w.shape)
    db = dy.sum(axis=(0, 2, 3))
    if not need_dx:
        return None, dw, db
    dcols = np.matmul(dyg, w.reshape(groups, oc // groups, cg * kh * kw))
    dcols = dcols.reshape(groups, n, oh, ow, cg, kh, kw).transpose(1, 0, 4, 2, 3, 5, 6)
    dcols = dcols.reshape(n, c, oh, ow, kh, kw)  # N C OH OW kh kw
    dxp = np.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]), dtype=dy.dtype)
    scatter_windows(dxp, lambda i, j: dcols[:, :, :, :, i, j], (kh, kw), stride, oh, ow)
    return np.ascontiguousarray(unpad(dxp, padding)), dw, db


def conv2d_backward(x, w, dy, stride=1, padding=0, groups=1):
    """Gradients (dx, dw, db) of conv2d for output gradient dy."""
    cols, _ = _im2col(x, w.shape[2:], pair_of(stride), pair_of(padding), groups)
    return conv_bwd(cols, x.shape, w, dy, stride, padding, groups)


def plain_forward(run, layer, path, x):
    P = run.params
    b = P[G.join_path(path, "bias")] if layer.bias else None
    y, cols = conv_fwd(x, P[G.join_path(path, "weight")], b, layer.stride, layer.padding, layer.groups)
    if run.need_grad:
        run.keep(path, (cols, x.shape))
    return y


def plain_backward(run, layer, path, dy):
    cols, x_shape = run.kept(path)
    w = run.params[G.join_path(path, "weight")]
    dx, dw, db = conv_bwd(cols, x_shape, w, dy, layer.stride, layer.padding, layer.groups)
    run.grads[G.join_path(path, "weight")] = dw
    if layer.bias:
        run.grads[G.join_path(path, "bias")] = db
    return dx


# -- private ----------------------------------------------------------------------------------


def untruncated(run, path) -> bool:
    """The product of ``path`` keeps all its fractional bits: the output layer rounds it
    exactly (``run.exact_output``) or the max-pool after it truncates."""
    return run.rounds_exactly(path) or run.truncates_later(path)


def finish(run, path, y, bias, shape_b):
    """Add the bias (at the product's scale); the output layer rounds exactly."""
    if bias is not None:
        y = y + (to_scale(bias, y.scale) if y.scale != bias.scale else bias).reshape(*shape_b)
    return round_exact(y) if run.rounds_exactly(path) else y


def conv_forward(run, layer, path, x):
    weight, bias = run.conv_weights(path, layer)
    y = x.conv2d(
        weight,
        stride=layer.stride,
        padding=layer.padding,
        groups=layer.groups,
        trunc=False if untruncated(run, path) else None,
    )
    if run.training:
        run.keep(path, x)
    return finish(run, path, y, bias, (1, -1, 1, 1))


def conv_backward(run, layer, path, dy):
    x = run.kept(path)
    w = param(run, path, "weight")
    geo = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
    run.grads[G.join_path(path, "weight")] = conv2d_grad_weight(x, dy, w.shape, **geo)
    if layer.bias:
        run.grads[G.join_path(path, "bias")] = dy.sum(axis=(0, 2, 3))
    if not run.needs_input_grad(path):
        return None
    return conv2d_grad_input(dy, w, x.shape, **geo)


# -- ONNX -----------------------------------------------------------------------------------


def read_onnx(node):
    a = node.attrs
    w = node.finite("W", node.const(1, "weight"))
    if w.ndim != 4:
        node.fail("only 2-D convolutions are supported")
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        node.fail(f"dilation {a['dilations']} is not supported")
    valid = node.valid_pads()
    groups = int(a.get("group", 1))
    kh, kw = int(w.shape[2]), int(w.shape[3])
    if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
        node.fail(f"kernel_shape {a['kernel_shape']} disagrees with W {w.shape}")
    pads = (0, 0) if valid else node.pads()
    stride = tuple(int(s) for s in a.get("strides", [1, 1]))
    params = {"weight": w}
    if len(node.inputs) > 2 and node.inputs[2]:
        params["bias"] = node.finite("B", node.const(2, "bias"))
    layer = Conv2d(int(w.shape[1]) * groups, int(w.shape[0]), (kh, kw), stride, pads, groups, "bias" in params)
    return layer, params


def write_onnx(em, layer, path, x, in_shape):
    ins = [x, em.param(path, "weight")] + ([em.param(path, "bias")] if layer.bias else [])
    ph, pw = layer.padding
    return em.node(
        "Conv",
        ins,
        path,
        kernel_shape=list(layer.kernel),
        strides=list(layer.stride),
        pads=[ph, pw, ph, pw],
        group=layer.groups,
    )


register(
    Conv2d,
    json=dict(in_ch="pos", out_ch="pos", kernel="pair", stride="pair?", padding="pair", groups="pos", bias="bool"),
    plain=(plain_forward, plain_backward),
    private=(conv_forward, conv_backward),
    onnx=OnnxForm(("Conv",), read_onnx, write_onnx),
    examples=[
        (Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
        (Conv2d(4, 4, (3, 2), stride=(2, 1), groups=2, bias=False), (4, 6, 5)),
    ],
)
