"""Private loss and evaluation: softmax cross-entropy with secret labels, its gradient,
and the number of correct predictions -- all on shares.

* :func:`cross_entropy_grad` -- ``softmax(logits) - onehot`` (NOT divided by the
  batch size: the optimiser folds ``1/B`` into its learning rate, so gradients keep
  ``log2 B`` more significant bits at the same fixed-point precision).  Cost: the
  softmax (max over the classes + exp + reciprocal: 4 comparison levels + about 40
  rounds for 10 classes).
* :func:`cross_entropy` -- the mean loss ``-mean(sum(onehot * log_softmax))`` as a
  share, rounded exactly (it exists to be revealed, see ``mpcgpu train
  --reveal-loss``).
* :func:`count_correct` -- ``sum(pred_onehot * label_onehot)``: one integer product
  round; only this count (and what the caller chooses) is revealed.
"""

from __future__ import annotations

from ..protocols.compare import one_hot
from ..protocols.rounding import round_exact
from ..sharing.arithmetic import ArithmeticShare


def cross_entropy_grad(logits: ArithmeticShare, onehot: ArithmeticShare) -> ArithmeticShare:
    """``softmax(logits) - onehot`` for (B, K) logits and one-hot labels (scale 0)."""
    return logits.softmax(axis=1) - onehot


#: a bound on one sample's loss (log-softmax is accurate for logit gaps below 2^8)
LOSS_BITS = 8


def cross_entropy(logits: ArithmeticShare, onehot: ArithmeticShare, batch: int | None = None) -> ArithmeticShare:
    """Mean softmax cross-entropy over the batch, as a shared scalar rounded exactly.

    The sum over the batch is multiplied by the integer ``K = round(2^q / B)`` (exact) and
    rounded exactly by ``q`` bits, with ``q`` as large as the ring allows for losses below
    ``2^8`` per sample: no probabilistic rounding touches the value that is revealed.
    With several groups (``logits``: this group's slice of a global batch of ``batch``
    rows) the sums are added over the groups first
    (:func:`~mpcgpu.sharing.arithmetic.sum_over_groups`): every group holds the global
    mean, and a reveal shows nothing of the groups' own losses."""
    from ..sharing.arithmetic import sum_over_groups

    logp = logits.log_softmax(axis=1)
    total = sum_over_groups(-(logp * onehot).sum())  # onehot has scale 0: no truncation (1 round)
    b = logits.shape[0] if batch is None else int(batch)
    q = 61 - (max(b, 1).bit_length() + LOSS_BITS + total.scale)
    k = total.xp.uint64(round(2.0**q / b))
    scaled = total._new(total.first * k, total.second * k, total.scale + q)
    return round_exact(scaled, q, total.scale)


def count_correct(pred_onehot: ArithmeticShare, label_onehot: ArithmeticShare) -> ArithmeticShare:
    """The number of rows where both one-hots agree (integer share, scale 0): 1 round."""
    return (pred_onehot * label_onehot).sum()


__all__ = ["cross_entropy_grad", "cross_entropy", "count_correct", "one_hot"]
