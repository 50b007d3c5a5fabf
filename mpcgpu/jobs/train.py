"""`mpcgpu train`: private training on three MPI ranks, from shards to shards."""

from __future__ import annotations

import os
import time

import numpy

from .channel_args import add_channel_arguments, channel_config

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
--checkpoint-every steps; --resume continues from the newest step all three have, and
the result is bit-identical to an uninterrupted run.

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
        action="store_true",
        help="clip batch-summed gradients privately to the optimiser's bound 2^14 (10 rounds per step; "
        "without it a larger gradient corrupts the update unnoticed)",
    )
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing the shard files")
    add_channel_arguments(p)


#: fault injection for tests: "STEP:RANK" kills that rank (SIGKILL, no clean-up) right
#: after that training step, as a crashed or killed server would die
FAULT_ENV = "MPCGPU_FAULT_KILL_AFTER_STEP"


def _maybe_die(rank: int, step: int):
    spec = os.environ.get(FAULT_ENV)
    if spec:
        at, who = (int(v) for v in spec.split(":"))
        if step == at and rank == who:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def _initial_model(rt, args):
    """``(PrivateModel, description of the source)`` from model shards or a registered name."""
    from ..data.shards import as_share, open_shard, resolve_path
    from ..nn.layers import TRAIN_BN_DOMAIN
    from ..nn.models import architecture, get_model, list_models
    from ..nn.plain import init_params
    from ..nn.private import PrivateModel, share_params
    from ..errors import MPCError

    here = resolve_path(args.model, rt.rank)
    is_name = args.model.strip().lower().replace("-", "_") in list_models()
    found = rt.comm.allgather_object(os.path.isfile(here))
    if any(found) and not all(found):
        missing = [p for p, ok in enumerate(found) if not ok]
        raise MPCError(f"model shards {args.model}: party {missing[0]} has no file")
    if all(found):
        shard = open_shard(args.model, rt, kind="model", verify=not args.no_verify)
        with shard:
            spec = architecture(shard.name, shard.public)
            params = {n: as_share(shard.load(n), shard.info(n).scale) for n in shard.arrays}
        source = f"shards {args.model}"
    elif is_name:
        spec = get_model(args.model)
        plain = init_params(spec, rng=args.init_seed) if rt.rank == 0 else None
        params = share_params(spec, plain, src=0)
        source = f"{spec.name}, He initialisation drawn by party 0 (seed {args.init_seed})"
    else:
        raise MPCError(
            f"--model {args.model!r} is neither a model shard set nor a registered model ({', '.join(list_models())})"
        )
    model = PrivateModel(spec, params, bn_domain=TRAIN_BN_DOMAIN, dropout_seed=args.seed)
    return model, source


class _Run:
    """Position and records of a run (what the checkpoint's ``meta`` holds)."""

    def __init__(self, settings):
        self.settings = settings
        self.epoch = 0  # current epoch
        self.pos = 0  # next batch within the epoch
        self.step = 0  # steps done
        self.epochs = []  # per-epoch records (owner's values where revealed)
        self.steps = []  # per-step records: step, seconds, bytes (this party), loss

    def meta(self, dropout_state):
        return {
            "settings": self.settings,
            "epoch": self.epoch,
            "pos": self.pos,
            "step": self.step,
            "epochs": self.epochs,
            "steps": self.steps,
            "dropout": dropout_state,
        }

    def load(self, meta):
        for key in ("epoch", "pos", "step", "epochs", "steps"):
            setattr(self, key, meta[key])


def _checkpoint(rt, args, run, model, opt, run_id):
    from ..nn import checkpoint

    host = rt.backend.to_host
    params = {n: (host(s.first), host(s.second), s.scale) for n, s in model.params.items()}
    state = opt.state()
    state = dict(
        state, master=tuple(host(a) for a in state["master"]), velocity=tuple(host(a) for a in state["velocity"])
    )
    checkpoint.save(
        args.checkpoint_dir,
        rt.rank,
        run.step,
        run_id=run_id,
        params=params,
        optim=state,
        rng=rt.state(),
        meta=run.meta(model.dropout_rng.bit_generator.state),
    )


