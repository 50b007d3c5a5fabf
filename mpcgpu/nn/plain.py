"""Plaintext NumPy executor: the reference every private result is compared to.

Layer semantics are fixed in :mod:`mpcgpu.nn.spec`.  Everything runs in the
dtype of the parameters (float64 by default; float32 for faster training).

Functional kernels (NCHW batches; each ``*_backward`` returns the input
gradient first)::

    conv2d(x, w, b=None, stride=1, padding=0, groups=1) -> y
    conv2d_backward(x, w, dy, stride=1, padding=0, groups=1) -> (dx, dw, db)
    linear(x, w, b=None) -> y;   linear_backward(x, w, dy) -> (dx, dw, db)
    relu(x);                     relu_backward(x, dy)
    maxpool2d(x, kernel, stride=None, padding=0) -> (y, argmax)
    maxpool2d_backward(argmax, x_shape, dy, kernel, stride=None, padding=0) -> dx
    avgpool2d(x, kernel, stride=None, padding=0);   avgpool2d_backward(x_shape, dy, ...)
    adaptive_avgpool2d(x, out_hw);  adaptive_avgpool2d_backward(x_shape, dy, out_hw)
    batchnorm2d_train(x, gamma, beta, eps) -> (y, cache); batchnorm2d_train_backward(cache, dy)
    batchnorm2d_eval(x, gamma, beta, mean, var, eps); fold_batchnorm(...) -> (scale, shift)
    softmax(z); log_softmax(z); softmax_cross_entropy(logits, labels) -> (loss, dlogits)

Model level::

    init_params(spec, rng=None, dtype=np.float64) -> {name: array}
    m = PlainModel(spec, params=None, seed=0, dtype=np.float64)
    logits = m.forward(x, train=False, record=None, need_grad=True)
                                     # record: a dict filled with every leaf's output by path
    dx = m.backward(dlogits)                           # fills m.grads {name: array}
    loss, logits = m.loss_and_grads(x, labels)         # train-mode forward + backward
    m.predict(x, batch_size=256) -> labels;  m.evaluate(x, labels) -> accuracy
    opt = SGD(m.params, lr, momentum=0.9, weight_decay=0.0); opt.step(m.grads)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..geometry import pair, window_index, window_offsets
from . import spec as S

# ------------------------------------------------------------------ helpers


def _pair(v):
    return pair(v, "size", S.SpecError)


_out = S.conv_out_size


def _windows(xp, kernel, stride, oh, ow):
    """View (N, C, OH, OW, kh, kw) of the windows of a padded NCHW array."""
    v = sliding_window_view(xp, kernel, axis=(2, 3))
    return v[:, :, :: stride[0], :: stride[1]][:, :, :oh, :ow]


def _pad(x, padding, value=0.0):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _scatter_windows(dxp, contrib, kernel, stride, oh, ow):
    """dxp[:, :, i + s*a, j + s*b] += contrib(i, j)[:, :, a, b] for every kernel offset."""
    for _, i, j in window_offsets(*kernel):
        dxp[window_index(i, j, *stride, oh, ow)] += contrib(i, j)


def _unpad(xp, padding):
    ph, pw = padding
    return xp[:, :, ph : xp.shape[2] - ph, pw : xp.shape[3] - pw]


# ------------------------------------------------------------------ convolution


def _im2col(x, kernel, stride, padding, groups):
    """Columns (G, N*OH*OW, C/G*kh*kw) of x, and (OH, OW)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    oh, ow = _out(h, kh, stride[0], padding[0]), _out(w, kw, stride[1], padding[1])
    win = _windows(_pad(x, padding), kernel, stride, oh, ow)  # N C OH OW kh kw
    cg = c // groups
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return np.ascontiguousarray(cols).reshape(groups, n * oh * ow, cg * kh * kw), (oh, ow)


