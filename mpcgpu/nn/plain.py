"""Plaintext NumPy executor: the reference every private result is compared to.

Layer semantics are fixed in :mod:`mpcgpu.nn.spec`; each layer's kernels and its forward and
backward live in its module of :mod:`mpcgpu.nn.layers` (re-exported here), and the spec tree
is walked by :mod:`mpcgpu.nn.walker`, as the private executor walks it.  Everything runs in the
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

from . import layers as L
from . import spec as S
from . import walker
from .layers.adaptive_avgpool import adaptive_avgpool2d, adaptive_avgpool2d_backward
from .layers.avgpool import avgpool2d, avgpool2d_backward
from .layers.batchnorm import batchnorm2d_eval, batchnorm2d_train, batchnorm2d_train_backward, fold_batchnorm
from .layers.conv2d import conv2d, conv2d_backward
from .layers.linear import linear
from .layers.linear import linear_grads as linear_backward
from .layers.maxpool import maxpool2d, maxpool2d_backward
from .layers.relu import relu
from .layers.relu import relu_grad as relu_backward

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


class PlainModel(L.KeepsForBackward):
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
        self.training = False  # what the layers read during a pass (see mpcgpu.nn.layers)
        self.need_grad = False
        self._record = None
        self._kept: dict = {}
        for _, layer in walker.leaves(S._root(spec)):
            try:
                L.lookup(layer)
            except S.SpecError:
                raise S.SpecError(f"no plaintext implementation for {type(layer).__name__}") from None
        self._ran_forward = False

    # -- what the layers ask of the executor -------------------------------------------------
    def _not_kept(self, path):
        return RuntimeError(f"backward through {path!r} without a forward(..., need_grad=True)")

    def _forward_leaf(self, layer, path, x):
        y = L.lookup(layer).plain_forward(self, layer, path, x)
        if self._record is not None:
            self._record[walker.trace_path(layer, path)] = y
        return y

    def _backward_leaf(self, layer, path, dy):
        return L.lookup(layer).plain_backward(self, layer, path, dy)

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
        x = self._check_input(x)
        self.training, self.need_grad, self._record = bool(train), bool(need_grad), record
        self._kept.clear()
        try:
            y = walker.forward(S._root(self.spec), x, self._forward_leaf)
        finally:
            self._record = None
        self._ran_forward = need_grad
        return y

    __call__ = forward

    def backward(self, dout):
        """Back-propagate ``dout`` through the last forward; sets ``self.grads``, returns dx."""
        if not self._ran_forward:
            raise RuntimeError("backward() needs a forward(..., need_grad=True) first")
        self.grads = {}
        try:
            dx = walker.backward(S._root(self.spec), np.asarray(dout, dtype=self.dtype), self._backward_leaf)
        finally:
            self._kept.clear()
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
