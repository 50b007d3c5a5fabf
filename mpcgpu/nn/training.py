"""The private training loop: epochs of SGD steps over a sharded dataset, evaluation after
each epoch, checkpoints and resume (the library under ``mpcgpu train``).

::

    trainer = Trainer(rt, model, data, epochs=2, batch_size=128, lr=0.05, test=test,
                      checkpoint_dir="ckpt", checkpoint_every=100)
    trainer.resume()          # optional: continue from the newest common checkpoint
    trainer.fit(on_step=..., on_epoch=...)
    weights = trainer.trained_params()
    summary = trainer.summary()  # the owner's; None elsewhere

What is revealed, and to whom (nothing else is): after each epoch with a test set, the
number of correct test predictions, to ``owner``; with ``reveal_loss``, each step's mean
training loss, to ``owner``.  The sample order and dropout masks are public (``seed``).

Checkpoints (:mod:`mpcgpu.nn.checkpoint`): each party writes only its own components,
optimiser state, PRG state and position, after every epoch and every
``checkpoint_every`` steps.  :meth:`Trainer.resume` refuses a checkpoint made with other
settings (the SHA-256 of :attr:`Trainer.digest_settings`: every computation-relevant
setting, the model spec, the shard sets and the package version), naming those that
differ, and keeps this run's fresh PRG keys -- a step re-run after the checkpoint must not
be masked by the words of the crashed run -- except under the test seed
(``MPCGPU_INSECURE_PRG_SEED``), where it continues the checkpointed streams and the
result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import time

import numpy

from ..errors import MPCError
from . import checkpoint
from .optim import PrivateSGD
from .schedule import epoch_batches, lr_at
from .trainer import evaluate, train_step


class Trainer:
    """Private SGD of ``model`` (a :class:`~mpcgpu.nn.private.PrivateModel`) on ``data`` (a
    :class:`~mpcgpu.data.loader.ShardedDataset` with labels); a collective: the three
    parties build it and call its methods alike.

    ``schedule``: constant | cosine | linear | step over the run (``step_epochs``,
    ``gamma``), after ``warmup`` linear warm-up steps (at most a fifth of the run).
    ``extra_bits``: more fractional bits of the master weights and momentum.  ``test``:
    evaluated after each epoch (at most ``test_limit`` samples, batches of
    ``test_batch``, default ``max(batch_size, 100)``).  ``identity``: the caller's
    settings that determine the computation (e.g. its command-line arguments but output
    paths); they enter the checkpoints' settings digest with the trainer's own.
    ``describe``: more entries for :attr:`settings` (what the run records of itself)."""

    def __init__(
        self,
        rt,
        model,
        data,
        *,
        epochs: int = 1,
        batch_size: int = 128,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup: int = 100,
        step_epochs: int = 1,
        gamma: float = 0.1,
        seed: int = 0,
        extra_bits: int = 8,
        clip: bool = True,
        test=None,
        test_limit: int | None = None,
        test_batch: int | None = None,
        owner: int = 0,
        reveal_loss: bool = False,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 0,
        identity: dict | None = None,
        describe: dict | None = None,
    ):
        if batch_size < 1 or epochs < 1:
            raise MPCError("--batch-size and --epochs must be positive")
        if not data.has_labels:
            name = (describe or {}).get("data") or ", ".join(data.names)
            raise MPCError(f"training shards {name} have no 'labels' array")
        if data.sample_shape != tuple(model.spec.input_shape):
            raise MPCError(
                f"model {model.spec.name} expects samples of shape {model.spec.input_shape}, "
                f"the training data has {data.sample_shape}"
            )
        self.rt, self.model, self.data, self.test = rt, model, data, test
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.lr, self.schedule, self.step_epochs, self.gamma = lr, schedule, step_epochs, gamma
        self.seed, self.owner, self.reveal_loss = seed, owner, bool(reveal_loss)
        self.test_limit = test_limit
        self.test_batch = test_batch or max(self.batch_size, 100)
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, int(checkpoint_every or 0)
        self.steps_per_epoch = len(data) // self.batch_size
        if self.steps_per_epoch < 1:
            raise MPCError(f"{len(data)} training samples: fewer than one batch of {self.batch_size}")
        self.total = self.steps_per_epoch * self.epochs
        self.warmup = min(warmup, self.total // 5)  # as the plaintext trainer: never a long warm-up
        self.opt = PrivateSGD(
            model.params,
            model.trainable(),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            extra_bits=extra_bits,
            clip=clip,
        )
        describe = dict(describe or {})
        self.settings = {
            "model": model.spec.name,
            "model_source": describe.pop("model_source", None),
            "data": describe.pop("data", None),
            "test_data": describe.pop("test_data", None),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "schedule": schedule,
            "warmup": self.warmup,
            "seed": seed,
            "limit": describe.pop("limit", None),
            "precision": rt.frac_bits,
            "extra_bits": extra_bits,
            "reveal_loss": self.reveal_loss,
            "owner": owner,
            "device": rt.backend.describe(),
            **describe,
        }
        self.digest_settings = self._digest_settings(identity or {}, momentum, weight_decay, extra_bits)
        self.run_id = None
        self.epoch = 0  # current epoch
        self.pos = 0  # next batch within the epoch
        self.step = 0  # steps done
        self.epoch_records = []  # per-epoch records (owner's values where revealed)
        self.step_records = []  # per-step records: step, seconds, bytes (this party), rounds, lr, loss

    def _digest_settings(self, identity, momentum, weight_decay, extra_bits) -> dict:
        """What the checkpoints' settings digest covers: ``identity`` and everything this
        trainer computes with (resolved), the model spec, the shard sets, the version."""
        import mpcgpu

        from .spec_io import to_json

        def set_ids(d):
            return None if d is None else [s.set_id for s in getattr(d, "shards", ())]

        settings = {k: v for k, v in sorted(identity.items())}
        settings.update(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=momentum,
            weight_decay=weight_decay,
            schedule=self.schedule,
            warmup=self.warmup,
            step_epochs=self.step_epochs,
            gamma=self.gamma,
            seed=self.seed,
            extra_bits=extra_bits,
            owner=self.owner,
            reveal_loss=self.reveal_loss,
            test_limit=self.test_limit,
            test_batch=self.test_batch,
            samples=len(self.data),
            precision=self.rt.frac_bits,
            model_spec=to_json(self.model.spec),
            data_set_ids=set_ids(self.data),
            test_set_ids=set_ids(self.test),
            version=mpcgpu.__version__,
        )
        return settings

    # -- checkpoints ---------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "settings": self.settings,
            "epoch": self.epoch,
            "pos": self.pos,
            "step": self.step,
            "epochs": self.epoch_records,
            "steps": self.step_records,
            "dropout": self.model.dropout_rng.bit_generator.state,
        }

    def save_checkpoint(self) -> str:
        """Write this party's checkpoint of the current step (every party calls it)."""
        host = self.rt.backend.to_host
        params = {n: (host(s.first), host(s.second), s.scale) for n, s in self.model.params.items()}
        state = self.opt.state()
        state = dict(
            state, master=tuple(host(a) for a in state["master"]), velocity=tuple(host(a) for a in state["velocity"])
        )
        return checkpoint.save(
            self.checkpoint_dir,
            self.rt.rank,
            self.step,
            run_id=self.run_id,
            params=params,
            optim=state,
            rng=self.rt.state(),
            meta=self._meta(),
            settings=self.digest_settings,
            separate_hosts=self.rt.comm.channels.separate_hosts,
        )

    def resume(self):
        """Continue from the newest checkpoint all three parties have in ``checkpoint_dir``:
        returns its step, or None (none there: the run starts afresh).  An MPCError on
        every party if it was made with other settings (naming them)."""
        from ..sharing.arithmetic import ArithmeticShare

        rt, directory = self.rt, self.checkpoint_dir
        if not directory:
            raise MPCError("resuming needs a checkpoint directory (--checkpoint-dir)")
        step = checkpoint.latest_common(rt.comm, directory)
        if step is None:
            return None
        state = checkpoint.load(directory, rt.rank, step)
        rt.comm.agree(state["run_id"], "the run id of the checkpoints")
        where = f"the checkpoint of step {step} in {directory}"
        if state["settings_sha256"] is None:
            raise MPCError(f"{where} records no settings digest (an older mpcgpu made it): start afresh")
        if state["settings_sha256"] != checkpoint.settings_digest(self.digest_settings):
            saved, now = state["settings"] or {}, self.digest_settings
            named = checkpoint.settings_differences(saved, now)
            told = "; ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in named) or "(not by name)"
            raise MPCError(
                f"{where} was made with other settings: {told}. Resume with the same settings "
                "and the same mpcgpu version, or start afresh in another --checkpoint-dir"
            )
        dev = rt.backend.to_device
        self.model.set_params(
            {n: ArithmeticShare(dev(f), dev(s), scale, rt) for n, (f, s, scale) in state["params"].items()}
        )
        self.opt.load_state(state["optim"])
        if rt.insecure_seed:
            # tests only: the keys are reproducible anyway; continuing the streams makes the
            # resumed run bit-identical to an uninterrupted one
            rt.restore(state["rng"])
        else:
            # the fresh keys of this run's start-up stay: a step re-run after the checkpoint
            # must not be masked by the crashed run's words.  The role counter (public) continues.
            rt.restore(dict(rt.state(), role_calls=state["rng"]["role_calls"]))
        meta = state["meta"]
        self.model.dropout_rng.bit_generator.state = meta["dropout"]
        self.epoch, self.pos, self.step = meta["epoch"], meta["pos"], meta["step"]
        self.epoch_records, self.step_records = meta["epochs"], meta["steps"]
        self.run_id = state["run_id"]
        return step

    # -- the loop ------------------------------------------------------------------------
    def fit(self, on_step=None, on_epoch=None):
        """Train the remaining epochs.  ``on_step(record, result, samples)`` after each step
        (and its checkpoint): the step's record, its :class:`~mpcgpu.nn.trainer.StepResult`,
        the batch size; ``on_epoch(record)`` after each epoch's evaluation, before its
        checkpoint (the owner's record holds ``test_accuracy``, ``test_correct``,
        ``test_samples``)."""
        rt = self.rt
        comm = rt.comm
        if self.run_id is None:
            import secrets

            self.run_id = comm.bcast_object(secrets.token_hex(8) if rt.rank == 0 else None, root=0)
        comm.barrier()
        while self.epoch < self.epochs:
            batches = epoch_batches(len(self.data), self.batch_size, self.seed, self.epoch)
            with comm.measure() as epoch_stats:
                t_epoch = time.perf_counter()
                while self.pos < len(batches):
                    rows = batches[self.pos]
                    t0 = time.perf_counter()
                    with comm.measure() as m:
                        images, labels = self.data.batch(rows)
                        lr = lr_at(
                            self.step,
                            self.total,
                            self.lr,
                            self.schedule,
                            self.warmup,
                            self.steps_per_epoch,
                            self.step_epochs,
                            self.gamma,
                        )
                        result = train_step(
                            self.model,
                            self.opt,
                            images,
                            labels,
                            lr,
                            reveal_loss_to=self.owner if self.reveal_loss else None,
                        )
                    record = {
                        "step": self.step + 1,
                        "seconds": time.perf_counter() - t0,
                        "bytes": m.bytes_sent,
                        "rounds": m.rounds,
                        "lr": lr,
                        "loss": result.loss,
                    }
                    self.step_records.append(record)
                    self.step += 1
                    self.pos += 1
                    if self.checkpoint_dir and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                        self.save_checkpoint()
                    if on_step is not None:
                        on_step(record, result, len(rows))
                epoch_seconds = time.perf_counter() - t_epoch
            record = {
                "epoch": self.epoch + 1,
                "seconds": epoch_seconds,
                "bytes": epoch_stats.bytes_sent,
                "rounds": epoch_stats.rounds,
                "test_accuracy": None,
            }
            if self.test is not None:
                correct, n = evaluate(self.model, self.test, self.test_batch, self.owner, self.test_limit)
                if rt.rank == self.owner:
                    record["test_accuracy"] = correct / n if n else None
                    record["test_correct"], record["test_samples"] = correct, n
            if on_epoch is not None:
                on_epoch(record)
            self.epoch_records.append(record)
            self.epoch += 1
            self.pos = 0
            if self.checkpoint_dir:
                self.save_checkpoint()

    def trained_params(self) -> dict:
        """The model's parameters with the weights rounded exactly from the master weights
        (f fractional bits; a collective)."""
        return dict(self.model.params, **self.opt.weights(exact=True))

    def summary(self):
        """Totals over the three parties (a collective): the owner gets ``{"test_accuracy",
        "epochs", "steps", "settings"}`` -- per step the slowest party's seconds and the
        three parties' bytes -- the others None."""
        comm = self.rt.comm
        per_party = comm.allgather_object([(s["bytes"], s["seconds"]) for s in self.step_records])
        epochs_bytes = comm.allgather_object([e["bytes"] for e in self.epoch_records])
        if self.rt.rank != self.owner:
            return None
        steps = [
            {
                "step": s["step"],
                "seconds": max(p[i][1] for p in per_party),
                "bytes": sum(p[i][0] for p in per_party),
                "rounds": s["rounds"],
                "lr": s["lr"],
                "loss": s["loss"],
            }
            for i, s in enumerate(self.step_records)
        ]
        epochs = [dict(e, bytes=sum(b[i] for b in epochs_bytes)) for i, e in enumerate(self.epoch_records)]
        last = next((e["test_accuracy"] for e in reversed(epochs) if e.get("test_accuracy") is not None), None)
        return {"test_accuracy": last, "epochs": epochs, "steps": steps, "settings": self.settings}


def mean_step(summary: dict):
    """``(seconds, bytes)`` per step of a :meth:`Trainer.summary` (None without steps)."""
    steps = summary["steps"]
    if not steps:
        return None
    return float(numpy.mean([s["seconds"] for s in steps])), float(numpy.mean([s["bytes"] for s in steps]))


__all__ = ["Trainer", "mean_step"]
