"""One-hot rows of secret token ids over a large vocabulary, by a product tree of their bits.

``one_hot(ids, vocab)`` turns an integer share of ids in ``[0, vocab)`` into the integer
share of their one-hot rows (``ids.shape + (vocab,)``), so that an embedding lookup is the
product ``one_hot @ table`` and neither the ids nor the table is ever revealed.

Construction, with ``B = ceil(log2 vocab)`` bits:

* bit decomposition (:func:`~mpcgpu.protocols.convert.a2b`, 8 rounds) of the ids, then
  the low ``B`` bits injected into the ring in one call (:func:`~.convert.b2a`, 2 rounds);
* a tree of products: ``h_0 = [1 - b_0, b_0]``; level ``k`` multiplies the ``2^k`` entries
  of every row by ``b_k`` (one secret product of integers, no truncation: 1 round) and
  writes ``[h - h b_k, h b_k]`` (local), so entry ``i`` of ``h_k`` is ``[low k+1 bits of id
  = i]``; after ``B - 1`` levels the first ``vocab`` entries are the one-hot row.

Domain: an id outside ``[0, vocab)`` is an error on every party, never a silently aliased
row.  The bit decomposition runs on ``id`` and ``id - vocab`` together (the same 8 rounds),
and their sign bits are injected with the low bits (the same 2 rounds); per id,
``[id < 0] + [id - vocab >= 0]`` is 0 inside the domain and 1 or 2 outside (a wrap of
``id - vocab`` makes both terms count), and the sum over all ids is recorded with
:func:`mpcgpu.protocols.domain.record`: the guard in force (one per graph run) reveals one
bit, "some input was outside a domain", or, with no guard, it is checked at once (9 more
rounds, 144 bytes).  Nothing else is revealed.

Cost per id: ``10 + (B - 1)`` rounds (24 for BERT's 30,522 tokens, ``B = 15``); the
products of all levels hold ``2^B - 2`` entries, each resharing 8 bytes per party: about
``24 * 2^B`` bytes for the three parties (0.8 MB per token at ``B = 15``, 100 MB for 128
tokens), against ``vocab`` comparisons per token for
:func:`~mpcgpu.protocols.compare.one_hot` (30,522 MSBs per token); the domain check adds
``3 * 96 + 64`` bytes per id.
"""

from __future__ import annotations

from ..errors import ProtocolError
from ..sharing.arithmetic import ArithmeticShare, mul
from ..sharing.binary import BinaryShare
from ..sharing.replicated import concatenate
from . import domain
from .convert import a2b, b2a


def bits_for(vocab: int) -> int:
    """The bits of an id below ``vocab`` (at least 1)."""
    return max(1, (int(vocab) - 1).bit_length())


def one_hot_cost(n: int, vocab: int) -> dict:
    """Rounds and bytes (three parties together) of :func:`one_hot` on ``n`` ids, inside a
    guard (:mod:`mpcgpu.protocols.domain`; its one check per run is not included)."""
    b = bits_for(vocab)
    return {"rounds": 10 + (b - 1), "bytes": n * (2 * 3 * 96 + 32 * (b + 2) + 24 * ((1 << b) - 2))}


def one_hot(ids: ArithmeticShare, vocab: int) -> ArithmeticShare:
    """Integer one-hot rows (scale 0, shape ``ids.shape + (vocab,)``) of the integer ids
    ``ids`` (scale 0, each in ``[0, vocab)``); see the module docstring for the cost."""
    if ids.scale != 0:
        raise ProtocolError("one_hot needs integer ids (scale 0)")
    vocab = int(vocab)
    if vocab < 1:
        raise ProtocolError(f"one_hot needs a vocabulary of at least 1, got {vocab}")
    xp = ids.xp
    if vocab == 1:
        return ids.reshape(*ids.shape, 1) * 0 + 1
    nbits = bits_for(vocab)
    both = a2b(concatenate([ids.reshape(1, *ids.shape), (ids - vocab).reshape(1, *ids.shape)], axis=0))
    shifts = xp.concatenate([xp.arange(nbits, dtype=xp.uint64), xp.asarray([63], dtype=xp.uint64)])
    one = xp.uint64(1)

    def bits_of(words):  # the low bits and the sign of the id, the sign of id - vocab
        own = (words[0][..., None] >> shifts) & one
        return xp.concatenate([own, (words[1][..., None] >> xp.uint64(63)) & one], axis=-1)

    bits = b2a(BinaryShare(bits_of(both.first), bits_of(both.second), ids.rt))  # (..., nbits + 2), 0/1
    outside = bits[..., nbits] + 1 - bits[..., nbits + 1]  # [id < 0] + [id >= vocab]
    domain.record(outside.sum(), f"one-hot of token ids: an id outside [0, {vocab})")
    b0 = bits[..., 0:1]
    h = concatenate([1 - b0, b0], axis=-1)
    for k in range(1, nbits):
        t = mul(h, bits[..., k : k + 1])
        h = concatenate([h - t, t], axis=-1)
    return h[..., :vocab].contiguous()


__all__ = ["one_hot", "one_hot_cost", "bits_for"]
