"""One private training step and one private evaluation, on shares.

:func:`train_step`: forward (batch statistics), softmax cross-entropy gradient with
the secret labels, backward, SGD update.  Nothing is revealed unless the caller
asks for the loss (``reveal_loss_to``: a stated disclosure to one party).

:func:`evaluate`: predictions on a sharded test set; only the number of correct
predictions is revealed, to ``owner``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .loss import count_correct, cross_entropy, cross_entropy_grad, one_hot
from .optim import PrivateSGD
from .private import PrivateModel, Profile, section


@dataclass
class StepResult:
    loss: float | None  # revealed to ``reveal_loss_to`` only (None elsewhere / not asked)


def train_step(
    model: PrivateModel,
    opt: PrivateSGD,
    images,
    labels,
    lr: float,
    reveal_loss_to: int | None = None,
    profile: Profile | None = None,
) -> StepResult:
    """One SGD step on a batch of shared ``images`` and integer ``labels`` (scale 0)."""
    comm = images.rt.comm
    onehot = one_hot(labels, model.spec.num_classes)
    logits = model.forward(images, train=True, profile=profile)
    with section(profile, comm, "loss", "softmax CE gradient"):
        dlogits = cross_entropy_grad(logits, onehot)
    loss = None
    if reveal_loss_to is not None:
        loss = cross_entropy(logits, onehot).reveal(to=reveal_loss_to)
        loss = None if loss is None else float(loss)
    grads = model.backward(dlogits, profile=profile)
    with section(profile, comm, "optimizer", "SGD step"):
        model.set_params(opt.step(grads, images.shape[0], lr=lr))
    return StepResult(loss)


def evaluate(model: PrivateModel, dataset, batch_size: int, owner: int, limit: int | None = None):
    """Test accuracy computed under MPC; returns ``(correct, n)`` to ``owner``, ``(None, n)``
    to the others."""
    correct, n = None, 0
    classes = model.spec.num_classes
    for rows, images, labels in dataset.sequential(batch_size):
        if limit is not None and n >= limit:
            break
        if limit is not None and n + len(rows) > limit:
            keep = limit - n
            images, labels, rows = images[:keep], labels[:keep], rows[:keep]
        right = count_correct(model.predict_onehot(images), one_hot(labels, classes))
        correct = right if correct is None else correct + right
        n += len(rows)
    if correct is None:
        return (0 if dataset.rt.rank == owner else None), 0
    value = correct.reveal(to=owner)
    return (None if value is None else int(value)), n


__all__ = ["StepResult", "train_step", "evaluate"]
