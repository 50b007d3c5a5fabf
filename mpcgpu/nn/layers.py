"""Private layers: forward and backward of every layer type on shares, as a table.

:data:`LAYERS` maps each spec class (:mod:`mpcgpu.nn.spec`) to a
:class:`LayerImpl` -- ``forward(run, layer, path, x) -> y`` and
``backward(run, layer, path, dy) -> dx``.  ``run`` is the
:class:`~mpcgpu.nn.private.PrivateModel` executing the pass: it holds the
parameters (``run.params``), whether the pass trains (``run.training``), what
the backward pass needs, kept per layer path (``run.keep`` / ``run.kept``),
and the gradients (``run.grads``).  Nothing is stored on share objects.

=====================  ===================================  ================================
layer                  forward (rounds)                     backward
=====================  ===================================  ================================
Conv2d, Linear         product + truncation, fused (2);     input grad (2, skipped for the
                       bias add (0)                         first layer), weight grad (2)
ReLU                   MSB + bit injection folded with      ``dy * d`` (1)
                       the product (10); in training the
                       derivative ``d`` in the same rounds
MaxPool2d              tree of comparisons (10 per level),  the one-hot from the kept bits
                       its comparison bits kept in training (L-1 ANDs) times ``dy`` (2)
AvgPool2d, Adaptive    local window sums x public 1/k (2)   the same division (2), local
BatchNorm2d            inference: folded (0 per image);     through the batch statistics
                       training: batch mean and variance,   (3 fused products, 2
                       one inverse square root per layer    truncations)
Flatten, Dropout       local (a public mask in training)    local
=====================  ===================================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import MPCError
from ..protocols import compare, pooling
from ..protocols.approx import inv_sqrt
from ..protocols.rounding import round_exact
from ..sharing.arithmetic import conv2d_grad_input, conv2d_grad_weight, to_scale
from ..sharing.compact import CompactShare, held, matmul_transposed
from . import spec as S

#: inverse square root domain for batch statistics in training (var + eps)
TRAIN_BN_DOMAIN = (2.0**-10, 2.0**12)


@dataclass(frozen=True)
class LayerImpl:
    forward: Callable
    backward: Callable


def _param(run, path, name):
    """A parameter as an ordinary share (one kept compactly is drawn for this use only)."""
    return held(run.params[S.join_path(path, name)])


# -- Conv2d, Linear ------------------------------------------------------------------------


def _untruncated(run, path) -> bool:
    """The product of ``path`` keeps all its fractional bits: the output layer rounds it
    exactly (``run.exact_output``) or the max-pool after it truncates."""
    return run.rounds_exactly(path) or run.truncates_later(path)


def _finish(run, path, y, bias, shape_b):
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
        trunc=False if _untruncated(run, path) else None,
    )
    if run.training:
        run.keep(path, x)
    return _finish(run, path, y, bias, (1, -1, 1, 1))


def conv_backward(run, layer, path, dy):
    x = run.kept(path)
    w = _param(run, path, "weight")
    geo = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
    run.grads[S.join_path(path, "weight")] = conv2d_grad_weight(x, dy, w.shape, **geo)
    if layer.bias:
        run.grads[S.join_path(path, "bias")] = dy.sum(axis=(0, 2, 3))
    if not run.needs_input_grad(path):
        return None
    return conv2d_grad_input(dy, w, x.shape, **geo)


def linear_forward(run, layer, path, x):
    w = run.params[S.join_path(path, "weight")]
    trunc = False if _untruncated(run, path) else None
    if isinstance(w, CompactShare):  # drawn in blocks of rows: never whole
        y = matmul_transposed(x, w, trunc=trunc)
    else:
        y = x.matmul(w.transpose(), trunc=trunc)
    if run.training:
        run.keep(path, x)
    return _finish(run, path, y, _param(run, path, "bias") if layer.bias else None, (1, -1))


def linear_backward(run, layer, path, dy):
    x = run.kept(path)
    w = _param(run, path, "weight")
    run.grads[S.join_path(path, "weight")] = dy.transpose() @ x
    if layer.bias:
        run.grads[S.join_path(path, "bias")] = dy.sum(axis=0)
    if not run.needs_input_grad(path):
        return None
    return dy @ w


# -- ReLU, pooling ---------------------------------------------------------------------------


#: elements per call of a non-linear layer at inference (ReLU; max-pool by whole channels):
#: bounds the memory of the comparison protocols (~200 bytes per element at once); a larger
#: layer (VGG-16 at 224 x 224: 3.2M elements) takes several calls of the same rounds each
PIECE = 1 << 20


def _pieces(x, fn, axis_len, per_index, out_shape):
    """``fn`` applied to slices of ``x`` along axis 1 (``axis_len`` long, ``per_index``
    elements of ``x`` per index) of about :data:`PIECE` elements, written into one result
    of ``out_shape``; ``fn(x)`` itself when ``x`` is small."""
    step = max(1, PIECE // max(1, per_index))
    if step >= axis_len:
        return fn(x)
    xp = x.xp
    first = xp.empty(out_shape, dtype=xp.uint64)
    second = xp.empty(out_shape, dtype=xp.uint64)
    scale = None
    for lo in range(0, axis_len, step):
        y = fn(x[:, lo : lo + step])
        first[:, lo : lo + step], second[:, lo : lo + step] = y.first, y.second
        scale = y.scale
    return y._new(first, second, scale)


def relu_forward(run, layer, path, x):
    if not run.training:
        if x.size <= PIECE:
            return x.relu()
        flat = x.reshape(x.shape[0], -1)
        n = flat.shape[1]
        return _pieces(flat, lambda piece: piece.relu(), n, flat.shape[0], flat.shape).reshape(*x.shape)
    y, d = x.relu(grad=True)
    run.keep(path, d)
    return y


def relu_backward(run, layer, path, dy):
    return dy * run.kept(path)  # d has scale 0: no truncation, 1 round


def maxpool_forward(run, layer, path, x):
    geo = (layer.kernel, layer.stride, layer.padding)
    if not run.training:
        n, c, h, w = x.shape
        out_shape = (n,) + tuple(layer.out_shape((c, h, w)))
        y = _pieces(x, lambda piece: piece.max_pool2d(*geo), c, n * h * w, out_shape)
    else:
        y, levels = compare.max_pool2d(x, *geo, return_bits=True)
        run.keep(path, (levels, x.shape))
    return to_scale(y, x.rt.frac_bits) if y.scale > x.rt.frac_bits else y  # a deferred truncation


def maxpool_backward(run, layer, path, dy):
    levels, shape = run.kept(path)
    return compare.max_pool2d_backward_bits(dy, levels, shape, layer.kernel, layer.stride, layer.padding)


def avgpool_forward(run, layer, path, x):
    if run.training:
        run.keep(path, x.shape)
    return pooling.avg_pool2d(x, layer.kernel, stride=layer.stride, padding=layer.padding)


def avgpool_backward(run, layer, path, dy):
    return pooling.avg_pool2d_backward(dy, run.kept(path), layer.kernel, layer.stride, layer.padding)


def adaptive_forward(run, layer, path, x):
    if run.training:
        run.keep(path, x.shape)
    return pooling.adaptive_avg_pool2d(x, layer.out_hw)


def adaptive_backward(run, layer, path, dy):
    return pooling.adaptive_avg_pool2d_backward(dy, run.kept(path))


# -- shape-only layers -------------------------------------------------------------------------


def flatten_forward(run, layer, path, x):
    if run.training:
        run.keep(path, x.shape)
    return x.reshape(x.shape[0], -1)


def flatten_backward(run, layer, path, dy):
    return dy.reshape(*run.kept(path))


def dropout_forward(run, layer, path, x):
    """Inverted dropout with a PUBLIC mask (data-independent randomness: the parties agree
    on ``run.dropout_rng``'s seed); identity outside training."""
    if not run.training or layer.p == 0.0:
        return x
    keep = run.dropout_rng.random(x.shape) >= layer.p
    mask = keep / (1.0 - layer.p)  # public reals (2 for p = 0.5: exact)
    run.keep(path, mask)
    return x * mask


def dropout_backward(run, layer, path, dy):
    if not run.training or layer.p == 0.0:
        return dy
    return dy * run.kept(path)


# -- batch norm -----------------------------------------------------------------------------------


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
    gamma, beta = _param(run, path, "weight"), _param(run, path, "bias")
    y = xhat * _channel(gamma) + _channel(beta)
    run.keep(path, (xhat, inv_std, m))
    # running statistics (parameters that do not train): one public product for both
    mom = layer.momentum
    unbiased = m / (m - 1) if m > 1 else 1.0
    names = [S.join_path(path, "running_mean"), S.join_path(path, "running_var")]
    run.update_running(names, [mean, var], [mom, mom * unbiased], 1.0 - mom)
    return y


def batchnorm_backward(run, layer, path, dy):
    """``dx = gamma inv_std (dy - mean(dy) - xhat mean(dy xhat))`` per channel."""
    xhat, inv_std, m = run.kept(path)
    gamma = _param(run, path, "weight")
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    run.grads[S.join_path(path, "weight")] = dgamma
    run.grads[S.join_path(path, "bias")] = dbeta
    inner = dy - _channel(dbeta * (1.0 / m)) - xhat * _channel(dgamma * (1.0 / m))
    return inner * _channel(gamma * inv_std)


LAYERS = {
    S.Conv2d: LayerImpl(conv_forward, conv_backward),
    S.Linear: LayerImpl(linear_forward, linear_backward),
    S.ReLU: LayerImpl(relu_forward, relu_backward),
    S.MaxPool2d: LayerImpl(maxpool_forward, maxpool_backward),
    S.AvgPool2d: LayerImpl(avgpool_forward, avgpool_backward),
    S.AdaptiveAvgPool2d: LayerImpl(adaptive_forward, adaptive_backward),
    S.BatchNorm2d: LayerImpl(batchnorm_forward, batchnorm_backward),
    S.Flatten: LayerImpl(flatten_forward, flatten_backward),
    S.Dropout: LayerImpl(dropout_forward, dropout_backward),
}


def impl(layer) -> LayerImpl:
    try:
        return LAYERS[type(layer)]
    except KeyError:
        raise MPCError(f"no private implementation for layer {type(layer).__name__}") from None


__all__ = ["LayerImpl", "LAYERS", "impl", "TRAIN_BN_DOMAIN"]
