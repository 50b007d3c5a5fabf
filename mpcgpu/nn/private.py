"""The private executor: runs a network spec (:mod:`mpcgpu.nn.spec`) on secret shares.

Inputs and every parameter are :class:`~mpcgpu.sharing.arithmetic.ArithmeticShare`
values; the executor walks the same spec tree as the plaintext twin
(:class:`mpcgpu.nn.plain.PlainModel`) and maps each layer to its protocol:

=====================  ============================================================
layer                  protocol (rounds)
=====================  ============================================================
Conv2d, Linear         secret x secret conv / matmul + truncation (2), bias add (0)
ReLU                   MSB + bit injection folded with the product (see compare);
                       a ReLU followed by a max-pool runs after it, on 1/k^2 of the data
MaxPool2d              tree of comparisons over the window (log2(k*k) x compare)
AvgPool2d, Adaptive    local window sums, x public 1/k^2 (1, the truncation)
BatchNorm2d            inference: folded privately, once per model (:meth:`prepare`),
                       into the convolution before it (0 extra rounds per image);
                       a batch norm without a convolution before it: x*scale + shift (2)
Flatten, Dropout       local reshape / identity (0)
Residual               body(x) + shortcut(x) (local add), optional ReLU
=====================  ============================================================

Nothing is revealed inside: the caller reveals the output (or only the argmax).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import MPCError
from ..sharing.arithmetic import ArithmeticShare, concatenate, share
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
    """A model whose parameters are secret-shared among the three parties.

    Batch norms are prepared once (:meth:`prepare`, called by the first forward pass):
    for all of them together, ``scale = gamma * (var + eps)^(-1/2)`` and
    ``shift = beta - mean * scale`` are computed privately in one batched inverse
    square root (its rounds are paid once, not per batch norm), and a batch norm that
    directly follows a convolution is folded into it: ``W' = W * scale`` (per output
    channel), ``b' = b * scale + shift``.  ``bn_domain`` is the range of ``var + eps``
    the inverse square root is accurate on.
    """

    def __init__(self, model: S.Model, params: dict, bn_domain=(1e-2, 1e3)):
        S.check_params(model, params, what="shared parameters")
        self.spec = model
        self.params = params
        self.bn_domain = bn_domain
        self._prepared = False
        self._affine: dict = {}    # batch-norm path -> (scale, shift), not folded
        self._folded: dict = {}    # conv path -> (weight', bias'); its batch norm becomes identity
        self._skip: set = set()    # batch-norm paths folded away

    def prepare(self):
        """Fold / precompute every batch norm (once; all parties must call it together)."""
        if self._prepared:
            return
        self._prepared = True
        pairs = _batchnorm_sites(self.spec.net, "")
        if not pairs:
            return
        p = self.params
        eps = [float(layer.eps) for _, layer, _ in pairs for _ in range(layer.channels)]  # public
        var = concatenate([p[S._join(b, "running_var")] for b, _, _ in pairs]) + eps
        inv = var.inv_sqrt(domain=self.bn_domain)
        gamma = concatenate([p[S._join(b, "weight")] for b, _, _ in pairs])
        mean = concatenate([p[S._join(b, "running_mean")] for b, _, _ in pairs])
        beta = concatenate([p[S._join(b, "bias")] for b, _, _ in pairs])
        scale = gamma * inv
        shift = beta - mean * scale
        offsets, at = [], 0
        for _, layer, _ in pairs:
            offsets.append((at, at + layer.channels))
            at += layer.channels
        # fold into the preceding convolutions: one batched product for all weights and biases
        left, right, plan = [], [], []
        for (bn, layer, conv), (lo, hi) in zip(pairs, offsets):
            if conv is None:
                self._affine[bn] = (scale[lo:hi], shift[lo:hi])
                continue
            w = p[S._join(conv[0], "weight")]
            per_out = w.size // w.shape[0]
            left.append(w.reshape(-1))
            right.append(scale[lo:hi].reshape(-1, 1).broadcast_to((w.shape[0], per_out)).reshape(-1))
            has_bias = conv[1].bias
            if has_bias:
                left.append(p[S._join(conv[0], "bias")])
                right.append(scale[lo:hi])
            plan.append((bn, conv[0], w.shape, has_bias, lo, hi))
        if not plan:
            return
        prod = concatenate(left) * concatenate(right)
        at = 0
        for bn, conv_path, wshape, has_bias, lo, hi in plan:
            n = 1
            for d in wshape:
                n *= d
            w_new = prod[at:at + n].reshape(*wshape)
            at += n
            if has_bias:
                b_new = prod[at:at + wshape[0]] + shift[lo:hi]
                at += wshape[0]
            else:
                b_new = shift[lo:hi]
            self._folded[conv_path] = (w_new, b_new)
            self._skip.add(bn)

    # -- running -----------------------------------------------------------------------
    def forward(self, x: ArithmeticShare, profile: Profile | None = None) -> ArithmeticShare:
        """Logits (shared) for a shared NCHW / NF batch."""
        expected = tuple(self.spec.input_shape)
        if tuple(x.shape[1:]) != expected:
            raise MPCError(f"model {self.spec.name} expects inputs of shape (N, {', '.join(map(str, expected))}),"
                           f" got {x.shape}")
        self.prepare()
        return self._run(self.spec.net, "", x, profile)

    __call__ = forward

    def _run(self, layer, path, x, profile):
        if isinstance(layer, S.Sequential):
            children = layer.children()
            i = 0
            while i < len(children):
                name, child = children[i]
                nxt = children[i + 1] if i + 1 < len(children) else None
                if isinstance(child, S.ReLU) and nxt is not None and isinstance(nxt[1], S.MaxPool2d):
                    # relu(maxpool(x)) == maxpool(relu(x)) exactly (max commutes with a monotone
                    # map; padding never wins): the ReLU then runs on the pooled, smaller tensor
                    x = self._run(nxt[1], S._join(path, nxt[0]), x, profile)
                    x = self._run(child, S._join(path, name), x, profile)
                    i += 2
                    continue
                x = self._run(child, S._join(path, name), x, profile)
                i += 1
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
            weight, bias = self._folded.get(path) or (
                self._p(path, "weight"), self._p(path, "bias") if layer.bias else None)
            y = x.conv2d(weight, stride=layer.stride, padding=layer.padding, groups=layer.groups)
            if bias is not None:
                y = y + bias.reshape(1, -1, 1, 1)
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
            if path in self._skip:
                return x                      # folded into the convolution before it
            scale, shift = self._affine[path]
            return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        if isinstance(layer, S.Flatten):
            return x.reshape(x.shape[0], -1)
        if isinstance(layer, S.Dropout):
            return x
        raise MPCError(f"no private implementation for layer {type(layer).__name__} at {path!r}")

    # -- outputs -----------------------------------------------------------------------
    def predict_shared(self, x: ArithmeticShare, profile: Profile | None = None) -> ArithmeticShare:
        """Shared predicted class indices (integer scale): the one-hot argmax dotted with 0..K-1."""
        logits = self.forward(x, profile)
        onehot = logits.argmax(axis=1)
        k = logits.shape[1]
        xp = logits.xp
        return (onehot * xp.arange(k, dtype=xp.int64)).sum(axis=1)


def _batchnorm_sites(layer, path):
    """Every BatchNorm2d as (bn path, layer, (conv path, conv layer) or None): the convolution
    is given when the batch norm directly follows it in the same Sequential."""
    out = []
    if isinstance(layer, S.Sequential):
        prev = None
        for name, child in layer.children():
            child_path = S._join(path, name)
            if isinstance(child, S.BatchNorm2d):
                conv = prev if isinstance(prev, tuple) and isinstance(prev[1], S.Conv2d) else None
                out.append((child_path, child, conv))
            elif not child.is_leaf:
                out.extend(_batchnorm_sites(child, child_path))
            prev = (child_path, child)
        return out
    for name, child in layer.children():
        out.extend(_batchnorm_sites(child, S._join(path, name)))
    return out


def share_params(model: S.Model, params: dict | None, src: int = 0) -> dict:
    """Secret-share a plaintext parameter dict held by party ``src`` (others pass None),
    in spec order.  Every party must call this."""
    out = {}
    for p in S.param_specs(model):
        out[p.name] = share(params[p.name] if params is not None else None, src=src)
    return out