def _conv_fwd(x, w, b, stride, padding, groups):
    stride, padding = _pair(stride), _pair(padding)
    n, c = x.shape[:2]
    oc, cg, kh, kw = w.shape
    if c != cg * groups or oc % groups:
        raise S.SpecError(f"conv2d: input has {c} channels, weight {w.shape} with groups={groups}")
    cols, (oh, ow) = _im2col(x, (kh, kw), stride, padding, groups)
    wg = w.reshape(groups, oc // groups, cg * kh * kw)
    y = np.matmul(cols, wg.transpose(0, 2, 1))  # G, N*OH*OW, OC/G
    y = y.reshape(groups, n, oh, ow, oc // groups).transpose(1, 0, 4, 2, 3).reshape(n, oc, oh, ow)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y), cols


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """2-D cross-correlation, NCHW input, weight (OC, C/groups, kh, kw), zero padding."""
    return _conv_fwd(x, w, b, stride, padding, groups)[0]


def _conv_bwd(cols, x_shape, w, dy, stride, padding, groups, need_dx=True):
    stride, padding = _pair(stride), _pair(padding)
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
    _scatter_windows(dxp, lambda i, j: dcols[:, :, :, :, i, j], (kh, kw), stride, oh, ow)
    return np.ascontiguousarray(_unpad(dxp, padding)), dw, db


def conv2d_backward(x, w, dy, stride=1, padding=0, groups=1):
    """Gradients (dx, dw, db) of conv2d for output gradient dy."""
    cols, _ = _im2col(x, w.shape[2:], _pair(stride), _pair(padding), groups)
    return _conv_bwd(cols, x.shape, w, dy, stride, padding, groups)


# ------------------------------------------------------------------ linear, relu


def linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def linear_backward(x, w, dy):
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def relu(x):
    return np.maximum(x, 0)


def relu_backward(x, dy):
    """ReLU'(x) = [x > 0] (0 at exactly 0)."""
    return dy * (x > 0)


# ------------------------------------------------------------------ pooling


def _pool_geom(x_shape, kernel, stride, padding):
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    padding = _pair(padding)
    h, w = x_shape[2:]
    return kernel, stride, padding, _out(h, kernel[0], stride[0], padding[0]), _out(w, kernel[1], stride[1], padding[1])


def maxpool2d(x, kernel, stride=None, padding=0):
    """Max pooling (padding with -inf); returns (y, argmax within each window, row-major)."""
    kernel, stride, padding, oh, ow = _pool_geom(x.shape, kernel, stride, padding)
    win = _windows(_pad(x, padding, -np.inf), kernel, stride, oh, ow)
    flat = win.reshape(win.shape[:4] + (kernel[0] * kernel[1],))
    am = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, am[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(y), am


def maxpool2d_backward(argmax, x_shape, dy, kernel, stride=None, padding=0):
    kernel, stride, padding, oh, ow = _pool_geom(x_shape, kernel, stride, padding)
    n, c, h, w = x_shape
    dxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dy.dtype)
    _scatter_windows(dxp, lambda i, j: dy * (argmax == i * kernel[1] + j), kernel, stride, oh, ow)
    return np.ascontiguousarray(_unpad(dxp, padding))


def avgpool2d(x, kernel, stride=None, padding=0):
    """Average pooling; zero padding counted in the divisor kh*kw."""
    kernel, stride, padding, oh, ow = _pool_geom(x.shape, kernel, stride, padding)
    win = _windows(_pad(x, padding), kernel, stride, oh, ow)
    return win.sum(axis=(4, 5)) / (kernel[0] * kernel[1])


def avgpool2d_backward(x_shape, dy, kernel, stride=None, padding=0):
    kernel, stride, padding, oh, ow = _pool_geom(x_shape, kernel, stride, padding)
    n, c, h, w = x_shape
    g = dy / (kernel[0] * kernel[1])
    dxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=dy.dtype)
    _scatter_windows(dxp, lambda i, j: g, kernel, stride, oh, ow)
    return np.ascontiguousarray(_unpad(dxp, padding))


def adaptive_avgpool2d(x, out_hw):
    """Adaptive average pool; exact windows only (input sides multiples of output sides)."""
    k = S.adaptive_pool_window(x.shape[2:], out_hw)
    return avgpool2d(x, k, k, 0)


def adaptive_avgpool2d_backward(x_shape, dy, out_hw):
    k = S.adaptive_pool_window(x_shape[2:], out_hw)
    return avgpool2d_backward(x_shape, dy, k, k, 0)


# ------------------------------------------------------------------ batch norm


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


# ------------------------------------------------------------------ loss


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels; returns (loss, dlogits).

    ``dlogits = (softmax(logits) - onehot(labels)) / N``.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    n, k = logits.shape
    if labels.shape[0] != n or (n and (labels.min() < 0 or labels.max() >= k)):
        raise ValueError(f"labels must be {n} integers in [0, {k})")
    ls = log_softmax(logits)
    loss = -ls[np.arange(n), labels].mean()
    d = np.exp(ls)
    d[np.arange(n), labels] -= 1.0
    return float(loss), d / n


# ------------------------------------------------------------------ parameters


def init_params(spec, rng=None, dtype=np.float64) -> dict:
    """He (Kaiming-normal, fan-in) weights, zero biases, BN gamma=1, beta=0, mean=0, var=1."""
    rng = np.random.default_rng(rng)
    params = {}
    for p in S.param_specs(spec):
        if p.kind == "weight" and len(p.shape) > 1:
            fan_in = int(np.prod(p.shape[1:]))
            params[p.name] = (rng.standard_normal(p.shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
        elif p.kind in ("weight", "running_var"):
            params[p.name] = np.ones(p.shape, dtype)
        else:
            params[p.name] = np.zeros(p.shape, dtype)
    return params


# ------------------------------------------------------------------ model executor


class _Ctx:
    __slots__ = ("train", "record", "keep")

    def __init__(self, train, record, keep):
        self.train, self.record, self.keep = train, record, keep


class _Op:
    def fwd(self, P, x, ctx):  # pragma: no cover - interface
        raise NotImplementedError

    def bwd(self, P, dy, G):  # pragma: no cover - interface
        raise NotImplementedError


class _Seq(_Op):
    def __init__(self, ops):
        self.ops = ops

    def fwd(self, P, x, ctx):
        for op in self.ops:
            x = op.fwd(P, x, ctx)
        return x

    def bwd(self, P, dy, G):
        for op in reversed(self.ops):
            dy = op.bwd(P, dy, G)
        return dy


class _Res(_Op):
    def __init__(self, body, short, relu, path):
        self.body, self.short, self.relu, self.path = body, short, relu, path

    def fwd(self, P, x, ctx):
        y = self.body.fwd(P, x, ctx)
        y = y + (x if self.short is None else self.short.fwd(P, x, ctx))
        if self.relu:
            self.y = y if ctx.keep else None
            y = relu(y)
            if ctx.record is not None:
                ctx.record[S._join(self.path, "relu")] = y
        return y

    def bwd(self, P, dy, G):
        if self.relu:
            dy = relu_backward(self.y, dy)
        dx = self.body.bwd(P, dy, G)
        return dx + (dy if self.short is None else self.short.bwd(P, dy, G))


class _Leaf(_Op):
    def __init__(self, layer, path):
        self.layer, self.path = layer, path

    def name(self, local):
        return S._join(self.path, local)

    def fwd(self, P, x, ctx):
        y = self._fwd(P, x, ctx.train, ctx.keep)
        if ctx.record is not None:
            ctx.record[self.path] = y
        return y


class _Conv(_Leaf):
    def _fwd(self, P, x, train, keep):
        L = self.layer
        b = P[self.name("bias")] if L.bias else None
        y, cols = _conv_fwd(x, P[self.name("weight")], b, L.stride, L.padding, L.groups)
        self.cols = cols if keep else None
        self.x_shape = x.shape
        return y

    def bwd(self, P, dy, G):
        L = self.layer
        dx, dw, db = _conv_bwd(self.cols, self.x_shape, P[self.name("weight")], dy, L.stride, L.padding, L.groups)
        G[self.name("weight")] = dw
        if L.bias:
            G[self.name("bias")] = db
        self.cols = None
        return dx


class _Linear(_Leaf):
    def _fwd(self, P, x, train, keep):
        self.x = x if keep else None
        b = P[self.name("bias")] if self.layer.bias else None
        return linear(x, P[self.name("weight")], b)

    def bwd(self, P, dy, G):
        dx, dw, db = linear_backward(self.x, P[self.name("weight")], dy)
        G[self.name("weight")] = dw
        if self.layer.bias:
            G[self.name("bias")] = db
        return dx


class _ReLU(_Leaf):
    def _fwd(self, P, x, train, keep):
        self.x = x if keep else None
        return relu(x)

    def bwd(self, P, dy, G):
        return relu_backward(self.x, dy)


class _MaxPool(_Leaf):
    def _fwd(self, P, x, train, keep):
        L = self.layer
        y, am = maxpool2d(x, L.kernel, L.stride, L.padding)
        self.am = am if keep else None
        self.x_shape = x.shape
        return y

    def bwd(self, P, dy, G):
        L = self.layer
        return maxpool2d_backward(self.am, self.x_shape, dy, L.kernel, L.stride, L.padding)


class _AvgPool(_Leaf):
    def _fwd(self, P, x, train, keep):
        L = self.layer
        self.x_shape = x.shape
        return avgpool2d(x, L.kernel, L.stride, L.padding)

    def bwd(self, P, dy, G):
        L = self.layer
        return avgpool2d_backward(self.x_shape, dy, L.kernel, L.stride, L.padding)


class _Adaptive(_Leaf):
    def _fwd(self, P, x, train, keep):
        self.x_shape = x.shape
        return adaptive_avgpool2d(x, self.layer.out_hw)

    def bwd(self, P, dy, G):
        return adaptive_avgpool2d_backward(self.x_shape, dy, self.layer.out_hw)


class _BN(_Leaf):
    def _fwd(self, P, x, train, keep):
        L = self.layer
        g, b = P[self.name("weight")], P[self.name("bias")]
        rm, rv = P[self.name("running_mean")], P[self.name("running_var")]
        self.train = train
        if train:
            y, self.cache = batchnorm2d_train(x, g, b, L.eps)
            mean, var_u = self.cache[3], self.cache[4]
            mom = L.momentum
            rm *= 1 - mom
            rm += mom * mean.astype(rm.dtype)
            rv *= 1 - mom
            rv += mom * var_u.astype(rv.dtype)
            return y
        if keep:
            inv_std = 1.0 / np.sqrt(rv + L.eps)
            self.cache = ((x - rm.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1), inv_std, g)
        return batchnorm2d_eval(x, g, b, rm, rv, L.eps)

    def bwd(self, P, dy, G):
        if self.train:
            dx, dg, db = batchnorm2d_train_backward(self.cache, dy)
        else:
            xhat, inv_std, g = self.cache
            dx = dy * (g * inv_std).reshape(1, -1, 1, 1)
            dg, db = (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))
        G[self.name("weight")] = dg
        G[self.name("bias")] = db
        self.cache = None
        return dx


class _Flatten(_Leaf):
    def _fwd(self, P, x, train, keep):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def bwd(self, P, dy, G):
        return dy.reshape(self.x_shape)


class _Dropout(_Leaf):
    def __init__(self, layer, path, model):
        super().__init__(layer, path)
        self.model = model

    def _fwd(self, P, x, train, keep):
        p = self.layer.p
        if not train or p == 0.0:
            self.mask = None
            return x
        keep = self.model.rng.random(x.shape) >= p
        self.mask = keep.astype(x.dtype) / (1.0 - p)
        return x * self.mask

    def bwd(self, P, dy, G):
        return dy if self.mask is None else dy * self.mask


_LEAVES = {
    S.Conv2d: _Conv,
    S.Linear: _Linear,
    S.ReLU: _ReLU,
    S.MaxPool2d: _MaxPool,
    S.AvgPool2d: _AvgPool,
    S.AdaptiveAvgPool2d: _Adaptive,
    S.BatchNorm2d: _BN,
    S.Flatten: _Flatten,
}


class PlainModel:
    """A spec (or registered model name) plus its parameters, run in plaintext NumPy.

    ``params`` ({name: array}, names as in ``spec.param_shapes``) is checked and
    copied into ``self.params`` in ``dtype``; without it parameters come from
    :func:`init_params` seeded by ``seed`` (which also drives dropout).  SGD and
    the BN running statistics update ``self.params`` in place.
    """

    def __init__(self, spec, params: Mapping | None = None, *, seed=0, dtype=np.float64):
        if isinstance(spec, str):
            from .models import get_model

            spec = get_model(spec)
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        if params is None:
            params = init_params(spec, self.rng, self.dtype)
        else:
            S.check_params(spec, params)
            params = {k: np.array(params[k], dtype=self.dtype) for k in S.param_shapes(spec)}
        self.params: dict = params
        self.grads: dict = {}
        self._op = self._build(S._root(spec), "")
        self._ran_forward = False

    def _build(self, layer, path):
        if isinstance(layer, S.Sequential):
            return _Seq([self._build(c, S._join(path, n)) for n, c in layer.children()])
        if isinstance(layer, S.Residual):
            body = self._build(layer.body, S._join(path, layer.body_name))
            short = None if layer.shortcut is None else self._build(layer.shortcut, S._join(path, layer.shortcut_name))
            return _Res(body, short, layer.relu, path)
        if isinstance(layer, S.Dropout):
            return _Dropout(layer, path, self)
        try:
            return _LEAVES[type(layer)](layer, path)
        except KeyError:
            raise S.SpecError(f"no plaintext implementation for {type(layer).__name__}") from None

    def _check_input(self, x):
        x = np.asarray(x)
        if isinstance(self.spec, S.Model) and tuple(x.shape[1:]) != self.spec.input_shape:
            raise S.SpecError(
                f"input batch shape {x.shape} does not fit model {self.spec.name} "
                f"(N, {', '.join(map(str, self.spec.input_shape))})"
            )
        return x.astype(self.dtype, copy=False)

    def forward(self, x, train: bool = False, record: dict | None = None, need_grad: bool = True):
        """Logits for a batch.  ``train`` uses batch statistics (updating the BN
        running statistics) and dropout.  ``record``, if a dict, receives every
        leaf's output under its path.  ``need_grad=False`` keeps no caches.
        """
        y = self._op.fwd(self.params, self._check_input(x), _Ctx(train, record, need_grad))
        self._ran_forward = need_grad
        return y

    __call__ = forward

    def backward(self, dout):
        """Back-propagate ``dout`` through the last forward; sets ``self.grads``, returns dx."""
        if not self._ran_forward:
            raise RuntimeError("backward() needs a forward(..., need_grad=True) first")
        self.grads = {}
        dx = self._op.bwd(self.params, np.asarray(dout, dtype=self.dtype), self.grads)
        self._ran_forward = False
        return dx

    def loss_and_grads(self, x, labels, train: bool = True):
        """Forward, softmax cross-entropy, backward; returns (loss, logits), grads in ``self.grads``."""
        logits = self.forward(x, train=train)
        loss, d = softmax_cross_entropy(logits, labels)
        self.backward(d)
        return loss, logits

    def predict_logits(self, x, batch_size: int = 256):
        x = np.asarray(x)
        out = [self.forward(x[i : i + batch_size], need_grad=False) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) + tuple(self.spec.output_shape))

    def predict(self, x, batch_size: int = 256):
        return self.predict_logits(x, batch_size).argmax(axis=1)

    def evaluate(self, x, labels, batch_size: int = 256) -> float:
        """Top-1 accuracy in [0, 1]."""
        return float((self.predict(x, batch_size) == np.asarray(labels).reshape(-1)).mean())


class SGD:
    """SGD with momentum and weight decay, PyTorch semantics (dampening 0).

    ``g = grad + weight_decay * p;  v = momentum * v + g;  p -= lr * (g + momentum * v
    if nesterov else v)``; only trainable parameters (not BN running stats) move.
    """

    def __init__(
        self,
        params: dict,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        spec=None,
    ):
        self.params, self.lr, self.momentum = params, float(lr), float(momentum)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.trainable = None
        if spec is not None:
            self.trainable = {p.name for p in S.param_specs(spec) if p.trainable}
        self.velocity: dict = {}

    def step(self, grads: Mapping):
        for name, g in grads.items():
            if self.trainable is not None and name not in self.trainable:
                continue
            p = self.params[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = np.array(g, dtype=p.dtype)
                else:
                    v *= self.momentum
                    v += g
                g = g + self.momentum * v if self.nesterov else v
            p -= (self.lr * g).astype(p.dtype, copy=False)


__all__ = [
    "conv2d",
    "conv2d_backward",
    "linear",
    "linear_backward",
    "relu",
    "relu_backward",
    "maxpool2d",
    "maxpool2d_backward",
    "avgpool2d",
    "avgpool2d_backward",
    "adaptive_avgpool2d",
    "adaptive_avgpool2d_backward",
    "batchnorm2d_train",
    "batchnorm2d_train_backward",
    "batchnorm2d_eval",
    "fold_batchnorm",
    "log_softmax",
    "softmax",
    "softmax_cross_entropy",
    "init_params",
    "PlainModel",
    "SGD",
]
