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

Many groups of three (``mpirun -n 3k``, :mod:`mpcgpu.comm.groups`): data-parallel.  Every
group draws the same public batch order; each step's global batch is cut into ``k``
contiguous slices in order (:func:`~mpcgpu.comm.groups.split_range`, group 0 first), each
group computes the batch-summed gradient shares of its slice, the ranks of each party sum
them over the role communicator (exact mod 2^64: it stays inside one organisation), group
0 applies the update with the ``1/B`` of the global batch and broadcasts the new master
weights, velocity, ``f``-bit weights and batch-norm running statistics to its party's
other ranks, so the ``k`` copies stay identical word for word (the running statistics are
group 0's: those of its slice).  Dropout masks are drawn for the global batch (public,
alike in every group).  The test set is split across the groups and the counts summed;
the revealed loss is the global batch's mean.  Checkpoints are written by group 0 of each
party after :meth:`~mpcgpu.comm.role.RoleComm.agree` has checked (by SHA-256) that the
``k`` copies of the state are identical; they hold every group's PRG state (gathered to
group 0), so a resume with the same ``k`` under the test seed continues exactly.  A resume
with another ``k`` is refused, naming both.  One group: everything as before, word for word.
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
        if self.batch_size < rt.groups:
            raise MPCError(
                f"--batch-size {self.batch_size} is smaller than the {rt.groups} groups of three: every group "
                "needs at least one sample of each batch"
            )
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
            **({"groups": rt.groups, "layout": rt.place.layout.kind} if rt.groups > 1 else {}),
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

    def save_checkpoint(self) -> str | None:
        """Write this party's checkpoint of the current step (every rank calls it; with
        several groups, group 0's ranks write after checking that the ``k`` copies of the
        state are identical, with every group's PRG state; the others return None)."""
        from .trainer import state_arrays

        rt = self.rt
        rngs = None
        if rt.groups > 1:
            rt.role.agree(state_arrays(self.model, self.opt), f"the model and optimiser state of step {self.step}")
            position = (self.epoch, self.pos, self.step, self.model.dropout_rng.bit_generator.state)
            rt.role.agree(repr(position).encode(), f"the position in the data of step {self.step}")
            rngs = rt.role.gather_object(rt.state())
            if not rt.role.root:
                return None
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
            group_rngs=rngs,
        )

    def resume(self):
        """Continue from the newest checkpoint all three parties have in ``checkpoint_dir``:
        returns its step, or None (none there: the run starts afresh).  An MPCError on
        every party if it was made with other settings (naming them) or, with groups, by
        another number of groups (naming both).  With several groups, group 0 reads the
        checkpoint and hands each rank of its party the state and its own group's PRG state
        over the role communicator."""
        rt, directory = self.rt, self.checkpoint_dir
        if not directory:
            raise MPCError("resuming needs a checkpoint directory (--checkpoint-dir)")
        if rt.groups == 1:
            step = checkpoint.latest_common(rt.comm, directory)
            if step is None:
                return None
            state = self._load_checked(step)
            self._restore(state, state["rng"])
            return step
        role = rt.role
        step = checkpoint.latest_common(rt.comm, directory) if role.root else None
        step = role.bcast_object(step)
        if step is None:
            return None
        state, problem = None, None
        if role.root:
            try:
                state = self._load_checked(step)
            except MPCError as exc:
                problem = str(exc)
        problem = role.bcast_object(problem)
        if problem:
            raise MPCError(problem)
        small = None
        if role.root:
            small = {k: state[k] for k in ("run_id", "meta", "rng_groups")}
            small["optim_steps"] = state["optim"]["steps"]
            self._restore(state, state["rng_groups"][0])
        small = role.bcast_object(small)
        from .trainer import sync_state

        sync_state(self.model, self.opt, role)  # group 0's parameters and optimiser state
        if not role.root:
            self.opt.steps = int(small["optim_steps"])
            self._restore_position(small["meta"], small["run_id"], small["rng_groups"][rt.group])
        return step

    def _load_checked(self, step: int) -> dict:
        """This party's checkpoint of ``step``, checked: run id, number of groups, settings."""
        rt, directory = self.rt, self.checkpoint_dir
        state = checkpoint.load(directory, rt.rank, step)
        rt.comm.agree(state["run_id"], "the run id of the checkpoints")
        where = f"the checkpoint of step {step} in {directory}"
        saved_k = int(state.get("groups", 1))
        if saved_k != rt.groups:
            raise MPCError(
                f"{where} was made by {saved_k} group{'s' if saved_k != 1 else ''} of three "
                f"({3 * saved_k} ranks); this run has {rt.groups} ({3 * rt.groups} ranks). A checkpoint holds the "
                f"PRG state of each of its {saved_k} group{'s' if saved_k != 1 else ''}, so it resumes with the same "
                f"number only: run mpirun -n {3 * saved_k}, or start afresh in another --checkpoint-dir"
            )
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
        return state

    def _restore(self, state: dict, rng: dict):
        """Parameters, optimiser state, ``rng`` (this rank's group's) and the position."""
        from ..sharing.arithmetic import ArithmeticShare

        rt = self.rt
        dev = rt.backend.to_device
        self.model.set_params(
            {n: ArithmeticShare(dev(f), dev(s), scale, rt) for n, (f, s, scale) in state["params"].items()}
        )
        self.opt.load_state(state["optim"])
        self._restore_position(state["meta"], state["run_id"], rng)

    def _restore_position(self, meta: dict, run_id: str, rng: dict):
        rt = self.rt
        if rt.insecure_seed:
            # tests only: the keys are reproducible anyway; continuing the streams makes the
            # resumed run bit-identical to an uninterrupted one
            rt.restore(rng)
        else:
            # the fresh keys of this run's start-up stay: a step re-run after the checkpoint
            # must not be masked by the crashed run's words.  The role counter (public) continues.
            rt.restore(dict(rt.state(), role_calls=rng["role_calls"]))
        self.model.dropout_rng.bit_generator.state = meta["dropout"]
        self.epoch, self.pos, self.step = meta["epoch"], meta["pos"], meta["step"]
        self.epoch_records, self.step_records = meta["epochs"], meta["steps"]
        self.run_id = run_id

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
            self.run_id = rt.role.bcast_object(self.run_id)  # group 0's: one run
        comm.barrier()
        rt.role.barrier()
        while self.epoch < self.epochs:
            batches = epoch_batches(len(self.data), self.batch_size, self.seed, self.epoch)
            with comm.measure() as epoch_stats:
                t_epoch = time.perf_counter()
                while self.pos < len(batches):
                    rows = batches[self.pos]
                    part = rt.place.share_of(len(rows))  # this group's slice (all of it with one group)
                    self.model.batch_part = (len(rows), part.start) if rt.groups > 1 else None
                    t0 = time.perf_counter()
                    role_bytes = rt.role.bytes
                    with comm.measure() as m:
                        images, labels = self.data.batch(rows[part.start : part.stop])
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
                            batch_size=len(rows),
                        )
                    record = {
                        "step": self.step + 1,
                        "seconds": time.perf_counter() - t0,
                        "bytes": m.bytes_sent,
                        "rounds": m.rounds,
                        "lr": lr,
                        "loss": result.loss,
                    }
                    if rt.groups > 1:
                        record["role_bytes"] = rt.role.bytes - role_bytes
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
                if rt.rank == self.owner and rt.role.root:
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
        three parties' bytes -- the others None.  With several groups: the owner of group 0,
        per step the slowest of the ``3k`` ranks, the bytes of every group's exchanges and
        (``role_bytes``) of the role communicators, all ranks together."""
        rt = self.rt
        comm = rt.comm
        mine = [(s["bytes"], s["seconds"], s.get("role_bytes", 0)) for s in self.step_records]
        per_party = comm.allgather_object(mine)
        epochs_bytes = comm.allgather_object([e["bytes"] for e in self.epoch_records])
        if rt.groups > 1:
            groups = rt.role.gather_object((per_party, epochs_bytes))
            if not rt.role.root:
                return None
            per_party = [p for g in groups for p in g[0]]
            epochs_bytes = [b for g in groups for b in g[1]]
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
                **({"role_bytes": sum(p[i][2] for p in per_party)} if rt.groups > 1 else {}),
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
