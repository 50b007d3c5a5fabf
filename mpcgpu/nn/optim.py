"""Private SGD: momentum, weight decay and learning-rate schedules, all on shares.

PyTorch's semantics (dampening 0, no Nesterov)::

    g = grad / B + weight_decay * w;   v = momentum * v + g;   w -= lr * v

with ``grad`` the gradient SUMMED over the batch (the loss gradient is
``softmax - onehot``, not divided by ``B``: the ``1/B`` is folded in here).

Precision (the design choice, measured in ``benchmarks/train_precision.py``):
activations and gradients use the runtime's ``f`` fractional bits, while the
*master* weights and the velocity keep ``f + extra_bits``.  Updates
``lr * v`` are often below ``2^-f``; at ``f + 8`` bits they accumulate instead
of vanishing (stochastic rounding keeps small ones unbiased, but noisy).  Each
step hands the layers ``w`` rounded to ``f`` bits.

One step, with every parameter in one flat vector of ``P`` elements:

1. ``v' = m v + G/B + wd W`` and ``lr v'`` are two public linear combinations of
   ``(v, G, W)``: each is summed locally in integers (one common shift per sum, see
   :func:`~mpcgpu.sharing.arithmetic.public_combinations`) and truncated ONCE, both
   in one call: 2 rounds, ``2 P`` truncated elements;
2. ``W' = W - lr v'`` (local) and ``w = W'`` rounded to ``f`` bits: 2 rounds, ``P``.

4 rounds per step for up to 2^21 parameters (2 more per further 2^21); ``3 P``
truncated elements (a product-by-product truncation would need ``7 P``).  The
shared shift costs the small constants relative precision: with ``f = 16``,
``m = 0.9`` is held to ``2^-22`` and ``lr * wd = 2.5e-5`` to about ``10^-4`` of
itself, far below the noise of stochastic rounding.
Batch-norm running statistics are not trained (they are updated in the forward
pass).  Magnitudes: weights, velocities and batch-summed gradients must stay below
``2^MAX_BITS``: beyond it the integer sums of step 1 wrap around the ring and the
update is garbage.  So by default (``clip=True``; ``mpcgpu train --no-clip-gradients`` and
``clip=False`` turn it off) every batch-summed gradient is clipped to
``[-L, L]``, ``L = 2^MAX_BITS - 2^-f``, before the update: one batched MSB over ``2 P``
elements (``L - g`` and ``g + L``) and one multiplication by the two bits, 10 rounds and
about ``2 P (71 + 16 + 32)`` bytes per step for the three parties together (LeNet,
431K parameters: ~100 MB, against ~1 GB for its step at batch 128); a gradient within
the bound is unchanged bit for bit, nothing is revealed (not even whether it clipped).
"""

from __future__ import annotations

import numpy

from ..errors import MPCError
from ..sharing.arithmetic import ArithmeticShare, concatenate, public_combinations, to_scale

#: parameters per update call: larger models update in chunks (2 rounds each), which bounds
#: the memory of the step (about 300 bytes per parameter of a chunk)
CHUNK = 1 << 21

#: public bound (log2) on |weights|, |velocities| and |batch-summed gradients|, used to
#: size the integer factors of the update (wider factors, one truncated part each)
MAX_BITS = 14


