"""`mpcgpu train`: private training on three MPI ranks (or k groups of three), from shards to shards."""

from __future__ import annotations

import argparse
import os

import numpy

from .channel_args import add_channel_arguments, cli_settings

SUMMARY = "privately train a network on sharded data (run under mpirun -n 3)"
DESCRIPTION = """\
Private training on three MPI ranks. Inputs, labels and weights stay secret-shared
throughout: forward and backward passes, the softmax cross-entropy gradient with the
secret labels and the SGD update all run on shares. Each rank opens only its own
shards.

  --model STEM | NAME   initial weights: a model shard set (`mpcgpu share weights.h5`), or a
                        registered model (see `mpcgpu info`) whose He-initialised weights
                        party 0 draws with --init-seed and secret-shares
  --data STEM[,STEM]    training shards (several stems: several data owners, concatenated)
  --test-data STEM      test shards: after every epoch the accuracy is computed under MPC
                        and only the count of correct predictions is revealed, to --owner

What is revealed, and to whom (nothing else is):
  * the test accuracy after each epoch, to --owner (default party 0);
  * with --reveal-loss, each step's mean training loss, to --owner;
  * with --reveal-to R, the trained weights in clear, to party R only (an HDF5 file).
The trained weights are written as a shard set with --out (each party its own file),
which `mpcgpu infer --model STEM` accepts.

Precision: activations and gradients use --precision fractional bits (default: the
training shards'), the master weights and momentum --extra-bits more (default 8), so
that updates smaller than 2^-f accumulate. The batch size and a power-of-two learning
rate fold into one exact shift where they can.

Checkpoints (--checkpoint-dir): each rank writes only its own components, optimiser
state, PRG state and position, atomically, after every epoch and every
--checkpoint-every steps; --resume continues from the newest step all three have. A
resume must have the same settings (everything that changes the computation, and the
same mpcgpu version): otherwise it is refused, naming what differs. A resumed run draws
fresh masks (a new key exchange, as any run): the steps it re-runs are masked afresh, so
its result equals an uninterrupted run's up to the last-bit rounding of the
truncations; only under the test seed MPCGPU_INSECURE_PRG_SEED (reproducible keys,
nothing private) does it continue the checkpointed PRG streams, bit-identical.

Many groups of three (mpirun -n 3k, --layout block|cyclic): data-parallel training.
Every group takes its contiguous slice of each global batch (same public order and
seeds), the k ranks of each party add up their gradient components (an exact sum mod
2^64 that stays inside the organisation), group 0 applies the update with the global
batch's 1/B and broadcasts the new state to its party's other ranks: the k copies stay
identical word for word. The test set is split across the groups. Group 0 of each party
writes the checkpoints (after checking by hash that the k copies agree) and the --out
shards; a resume needs the same k (it is refused otherwise, naming both).

Example:
  mpirun -n 3 mpcgpu train --model lenet --data shards/mnist_train --test-data shards/mnist_test \\
      --epochs 1 --batch-size 128 --lr 0.05 --out shards/lenet_private --json train.json
"""


def add_arguments(p):
    p.add_argument(
        "--model",
        required=True,
        metavar="STEM|NAME",
        help="initial weights: model shard set, or a registered model name (with --init-seed)",
    )
    p.add_argument("--init-seed", type=int, default=0, help="seed of party 0's initial weights for a model name")
    p.add_argument("--data", required=True, metavar="STEM[,STEM...]", help="training shard set(s)")
    p.add_argument("--test-data", default=None, metavar="STEM", help="test shard set (accuracy after each epoch)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--schedule",
        default="cosine",
        choices=("constant", "cosine", "linear", "step"),
        help="learning-rate schedule over the run (default cosine)",
    )
    p.add_argument(
        "--warmup", type=int, default=100, help="linear warm-up steps (default 100, at most a fifth of the run)"
    )
    p.add_argument("--step-epochs", type=int, default=1, help="'step' schedule: epochs between decays")
    p.add_argument("--gamma", type=float, default=0.1, help="'step' schedule: decay factor")
    p.add_argument("--seed", type=int, default=0, help="seed of the (public) sample order and dropout masks")
    p.add_argument("--limit", type=int, default=None, help="train on the first N samples only")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test samples only")
    p.add_argument("--out", default=None, metavar="STEM", help="write the trained weights as shards STEM.party<i>.h5")
    p.add_argument(
        "--reveal-to",
        type=int,
        default=None,
        choices=(0, 1, 2),
        help="also write the plaintext weights at this party only (STEM.weights.h5; needs --out)",
    )
    p.add_argument(
        "--owner",
        type=int,
        default=0,
        choices=(0, 1, 2),
        help="result owner: learns the test accuracy (and loss) and writes the JSON (default 0)",
    )
    p.add_argument("--reveal-loss", action="store_true", help="reveal each step's training loss to --owner")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument(
        "--json", default=None, metavar="FILE", help="result owner writes settings, per-epoch and per-step records"
    )
    p.add_argument(
        "--plot", default=None, metavar="FILE.png", help="curves as PNG (default next to --json; needs matplotlib)"
    )
    p.add_argument("--precision", type=int, default=None, help="fractional bits (default: the training shards')")
    p.add_argument("--extra-bits", type=int, default=8, help="extra fractional bits of the master weights (default 8)")
    p.add_argument(
        "--clip-gradients",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clip batch-summed gradients privately to the optimiser's bound 2^14 (default; 10 rounds per "
        "step, nothing revealed; --no-clip-gradients saves them, and a larger gradient then corrupts the "
        "update unnoticed)",
    )
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing the shard files")
    add_channel_arguments(p)