def _resume(rt, args, run, model, opt):
    """Load the newest common checkpoint; returns its run id (or None: start afresh)."""
    from ..errors import MPCError
    from ..nn import checkpoint
    from ..sharing.arithmetic import ArithmeticShare

    step = checkpoint.latest_common(rt.comm, args.checkpoint_dir)
    if step is None:
        if rt.rank == 0:
            print(
                f"mpcgpu train: no checkpoint in {args.checkpoint_dir} that all three parties have: starting afresh",
                flush=True,
            )
        return None
    state = checkpoint.load(args.checkpoint_dir, rt.rank, step)
    rt.comm.agree(state["run_id"], "the run id of the checkpoints")
    saved = state["meta"]["settings"]
    for key in ("model", "batch_size", "data", "precision", "extra_bits", "seed", "limit"):
        if saved.get(key) != run.settings.get(key):
            raise MPCError(
                f"the checkpoint was made with {key}={saved.get(key)!r}, this run has "
                f"{run.settings.get(key)!r}: resume with the same settings"
            )
    dev = rt.backend.to_device
    model.set_params({n: ArithmeticShare(dev(f), dev(s), scale, rt) for n, (f, s, scale) in state["params"].items()})
    opt.load_state(state["optim"])
    rt.restore(state["rng"])
    model.dropout_rng.bit_generator.state = state["meta"]["dropout"]
    run.load(state["meta"])
    if rt.rank == 0:
        print(f"mpcgpu train: resumed from step {step} (epoch {run.epoch + 1}, batch {run.pos})", flush=True)
    return state["run_id"]


def _write_outputs(rt, args, model, opt, run_id):
    """--out shards (every party its own file) and --reveal-to plaintext weights."""
    import secrets
    from ..data.shards import shard_path, write_party_shard
    from ..nn import spec as S
    from ..nn.layers import TRAIN_BN_DOMAIN
    from ..nn.weights import save_weights

    set_id = rt.comm.bcast_object(secrets.token_hex(16) if rt.rank == 0 else None, root=0)
    weights = opt.weights(exact=True)  # f-bit weights rounded exactly
    params = dict(model.params, **weights)
    host = rt.backend.to_host
    from ..nn.models import SPEC_KEY
    from ..nn.spec_io import to_json
    from ..nn.weights import FORMAT

    public = {"format": FORMAT, "model": model.spec.name, SPEC_KEY: to_json(model.spec)}
    if any(isinstance(layer, S.BatchNorm2d) for _, layer in S.walk(model.spec)):
        public["bn_var_domain"] = list(TRAIN_BN_DOMAIN)
    arrays = {
        p.name: (host(params[p.name].first), host(params[p.name].second), params[p.name].scale)
        for p in S.param_specs(model.spec)
    }
    path = write_party_shard(
        shard_path(args.out, rt.rank),
        rt.rank,
        arrays,
        kind="model",
        set_id=set_id,
        frac_bits=rt.frac_bits,
        name=model.spec.name,
        public=public,
    )
    rt.comm.barrier()
    if rt.rank == 0:
        print(f"trained weights written as shards {args.out}.party{{0,1,2}}.h5 (set {set_id[:12]})", flush=True)
    if args.reveal_to is not None:
        clear = {p.name: params[p.name].reveal(to=args.reveal_to) for p in S.param_specs(model.spec)}
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
    """The training curves as PNG (:func:`mpcgpu.plots.training_figure`); None without matplotlib."""
    from ..errors import MPCError
    from ..plots import training_figure

    try:
        return training_figure(summary, path)
    except MPCError as exc:
        print(f"(no plot: {exc})", flush=True)
        return None


