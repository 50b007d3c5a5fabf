"""The private executor: runs a network spec (:mod:`mpcgpu.nn.spec`) on secret shares,
forward for inference and forward + backward for training.

Inputs and every parameter are :class:`~mpcgpu.sharing.arithmetic.ArithmeticShare`
values.  The executor walks the spec tree with the same walker as the plaintext twin
(:mod:`mpcgpu.nn.walker`, :class:`mpcgpu.nn.plain.PlainModel`) and runs each leaf by
its type's private facets in the registry of :mod:`mpcgpu.nn.layers` (costs there).  Two rewrites keep the result
exactly that of the spec, cheaper:

* a ReLU directly followed by a max-pool runs after it
  (``relu(maxpool(x)) == maxpool(relu(x))``, with the same gradient), on
  ``1/k^2`` of the data;
* at inference a batch norm right after a convolution is folded into it, once
  per set of parameters (:meth:`PrivateModel.prepare`: one batched inverse
  square root for all batch norms of the net).

What backward needs is kept by the executor per layer path (``keep`` /
``kept``), never on share objects.  Nothing is revealed inside: the caller
reveals the output (or only the argmax), and ``forward(..., exact=True)``
rounds the last product exactly (:func:`~mpcgpu.protocols.rounding.round_exact`)
and runs the layers after it (a head of global average pooling, flatten, ...) with
exact truncations (``"exact"``, :mod:`mpcgpu.protocols.trunc_hidden`), so that a
revealed output's last bit depends on the value alone, whatever the head.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy

from ..errors import MPCError
from ..sharing.arithmetic import ArithmeticShare, concatenate, share
from ..sharing.compact import held
from ..sharing.compact import share as compact_share
from ..sharing.truncation import forced
from . import spec as S
from . import walker
from .layers import KeepsForBackward, impl
from .layers.batchnorm import TRAIN_BN_DOMAIN

#: the path suffix of a residual block's closing ReLU (its body may hold a "relu" too)
RESIDUAL_RELU = walker.RESIDUAL_RELU

#: inverse square root domain for ``running_var + eps`` at inference (overridden by the
#: domain a model's shards declare, see ``mpcgpu share``)
DEFAULT_BN_DOMAIN = (1e-2, 1e3)

#: public bound (log2) on batch-norm running statistics and batch statistics for the exact
#: update (``exact_running``): the training inverse square root's domain ends at 2^12
RUNNING_BITS = 14

#: weights folded per product at :meth:`PrivateModel.prepare` (2 rounds each): bounds its
#: memory (about 250 bytes per element at once, i.e. ~130 MB)
FOLD_CHUNK = 1 << 19


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

    def report(self, comm, stream=None) -> None:
        """Print the table on party 0: per layer the slowest party's seconds, the bytes of the
        three parties together and the rounds (a collective: every party calls it)."""
        import sys

        rows = [(r.path, r.kind, r.seconds, r.bytes_sent, r.rounds) for r in self.rows()]
        gathered = comm.allgather_object(rows)
        if comm.rank != 0:
            return
        out = stream or sys.stdout
        out.write(f"  {'layer':<30} {'type':<22} {'seconds':>8} {'MB (3 parties)':>15} {'rounds':>7}\n")
        for i, (path, kind, _, _, rounds) in enumerate(rows):
            mb = sum(g[i][3] for g in gathered) / 1e6
            worst = max(g[i][2] for g in gathered)
            out.write(f"  {path or '(root)':<30} {kind:<22} {worst:>8.3f} {mb:>15.2f} {rounds:>7}\n")
        out.flush()


@contextlib.contextmanager
def section(profile: Profile | None, comm, path: str, kind: str):
    """``with section(profile, comm, path, kind): ...`` adds the block's time, bytes and rounds
    as a row of ``profile`` (nothing without one): a layer, or work outside the layers."""
    if profile is None:
        yield
        return
    t0 = time.perf_counter()
    with comm.measure() as m:
        yield
    profile.add(path, kind, time.perf_counter() - t0, m)


def schedule(seq: S.Sequential):
    """The children of a Sequential in the order they run: a ReLU directly followed by a
    MaxPool2d runs after it (exactly equal: max commutes with a monotone map and the
    padding never wins; and the gradients agree)."""
    children = seq.children()
    out, i = [], 0
    while i < len(children):
        if i + 1 < len(children) and isinstance(children[i][1], S.ReLU) and isinstance(children[i + 1][1], S.MaxPool2d):
            out += [children[i + 1], children[i]]
            i += 2
        else:
            out.append(children[i])
            i += 1
    return out


class PrivateModel(KeepsForBackward):
    """A model whose parameters are secret-shared among the three parties.

    ``params``: ``{name: ArithmeticShare}`` as in ``spec.param_shapes`` (checked).
    ``bn_domain``: the range of ``running_var + eps`` the inference batch norms are
    accurate on; ``train_bn_domain``: that of ``batch variance + eps`` in training.
    ``dropout_seed``: seed of the PUBLIC dropout masks (the same on every party).
    ``inference_only``: :meth:`prepare` writes the folded weights of every convolution
    that absorbs a batch norm over the original ones (the model takes ownership of the
    parameter arrays passed in: do not use them elsewhere afterwards), and the original
    weights and that batch norm's parameters leave :attr:`params`, so the model holds its
    weights once instead of twice (ResNet-152: 1 GB less per party); it cannot train.
    """

    def __init__(
        self,
        model: S.Model,
        params: dict,
        bn_domain=DEFAULT_BN_DOMAIN,
        train_bn_domain=TRAIN_BN_DOMAIN,
        dropout_seed: int = 0,
        inference_only: bool = False,
    ):
        S.check_params(model, params, what="shared parameters")
        self.spec = model
        self.inference_only = bool(inference_only)
        # compact parameters (share_params(compact=True)) stay compact only for inference:
        # training updates them, so it holds their words
        self.params = dict(params) if self.inference_only else {k: held(v) for k, v in params.items()}
        self.bn_domain = tuple(bn_domain)
        self.train_bn_domain = tuple(train_bn_domain)
        self.dropout_rng = numpy.random.default_rng(dropout_seed)
        self.training = False
        self.exact_output = False
        #: batch-norm running statistics rounded exactly at every update (they will be revealed:
        #: ``mpcgpu train --reveal-to``); 10 rounds more per training step
        self.exact_running = False
        self.grads: dict = {}
        self.version = 0  # bumped whenever parameters change
        self._kept: dict = {}
        self._input_grad = False
        self._prepared_version = None
        self._affine: dict = {}  # batch-norm path -> (scale, shift), not folded
        self._folded: dict = {}  # conv path -> (weight', bias'); its batch norm becomes identity
        self._skip: set = set()  # batch-norm paths folded away
        leaves = list(self._leaf_order(self.spec.net, ""))
        order = [path for path, _ in leaves]
        self._first_leaf, self._output_leaf = order[0], order[-1]
        # exact outputs: the last product rounds exactly; the leaves after it (a head such as
        # conv . global average pool . flatten) truncate exactly too, so the output is
        # exactly rounded whatever the head
        self._exact_leaf, tail = self._exact_region(self.spec.net, "")
        self._exact_tail = set(tail)
        # a product whose next layer is a max-pool is truncated after the pool (4x fewer
        # elements for 2x2): comparisons work at any scale
        self._deferred = {
            path
            for (path, layer), (_, nxt) in zip(leaves, leaves[1:])
            if isinstance(layer, (S.Conv2d, S.Linear)) and isinstance(nxt, S.MaxPool2d)
        }

    # -- the spec walk (mpcgpu.nn.walker, with the ReLU / max-pool swap of schedule) -------
    def _leaf_order(self, layer, path):
        yield from walker.leaves(layer, schedule, path)

    def _exact_region(self, layer, path):
        """``(leaf, tail)`` for exact outputs: the product leaf that rounds exactly (None) and
        the leaf paths that run with exact truncations: those after the last product, and a
        whole residual block that holds it (its two branches meet after their products)."""
        products = (S.Conv2d, S.Linear)
        if isinstance(layer, S.Sequential):
            kids = schedule(layer)
            with_product = [
                i for i, (n, c) in enumerate(kids) if any(isinstance(lf, products) for _, lf in self._leaf_order(c, ""))
            ]
            if not with_product:
                return None, [p for p, _ in self._leaf_order(layer, path)]
            i = with_product[-1]
            leaf, tail = self._exact_region(kids[i][1], S.join_path(path, kids[i][0]))
            for name, child in kids[i + 1 :]:
                tail += [p for p, _ in self._leaf_order(child, S.join_path(path, name))]
            return leaf, tail
        if isinstance(layer, products):
            return path, []
        return None, [p for p, _ in self._leaf_order(layer, path)]

    def _run(self, layer, path, x, profile):
        return walker.forward(
            layer, x, lambda leaf, p, v: self._leaf(leaf, p, v, profile, forward=True), schedule, path
        )

    def _back(self, layer, path, dy, profile):
        return walker.backward(
            layer, dy, lambda leaf, p, v: self._leaf(leaf, p, v, profile, forward=False), schedule, path
        )

    def _leaf(self, layer, path, x, profile, forward: bool):
        fn = impl(layer).forward if forward else impl(layer).backward
        if forward and self.exact_output and path in self._exact_tail:
            with forced("exact"):
                return self._timed(fn, layer, path, x, profile, forward)
        return self._timed(fn, layer, path, x, profile, forward)

    def _timed(self, fn, layer, path, x, profile, forward: bool):
        if profile is None:
            return fn(self, layer, path, x)
        kind = type(layer).__name__ + ("" if forward else " (backward)")
        with section(profile, x.rt.comm, path if forward else path + " <-", kind):
            return fn(self, layer, path, x)

    # -- what the layers ask of the executor -------------------------------------------------
    def _not_kept(self, path):
        return MPCError(f"backward through {path!r} without a training forward pass")

    def needs_input_grad(self, path) -> bool:
        return path != self._first_leaf or self._input_grad

    def rounds_exactly(self, path) -> bool:
        return self.exact_output and path == self._exact_leaf

    def truncates_later(self, path) -> bool:
        """Whether the product of ``path`` leaves its truncation to the max-pool after it."""
        return path in self._deferred

    def conv_weights(self, path, layer):
        if not self.training and path in self._folded:
            return self._folded[path]
        bias = held(self.params[S.join_path(path, "bias")]) if layer.bias else None
        return held(self.params[S.join_path(path, "weight")]), bias

    def is_folded(self, path) -> bool:
        return path in self._skip

    def bn_affine(self, path):
        return self._affine[path]

    def update_running(self, names, stats, coefs, decay):
        """``p <- decay * p + coef * stat`` for non-trained parameters (batch-norm running
        statistics), all in one public product (one truncation call)."""
        olds = [self.params[n] for n in names]
        flat = concatenate([s.reshape(-1) for s in olds + list(stats)])
        factors = numpy.concatenate(
            [numpy.full(s.size, decay) for s in olds] + [numpy.full(s.size, c) for s, c in zip(stats, coefs)]
        )
        at = sum(s.size for s in olds)
        if self.exact_running:
            new = self._running_exact(flat, factors, at)
        else:
            prod = flat * factors
            new = prod[:at] + prod[at:]
        start = 0
        for name, old in zip(names, olds):
            n = old.size
            self.params[name] = new[start : start + n].reshape(*old.shape)
            start += n
        self.version += 1

    @staticmethod
    def _running_exact(flat, factors, at):
        """``decay * old + coef * stat`` rounded exactly (``exact_running``): the factors as
        integers ``round(c 2^q)``, the two terms summed in the ring and one
        :func:`~mpcgpu.protocols.rounding.round_exact` per statistic (12 rounds), ``q`` as
        large as values below ``2^RUNNING_BITS`` allow."""
        from ..protocols.rounding import round_exact

        q = 60 - RUNNING_BITS - flat.scale
        xp = flat.xp
        k = xp.asarray(numpy.rint(factors * 2.0**q).astype(numpy.int64).view(numpy.uint64))
        first, second = flat.first * k, flat.second * k
        total = ArithmeticShare(first[:at] + first[at:], second[:at] + second[at:], flat.scale + q, flat.rt)
        return round_exact(total, q, flat.scale)

    # -- running ---------------------------------------------------------------------------
    def forward(
        self, x: ArithmeticShare, train: bool = False, profile: Profile | None = None, exact: bool = False
    ) -> ArithmeticShare:
        """Logits (shared) for a shared NCHW / NF batch.  ``train`` uses batch statistics
        and keeps what :meth:`backward` needs; ``exact`` rounds the output layer exactly
        (for outputs that will be revealed)."""
        expected = tuple(self.spec.input_shape)
        if tuple(x.shape[1:]) != expected:
            raise MPCError(
                f"model {self.spec.name} expects inputs of shape (N, {', '.join(map(str, expected))}), got {x.shape}"
            )
        if train and self.inference_only:
            raise MPCError(
                f"model {self.spec.name} was built with inference_only=True (its batch norms are folded "
                "into the convolutions and the original weights dropped): it cannot train"
            )
        self.training = bool(train)
        self.exact_output = bool(exact)
        self._kept.clear()
        if not self.training:
            self.prepare()
        try:
            return self._run(self.spec.net, "", x, profile)
        finally:
            self.exact_output = False

    __call__ = forward

    def backward(self, dlogits: ArithmeticShare, profile: Profile | None = None, input_grad: bool = False):
        """Back-propagate ``dlogits`` through the last training forward pass; fills
        :attr:`grads` (``{name: share}`` for every trainable parameter) and returns it,
        or with ``input_grad`` returns the gradient w.r.t. the input (which training never
        needs: the first layer skips it otherwise)."""
        if not self.training:
            raise MPCError("backward() needs a forward(..., train=True) first")
        self.grads = {}
        self._input_grad = bool(input_grad)
        try:
            dx = self._back(self.spec.net, "", dlogits, profile)
        finally:
            self._input_grad = False
            self._kept.clear()
        return dx if input_grad else self.grads

    def trainable(self):
        return [p.name for p in S.param_specs(self.spec) if p.trainable]

    def set_params(self, new: dict):
        """Replace parameters (e.g. after an optimiser step)."""
        self.params.update(new)
        self.version += 1

    # -- inference-time batch norms ----------------------------------------------------------
    def prepare(self):
        """Fold / precompute every batch norm for inference, once per set of parameters
        (all parties call it together; :meth:`forward` does)."""
        if self._prepared_version == self.version:
            return
        if self.inference_only and self._prepared_version is not None:
            # the folded weights replaced the originals: folding again would scale them twice
            raise MPCError(
                f"model {self.spec.name} (inference_only=True) cannot be prepared again after its "
                "parameters changed; build a new PrivateModel from the original parameters"
            )
        self._prepared_version = self.version
        self._affine, self._folded, self._skip = {}, {}, set()
        pairs = _batchnorm_sites(self.spec.net, "")
        if not pairs:
            return
        p = self.params
        for bn, _, conv in pairs:  # what the folding reads and rewrites is held (once)
            for name in [S.join_path(bn, n) for n in ("weight", "bias", "running_mean", "running_var")] + (
                [S.join_path(conv[0], n) for n in ("weight", "bias")] if conv is not None else []
            ):
                if name in p:
                    p[name] = held(p[name])
        eps = [float(layer.eps) for _, layer, _ in pairs for _ in range(layer.channels)]  # public
        var = concatenate([p[S.join_path(b, "running_var")] for b, _, _ in pairs]) + numpy.asarray(eps)
        inv = var.inv_sqrt(domain=self.bn_domain)
        gamma = concatenate([p[S.join_path(b, "weight")] for b, _, _ in pairs])
        mean = concatenate([p[S.join_path(b, "running_mean")] for b, _, _ in pairs])
        beta = concatenate([p[S.join_path(b, "bias")] for b, _, _ in pairs])
        scale = gamma * inv
        shift = beta - mean * scale
        offsets, at = [], 0
        for _, layer, _ in pairs:
            offsets.append((at, at + layer.channels))
            at += layer.channels
        # fold into the preceding convolutions: products of up to FOLD_CHUNK elements
        folds = []
        for (bn, _, conv), (lo, hi) in zip(pairs, offsets):
            if conv is None:
                self._affine[bn] = (scale[lo:hi], shift[lo:hi])
            else:
                folds.append((bn, conv, lo, hi))
        if folds:
            self._fold(folds, scale, shift)

    def _fold(self, folds, scale, shift):
        """Scale the weights (and biases) of the convolutions in ``folds`` by their batch
        norms' ``gamma / sqrt(var + eps)``: the weights of all of them, flattened, form one
        stream of elements multiplied in pieces of :data:`FOLD_CHUNK` (2 rounds each; a
        weight may span pieces), each piece's product written into place.  With
        ``inference_only`` a convolution's original weights are dropped as soon as its
        folded ones are complete, so the memory of the weights is held about once."""
        p, xp = self.params, scale.xp
        segments = []  # (conv index, "weight"/"bias", flat share, factor of elements [a, b), n)
        for i, (_, conv, lo, hi) in enumerate(folds):
            w = p[S.join_path(conv[0], "weight")]
            per_out = w.size // w.shape[0]
            sc = scale[lo:hi]
            factor = lambda a, b, sc=sc, k=per_out: sc[xp.arange(a, b) // k]  # noqa: E731
            segments.append((i, "weight", w, factor, w.size))
            if conv[1].bias:
                segments.append((i, "bias", p[S.join_path(conv[0], "bias")], lambda a, b, sc=sc: sc[a:b], hi - lo))
        out = {}  # (conv index, kind) -> (first, second) being filled, made at its first piece
        remaining = {}  # conv index -> segments not yet complete
        for i, *_ in segments:
            remaining[i] = remaining.get(i, 0) + 1
        pending, size = [], 0  # (segment, a, b) of the next product
        for seg in segments:
            a, n = 0, seg[4]
            while a < n:  # fill the current piece up to FOLD_CHUNK elements
                take = min(n - a, FOLD_CHUNK - size)
                pending.append((seg, a, a + take))
                size += take
                a += take
                if size == FOLD_CHUNK:
                    self._fold_piece(pending, out, remaining, folds, shift)
                    pending, size = [], 0
        if pending:
            self._fold_piece(pending, out, remaining, folds, shift)

    def _fold_target(self, src):
        """Flat arrays for the folded values of the share ``src``: ``src``'s own memory for an
        ``inference_only`` model (it owns its parameters; each piece is read before it is
        written), else new arrays."""
        xp = src.xp
        if self.inference_only and all(
            a.flags.c_contiguous and getattr(a.flags, "writeable", True) for a in (src.first, src.second)
        ):
            return src.first.reshape(-1), src.second.reshape(-1)
        return xp.empty(src.size, dtype=xp.uint64), xp.empty(src.size, dtype=xp.uint64)

    def _fold_piece(self, pending, out, remaining, folds, shift):
        """One product of the fold (2 rounds): ``pending`` lists (segment, a, b) ranges."""
        p = self.params
        lefts = [seg[2].reshape(-1)[a:b] for seg, a, b in pending]
        rights = [seg[3](a, b) for seg, a, b in pending]
        prod = (concatenate(lefts) if len(lefts) > 1 else lefts[0]) * (
            concatenate(rights) if len(rights) > 1 else rights[0]
        )
        del lefts, rights
        at = 0
        for seg, a, b in pending:
            i, kind, src, _, n = seg
            if (i, kind) not in out:
                out[(i, kind)] = self._fold_target(src)
            first, second = out[(i, kind)]
            first[a:b], second[a:b] = prod.first[at : at + b - a], prod.second[at : at + b - a]
            at += b - a
            if b < n:
                continue
            remaining[i] -= 1  # this segment is complete
            if remaining[i]:
                continue
            bn, conv, lo, hi = folds[i]
            wshape = p[S.join_path(conv[0], "weight")].shape
            wf, ws = out.pop((i, "weight"))
            w_new = ArithmeticShare(wf.reshape(wshape), ws.reshape(wshape), prod.scale, prod.rt)
            if conv[1].bias:
                bf, bs = out.pop((i, "bias"))
                b_new = ArithmeticShare(bf, bs, prod.scale, prod.rt) + shift[lo:hi]
            else:
                b_new = shift[lo:hi]
            self._folded[conv[0]] = (w_new, b_new)
            self._skip.add(bn)
            if self.inference_only:  # the folded weights replace the originals (memory held once)
                for name in ("weight", "bias"):
                    p.pop(S.join_path(conv[0], name), None)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    p.pop(S.join_path(bn, name), None)

    # -- outputs -----------------------------------------------------------------------------
    def predict_onehot(self, x: ArithmeticShare, profile: Profile | None = None) -> ArithmeticShare:
        """One-hot (scale 0) of the predicted class of every image: argmax of the logits."""
        return self.forward(x, profile=profile).argmax(axis=1)

    def predict_shared(self, x: ArithmeticShare, profile: Profile | None = None) -> ArithmeticShare:
        """Shared predicted class indices (integer scale): the one-hot argmax dotted with 0..K-1."""
        onehot = self.predict_onehot(x, profile)
        xp = onehot.xp
        return (onehot * xp.arange(onehot.shape[1], dtype=xp.int64)).sum(axis=1)


def _batchnorm_sites(layer, path):
    """Every BatchNorm2d as (bn path, layer, (conv path, conv layer) or None): the convolution
    is given when the batch norm directly follows it in the same Sequential."""
    out = []
    if isinstance(layer, S.Sequential):
        prev = None
        for name, child in layer.children():
            child_path = S.join_path(path, name)
            if isinstance(child, S.BatchNorm2d):
                conv = prev if isinstance(prev, tuple) and isinstance(prev[1], S.Conv2d) else None
                out.append((child_path, child, conv))
            elif not child.is_leaf:
                out.extend(_batchnorm_sites(child, child_path))
            prev = (child_path, child)
        return out
    for name, child in layer.children():
        out.extend(_batchnorm_sites(child, S.join_path(path, name)))
    return out


def share_params(model: S.Model, params: dict | None, src: int = 0, compact: bool = False) -> dict:
    """Secret-share a plaintext parameter dict held by party ``src`` (others pass None),
    in spec order.  Every party must call this.  ``compact``: parameters of at least
    :data:`COMPACT_MIN` elements are kept as :class:`~mpcgpu.sharing.compact.CompactShare`
    (for an ``inference_only`` model: every party holds one of their two components and
    draws the other where it is used; VGG-16: 1.1 GB less per party)."""
    out = {}
    for p in S.param_specs(model):
        deal = compact_share if compact and p.size >= COMPACT_MIN else share
        out[p.name] = deal(params[p.name] if params is not None else None, src=src)
    return out


#: parameters smaller than this stay ordinary shares under ``share_params(compact=True)``
COMPACT_MIN = 1 << 16
#: models with at least this many parameters keep their large weights compact for inference
#: (``bench``, ``infer``): 1.07 GB of shares per party and more (VGG-16: 2.2 GB).  Drawing
#: (or reading) a component again costs a few percent of a VGG-16 pass at 224 x 224; below
#: this size the memory saved is not worth the time (AlexNet at 224, 61M parameters in
#: a 0.7 s pass, would lose about 10%; VGG-16 at 32 x 32 8%)
COMPACT_MODEL_MIN = 1 << 26


#: ``1``: compact weights for every model, ``0``: never (both components held), unset or
#: ``auto``: for models of at least :data:`COMPACT_MODEL_MIN` parameters
COMPACT_ENV = "MPCGPU_COMPACT_WEIGHTS"


def wants_compact(model: S.Model, current=None) -> bool:
    """Whether inference keeps ``model``'s large weights compact (the ``compact_weights``
    setting, :data:`COMPACT_ENV`, of ``current`` or this process's settings)."""
    from .. import settings

    choice = (current if current is not None else settings.active()).compact_weights
    if choice is not None:
        return choice
    return S.count_params(model, trainable_only=False) >= COMPACT_MODEL_MIN