def _maybe_die(rank: int, step: int):
    """Fault injection for tests (the ``fault_kill_after_step`` setting,
    ``MPCGPU_FAULT_KILL_AFTER_STEP=STEP:RANK``): kill that rank (SIGKILL, no clean-up) right
    after that training step, as a crashed or killed server would die."""
    from ..runtime import get

    spec = get().settings.fault_kill_after_step
    if spec:
        at, who = spec
        if step == at and get().place.world_rank == who:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


#: arguments that change neither what is computed nor what is revealed: where files go, how
#: progress is shown, how often to checkpoint, the device and the channels' security.  Every
#: other argument (a new one included) enters the settings digest of the checkpoints
#: (:attr:`mpcgpu.nn.training.Trainer.digest_settings`).
NOT_IN_DIGEST = frozenset(
    {
        "checkpoint_dir",
        "checkpoint_every",
        "resume",
        "json",
        "plot",
        "out",
        "device",
        "no_progress",
        "no_verify",
        "key",
        "parties",
        "insecure_channels",
        "peer_timeout",
        "command",
    }
)


#: the :class:`~mpcgpu.nn.training.Trainer` keywords given as the arguments of the same name
TRAINER_ARGS = tuple(
    "epochs batch_size lr momentum weight_decay schedule warmup step_epochs"
    " gamma seed extra_bits test_limit owner reveal_loss checkpoint_dir checkpoint_every".split()
)