def run(args) -> int:
    import mpcgpu
    from ..comm import world_rank
    from ..data.loader import ShardedDataset
    from ..errors import MPCError
    from ..nn.optim import PrivateSGD
    from ..nn.schedule import epoch_batches, lr_at
    from ..nn.trainer import evaluate, train_step
    from ..progress import Progress

    if args.reveal_to is not None and not args.out:
        raise MPCError("--reveal-to needs --out (the plaintext weights go to STEM.weights.h5)")
    if args.resume and not args.checkpoint_dir:
        raise MPCError("--resume needs --checkpoint-dir")
    if args.batch_size < 1 or args.epochs < 1:
        raise MPCError("--batch-size and --epochs must be positive")
    from . import checks

    checks.at_least(args, 1, "limit", "test_limit", "step_epochs")
    checks.at_least(args, 0, "checkpoint_every")
    checks.finite(args, "lr", "momentum", "weight_decay", "gamma", positive=("lr",))
    from .infer import peek_frac_bits

    precision = args.precision or peek_frac_bits(args.data.split(",")[0], world_rank())
    rt = mpcgpu.init(device=args.device, precision=precision, channels=channel_config(args))
    comm, owner = rt.comm, args.owner
    data = ShardedDataset(args.data, rt, limit=args.limit, verify=not args.no_verify)
    test = ShardedDataset(args.test_data, rt, verify=not args.no_verify) if args.test_data else None
    if not data.has_labels:
        raise MPCError(f"training shards {args.data} have no 'labels' array")
    model, source = _initial_model(rt, args)
    model.exact_running = args.reveal_to is not None  # revealed statistics: rounded exactly
    if data.sample_shape != tuple(model.spec.input_shape):
        raise MPCError(
            f"model {model.spec.name} expects samples of shape {model.spec.input_shape}, "
            f"the training data has {data.sample_shape}"
        )
    steps_per_epoch = len(data) // args.batch_size
    if steps_per_epoch < 1:
        raise MPCError(f"{len(data)} training samples: fewer than one batch of {args.batch_size}")
    total = steps_per_epoch * args.epochs
    warmup = min(args.warmup, total // 5)  # as the plaintext trainer: never a long warm-up
    opt = PrivateSGD(
        model.params,
        model.trainable(),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        extra_bits=args.extra_bits,
        clip=getattr(args, "clip_gradients", False),
    )
    settings = {
        "model": model.spec.name,
        "model_source": source,
        "data": args.data,
        "test_data": args.test_data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "warmup": warmup,
        "seed": args.seed,
        "limit": args.limit,
        "precision": rt.frac_bits,
        "extra_bits": args.extra_bits,
        "reveal_loss": bool(args.reveal_loss),
        "owner": owner,
        "device": rt.backend.describe(),
    }
    run_ = _Run(settings)
    run_id = _resume(rt, args, run_, model, opt) if args.resume else None
    if run_id is None:
        import secrets

        run_id = comm.bcast_object(secrets.token_hex(8) if rt.rank == 0 else None, root=0)
    if rt.rank == 0:
        print(
            f"mpcgpu train: {model.spec.name} ({source}) on {len(data)} samples of {', '.join(data.names)}; "
            f"{args.epochs} epoch(s) of {steps_per_epoch} steps, batch {args.batch_size}, lr {args.lr} "
            f"({args.schedule}, {warmup} warm-up steps), momentum {args.momentum}, "
            f"weight decay {args.weight_decay}; {rt.describe()}",
            flush=True,
        )
    bar = Progress(total, "private training", enabled=(rt.rank == 0 and not args.no_progress))
    bar.done = run_.step
    comm.barrier()
    while run_.epoch < args.epochs:
        batches = epoch_batches(len(data), args.batch_size, args.seed, run_.epoch)
        with comm.measure() as epoch_stats:
            t_epoch = time.perf_counter()
            while run_.pos < len(batches):
                rows = batches[run_.pos]
                t0 = time.perf_counter()
                with comm.measure() as m:
                    images, labels = data.batch(rows)
                    lr = lr_at(
                        run_.step, total, args.lr, args.schedule, warmup, steps_per_epoch, args.step_epochs, args.gamma
                    )
                    result = train_step(
                        model, opt, images, labels, lr, reveal_loss_to=owner if args.reveal_loss else None
                    )
                seconds = time.perf_counter() - t0
                run_.steps.append(
                    {
                        "step": run_.step + 1,
                        "seconds": seconds,
                        "bytes": m.bytes_sent,
                        "rounds": m.rounds,
                        "lr": lr,
                        "loss": result.loss,
                    }
                )
                run_.step += 1
                run_.pos += 1
                extra = f"{len(rows) / seconds:6.1f} samples/s"
                if result.loss is not None:
                    extra += f", loss {result.loss:.4f}"
                bar.update(1, extra)
                if args.checkpoint_dir and args.checkpoint_every and run_.step % args.checkpoint_every == 0:
                    _checkpoint(rt, args, run_, model, opt, run_id)
                _maybe_die(rt.rank, run_.step)
            epoch_seconds = time.perf_counter() - t_epoch
        record = {
            "epoch": run_.epoch + 1,
            "seconds": epoch_seconds,
            "bytes": epoch_stats.bytes_sent,
            "rounds": epoch_stats.rounds,
            "test_accuracy": None,
        }
        if test is not None:
            correct, n = evaluate(model, test, max(args.batch_size, 100), owner, args.test_limit)
            if rt.rank == owner:
                record["test_accuracy"] = correct / n if n else None
                record["test_correct"], record["test_samples"] = correct, n
                print(
                    f"epoch {run_.epoch + 1}: private test accuracy {100 * record['test_accuracy']:.2f}% "
                    f"({correct}/{n}; computed under MPC, only the count revealed)",
                    flush=True,
                )
        run_.epochs.append(record)
        run_.epoch += 1
        run_.pos = 0
        if args.checkpoint_dir:
            _checkpoint(rt, args, run_, model, opt, run_id)
    if args.out:
        _write_outputs(rt, args, model, opt, run_id)
    _summary(rt, args, run_, owner)
    data.close()
    if test is not None:
        test.close()
    return 0


def _summary(rt, args, run_, owner):
    """Totals over the three parties; the owner prints them and writes JSON and PNG."""
    comm = rt.comm
    per_party = comm.allgather_object([(s["bytes"], s["seconds"]) for s in run_.steps])
    epochs_bytes = comm.allgather_object([e["bytes"] for e in run_.epochs])
    if rt.rank != owner:
        return
    steps = []
    for i, s in enumerate(run_.steps):
        steps.append(
            {
                "step": s["step"],
                "seconds": max(p[i][1] for p in per_party),
                "bytes": sum(p[i][0] for p in per_party),
                "rounds": s["rounds"],
                "lr": s["lr"],
                "loss": s["loss"],
            }
        )
    epochs = [dict(e, bytes=sum(b[i] for b in epochs_bytes)) for i, e in enumerate(run_.epochs)]
    last = next((e["test_accuracy"] for e in reversed(epochs) if e.get("test_accuracy") is not None), None)
    summary = {"test_accuracy": last, "epochs": epochs, "steps": steps, "settings": run_.settings}
    if steps:
        mean_s = float(numpy.mean([s["seconds"] for s in steps]))
        mean_b = float(numpy.mean([s["bytes"] for s in steps]))
        print(
            f"{len(steps)} steps: {mean_s:.2f} s/step, {mean_b / 1e6:.1f} MB/step (three parties), "
            f"{steps[-1]['rounds']} rounds/step",
            flush=True,
        )
    if args.json:
        from ..results import save_json

        save_json(args.json, summary, indent=1)
        plot = args.plot or os.path.splitext(args.json)[0] + ".png"
        if _plot(plot, summary):
            print(f"written {args.json} and {plot}", flush=True)
        else:
            print(f"written {args.json}", flush=True)
    elif args.plot:
        _plot(args.plot, summary)
