"""``BatchNorm2d``: parameters ``weight`` (gamma), ``bias`` (beta) and buffers
``running_mean``, ``running_var``.  Training normalises with the biased batch variance
and updates ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased*
batch variance; inference uses the running statistics.  ONNX: ``BatchNormalization``
(inference form, its ``epsilon`` kept).

The private inference form is prepared by the executor
(:meth:`~mpcgpu.nn.private.PrivateModel.prepare`): one batched inverse square root for
all batch norms of the net, each folded into the convolution right before it or kept as
a per-channel affine map."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...protocols.approx import inv_sqrt
from .. import graph as G
from . import OnnxForm, param, register

#: inverse square root domain for batch statistics in training (var + eps)
TRAIN_BN_DOMAIN = (2.0**-10, 2.0**12)


@dataclass(frozen=True)
class BatchNorm2d(G.Layer):
    channels: int
    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self):
        eps = float(self.eps)
        if not (eps > 0.0 and eps < float("inf")):
            raise G.SpecError(f"BatchNorm2d eps must be finite and positive, got {self.eps!r}")
        if not 0.0 <= float(self.momentum) <= 1.0:
            raise G.SpecError(f"BatchNorm2d momentum must be in [0, 1], got {self.momentum!r}")

    def local_params(self):
        c = (self.channels,)
        return [
            ("weight", c, "weight", True),
            ("bias", c, "bias", True),
            ("running_mean", c, "running_mean", False),
            ("running_var", c, "running_var", False),
        ]

    def out_shape(self, in_shape):
        c = G.need_image(self, in_shape)[0]
        if c != self.channels:
            raise G.SpecError(f"BatchNorm2d expects {self.channels} channels, got {c}")
        return tuple(in_shape)


# -- plaintext ----------------------------------------------------------------------------------


def batchnorm2d_train(x, gamma, beta, eps=1e-5):
    """Batch-statistics BN; returns (y, cache) with cache = (xhat, inv_std, gamma, mean, var_unbiased)."""
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1)
    y = xhat * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)
    var_unbiased = var * (m / (m - 1)) if m > 1 else var
    return y, (xhat, inv_std, gamma, mean, var_unbiased)


def batchnorm2d_train_backward(cache, dy):
    """(dx, dgamma, dbeta) through batch statistics."""
    xhat, inv_std, gamma = cache[:3]
    axes = (0, 2, 3)
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dxhat = dy * gamma.reshape(1, -1, 1, 1)
    dx = (inv_std.reshape(1, -1, 1, 1) / m) * (
        m * dxhat
        - dxhat.sum(axis=axes).reshape(1, -1, 1, 1)
        - xhat * (dxhat * xhat).sum(axis=axes).reshape(1, -1, 1, 1)
    )
    return dx, dgamma, dbeta


def fold_batchnorm(gamma, beta, mean, var, eps=1e-5):
    """Inference BN as a per-channel affine map: y = scale * x + shift."""
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def batchnorm2d_eval(x, gamma, beta, mean, var, eps=1e-5):
    scale, shift = fold_batchnorm(gamma, beta, mean, var, eps)
    return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def plain_forward(run, layer, path, x):
    P, name = run.params, lambda local: G.join_path(path, local)
    g, b = P[name("weight")], P[name("bias")]
    rm, rv = P[name("running_mean")], P[name("running_var")]
    if run.training:
        y, cache = batchnorm2d_train(x, g, b, layer.eps)
        mean, var_u = cache[3], cache[4]
        mom = layer.momentum
        rm *= 1 - mom
        rm += mom * mean.astype(rm.dtype)
        rv *= 1 - mom
        rv += mom * var_u.astype(rv.dtype)
        if run.need_grad:
            run.keep(path, (True, cache))
        return y
    if run.need_grad:
        inv_std = 1.0 / np.sqrt(rv + layer.eps)
        run.keep(path, (False, ((x - rm.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1), inv_std, g)))
    return batchnorm2d_eval(x, g, b, rm, rv, layer.eps)


def plain_backward(run, layer, path, dy):
    trained, cache = run.kept(path)
    if trained:
        dx, dg, db = batchnorm2d_train_backward(cache, dy)
    else:
        xhat, inv_std, g = cache
        dx = dy * (g * inv_std).reshape(1, -1, 1, 1)
        dg, db = (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))
    run.grads[G.join_path(path, "weight")] = dg
    run.grads[G.join_path(path, "bias")] = db
    return dx


# -- private ------------------------------------------------------------------------------------


def batchnorm_forward(run, layer, path, x):
    if not run.training:
        if run.is_folded(path):
            return x  # folded into the convolution before it
        scale, shift = run.bn_affine(path)
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    return _batchnorm_train(run, layer, path, x)


def _channel(v):
    return v.reshape(1, -1, 1, 1)


def _batchnorm_train(run, layer, path, x):
    """Batch statistics (biased variance for normalising, unbiased for the running
    variance, as PyTorch); one inverse square root over the layer's channels.

    Rounds: mean (2) + centred square (2) + variance (2) + inv_sqrt + normalise (2) +
    affine (2) + running statistics (2, in parallel with nothing else)."""
    n, c, h, w = x.shape
    m = n * h * w
    mean = x.mean(axis=(0, 2, 3))
    xc = x - _channel(mean)
    var = (xc * xc).mean(axis=(0, 2, 3))
    inv_std = inv_sqrt(var + layer.eps, domain=run.train_bn_domain)
    xhat = xc * _channel(inv_std)
    gamma, beta = param(run, path, "weight"), param(run, path, "bias")
    y = xhat * _channel(gamma) + _channel(beta)
    run.keep(path, (xhat, inv_std, m))
    # running statistics (parameters that do not train): one public product for both
    mom = layer.momentum
    unbiased = m / (m - 1) if m > 1 else 1.0
    names = [G.join_path(path, "running_mean"), G.join_path(path, "running_var")]
    run.update_running(names, [mean, var], [mom, mom * unbiased], 1.0 - mom)
    return y


def batchnorm_backward(run, layer, path, dy):
    """``dx = gamma inv_std (dy - mean(dy) - xhat mean(dy xhat))`` per channel."""
    xhat, inv_std, m = run.kept(path)
    gamma = param(run, path, "weight")
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    run.grads[G.join_path(path, "weight")] = dgamma
    run.grads[G.join_path(path, "bias")] = dbeta
    inner = dy - _channel(dbeta * (1.0 / m)) - xhat * _channel(dgamma * (1.0 / m))
    return inner * _channel(gamma * inv_std)


# -- ONNX ---------------------------------------------------------------------------------------


def read_onnx(node):
    a = node.attrs
    if int(a.get("training_mode", 0)) or len(node.outputs) > 1 and any(node.outputs[1:]):
        node.fail("a training-mode batch norm is not supported (export in eval mode)")
    eps = node.short(a.get("epsilon", 1e-5))
    if not (eps > 0 and math.isfinite(eps)):
        node.fail(f"epsilon {eps!r} must be finite and positive")
    names = ("weight", "bias", "running_mean", "running_var")
    params = {n: node.finite(n, node.const(i, n)) for i, n in enumerate(names, start=1) if i < len(node.inputs)}
    if len(params) != 4:
        node.fail("BatchNormalization needs scale, B, mean and var")
    if (params["running_var"] < 0).any():
        node.fail("negative running variance")
    momentum = node.short(1.0 - node.short(a.get("momentum", 0.9)))
    return BatchNorm2d(int(params["weight"].shape[0]), eps, min(max(momentum, 0.0), 1.0)), params


def write_onnx(em, layer, path, x, in_shape):
    ins = [x] + [em.param(path, n) for n in ("weight", "bias", "running_mean", "running_var")]
    return em.node("BatchNormalization", ins, path, epsilon=float(layer.eps), momentum=1.0 - float(layer.momentum))


register(
    BatchNorm2d,
    json=dict(channels="pos", eps="num", momentum="num"),
    plain=(plain_forward, plain_backward),
    private=(batchnorm_forward, batchnorm_backward),
    onnx=OnnxForm(("BatchNormalization",), read_onnx, write_onnx),
    examples=[(BatchNorm2d(3), (3, 4, 4)), (BatchNorm2d(2, eps=1e-3, momentum=0.25), (2, 3, 5))],
)
