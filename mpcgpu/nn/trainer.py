"""One private training step and one private evaluation, on shares.

:func:`train_step`: forward (batch statistics), softmax cross-entropy gradient with
the secret labels, backward, SGD update.  Nothing is revealed unless the caller
asks for the loss (``reveal_loss_to``: a stated disclosure to one party).

:func:`evaluate`: predictions on a sharded test set; only the number of correct
predictions is revealed, to ``owner``.

With ``k`` groups of three (``mpirun -n 3k``, :mod:`mpcgpu.comm.groups`) both are data
parallel: each group runs :func:`train_step` on its slice of the global batch, the ranks of
each party add up their gradient components over the role communicator (an exact all-reduce
mod 2^64 inside one organisation: :func:`allreduce_grads`), group 0 applies the update with
the ``1/B`` of the global batch and broadcasts the resulting state to its party's other ranks
(:func:`sync_state`), so the ``k`` copies of the model stay identical word for word (the
update's truncations draw group 0's PRG only).  :func:`evaluate` splits the test set across
the groups and sums the revealed counts over the owner's ranks.  With one group every role
call returns at once: the step is the three-party step of old, word for word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from ..sharing.arithmetic import sum_over_groups, zeros
from .loss import count_correct, cross_entropy, cross_entropy_grad, one_hot
from .optim import PrivateSGD
from .private import PrivateModel, Profile, section


@dataclass
class StepResult:
    loss: float | None  # revealed to ``reveal_loss_to`` only (None elsewhere / not asked)


def allreduce_grads(grads: dict, role) -> dict:
    """The gradients summed over the ``k`` groups: each party adds up both of its components
    across its ranks (exact mod 2^64), so the shares reconstruct the sum of the groups'
    gradients word for word.  One role call for all of them (names in sorted order)."""
    if role.k == 1:
        return grads
    names = sorted(grads)
    arrays = [a for n in names for a in (grads[n].first, grads[n].second)]
    summed = role.allreduce_sum(arrays)
    return {n: grads[n]._new(summed[2 * i], summed[2 * i + 1]) for i, n in enumerate(names)}


def state_arrays(model: PrivateModel, opt: PrivateSGD) -> list:
    """This party's components of everything the ``k`` groups must hold alike: the master
    weights and velocity of ``opt``, then every parameter of ``model`` (the ``f``-bit weights
    and the batch-norm running statistics), by sorted name."""
    arrays = [opt.master.first, opt.master.second, opt.velocity.first, opt.velocity.second]
    for name in sorted(model.params):
        p = model.params[name]
        arrays += [p.first, p.second]
    return arrays


def sync_state(model: PrivateModel, opt: PrivateSGD, role) -> None:
    """Group 0's model and optimiser state on every rank of this party (one role broadcast of
    :func:`state_arrays`); nothing with one group."""
    if role.k == 1:
        return
    from ..sharing.arithmetic import ArithmeticShare

    got = role.bcast(state_arrays(model, opt))
    if role.root:
        return
    rt = opt.rt
    opt.master = ArithmeticShare(got[0], got[1], opt.scale, rt)
    opt.velocity = ArithmeticShare(got[2], got[3], opt.scale, rt)
    new = {}
    for i, name in enumerate(sorted(model.params)):
        old = model.params[name]
        new[name] = ArithmeticShare(got[4 + 2 * i], got[5 + 2 * i], old.scale, rt)
    model.set_params(new)


def train_step(
    model: PrivateModel,
    opt: PrivateSGD,
    images,
    labels,
    lr: float,
    reveal_loss_to: int | None = None,
    profile: Profile | None = None,
    batch_size: int | None = None,
) -> StepResult:
    """One SGD step on a batch of shared ``images`` and integer ``labels`` (scale 0).

    ``batch_size``: the global batch (default: this batch's rows).  With several groups,
    ``images`` is this group's slice of it; the gradients are all-reduced over the role
    communicator, group 0 updates with ``1/batch_size`` and broadcasts the new state; the
    loss revealed to ``reveal_loss_to`` is the global batch's mean (the groups' sums added as
    shares before the one exact rounding: nothing of a group's own loss is revealed)."""
    rt = images.rt
    comm, role = rt.comm, rt.role
    rows = images.shape[0]
    batch = rows if batch_size is None else int(batch_size)
    onehot = one_hot(labels, model.spec.num_classes)
    logits = model.forward(images, train=True, profile=profile)
    with section(profile, comm, "loss", "softmax CE gradient"):
        dlogits = cross_entropy_grad(logits, onehot)
    loss = None
    if reveal_loss_to is not None:
        loss = cross_entropy(logits, onehot, batch).reveal(to=reveal_loss_to)  # the global batch's mean
        loss = None if loss is None else float(loss)
    grads = model.backward(dlogits, profile=profile)
    if role.k == 1:
        with section(profile, comm, "optimizer", "SGD step"):
            model.set_params(opt.step(grads, batch, lr=lr))
        return StepResult(loss)
    with section(profile, comm, "allreduce", "role all-reduce"):
        grads = allreduce_grads(grads, role)
    with section(profile, comm, "optimizer", "SGD step (group 0)"):
        if role.root:
            model.set_params(opt.step(grads, batch, lr=lr))
        else:
            opt.steps += 1
    with section(profile, comm, "broadcast", "role broadcast"):
        sync_state(model, opt, role)
    return StepResult(loss)


def evaluate(model: PrivateModel, dataset, batch_size: int, owner: int, limit: int | None = None):
    """Test accuracy computed under MPC; returns ``(correct, n)`` to ``owner``, ``(None, n)``
    to the others.  With several groups each group evaluates its contiguous slice of the
    first ``n`` samples (:func:`~mpcgpu.comm.groups.split_range`); the count shares are summed
    over the groups before the one reveal: every owner rank gets the total, and nothing of
    the groups' own counts."""
    rt = dataset.rt
    if rt.groups > 1:
        return _evaluate_groups(model, dataset, batch_size, owner, limit)
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


def _evaluate_groups(model, dataset, batch_size, owner, limit):
    rt = dataset.rt
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    part = rt.place.share_of(n)
    classes = model.spec.num_classes
    correct = None
    for lo in range(part.start, part.stop, batch_size):
        images, labels = dataset.batch(numpy.arange(lo, min(lo + batch_size, part.stop)))
        right = count_correct(model.predict_onehot(images), one_hot(labels, classes))
        correct = right if correct is None else correct + right
    # the groups' counts summed as shares first: every group reveals the same total, never its own
    total = sum_over_groups(correct if correct is not None else zeros((), scale=0, rt=rt))
    value = total.reveal(to=owner)
    return (None if value is None else int(value)), n


__all__ = ["StepResult", "train_step", "evaluate", "allreduce_grads", "state_arrays", "sync_state"]
