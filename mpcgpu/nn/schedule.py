"""What private training and its plaintext twin share, so that they can be compared step
by step: the order of the samples and the learning rate of every step.

Both are public: they depend on a seed and on counts, never on data.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "cosine", "linear", "step")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list:
    """The batches of ``epoch``: a permutation of ``range(n)`` drawn from ``(seed, epoch)``
    alone (so a resumed run finds it again), cut into batches, each sorted (rows are read in
    file order).  ``drop_last`` drops an incomplete last batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))
    stop = (n // batch_size) * batch_size if drop_last else n
    return [np.sort(perm[i : i + batch_size]) for i in range(0, stop, batch_size)]


def lr_at(
    step: int,
    total: int,
    base: float,
    schedule: str = "cosine",
    warmup: int = 0,
    steps_per_epoch: int = 1,
    step_epochs: int = 1,
    gamma: float = 0.1,
) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: a linear warm-up over ``warmup``
    steps, then "constant", "cosine" (to 0 at ``total``), "linear" (to 0) or "step"
    (times ``gamma`` every ``step_epochs`` epochs of ``steps_per_epoch`` steps)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "linear":
        return base * max(0.0, 1 - t)
    if schedule == "constant":
        return base
    if schedule == "step":
        return base * gamma ** ((step // max(steps_per_epoch, 1)) // max(step_epochs, 1))
    raise ValueError(f"unknown schedule {schedule!r} ({', '.join(SCHEDULES)})")


__all__ = ["SCHEDULES", "epoch_batches", "lr_at"]
