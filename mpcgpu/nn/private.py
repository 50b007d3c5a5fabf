"""The private executor: runs a network spec (:mod:`mpcgpu.nn.spec`) on secret shares.

Inputs and every parameter are :class:`~mpcgpu.sharing.arithmetic.ArithmeticShare`
values; the executor walks the same spec tree as the plaintext twin
(:class:`mpcgpu.nn.plain.PlainModel`) and maps each layer to its protocol:

=====================  ============================================================
layer                  protocol (rounds)
=====================  ============================================================
Conv2d, Linear         secret x secret conv / matmul + truncation (2), bias add (0)
ReLU                   MSB + bit injection folded with the product (see compare)
MaxPool2d              tree of comparisons over the window (log2(k*k) x compare)
AvgPool2d, Adaptive    local window sums, x public 1/k^2 (1, the truncation)
BatchNorm2d            inference: per-channel scale = gamma / sqrt(var + eps) computed
                       privately once (inverse square root), then x*scale + shift (2)
Flatten, Dropout       local reshape / identity (0)
Residual               body(x) + shortcut(x) (local add), optional ReLU
=====================  ============================================================

Nothing is revealed inside: the caller reveals the output (or only the argmax).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import MPCError
from ..sharing.arithmetic import ArithmeticShare, share
from . import spec as S


@dataclass
class LayerProfile:
    """Time and communication of one leaf layer (per party)."""
    path: str
    kind: str
    seconds: float = 0.0
    bytes_sent: int = 0
    rounds: int = 0
    calls: int = 0


@dataclass
class Profile:
    layers: dict = field(default_factory=dict)

    def add(self, path, kind, seconds, stats):
        p = self.layers.setdefault(path, LayerProfile(path, kind))
        p.seconds += seconds
        p.bytes_sent += stats.bytes_sent
        p.rounds += stats.rounds
        p.calls += 1

    def rows(self):
        return list(self.layers.values())


class PrivateModel:
    """A model whose parameters are secret-shared among the three parties."""

    def __init__(self, model: S.Model, params: dict):
        S.check_params(model, params, what="shared parameters")
        self.spec = model
        self.params = params
        self._bn_cache: dict = {}

    # -- running -----------------------------------------------------------------------
    def forward(self, x: ArithmeticShare, profile: Profile | None = None) -> ArithmeticShare:
        """Logits (shared) for a shared NCHW / NF batch."""
        expected = tuple(self.spec.input_shape)
        if tuple(x.shape[1:]) != expected:
            raise MPCError(f"model {self.spec.name} expects inputs of shape (N, {', '.join(map(str, expected))}),"
                           f" got {x.shape}")
        return self._run(self.spec.net, "", x, profile)

    __call__ = forward

    def _run(self, layer, path, x, profile):
        if isinstance(layer, S.Sequential):
            for name, child in layer.children():
                x = self._run(child, S._join(path, name), x, profile)
            return x
        if isinstance(layer, S.Residual):
            body = self._run(layer.body, S._join(path, layer.body_name), x, profile)
            short = x if layer.shortcut is None else self._run(
                layer.shortcut, S._join(path, layer.shortcut_name), x, profile)
            out = body + short
            if layer.relu:
                out = self._leaf(S.ReLU(), S._join(path, "relu"), out, profile)
            return out
        return self._leaf(layer, path, x, profile)

    def _leaf(self, layer, path, x, profile):
        if profile is None:
            return self._apply(layer, path, x)
        comm = x.rt.comm
        t0 = time.perf_counter()
        with comm.measure() as m:
            y = self._apply(layer, path, x)
        profile.add(path, type(layer).__name__, time.perf_counter() - t0, m)
        return y

    def _p(self, path, name):
        return self.params[S._join(path, name)]

    def _apply(self, layer, path, x):
        if isinstance(layer, S.Conv2d):
            y = x.conv2d(self._p(path, "weight"), stride=layer.stride, padding=layer.padding,
                         groups=layer.groups)
            if layer.bias:
                y = y + self._p(path, "bias").reshape(1, -1, 1, 1)
            return y
        if isinstance(layer, S.Linear):
            y = x @ self._p(path, "weight").transpose()
            if layer.bias:
                y = y + self._p(path, "bias")
            return y
        if isinstance(layer, S.ReLU):
            return x.relu()
        if isinstance(layer, S.MaxPool2d):
            return x.max_pool2d(layer.kernel, stride=layer.stride, padding=layer.padding)
        if isinstance(layer, S.AvgPool2d):
            return x.avg_pool2d(layer.kernel, stride=layer.stride, padding=layer.padding)
        if isinstance(layer, S.AdaptiveAvgPool2d):
            return x.adaptive_avg_pool2d(layer.out_hw)
        if isinstance(layer, S.BatchNorm2d):
            scale, shift = self._bn_affine(layer, path)
            return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        if isinstance(layer, S.Flatten):
            return x.reshape(x.shape[0], -1)
        if isinstance(layer, S.Dropout):
            return x
        raise MPCError(f"no private implementation for layer {type(layer).__name__} at {path!r}")

    def _bn_affine(self, layer, path):
        """Inference batch norm as a per-channel affine map, computed privately once:
        ``scale = gamma * (var + eps)^(-1/2)``, ``shift = beta - mean * scale``."""
        if path not in self._bn_cache:
            var = self._p(path, "running_var") + float(layer.eps)
            scale = self._p(path, "weight") * var.inv_sqrt()
            shift = self._p(path, "bias") - self._p(path, "running_mean") * scale
            self._bn_cache[path] = (scale, shift)
        return self._bn_cache[path]

    # -- outputs -----------------------------------------------------------------------
    def predict_shared(self, x: ArithmeticShare, profile: Profile | None = None) -> ArithmeticShare:
        """Shared predicted class indices (integer scale): the one-hot argmax dotted with 0..K-1."""
        logits = self.forward(x, profile)
        onehot = logits.argmax(axis=1)
        k = logits.shape[1]
        xp = logits.xp
        return (onehot * xp.arange(k, dtype=xp.int64)).sum(axis=1)


def share_params(model: S.Model, params: dict | None, src: int = 0) -> dict:
    """Secret-share a plaintext parameter dict held by party ``src`` (others pass None),
    in spec order.  Every party must call this."""
    out = {}
    for p in S.param_specs(model):
        out[p.name] = share(params[p.name] if params is not None else None, src=src)
    return out