class PrivateSGD:
    """SGD on secret-shared parameters (see the module docstring).

    ``params``: ``{name: share}`` at ``f`` bits (the model's); ``names``: the trainable
    ones, in a fixed order.  :meth:`step` takes the batch-summed gradients and returns
    the new ``f``-bit weights.  :meth:`state` / :meth:`load_state` give the master
    weights and velocities (this party's components) for checkpoints.
    """

    def __init__(
        self,
        params: dict,
        names,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        extra_bits: int = 8,
        clip: bool = True,
    ):
        self.names = list(names)
        if not self.names:
            raise MPCError("nothing to train: the model has no trainable parameters")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.extra_bits = int(extra_bits)
        self.clip = bool(clip)
        first = params[self.names[0]]
        self.rt = first.rt
        self.f = first.scale
        self.scale = self.f + self.extra_bits
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [int(numpy.prod(s)) for s in self.shapes]
        flat = concatenate([params[n].reshape(-1) for n in self.names])
        self.master = to_scale(flat, self.scale)  # exact (a shift)
        z = self.master.xp.zeros(self.master.shape, dtype=self.master.xp.uint64)
        self.velocity = ArithmeticShare(z, z.copy(), self.scale, self.rt)
        self.steps = 0

    def _split(self, flat: ArithmeticShare) -> dict:
        out, at = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[at : at + size].reshape(*shape)
            at += size
        return out

    def step(self, grads: dict, batch_size: int, lr: float | None = None) -> dict:
        """One update from batch-summed gradients; returns ``{name: weight at f bits}``."""
        lr = self.lr if lr is None else float(lr)
        missing = [n for n in self.names if n not in grads]
        if missing:
            raise MPCError(f"no gradient for {missing}")
        g = to_scale(concatenate([grads[n].reshape(-1) for n in self.names]), self.scale)
        if self.clip:
            g = clip_to_bound(g)
        m, wd, inv_b = self.momentum, self.weight_decay, 1.0 / int(batch_size)
        velocity, master = [], []
        for lo in range(0, self.master.size, CHUNK):  # bounded memory: one call per chunk
            hi = min(self.master.size, lo + CHUNK)
            v, w = self._update(self.velocity[lo:hi], g[lo:hi], self.master[lo:hi], m, inv_b, wd, lr)
            velocity.append(v)
            master.append(w)
        self.velocity, self.master = concatenate(velocity), concatenate(master)
        self.steps += 1
        return self._split(to_scale(self.master, self.f))

    @staticmethod
    def _update(v, g, w, m, inv_b, wd, lr):
        """``v' = m v + g/B + wd w`` and ``lr v'`` as two public linear combinations of
        ``(v, g, w)``, truncated together in one call (2 rounds, ``2 n`` elements);
        ``w' = w - lr v'`` is local."""
        terms = [(t, c) for t, c in ((v, m), (g, inv_b), (w, wd)) if c != 0.0]
        shares = [t for t, _ in terms]
        rows = [[c for _, c in terms], [lr * c for _, c in terms]]
        new_v, step = public_combinations(shares, rows, bound=2.0**MAX_BITS)
        return new_v, w - step

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict:
        """This party's components of the master weights and velocities, and the step."""
        return {
            "master": (self.master.first, self.master.second),
            "velocity": (self.velocity.first, self.velocity.second),
            "scale": self.scale,
            "steps": self.steps,
        }

    def load_state(self, state: dict):
        if int(state["scale"]) != self.scale:
            raise MPCError(f"checkpoint optimiser scale {state['scale']} != {self.scale}")
        to = self.rt.backend.to_device
        self.master = ArithmeticShare(to(state["master"][0]), to(state["master"][1]), self.scale, self.rt)
        self.velocity = ArithmeticShare(to(state["velocity"][0]), to(state["velocity"][1]), self.scale, self.rt)
        self.steps = int(state["steps"])

    def weights(self, exact: bool = False) -> dict:
        """The current weights at ``f`` bits, rounded from the masters: probabilistically
        (one truncation), or ``exact`` (:func:`~mpcgpu.protocols.rounding.round_exact`,
        for weights that will be revealed)."""
        if not exact:
            return self._split(to_scale(self.master, self.f))
        from ..protocols.rounding import round_exact

        return self._split(round_exact(self.master, self.extra_bits, self.f))


def clip_to_bound(g: ArithmeticShare, bits: int = MAX_BITS) -> ArithmeticShare:
    """``g`` clipped to ``[-L, L]``, ``L = 2^bits - 2^-f`` (f: ``rt.frac_bits``), privately:
    the signs of ``L - g`` and ``g + L`` in one MSB call (8 rounds) and
    ``g + b_hi (L - g) - b_lo (g + L)`` with one multiplication by the bits (2 rounds).
    Elements within the bound come back unchanged, word for word."""
    from ..protocols.convert import msb, mul_bit
    from ..sharing.replicated import with_public

    n, shape, xp = g.size, g.shape, g.xp
    flat = g.reshape(-1)
    limit = (1 << (bits + g.scale)) - (1 << (g.scale - g.rt.frac_bits))  # L in ring units
    lim = xp.full(n, limit, dtype=xp.int64).view(xp.uint64)

    def plus_limit(x):
        return x._new(*with_public(x.first, x.second, lim, x.rt.rank, xp, lambda a, b: a + b))

    both = concatenate([plus_limit(-flat), plus_limit(flat)])  # L - g (< 0: g > L), g + L (< 0: g < -L)
    corr = mul_bit(both, msb(both))
    return (flat + corr[:n] - corr[n:]).reshape(*shape)


__all__ = ["PrivateSGD", "MAX_BITS", "clip_to_bound"]