def _identity(args) -> dict:
    """The arguments that determine the computation (see :data:`NOT_IN_DIGEST`)."""
    return {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_") and k not in NOT_IN_DIGEST}


def _check_directories(rt, args):
    """Before training: no party writes its checkpoints or trained shard into a directory
    that holds another party's files (an error with a parties file, a warning on one
    machine), decided on every rank alike."""
    from mpcgpu.util.atomic import check_own_directory
    from ..errors import MPCError

    folders = [args.checkpoint_dir] if args.checkpoint_dir else []
    if args.out:
        folders.append(os.path.dirname(os.path.abspath(args.out)))
    problem = None
    try:
        for folder in folders:
            check_own_directory(folder, rt.rank, separate_hosts=rt.comm.channels.separate_hosts)
    except MPCError as exc:
        problem = str(exc)
    problems = [p for p in rt.comm.allgather_object(problem) if p]
    if problems:
        raise MPCError("; ".join(problems))


def _write_outputs(rt, args, model, params, run_id):
    """--out shards (every party its own file) and --reveal-to plaintext weights."""
    from ..models_io import reveal_params, save_private_model
    from ..nn.weights import save_weights

    path, set_id = save_private_model(args.out, rt, model.spec, params)
    if rt.rank == 0:  # (group 0's)
        print(f"trained weights written as shards {args.out}.party{{0,1,2}}.h5 (set {set_id[:12]})", flush=True)
    if args.reveal_to is not None:
        clear = reveal_params(rt, model.spec, params, to=args.reveal_to)
        if rt.rank == args.reveal_to:
            out = f"{args.out}.weights.h5"
            save_weights(
                out,
                model.spec.name,
                clear,
                dtype=numpy.float64,
                meta={"trainer": "mpcgpu train (private)", "run": run_id},
                spec=model.spec,
            )
            print(f"party {rt.rank}: plaintext trained weights written to {out}", flush=True)
    return path


def _plot(path, summary):
    """The training curves as PNG (:func:`mpcgpu.reporting.plots.training_figure`); None without matplotlib."""
    from ..errors import MPCError
    from mpcgpu.reporting.plots import training_figure

    try:
        return training_figure(summary, path)
    except MPCError as exc:
        print(f"(no plot: {exc})", flush=True)
        return None


def run(args) -> int:
    import mpcgpu
    from ..data.loader import ShardedDataset
    from ..errors import MPCError
    from ..models_io import initial_private_model
    from ..nn.training import Trainer
    from mpcgpu.util.progress import Progress
    from . import checks

    if args.reveal_to is not None and not args.out:
        raise MPCError("--reveal-to needs --out (the plaintext weights go to STEM.weights.h5)")
    if args.resume and not args.checkpoint_dir:
        raise MPCError("--resume needs --checkpoint-dir")
    if args.batch_size < 1 or args.epochs < 1:
        raise MPCError("--batch-size and --epochs must be positive")
    checks.at_least(args, 1, "limit", "test_limit", "step_epochs")
    checks.at_least(args, 0, "checkpoint_every")
    checks.finite(args, "lr", "momentum", "weight_decay", "gamma", positive=("lr",))

    precision = args.precision or checks.peek_frac_bits(args.data.split(",")[0], checks.launch_party(args))
    rt = mpcgpu.init(precision=precision, cli=cli_settings(args))
    data = ShardedDataset(args.data, rt, limit=args.limit, verify=not args.no_verify)
    test = ShardedDataset(args.test_data, rt, verify=not args.no_verify) if args.test_data else None
    if not data.has_labels:
        raise MPCError(f"training shards {args.data} have no 'labels' array")
    model, source = initial_private_model(
        args.model, rt, init_seed=args.init_seed, dropout_seed=args.seed, verify=not args.no_verify
    )
    model.exact_running = args.reveal_to is not None  # revealed statistics: rounded exactly
    trainer = Trainer(
        rt,
        model,
        data,
        **{k: getattr(args, k) for k in TRAINER_ARGS},
        test=test,
        identity=_identity(args),
        describe={"model_source": source, "data": args.data, "test_data": args.test_data, "limit": args.limit},
        clip=args.clip_gradients,
    )
    _check_directories(rt, args)
    lead = rt.rank == 0 and rt.role.root  # prints for the job (group 0's party 0)
    if args.resume:
        step = trainer.resume()
        if lead:
            if step is None:
                print(
                    f"mpcgpu train: no checkpoint in {args.checkpoint_dir} that all three parties have: "
                    "starting afresh",
                    flush=True,
                )
            else:
                print(
                    f"mpcgpu train: resumed from step {step} (epoch {trainer.epoch + 1}, batch {trainer.pos})",
                    flush=True,
                )
    if lead:
        print(
            f"mpcgpu train: {model.spec.name} ({source}) on {len(data)} samples of {', '.join(data.names)}; "
            f"{args.epochs} epoch(s) of {trainer.steps_per_epoch} steps, batch {args.batch_size}, lr {args.lr} "
            f"({args.schedule}, {trainer.warmup} warm-up steps), momentum {args.momentum}, "
            f"weight decay {args.weight_decay}; "
            + (f"{rt.groups} groups of three, data-parallel; " if rt.groups > 1 else "")
            + rt.describe(),
            flush=True,
        )
    bar = Progress(trainer.total, "private training", enabled=(lead and not args.no_progress))
    bar.done = trainer.step

    def on_step(record, result, samples):
        extra = f"{samples / record['seconds']:6.1f} samples/s"
        if result.loss is not None:
            extra += f", loss {result.loss:.4f}"
        bar.update(1, extra)
        _maybe_die(rt.rank, record["step"])

    def on_epoch(record):
        if record.get("test_samples") is not None:  # the owner's record
            print(
                f"epoch {record['epoch']}: private test accuracy {100 * record['test_accuracy']:.2f}% "
                f"({record['test_correct']}/{record['test_samples']}; computed under MPC, only the count revealed)",
                flush=True,
            )

    trainer.fit(on_step=on_step, on_epoch=on_epoch)
    if args.out and rt.role.root:  # the k copies are identical: group 0's ranks write them
        _write_outputs(rt, args, model, trainer.trained_params(), trainer.run_id)
    _summary(args, trainer.summary())
    data.close()
    if test is not None:
        test.close()
    return 0


def _summary(args, summary):
    """The owner (``summary`` not None) prints the totals and writes JSON and PNG."""
    from ..nn.training import mean_step

    if summary is None:
        return
    per_step = mean_step(summary)
    if per_step is not None:
        mean_s, mean_b = per_step
        print(
            f"{len(summary['steps'])} steps: {mean_s:.2f} s/step, {mean_b / 1e6:.1f} MB/step (three parties), "
            f"{summary['steps'][-1]['rounds']} rounds/step",
            flush=True,
        )
    if args.json:
        from mpcgpu.util.results import save_json

        save_json(args.json, summary, indent=1)
        plot = args.plot or os.path.splitext(args.json)[0] + ".png"
        if _plot(plot, summary):
            print(f"written {args.json} and {plot}", flush=True)
        else:
            print(f"written {args.json}", flush=True)
    elif args.plot:
        _plot(args.plot, summary)
